"""Training the NTM (or its LSTM baseline) on a memory task through the shared loop
(:func:`carousel.train.fit`).

The :class:`NTMJob` is all that is particular to the memory tasks: an endless seeded stream
of batches (batch i of epoch e is batch e·steps + i of the stream ``seed``, so a run resumes
from its cursor alone), the loss (mean binary cross-entropy per target bit), and the
evaluation on a fixed set of sequences at the training lengths: the paper's cost in bits per
sequence and the bit errors per sequence (outputs thresholded at 0.5).

:func:`evaluate_lengths` scores a trained model at other lengths (``carousel eval RUN
--length 20,40,60,80,120``), :func:`trace` runs one sequence and keeps the read and write
weightings (``carousel plot RUN``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from carousel.checkpoint import load_checkpoint
from carousel.config import config_from_dict
from carousel.data.memory_tasks import MemoryBatch, get_memory_task, memory_batch
from carousel.ntm.config import NTMConfig
from carousel.ntm.metrics import bce_loss, bits_per_sequence, sequence_bit_errors
from carousel.ntm.model import NTM, LSTMBaseline
from carousel.train import LOG2, Job, fit, load_weights, open_run, setup

KIND = "ntm"
EVAL_SEED_OFFSET = 1_000_003  # the evaluation set's stream: never a training stream


def build_model(cfg: NTMConfig) -> nn.Module:
    """The NTM, or the LSTM baseline, that ``cfg`` describes, for its task's sizes."""
    spec = get_memory_task(cfg.task)
    if cfg.model == "lstm":
        return LSTMBaseline(
            spec.input_size,
            spec.output_size,
            cell=cfg.lstm_cell,
            hidden_size=cfg.lstm_size,
            num_layers=cfg.lstm_layers,
        )
    return NTM(
        spec.input_size,
        spec.output_size,
        controller=cfg.controller,
        controller_size=cfg.controller_size,
        controller_layers=cfg.controller_layers,
        memory_size=cfg.memory_size,
        memory_width=cfg.memory_width,
        read_heads=cfg.read_heads,
        write_heads=cfg.write_heads,
        shift_range=cfg.shift_range,
        memory_init=cfg.memory_init,
        clip=cfg.head_clip,
    )


def _to(batch: MemoryBatch, device: torch.device) -> MemoryBatch:
    return MemoryBatch(*(t.to(device) for t in (batch.x, batch.target, batch.mask, batch.lengths)))


