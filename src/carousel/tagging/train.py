"""Training and evaluation of a :class:`~carousel.tagging.model.Tagger` through the shared
loop (:func:`carousel.train.fit`).

The :class:`TaggerJob` is all that is particular to tagging: batches of sentences bucketed by
length (sorted, cut into batches, batch order shuffled each epoch, so a batch pads only to
its own longest sentence), the loss (mean cross-entropy in nats per token), and the
evaluation on dev (token accuracy, plus chunk F1 for IOB tags: the score that selects the
model kept).  The test set is scored once, with the kept model, at the end.

Python API (what the CLI wires up)::

    cfg = resolve_config(TaggerConfig, "tagger-ewt", {"cell": "rnn"})
    model, vocab, metrics = train_tagger(cfg, "/path/to/ud_english_ewt")
    evaluate_tagger(model, vocab, sentences)   # {"accuracy": …} (+ "chunk_f1" for IOB tags)
    tag_sentences(model, vocab, [["I", "saw", "her"]])   # [["PRON", "VERB", "PRON"]]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from carousel.checkpoint import load_checkpoint
from carousel.data.batching import length_batches
from carousel.data.conll import Sentence, chunk_f1, read_conll2000, read_conllu
from carousel.tagging.config import TaggerConfig
from carousel.tagging.model import Tagger, TaggerShape, encode_batch, tagger_from_parts
from carousel.tagging.vocab import TaggerVocab
from carousel.train import Job, MetricsLog, fit, open_run, part, read_metrics, setup

KIND = "tagger"
IGNORE = -100  # the target of padding (and of a dev tag the training data never had)


def load_tagging_data(data_dir: str | Path, dev_fraction: float = 0.1) -> dict[str, list[Sentence]]:
    """``{"train", "dev", "test"}`` sentences from a folder holding either CoNLL-U files
    (``*train*.conllu``, ``*dev*.conllu``, ``*test*.conllu``) or CoNLL-2000 files
    (``train.txt``, ``test.txt``; dev = the last ``dev_fraction`` of train)."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise ValueError(f"expected a data folder; {folder} is not a directory")

    def one(pattern: str) -> Path | None:
        found = sorted(folder.glob(pattern))
        if len(found) > 1:
            raise ValueError(f"{folder}: expected one file matching {pattern}; got {len(found)}")
        return found[0] if found else None

    train = one("*train*.conllu")
    if train is not None:
        dev, test = one("*dev*.conllu"), one("*test*.conllu")
        if dev is None or test is None:
            raise ValueError(f"{folder}: found {train.name} but no *dev*.conllu / *test*.conllu")
        return {"train": read_conllu(train), "dev": read_conllu(dev), "test": read_conllu(test)}
    if (folder / "train.txt").is_file() and (folder / "test.txt").is_file():
        sentences = read_conll2000(folder / "train.txt")
        cut = len(sentences) - max(1, round(dev_fraction * len(sentences)))
        return {
            "train": sentences[:cut],
            "dev": sentences[cut:],
            "test": read_conll2000(folder / "test.txt"),
        }
    raise ValueError(
        f"{folder}: expected CoNLL-U files (*train*.conllu, *dev*.conllu, *test*.conllu) or "
        "CoNLL-2000 files (train.txt, test.txt)"
    )


def _tags(sentences: Sequence[Sentence], tagset: str) -> list[tuple[str, ...]]:
    if sentences and tagset not in sentences[0].tags:
        raise ValueError(
            f"tagset {tagset!r} is not in this data; it has {', '.join(sentences[0].tags)}"
        )
    return [s.tags[tagset] for s in sentences]


def _targets(ids: Sequence[Sequence[int]], device: torch.device) -> Tensor:
    """(T, B) tag ids of B sentences, IGNORE past each one's end."""
    return pad_sequence([torch.tensor(t) for t in ids], padding_value=IGNORE).to(device)


def _inputs(vocab: TaggerVocab, sentences: Sequence[Sequence[str]], device: torch.device):
    return tuple(t.to(device) for t in encode_batch(vocab, [list(s) for s in sentences]))


