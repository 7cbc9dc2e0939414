"""``carousel train tagger``, ``carousel tag`` and the tagger's ``carousel eval``.

A tagger run folder is what the shared loop writes (:mod:`carousel.train`):
``checkpoint.safetensors`` (the model's last and best tensors, the optimizer's, and as JSON
its kind ``"tagger"``, architecture, vocabulary, settings and cursor), ``metrics.jsonl``
(training, dev and, at the end, test rows) and ``curves.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from carousel.config import add_run_arguments, overrides_from_args, resolve_config
from carousel.tagging.config import TaggerConfig
from carousel.tagging.train import KIND, evaluate_tagger, load_tagger, tag_text, train_tagger


def _percent(scores: dict[str, float]) -> str:
    names = {"accuracy": "token accuracy", "chunk_f1": "chunk F1"}
    return ", ".join(f"{names.get(k, k)} {100 * v:.2f} %" for k, v in scores.items())


def cmd_train(args: argparse.Namespace) -> int:
    from carousel.train import Run, plot_metrics, say

    overrides = overrides_from_args(args)
    if args.resume:
        if args.out or args.preset:
            raise ValueError("--resume continues a run with its own settings; drop --out/--preset")
        run, cfg = Path(args.resume), None
    else:
        cfg = resolve_config(TaggerConfig, args.preset, overrides)
        if cfg.data is None:
            raise ValueError("a new tagger needs --data FOLDER (CoNLL-U or CoNLL-2000 files)")
        run, overrides = Path(args.out or Path("runs") / Path(args.preset or "tagger").stem), None
    _, _, metrics = train_tagger(
        cfg,
        out=run,
        resume=bool(args.resume),
        overrides=overrides,
        log=say,
        progress=args.progress,
    )
    for split in ("dev", "test"):
        if split in metrics:
            print(f"{split}: {_percent(metrics[split])}")
    paths = Run(run)
    print(f"checkpoint: {paths.checkpoint}")
    if metrics["trained"] or not paths.curves.exists():  # a finished run's resume: no change
        plot_metrics(run)
    print(f"curves: {paths.curves}")
    return 0


def evaluate_file(path: str | Path, data: str | Path) -> str:
    """One line: the tagger's scores on a CoNLL-U (UPOS/XPOS taggers) or CoNLL-2000 file."""
    from carousel.data.conll import read_conll2000, read_conllu

    model, vocab, _ = load_tagger(path)
    read = read_conllu if vocab.tagset in ("upos", "xpos") else read_conll2000
    sentences = read(data)
    if not sentences:
        raise ValueError(f"{data} holds no sentences")
    return (
        f"{data}: {len(sentences)} sentences, {_percent(evaluate_tagger(model, vocab, sentences))}"
    )


def cmd_eval(args: argparse.Namespace) -> int:
    """``carousel eval`` of a tagger: its scores on ``--data``."""
    if args.data is None:
        raise ValueError("evaluating a tagger needs --data FILE (CoNLL-U or CoNLL-2000)")
    print(evaluate_file(args.checkpoint, args.data))
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    model, vocab, _ = load_tagger(args.checkpoint)
    print(tag_text(model, vocab, sys.stdin.read()), end="")
    return 0


def register(sub: argparse._SubParsersAction, jobs: argparse._SubParsersAction) -> None:
    """Add the ``tagger`` job to ``carousel train`` and ``tag`` to ``carousel``."""
    p = jobs.add_parser("tagger", help="a (bidirectional) part-of-speech tagger or chunker")
    # --data FOLDER: *train/dev/test*.conllu, or CoNLL-2000
    add_run_arguments(p, TaggerConfig, "preset name (tagger-ewt, tagger-chunk) or TOML file")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tag", help="tag text from stdin, one sentence a line: word/TAG")
    p.add_argument("checkpoint", help="tagger checkpoint file or run folder")
    p.set_defaults(func=cmd_tag)


__all__ = ["KIND", "cmd_eval", "cmd_tag", "cmd_train", "evaluate_file", "register"]
