"""``carousel train tagger``, ``carousel tag`` and the tagger's ``carousel eval``.

A tagger checkpoint is ``RUN/checkpoint.safetensors`` (:mod:`carousel.checkpoint`): the
model's tensors, and as JSON its kind (``"tagger"``), architecture, vocabulary, settings and
scores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from carousel.checkpoint import load_checkpoint, save_checkpoint
from carousel.config import (
    add_config_arguments,
    config_to_dict,
    overrides_from_args,
    resolve_config,
)
from carousel.tagging.model import Tagger, tagger_from_parts, tagger_to_parts
from carousel.tagging.train import TaggerConfig, evaluate_tagger, tag_text, train_tagger
from carousel.tagging.vocab import TaggerVocab

KIND = "tagger"


def load_tagger(path: str | Path) -> tuple[Tagger, TaggerVocab, dict]:
    """The model, vocabulary and metadata of a tagger checkpoint (file or run folder)."""
    tensors, meta = load_checkpoint(path, kind=KIND)
    model, vocab = tagger_from_parts(tensors, meta)
    return model, vocab, meta


def _percent(scores: dict[str, float]) -> str:
    names = {"accuracy": "token accuracy", "chunk_f1": "chunk F1"}
    return ", ".join(f"{names.get(k, k)} {100 * v:.2f} %" for k, v in scores.items())


def cmd_train(args: argparse.Namespace) -> int:
    cfg = resolve_config(TaggerConfig, args.preset, overrides_from_args(args))
    run = Path(args.out or Path("runs") / Path(args.preset or "tagger").stem)
    model, vocab, metrics = train_tagger(cfg, args.data)
    tensors, meta = tagger_to_parts(model, vocab)
    run.mkdir(parents=True, exist_ok=True)
    path = run / "checkpoint.safetensors"
    save_checkpoint(
        path, tensors, {"kind": KIND, "config": config_to_dict(cfg), "metrics": metrics, **meta}
    )
    for split in ("dev", "test"):
        if split in metrics:
            print(f"{split}: {_percent(metrics[split])}")
    print(f"checkpoint: {path}")
    return 0


def evaluate_file(path: str | Path, data: str | Path) -> str:
    """One line: the tagger's scores on a CoNLL-U (UPOS/XPOS taggers) or CoNLL-2000 file."""
    from carousel.data.conll import read_conll2000, read_conllu

    model, vocab, _ = load_tagger(path)
    read = read_conllu if vocab.layer in ("upos", "xpos") else read_conll2000
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
    p.add_argument(
        "--data",
        required=True,
        help="folder of CoNLL-U (*train/dev/test*.conllu) or CoNLL-2000 files",
    )
    p.add_argument("--preset", help="preset name (tagger-ewt, tagger-chunk) or TOML file")
    p.add_argument("--out", help="run folder (default runs/PRESET)")
    add_config_arguments(p, TaggerConfig)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tag", help="tag text from stdin, one sentence a line: word/TAG")
    p.add_argument("checkpoint", help="tagger checkpoint file or run folder")
    p.set_defaults(func=cmd_tag)
