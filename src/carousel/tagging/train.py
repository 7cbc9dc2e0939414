"""Training and evaluation of a :class:`~carousel.tagging.model.Tagger`.

Sentences are bucketed by length (sorted, cut into batches, batch order shuffled each
epoch) so a batch pads only to its own longest sentence.  The model kept is the one with
the best development score; the metrics report it on dev and test.

Python API (what the CLI wires up)::

    cfg = resolve_config(TaggerConfig, "tagger-ewt", {"cell": "rnn"})
    model, vocab, metrics = train_tagger(cfg, "/path/to/ud_english_ewt")
    evaluate_tagger(model, vocab, sentences)   # {"accuracy": …} (+ "chunk_f1" for IOB tags)
    tag_sentences(model, vocab, [["I", "saw", "her"]])   # [["PRON", "VERB", "PRON"]]
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from carousel.cells import get_cell
from carousel.config import check_at_least
from carousel.data.batching import length_batches
from carousel.data.conll import Sentence, chunk_f1, read_conll2000, read_conllu
from carousel.tagging.model import Tagger, TaggerShape, encode_batch
from carousel.tagging.vocab import TaggerVocab


@dataclasses.dataclass(frozen=True)
class TaggerConfig:
    """Settings of a tagging job (presets ``tagger-ewt``, ``tagger-chunk``).

    ``layer``: which tags to learn (``upos``/``xpos`` for CoNLL-U, ``chunk``/``pos`` for
    CoNLL-2000).  ``max_train_sentences`` > 0 trains on only the first that many (quick
    runs).  ``dev_fraction``: for data without a dev file (CoNLL-2000), the share of the
    training sentences held out (the last ones) for model selection.
    """

    layer: str = "upos"
    cell: str = "lstm"
    bidirectional: bool = True
    num_layers: int = 1
    hidden_size: int = 128
    word_dim: int = 100
    char_dim: int = 32
    char_features: int = 64
    dropout: float = 0.3
    min_count: int = 2
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.002
    clip: float = 5.0
    seed: int = 0
    max_train_sentences: int = 0
    dev_fraction: float = 0.1

    def validate(self) -> None:
        get_cell(self.cell)  # raises for an unknown cell
        check_at_least(
            self,
            1,
            "num_layers",
            "hidden_size",
            "word_dim",
            "char_dim",
            "char_features",
            "min_count",
            "epochs",
            "batch_size",
        )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        if not self.lr > 0 or not self.clip > 0:
            raise ValueError(f"lr and clip must be positive; got {self.lr}, {self.clip}")
        if self.max_train_sentences < 0:
            raise ValueError(f"max_train_sentences must be ≥ 0; got {self.max_train_sentences}")
        if not 0 < self.dev_fraction < 1:
            raise ValueError(f"dev_fraction must be in (0, 1); got {self.dev_fraction}")


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


def _tags(sentences: Sequence[Sentence], layer: str) -> list[tuple[str, ...]]:
    if sentences and layer not in sentences[0].tags:
        raise ValueError(
            f"layer {layer!r} is not in this data; it has {', '.join(sentences[0].tags)}"
        )
    return [s.tags[layer] for s in sentences]


def _predict(
    model: Tagger, vocab: TaggerVocab, sentences: Sequence[Sequence[str]]
) -> list[list[int]]:
    was_training = model.training
    model.eval()
    out: list[list[int]] = [[] for _ in sentences]
    with torch.no_grad():
        for batch in length_batches([len(s) for s in sentences], 256):
            inputs = encode_batch(vocab, [list(sentences[i]) for i in batch])
            best = model(*inputs).argmax(-1)  # (T, B)
            for b, i in enumerate(batch):
                out[i] = best[: len(sentences[i]), b].tolist()
    model.train(was_training)
    return out


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
    return [[vocab.tags[t] for t in seq] for seq in _predict(model, vocab, sentences)]


def evaluate_tagger(
    model: Tagger, vocab: TaggerVocab, sentences: Sequence[Sentence]
) -> dict[str, float]:
    """``{"accuracy": token accuracy}`` on ``vocab.layer``, plus ``"chunk_f1"`` (conlleval's
    chunk F1) when the tags are IOB chunk tags.  Scores are fractions in [0, 1]."""
    if not sentences:
        raise ValueError("expected at least one sentence to evaluate on")
    gold = _tags(sentences, vocab.layer)
    predicted = tag_sentences(model, vocab, [s.words for s in sentences])
    right = sum(g == p for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps))
    total = sum(len(g) for g in gold)
    scores = {"accuracy": right / total}
    if all(t == "O" or t[:2] in ("B-", "I-") for t in vocab.tags):
        scores["chunk_f1"] = chunk_f1(gold, predicted)
    return scores


def build_tagger(cfg: TaggerConfig, vocab: TaggerVocab) -> Tagger:
    return Tagger(
        TaggerShape(
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
    )


def train_tagger(
    cfg: TaggerConfig,
    data_dir: str | Path | None = None,
    *,
    data: dict[str, list[Sentence]] | None = None,
    log: Callable[[str], None] | None = print,
) -> tuple[Tagger, TaggerVocab, dict]:
    """Train a tagger on ``data_dir`` (see :func:`load_tagging_data`) or on ``data``
    (``{"train", "dev"[, "test"]}`` sentence lists).

    Returns ``(model, vocab, metrics)``: the model with the best dev score (eval mode), its
    vocabulary, and ``metrics`` = ``{"dev": {...}, "test": {...}, "best_epoch", "epochs":
    [per-epoch loss and dev scores], "seconds", "train_sentences"}``.
    """
    cfg.validate()
    if data is None:
        if data_dir is None:
            raise ValueError("train_tagger needs data_dir or data")
        data = load_tagging_data(data_dir, cfg.dev_fraction)
    if "train" not in data or "dev" not in data or not data["train"] or not data["dev"]:
        raise ValueError("expected non-empty 'train' and 'dev' sentence lists")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    train = data["train"]
    if cfg.max_train_sentences:
        train = train[: cfg.max_train_sentences]
    train_tags = _tags(train, cfg.layer)
    vocab = TaggerVocab.build([s.words for s in train], train_tags, cfg.layer, cfg.min_count)
    model = build_tagger(cfg, vocab)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    targets = [torch.tensor(vocab.tag_ids(t)) for t in train_tags]

    best_score, best_state, best_epoch, history = -math.inf, None, 0, []
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        total, count = 0.0, 0
        for batch in length_batches([len(s) for s in train], cfg.batch_size, rng):
            inputs = encode_batch(vocab, [list(train[i].words) for i in batch])
            T = inputs[0].size(0)
            y = torch.full((T, len(batch)), -100, dtype=torch.long)  # (T, B)
            for b, i in enumerate(batch):
                y[: len(targets[i]), b] = targets[i]
            scores = model(*inputs)  # (T, B, tags)
            loss = loss_fn(scores.reshape(-1, scores.size(-1)), y.reshape(-1))
            optimiser.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimiser.step()
            n = int((y != -100).sum())
            total += float(loss.detach()) * n
            count += n
        dev = evaluate_tagger(model, vocab, data["dev"])
        score = dev.get("chunk_f1", dev["accuracy"])
        history.append({"epoch": epoch, "loss": total / count, "dev": dev})
        if log:
            log(
                f"epoch {epoch}: loss {total / count:.4f}  dev "
                + "  ".join(f"{k} {100 * v:.2f}%" for k, v in dev.items())
                + f"  ({time.perf_counter() - start:.0f} s)"
            )
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    metrics: dict = {
        "best_epoch": best_epoch,
        "dev": evaluate_tagger(model, vocab, data["dev"]),
        "epochs": history,
        "seconds": time.perf_counter() - start,
        "train_sentences": len(train),
    }
    if data.get("test"):
        metrics["test"] = evaluate_tagger(model, vocab, data["test"])
    return model, vocab, metrics


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