def _predict(
    model: Tagger,
    vocab: TaggerVocab,
    sentences: Sequence[Sequence[str]],
    targets: Sequence[Sequence[int]] | None = None,
) -> tuple[list[list[int]], float]:
    """The best tag id of every token, and with ``targets`` the summed cross-entropy."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[int]] = [[] for _ in sentences]
    total = 0.0
    with torch.no_grad():
        for batch in length_batches([len(s) for s in sentences], 256):
            scores = model(*_inputs(vocab, [sentences[i] for i in batch], device))  # (T, B, K)
            if targets is not None:
                y = _targets([targets[i] for i in batch], device)
                total += float(
                    nn.functional.cross_entropy(
                        scores.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum"
                    )
                )
            best = scores.argmax(-1).cpu()  # (T, B)
            for b, i in enumerate(batch):
                out[i] = best[: len(sentences[i]), b].tolist()
    model.train(was_training)
    return out, total


def tag_sentences(
    model: Tagger, vocab: TaggerVocab, sentences: Sequence[Sequence[str]]
) -> list[list[str]]:
    """The predicted tag of every token of every sentence (lists of words)."""
    if not sentences:
        return []
    for k, s in enumerate(sentences):
        if isinstance(s, str) or len(s) == 0:
            raise ValueError(
                f"expected each sentence to be a non-empty list of words; sentence {k} is {s!r}"
            )
    return [[vocab.tags[t] for t in seq] for seq in _predict(model, vocab, sentences)[0]]


def evaluate_tagger(
    model: Tagger, vocab: TaggerVocab, sentences: Sequence[Sentence], with_loss: bool = False
) -> dict[str, float]:
    """``{"accuracy": token accuracy}`` on ``vocab.tagset``, plus ``"chunk_f1"`` (conlleval's
    chunk F1) when the tags are IOB chunk tags (fractions in [0, 1]), and with ``with_loss``
    ``"loss"``, the mean cross-entropy in nats per token (of the tags the vocabulary has)."""
    if not sentences:
        raise ValueError("expected at least one sentence to evaluate on")
    gold = _tags(sentences, vocab.tagset)
    ids = [[vocab.tag_index.get(t, IGNORE) for t in g] for g in gold] if with_loss else None
    predicted_ids, loss = _predict(model, vocab, [s.words for s in sentences], ids)
    predicted = [[vocab.tags[t] for t in seq] for seq in predicted_ids]
    right = sum(g == p for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps))
    total = sum(len(g) for g in gold)
    scores = {"accuracy": right / total}
    if vocab.iob:
        scores["chunk_f1"] = chunk_f1(gold, predicted)
    if with_loss:
        scores["loss"] = loss / max(1, sum(t != IGNORE for seq in ids for t in seq))
    return scores


def tag_text(model: Tagger, vocab: TaggerVocab, text: str) -> str:
    """Tag plain text, one sentence per line with whitespace between tokens: each line comes
    back as ``word/TAG word/TAG …``; blank lines stay blank (what ``carousel tag`` prints)."""
    lines = text.splitlines()
    sentences = [line.split() for line in lines if line.split()]
    tagged = iter(tag_sentences(model, vocab, sentences))
    out = []
    for line in lines:
        words = line.split()
        out.append(" ".join(f"{w}/{t}" for w, t in zip(words, next(tagged))) if words else "")
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def tagger_shape(cfg: TaggerConfig, vocab: TaggerVocab) -> TaggerShape:
    return TaggerShape(
        num_words=len(vocab.words),
        num_chars=len(vocab.chars),
        num_tags=len(vocab.tags),
        cell=cfg.cell,
        bidirectional=cfg.bidirectional,
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        word_dim=cfg.word_dim,
        char_dim=cfg.char_dim,
        char_features=cfg.char_features,
        dropout=cfg.dropout,
    )


def build_tagger(cfg: TaggerConfig, vocab: TaggerVocab) -> Tagger:
    return Tagger(tagger_shape(cfg, vocab))


class TaggerJob(Job):
    """Tagging for the shared loop: length-bucketed batches of sentences, per-token
    cross-entropy, dev accuracy (chunk F1 for IOB tags) selecting the model kept.

    Epoch e's batch order is the (e+1)-th shuffle of one ``random.Random(seed)``, replayed
    from the seed when a run resumes: a pure function of (seed, epoch), and the order the
    tagger trained in before the shared loop existed.  The job carries, in the checkpoint,
    the token-weighted training loss since the last evaluation and the history of
    evaluations (what :func:`train_tagger` returns as ``metrics["epochs"]``).
    """

    kind = KIND
    higher_is_better = True
    keep_best = True
    unit = "nats/token"
    item = "tok"

    def __init__(
        self,
        cfg: TaggerConfig,
        vocab: TaggerVocab,
        train: Sequence[Sentence],
        dev: Sequence[Sentence],
        device: torch.device,
    ) -> None:
        self.cfg, self.vocab, self.dev, self.device = cfg, vocab, dev, device
        self.metric = "chunk_f1" if vocab.iob else "accuracy"
        self.words = [s.words for s in train]
        self.targets = [vocab.tag_ids(t) for t in _tags(train, cfg.tagset)]
        self.fingerprint = _fingerprint(train, dev, cfg.tagset)
        self._rng = random.Random(cfg.seed)
        self._orders: list[list[list[int]]] = []
        # carried from batch to batch, and checkpointed: the epoch under way, the steps taken,
        # the summed training loss and tokens since the last evaluation, the evaluations
        self.carried: dict[str, Any] = {"epoch": 0, "steps": 0, "total": 0.0, "count": 0}
        self.history: list[dict[str, Any]] = []

    def order(self, epoch: int) -> list[list[int]]:
        while len(self._orders) <= epoch:
            lengths = [len(w) for w in self.words]
            self._orders.append(length_batches(lengths, self.cfg.batch_size, self._rng))
        return self._orders[epoch]

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self.order(epoch))

    def batches(self, epoch: int, start: int) -> Iterator[list[int]]:
        self.carried["epoch"] = epoch
        yield from self.order(epoch)[start:]

    def loss(self, model: nn.Module, batch: list[int]) -> tuple[Tensor, int]:
        scores = model(*_inputs(self.vocab, [self.words[i] for i in batch], self.device))
        y = _targets([self.targets[i] for i in batch], self.device)  # (T, B)
        loss = nn.functional.cross_entropy(
            scores.flatten(0, 1), y.flatten(), ignore_index=IGNORE
        )  # mean nats per token
        n = sum(len(self.targets[i]) for i in batch)
        self.carried["steps"] += 1
        self.carried["total"] += float(loss.detach()) * n
        self.carried["count"] += n
        return loss, n

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        scores = evaluate_tagger(model, self.vocab, self.dev, with_loss=True)
        c = self.carried
        loss = c["total"] / max(c["count"], 1)
        self.history.append(
            {"epoch": c["epoch"] + 1, "step": c["steps"], "loss": loss, "dev": scores}
        )
        c["total"], c["count"] = 0.0, 0
        return scores

    def describe(self, scores: dict[str, float]) -> str:
        shown = "  ".join(f"{k} {100 * v:.2f} %" for k, v in scores.items() if k != "loss")
        train = self.history[-1]["loss"] if self.history else float("nan")
        return f"loss {train:.4f}  dev {shown}  dev loss {scores['loss']:.4f}"

    def meta(self) -> dict[str, Any]:
        shape = tagger_shape(self.cfg, self.vocab)
        return {
            "model": {"kind": KIND, **dataclasses.asdict(shape)},
            "vocab": self.vocab.to_json(),
            "data_sha256": self.fingerprint,
        }

    def state(self) -> tuple[dict[str, Tensor], Any]:
        return {}, {**self.carried, "history": self.history}

    def load_state(self, tensors: dict[str, Tensor], data: Any) -> None:
        self.carried = {k: data[k] for k in self.carried}
        self.history = data["history"]


def _fingerprint(train: Sequence[Sentence], dev: Sequence[Sentence], tagset: str) -> str:
    digest = hashlib.sha256()
    for part_name, sentences in (("train", train), ("dev", dev)):
        digest.update(part_name.encode())
        for s in sentences:
            digest.update(json.dumps([s.words, s.tags.get(tagset)]).encode())
    return digest.hexdigest()


def load_tagger(path: str | os.PathLike) -> tuple[Tagger, TaggerVocab, dict]:
    """The model (the best one of its run, in eval mode), vocabulary and metadata of a
    tagger checkpoint (file or run folder)."""
    tensors, meta = load_checkpoint(path, kind=KIND)
    weights = part(tensors, "best") or part(tensors, "model") or tensors  # or pre-loop
    try:
        model, vocab = tagger_from_parts(weights, meta)
    except (RuntimeError, KeyError) as err:
        raise ValueError(
            f"{path}: the tagger's tensors do not fit its description ({err})"
        ) from err
    return model, vocab, meta


def train_tagger(
    cfg: TaggerConfig | None,
    data_dir: str | Path | None = None,
    *,
    data: dict[str, list[Sentence]] | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = print,
    progress: bool = False,
    on_checkpoint: Callable[[int], None] | None = None,
) -> tuple[Tagger, TaggerVocab, dict]:
    """Train a tagger on ``data_dir`` (see :func:`load_tagging_data`; default ``cfg.data``)
    or on ``data`` (``{"train", "dev"[, "test"]}`` sentence lists).

    Args:
        out: the run folder (checkpoint, ``metrics.jsonl``); default a temporary one.
        resume: continue the run in ``out`` with its own settings; ``overrides`` may change
            only how long and how often (``TaggerConfig.RESUMABLE``).
        log: where each evaluation goes as one line (None: quiet).
        progress: the loop's progress display (a bar on a terminal).
        on_checkpoint: called with the step after each checkpoint is on disk.

    Returns ``(model, vocab, metrics)``: the model with the best dev score (eval mode), its
    vocabulary, and ``metrics`` = ``{"dev": {...}, "test": {...}, "best_epoch", "epochs":
    [per-evaluation training loss and dev scores], "seconds", "train_sentences", "steps",
    "reason", "trained"}``.
    """
    if out is None:
        if resume:
            raise ValueError("resuming a tagger run needs its folder (out=)")
        with tempfile.TemporaryDirectory(prefix="carousel-tagger-") as tmp:
            return train_tagger(
                cfg,
                data_dir,
                data=data,
                out=Path(tmp) / "run",
                log=log,
                progress=progress,
                on_checkpoint=on_checkpoint,
            )
    if resume and data_dir is not None:  # a resumed run keeps its data (or refuses)
        overrides = {**(overrides or {}), "data": str(data_dir)}
    elif not resume:
        if cfg is None:
            raise ValueError("a new tagger run needs its settings (cfg)")
        if data_dir is not None:
            cfg = dataclasses.replace(cfg, data=str(data_dir))
        cfg.validate()
        if data is None:  # read the data before making the run folder
            data = _read_data(cfg)
    with open_run(out, resume=resume, kind=KIND) as run:
        cfg = run.settings(TaggerConfig, cfg, overrides)
        if data is None:
            data = _read_data(cfg)
        if not data.get("train") or not data.get("dev"):
            raise ValueError("expected non-empty 'train' and 'dev' sentence lists")
        train = data["train"][: cfg.max_train_sentences or None]
        train_tags = _tags(train, cfg.tagset)
        vocab = TaggerVocab.build([s.words for s in train], train_tags, cfg.tagset, cfg.min_count)
        device = setup(cfg)
        job = TaggerJob(cfg, vocab, train, data["dev"], device)
        if resume:
            _check_same_data(job, run.meta, cfg, Path(out))
        model = build_tagger(cfg, vocab).to(device)
        summary = fit(
            model, job, cfg, run, progress=progress, echo=log, on_checkpoint=on_checkpoint
        )
        model.eval()
        best = next((h for h in job.history if h["step"] == summary["best_step"]), None)
        metrics: dict = {
            "best_epoch": best["epoch"] if best else None,
            "dev": evaluate_tagger(model, vocab, data["dev"]),
            "epochs": job.history,
            "seconds": summary["elapsed"],
            "train_sentences": len(train),
            "steps": summary["step"],
            "reason": summary["reason"],
            "trained": summary["trained"],  # False: a finished run, resumed, did nothing
        }
        if data.get("test"):
            metrics["test"] = evaluate_tagger(model, vocab, data["test"])
            _log_test(run.metrics, summary, metrics["test"])
    return model, vocab, metrics


def _read_data(cfg: TaggerConfig) -> dict[str, list[Sentence]]:
    if cfg.data is None:
        raise ValueError("training a tagger needs its data: a folder (data_dir, --data) or data=")
    return load_tagging_data(cfg.data, cfg.dev_fraction)


def _log_test(path: Path, summary: dict, scores: dict[str, float]) -> None:
    """Append the kept model's test scores to ``metrics.jsonl`` once per end of training (a
    resumed finished run finds them there and writes nothing)."""
    step = summary["step"]
    rows = read_metrics(path) if path.exists() else []
    if not any(r.get("kind") == "test" and r.get("step") == step for r in rows):
        MetricsLog(path).write(kind="test", step=step, **scores)


def _check_same_data(job: TaggerJob, meta: dict, cfg: TaggerConfig, run: Path) -> None:
    if job.fingerprint != meta["data_sha256"]:
        raise ValueError(
            f"the training data ({cfg.data or 'data='}) changed since {run} was trained"
        )
