"""Training a language model: truncated BPTT over B streams, the recurrent state carried from
one batch to the next (detached), through the shared loop (:func:`carousel.train.fit`).

The :class:`LMJob` is all that is particular to language modelling: the batches of an epoch
(contiguous windows of the B streams, :mod:`carousel.data.batching`; with ``random_bptt`` of
random length, a pure function of (seed, epoch) so a run resumes mid-epoch exactly), the
loss (mean cross-entropy in nats per token), the state carried across batches (reset at each
epoch's start, saved in the checkpoint), and the evaluation (loss over the validation text,
read as ``eval_batch_size`` streams with the state carried).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from carousel import distributed as ddp
from carousel.checkpoint import load_checkpoint
from carousel.config import config_from_dict
from carousel.data.batching import batchify, epoch_layout, get_batch, shard_columns
from carousel.data.corpora import Corpus, Vocab, load_corpus
from carousel.layers import State, detach_state
from carousel.lm.config import LMConfig
from carousel.lm.model import RNNLM
from carousel.train import LOG2, Job, fit, load_weights, open_run, setup

KIND = "lm"


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The forward pass's precision: ``"bf16"`` runs the matrix products in bfloat16 under
    ``torch.autocast`` (the loss, softmax and recurrent state stay float32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def evaluate(
    model: nn.Module,
    ids: Tensor,
    batch_size: int,
    bptt: int,
    max_tokens: int | None = None,
    precision: str = "float32",
) -> float:
    """Mean loss in nats per token of ``model`` over ``ids`` (1-D), read as ``batch_size``
    streams with the state carried across windows of ``bptt`` steps, in ``precision``."""
    if max_tokens is not None:
        ids = ids[:max_tokens]
    batch_size = max(1, min(batch_size, ids.numel() // 2))
    streams = batchify(ids, batch_size)  # (N, B)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    with torch.no_grad():
        for start, length in epoch_layout(streams.size(0), bptt):
            x, y = get_batch(streams, start, length)
            with autocast(device, precision):
                loss, state = model(x.to(device), state, targets=y.to(device))
            total += float(loss) * y.numel()
            count += y.numel()
    model.train(was_training)
    return total / count


def describe_loss(loss: float, level: str) -> str:
    if level == "char":
        return f"{loss:.4f} nats ({loss / LOG2:.4f} bits/char)"
    return f"{loss:.4f} nats (perplexity {math.exp(min(loss, 700)):.2f})"


class LMJob(Job):
    """Language modelling for the shared loop: windows of B token streams, state carried."""

    kind = KIND
    shards = True

    def __init__(self, corpus: Corpus, cfg: LMConfig, device: torch.device) -> None:
        self.corpus, self.cfg, self.device = corpus, cfg, device
        self.unit, self.item = f"nats/{cfg.level}", "tok"
        rank, world = ddp.rank(), ddp.world_size()
        self.streams = shard_columns(batchify(corpus.train, cfg.batch_size), rank, world)
        self.streams = self.streams.to(device)  # (N, B / world)
        self.carried: State | None = None
        self._layouts: dict[int, list[tuple[int, int]]] = {}

    def layout(self, epoch: int) -> list[tuple[int, int]]:
        if epoch not in self._layouts:
            cfg = self.cfg
            self._layouts[epoch] = epoch_layout(
                self.streams.size(0), cfg.bptt, cfg.random_bptt, cfg.seed, epoch
            )
        return self._layouts[epoch]

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self.layout(epoch))

    def batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        if start == 0:
            self.carried = None  # each epoch starts from a zero state
        for first, length in self.layout(epoch)[start:]:
            yield get_batch(self.streams, first, length)  # (T, B) inputs and targets

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, int]:
        x, y = batch
        with autocast(self.device, self.cfg.precision):
            loss, state = model(x, detach_state(self.carried), targets=y)  # mean nats/token
        self.carried = state
        return loss, y.numel()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        cfg = self.cfg
        loss = evaluate(
            model,
            self.corpus.valid,
            cfg.eval_batch_size,
            cfg.bptt,
            cfg.valid_tokens,
            cfg.precision,
        )
        return {"loss": loss}

    def describe(self, scores: dict[str, float]) -> str:
        return f"validation loss {describe_loss(scores['loss'], self.cfg.level)}"

    def describe_loss(self, loss: float) -> str:
        if self.cfg.level == "char":
            return f"loss {loss:.3f} bpc {loss / LOG2:.3g}"
        return f"loss {loss:.3f} ppl {math.exp(min(loss, 700)):.3g}"

    def meta(self) -> dict[str, Any]:
        return {"vocab": self.corpus.vocab.to_json(), "data_sha256": self.corpus.fingerprint()}

    def state(self) -> tuple[dict[str, Tensor], Any]:
        """The carried state of every stream, gathered from all processes: (L·D, B, H) each."""
        carried = self.carried
        parts = () if carried is None else ((carried,) if isinstance(carried, Tensor) else carried)
        full = [ddp.gather(s.detach(), dim=1) for s in parts]
        return {f"state.{i}": s for i, s in enumerate(full)}, {"parts": len(full)}

    def load_state(self, tensors: dict[str, Tensor], data: Any) -> None:
        carried = [tensors[f"state.{i}"] for i in range((data or {}).get("parts", 0))]
        if not carried:
            self.carried = None
            return
        rank, world = ddp.rank(), ddp.world_size()
        per = carried[0].size(1) // world
        mine = tuple(s[:, rank * per : (rank + 1) * per].to(self.device) for s in carried)
        self.carried = mine[0] if len(mine) == 1 else mine


def load_lm(path: str | os.PathLike) -> tuple[RNNLM, Vocab, LMConfig, dict]:
    """The model, vocabulary, settings and metadata of a language-model checkpoint."""
    tensors, meta = load_checkpoint(path, kind=KIND)
    cfg = config_from_dict(LMConfig, meta["config"])
    vocab = Vocab.from_json(meta["vocab"])
    model = RNNLM(len(vocab), cfg)
    load_weights(model, tensors, path)
    return model, vocab, cfg, {"tensors": tensors, **meta}


def train_lm(
    cfg: LMConfig | None,
    run: str | os.PathLike,
    *,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    on_checkpoint: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train a language model into folder ``run`` (new), or continue the run there.

    Args:
        cfg: the settings of a new run (ignored when resuming).
        resume: continue from ``run/checkpoint.safetensors`` with its own settings;
            ``overrides`` may change only how long and how often (``LMConfig.RESUMABLE``).
        on_checkpoint: called with the step after each checkpoint is on disk.

    Returns the last cursor, the reason it stopped and the last validation loss, as a dict.
    """
    with open_run(run, resume=resume, kind=KIND) as folder:
        cfg = folder.settings(LMConfig, cfg, overrides)
        device = setup(cfg)
        corpus = load_corpus(cfg.data, cfg.level, cfg.valid_data, cfg.valid_fraction)
        if resume:
            _check_same_data(corpus, folder.meta, cfg, Path(run))
        model = RNNLM(len(corpus.vocab), cfg).to(device)
        job = LMJob(corpus, cfg, device)
        return fit(model, job, cfg, folder, progress=progress, on_checkpoint=on_checkpoint)


def _check_same_data(corpus: Corpus, meta: dict, cfg: LMConfig, run: Path) -> None:
    if corpus.vocab != Vocab.from_json(meta["vocab"]):
        raise ValueError(
            f"vocabulary mismatch: {cfg.data} now gives {len(corpus.vocab)} "
            f"{cfg.level}s but {run} was trained on {len(meta['vocab']['tokens'])}"
        )
    if corpus.fingerprint() != meta["data_sha256"]:
        raise ValueError(f"the training data {cfg.data} changed since {run} was trained")


__all__ = ["LMJob", "autocast", "describe_loss", "evaluate", "load_lm", "train_lm"]
