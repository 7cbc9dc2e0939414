"""``carousel lag``: train a recurrent layer on a long-time-lag task until the paper's
criterion holds, or a budget of training sequences is spent, through the shared loop
(:func:`carousel.train.fit`).

Training uses Adam on minibatches (the 1997 paper used online learning); every training
sequence is counted.  The stopping rule follows the paper's: once the most recent ``window``
training sequences were all processed correctly (judged on the prediction made before the
update), a fixed test set of 2,560 sequences is run; the task is solved when every test
sequence is correct (:mod:`carousel.lag.criteria`).  Shapes: T, B, I, H as in :mod:`carousel`.

:class:`LagJob` is what is particular to the task: the seeded stream of training batches (one
``torch.Generator``, checkpointed, so a resumed run draws the same batches), the criterion's
window (checkpointed too), the test and the verdict.  Every run has a run folder
(``checkpoint.safetensors``, ``metrics.jsonl``, ``curves.png``, ``result.json``).

``input_gate_bias`` / ``output_gate_bias`` (and ``forget_bias``) start a gate's bias at a given
value, the 1997 paper's remedy for internal state drift in the cell without a forget gate
(``lstm1997``): with −2 for both it solves temporal order 6a on 5 of 5 seeds; with
torch's default initialisation at H = 32 it solved 1 of 3 (EXPERIMENTS.md, "Long time lags").
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from carousel.checkpoint import load_checkpoint
from carousel.config import config_from_dict, config_to_dict
from carousel.data.tasks import TASKS, Batch, get_task
from carousel.io import atomic_write
from carousel.lag.config import LagConfig
from carousel.lag.criteria import correct
from carousel.layers import make_layer
from carousel.train import Job, fit, load_weights, open_run, plot_metrics, setup

KIND = "lag"
EVAL_CHUNK = 512


class LagModel(nn.Module):
    """A recurrent layer of ``cell`` and a linear read-out of its last output(s)."""

    def __init__(self, task: str, cell: str, hidden_size: int, **options: float) -> None:
        super().__init__()
        self.spec = get_task(task)
        # the cell's options: initial gate biases (forget_bias, input_gate_bias, ...)
        self.rnn = make_layer(cell, self.spec.input_size, hidden_size, **options)
        self.head = nn.Linear(hidden_size, self.spec.num_outputs)

    def forward(self, batch: Batch) -> Tensor:
        """Raw outputs: regression (B,); classification logits (B, C); copy (k, B, C)."""
        if self.spec.output == "sequence":
            out, _ = self.rnn(batch.x)  # (T, B, H)
            return self.head(out[-batch.target.size(0) :])  # (k, B, C)
        _, state = self.rnn(batch.x, lengths=batch.lengths)
        h = state[0] if isinstance(state, tuple) else state  # (1, B, H) at each last real step
        y = self.head(h[-1])  # (B, C)
        return y.squeeze(1) if self.spec.output == "regression" else y

    def loss(self, raw: Tensor, batch: Batch) -> Tensor:
        if self.spec.output == "regression":
            return nn.functional.mse_loss(raw, batch.target)
        return nn.functional.cross_entropy(raw.reshape(-1, raw.size(-1)), batch.target.reshape(-1))

    def prediction(self, raw: Tensor) -> Tensor:
        """What the criterion judges: the value, or the class probabilities."""
        if self.spec.output == "classification":
            return torch.softmax(raw, dim=-1)
        return raw


@dataclasses.dataclass(frozen=True)
class LagResult:
    task: str
    T: int
    cell: str
    seed: int
    solved: bool
    sequences: int  # training sequences seen (until solved, or the whole budget)
    test_wrong: int  # test sequences processed incorrectly at the last test (−1: no test run)
    test_error: float  # mean absolute error at the last test (outputs vs targets)
    test_max_error: float  # the largest absolute error at the last test
    tests_run: int
    wall_s: float
    config: dict


def build_test_set(task: str, T: int, size: int, seed: int) -> list[Batch]:
    """The fixed test sequences, in chunks, from a stream separate from training's."""
    gen = torch.Generator().manual_seed(seed + 1_000_003)
    make = get_task(task).make
    return [make(min(EVAL_CHUNK, size - i), T, gen) for i in range(0, size, EVAL_CHUNK)]


def _to(batch: Batch, device: torch.device) -> Batch:
    return Batch(batch.x.to(device), batch.lengths.to(device), batch.target.to(device))