def score(
    model: nn.Module,
    task: str,
    sequences: int,
    batch_size: int,
    seed: int,
    lengths: tuple[int, int],
) -> dict[str, float]:
    """Bits per sequence, bit errors per sequence, the loss (nats per bit) and the fraction
    of sequences with no wrong bit, over ``sequences`` sequences of the stream ``seed``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bits = errors = loss = 0.0
    perfect = bits_scored = done = 0
    with torch.no_grad():
        index = 0
        while done < sequences:
            B = min(batch_size, sequences - done)
            b = _to(memory_batch(task, B, seed, index, *lengths), device)
            logits, _ = model(b.x)
            bits += bits_per_sequence(logits, b.target, b.mask) * B
            wrong = sequence_bit_errors(logits, b.target, b.mask)
            errors += float(wrong.sum())
            perfect += int((wrong == 0).sum())
            n = int(b.mask.sum()) * b.target.size(-1)
            loss += float(bce_loss(logits, b.target, b.mask)) * n
            bits_scored += n
            done += B
            index += 1
    model.train(was_training)
    return {
        "loss": loss / bits_scored,
        "bits_per_sequence": bits / done,
        "bit_errors": errors / done,
        "perfect": perfect / done,
    }


class NTMJob(Job):
    """A memory task for the shared loop: seeded batches, BCE loss, bit-error evaluation."""

    kind = KIND
    # the paper's cost selects the kept weights: unlike bit errors, which sit at 0 from the
    # first solved evaluation on, it still tells a later, surer copy from an early one
    metric = "bits_per_sequence"
    keep_best = True  # an NTM can lose a solved task and find it again (EXPERIMENTS.md)
    unit = "nats/bit"
    item = "seq"

    def __init__(self, cfg: NTMConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device

    def steps_in_epoch(self, epoch: int) -> int:
        return self.cfg.steps_per_epoch

    def batches(self, epoch: int, start: int) -> Iterator[MemoryBatch]:
        cfg = self.cfg
        steps = cfg.steps_per_epoch
        for i in range(start, steps):
            batch = memory_batch(
                cfg.task, cfg.batch_size, cfg.seed, epoch * steps + i, *cfg.lengths
            )
            yield _to(batch, self.device)

    def loss(self, model: nn.Module, batch: MemoryBatch) -> tuple[Tensor, int]:
        logits, _ = model(batch.x)
        return bce_loss(logits, batch.target, batch.mask), batch.x.size(1)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        cfg = self.cfg
        seed = cfg.seed + EVAL_SEED_OFFSET
        return score(model, cfg.task, cfg.eval_sequences, cfg.eval_batch_size, seed, cfg.lengths)

    def finished(self, scores: dict[str, float]) -> str | None:
        below = self.cfg.solved_below
        return "solved" if below and scores["bit_errors"] < below else None

    def describe(self, scores: dict[str, float]) -> str:
        return (
            f"{scores['bits_per_sequence']:.3f} bits/seq, {scores['bit_errors']:.3f} bit "
            f"errors/seq, {100 * scores['perfect']:.1f} % perfect"
        )

    def describe_loss(self, loss: float) -> str:
        return f"loss {loss:.4f} ({loss / LOG2:.4f} bits/bit)"

    def meta(self) -> dict[str, Any]:
        return {"task": self.cfg.task}


def load_ntm(path: str | os.PathLike) -> tuple[nn.Module, NTMConfig, dict]:
    """The model (its best evaluation's weights) and settings of an NTM job's checkpoint,
    and its metadata."""
    tensors, meta = load_checkpoint(path, kind=KIND)
    cfg = config_from_dict(NTMConfig, meta["config"])
    model = build_model(cfg)
    load_weights(model, tensors, path, best=True)
    model.eval()
    return model, cfg, meta


def evaluate_lengths(
    model: nn.Module,
    cfg: NTMConfig,
    lengths: list[int],
    sequences: int = 256,
    batch_size: int = 32,
    seed: int | None = None,
) -> list[dict[str, float]]:
    """Scores at each fixed length (copy: vectors; associative recall: items), on sequences
    no training batch held."""
    seed = cfg.seed + 2 * EVAL_SEED_OFFSET if seed is None else seed
    return [
        {"length": L, **score(model, cfg.task, sequences, batch_size, seed, (L, L))}
        for L in lengths
    ]


def trace(model: NTM, cfg: NTMConfig, length: int, seed: int = 0) -> dict[str, Tensor]:
    """One sequence of ``length``: inputs (T, I), target and outputs (T, O) (outputs as
    probabilities), the mask (T,), and the weightings (T, Hd, N) of every head."""
    if not isinstance(model, NTM):
        raise ValueError("only an NTM has memory weightings to plot; this run is the LSTM")
    b = memory_batch(cfg.task, 1, seed + 3 * EVAL_SEED_OFFSET, 0, length, length)
    with torch.no_grad():
        logits, _, weights = model(b.x, trace=True)
    return {
        "x": b.x[:, 0],
        "target": b.target[:, 0],
        "mask": b.mask[:, 0],
        "output": torch.sigmoid(logits[:, 0]),
        "weights": weights[:, 0],
        "read_heads": torch.tensor(model.R),
    }


def train_ntm(
    cfg: NTMConfig | None,
    run: str | os.PathLike,
    *,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    on_checkpoint: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train an NTM (or the LSTM baseline) into folder ``run`` (new), or continue the run.

    Returns the loop's summary: the last cursor, why it stopped and the last scores.
    """
    with open_run(run, resume=resume, kind=KIND) as folder:
        cfg = folder.settings(NTMConfig, cfg, overrides)
        device = setup(cfg)
        model = build_model(cfg).to(device)
        return fit(
            model, NTMJob(cfg, device), cfg, folder, progress=progress, on_checkpoint=on_checkpoint
        )


__all__ = [
    "NTMJob",
    "build_model",
    "evaluate_lengths",
    "load_ntm",
    "score",
    "trace",
    "train_ntm",
]