@torch.no_grad()
def evaluate(model: LagModel, task: str, test: list[Batch]) -> dict[str, float]:
    """Scores of ``model`` on the test batches: ``wrong`` sequences, mean and max absolute
    ``error``, and the mean ``loss`` per sequence."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    wrong, errs, loss, count = 0, [], 0.0, 0
    for batch in test:
        batch = _to(batch, device)
        raw = model(batch)
        pred = model.prediction(raw)
        wrong += int((~correct(task, pred, batch.target)).sum())
        errs.append(_abs_error(model.spec.output, pred, batch.target).flatten())
        n = batch.x.size(1)
        loss, count = loss + float(model.loss(raw, batch)) * n, count + n
    model.train(was_training)
    err = torch.cat(errs)
    return {
        "loss": loss / count,
        "wrong": wrong,
        "error": float(err.mean()),
        "max_error": float(err.max()),
    }


def _abs_error(output: str, pred: Tensor, target: Tensor) -> Tensor:
    if output == "regression":
        return (pred - target).abs()
    if output == "classification":
        return (pred - nn.functional.one_hot(target, pred.size(-1)).to(pred.dtype)).abs()
    return (torch.softmax(pred, -1) - nn.functional.one_hot(target, pred.size(-1))).abs()


class LagJob(Job):
    """A long-time-lag task for the shared loop: one epoch of ``budget`` sequences in batches
    drawn from one seeded generator; the paper's criterion decides when to test and when the
    task is solved."""

    kind = KIND
    metric = "wrong"
    item = "seq"
    COUNTERS = ("seen", "tests", "test_seconds", "last")  # kept in the checkpoint

    def __init__(self, cfg: LagConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.spec = get_task(cfg.task)
        self.unit = "MSE" if self.spec.output == "regression" else "nats"
        self.test = build_test_set(cfg.task, cfg.T, cfg.test_size, cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.recent: deque[bool] = deque(maxlen=cfg.window)  # judged before their update
        self.seen = 0  # training sequences so far
        self.due = False  # the window asked for the evaluation under way
        self.tests = 0  # the criterion's tests so far
        self.test_seconds = 0.0
        self.last: dict[str, float] = {}  # the last evaluation's scores

    def steps_in_epoch(self, epoch: int) -> int:
        return -(-self.cfg.budget // self.cfg.batch_size)

    def batches(self, epoch: int, start: int) -> Iterator[Batch]:
        # the generator's state is the stream's cursor: a resumed run restores it
        cfg = self.cfg
        for k in range(start, self.steps_in_epoch(epoch)):
            yield self.spec.make(
                min(cfg.batch_size, cfg.budget - k * cfg.batch_size), cfg.T, self.gen
            )

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        batch = _to(batch, self.device)
        raw = model(batch)
        judged = correct(self.cfg.task, model.prediction(raw.detach()), batch.target)
        self.recent.extend(judged.tolist())
        self.seen += batch.x.size(1)
        return model.loss(raw, batch), batch.x.size(1)

    def wants_evaluation(self) -> bool:
        self.due = len(self.recent) == self.cfg.window and all(self.recent)
        return self.due

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        start = time.perf_counter()
        scores = evaluate(model, self.cfg.task, self.test)
        self.test_seconds += time.perf_counter() - start
        return scores

    def finished(self, scores: dict[str, float]) -> str | None:
        """Solved when a test the window asked for has no wrong sequence; other evaluations
        (the budget's end, Ctrl-C, ``eval_every``) only report."""
        self.last = scores
        if not self.due:
            return None
        self.due, self.tests = False, self.tests + 1
        if scores["wrong"] == 0:
            return "solved"
        self.recent.clear()
        return None

    def describe(self, scores: dict[str, float]) -> str:
        return (
            f"test after {self.seen:,} sequences: {scores['wrong']} of {self.cfg.test_size} "
            f"wrong (mean abs error {scores['error']:.4f}, max {scores['max_error']:.4f})"
        )

    def describe_loss(self, loss: float) -> str:
        share = sum(self.recent) / max(len(self.recent), 1)
        return f"loss {loss:.4g} recent correct {share:.3f}"

    def state(self) -> tuple[dict[str, Tensor], Any]:
        recent = torch.tensor(list(self.recent), dtype=torch.bool)
        return {"generator": self.gen.get_state(), "recent": recent}, {
            k: getattr(self, k) for k in self.COUNTERS
        }

    def load_state(self, tensors: dict[str, Tensor], data: Any) -> None:
        self.gen.set_state(tensors["generator"])
        self.recent.extend(tensors["recent"].tolist())
        for k in self.COUNTERS:
            setattr(self, k, data[k])

    def result(self, summary: dict[str, Any]) -> LagResult:
        """The run's verdict from :func:`fit`'s summary and the last test."""
        cfg, last = self.cfg, self.last
        solved = summary["reason"] == "solved"
        return LagResult(
            cfg.task,
            cfg.T,
            cfg.cell,
            cfg.seed,
            solved,
            summary["seen"],
            int(last.get("wrong", -1)),
            last.get("error", math.nan),
            last.get("max_error", math.nan),
            self.tests + (not solved),  # the criterion's tests, and the final one
            summary["elapsed"] + self.test_seconds,
            config_to_dict(cfg),
        )


def run_lag(
    cfg: LagConfig | None,
    run: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    progress: bool = False,
    on_checkpoint: Callable[[int], None] | None = None,
) -> LagResult:
    """Train ``cfg.cell`` on ``cfg.task`` until solved or ``cfg.budget`` sequences, into run
    folder ``run`` (a temporary one, removed afterwards, when None), or continue the run there
    (``resume``; ``overrides`` may change only ``LagConfig.RESUMABLE`` fields).  Writes
    ``result.json`` and ``curves.png`` into the run folder unless it had nothing to do."""
    with contextlib.ExitStack() as stack:
        keep = run is not None
        if not keep:
            run = stack.enter_context(tempfile.TemporaryDirectory(prefix="carousel-lag-"))
        folder = stack.enter_context(open_run(run, resume=resume, kind=KIND))
        cfg = folder.settings(LagConfig, cfg, overrides)
        device = setup(cfg)
        model = LagModel(cfg.task, cfg.cell, cfg.hidden_size, **cfg.cell_options()).to(device)
        if cfg.init_from and not resume:  # a resumed run starts from its own checkpoint
            model.load_state_dict(start_weights(cfg))
        job = LagJob(cfg, device)
        summary = fit(model, job, cfg, folder, progress=progress, on_checkpoint=on_checkpoint)
        result = job.result(summary)
        if keep and summary["scores"]:  # no scores: a finished run, left as it was
            atomic_write(folder.root / "result.json", result_json(result))
            plot_metrics(folder.root)
    return result


def start_weights(cfg: LagConfig) -> dict[str, Tensor]:
    """The weights of run ``cfg.init_from``, checked to be of ``cfg``'s architecture."""
    model, other, _ = load_lag(cfg.init_from)
    for name in LagConfig.ARCHITECTURE:
        if getattr(other, name) != getattr(cfg, name):
            raise ValueError(
                f"init_from {cfg.init_from}: its {name} is {getattr(other, name)!r}, this "
                f"run's is {getattr(cfg, name)!r}; a run can start only from the same task, "
                f"cell and hidden size"
            )
    return model.state_dict()


def load_lag(path: str | os.PathLike) -> tuple[LagModel, LagConfig, dict]:
    """The model, settings and metadata of a lag checkpoint (file or run folder)."""
    tensors, meta = load_checkpoint(path, kind=KIND)
    cfg = config_from_dict(LagConfig, meta["config"])
    model = LagModel(cfg.task, cfg.cell, cfg.hidden_size, **cfg.cell_options())
    load_weights(model, tensors, path)
    return model, cfg, meta


def describe(r: LagResult) -> str:
    """The one-paragraph verdict ``carousel lag`` prints."""
    head = f"{r.task} T={r.T} cell={r.cell} seed={r.seed}: "
    budget = r.config["budget"]
    if r.solved:
        head += f"solved after {r.sequences:,} training sequences"
    elif r.sequences < budget:
        head += f"not solved; stopped after {r.sequences:,} of {budget:,} training sequences"
    else:
        head += f"not solved within the budget of {r.sequences:,} training sequences"
    return (
        f"{head}\n  test: {r.test_wrong} of {r.config['test_size']} sequences wrong, "
        f"mean abs error {r.test_error:.4f}, max {r.test_max_error:.4f}; "
        f"wall time {r.wall_s:.1f}s"
    )


def result_json(r: LagResult) -> str:
    return json.dumps(dataclasses.asdict(r), indent=2) + "\n"


__all__ = [
    "KIND",
    "TASKS",
    "LagConfig",
    "LagJob",
    "LagModel",
    "LagResult",
    "describe",
    "load_lag",
    "run_lag",
]
