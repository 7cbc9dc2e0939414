"""``carousel lag``: train a recurrent layer on a long-time-lag task until the paper's
criterion holds, or a budget of training sequences is spent.

Training uses Adam on minibatches (the 1997 paper used online learning); every training
sequence is counted.  The stopping rule follows the paper's: once the most recent ``window``
training sequences were all processed correctly (judged on the prediction made before the
update), a fixed test set of 2,560 sequences is run; the task is solved when every test
sequence is correct (:mod:`carousel.lag.criteria`).  Shapes: T, B, I, H as in :mod:`carousel`.

``input_gate_bias`` / ``output_gate_bias`` (and ``forget_bias``) start a gate's bias at a given
value, the 1997 paper's remedy for internal state drift in the cell without a forget gate
(``lstm1997``): with −2 for both it solves temporal order 6a on 5 of 5 seeds; with
torch's default initialisation at H = 32 it solved 1 of 3 (EXPERIMENTS.md, "Long time lags").
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections import deque
from pathlib import Path

import torch
from torch import Tensor, nn

from carousel.cells import CELLS, get_cell
from carousel.cells.lstm import GATE_BIASES
from carousel.config import check_at_least
from carousel.data.tasks import MIN_T, TASKS, Batch, get_task
from carousel.lag.criteria import correct
from carousel.layers import make_layer

EVAL_CHUNK = 512


@dataclasses.dataclass(frozen=True)
class LagConfig:
    """Settings of ``carousel lag`` (preset ``lag``; the ``sweep_*`` fields apply to
    ``carousel lag --sweep``, preset ``lag-sweep``)."""

    task: str = "adding"
    T: int = 100
    cell: str = "lstm1997"
    hidden_size: int = 32
    forget_bias: float | None = None  # initial forget-gate bias (cells with a forget gate)
    input_gate_bias: float | None = None  # initial input-gate bias; unset: the layer's init
    output_gate_bias: float | None = None  # initial output-gate bias; unset: the layer's init
    batch_size: int = 32
    lr: float = 0.01
    clip: float = 1.0  # gradient-norm clipping; 0 switches it off
    budget: int = 500_000  # training sequences before giving up
    window: int = 2560  # recent training sequences that must all be correct before a test
    test_size: int = 2560
    seed: int = 0
    threads: int = 1
    log_every: int = 10_000  # training sequences between progress lines; 0: quiet
    out: str | None = None  # JSON file for the result (``--sweep``: a folder)
    sweep_tasks: str = "adding"
    sweep_T: str = "10,20,50"
    sweep_cells: str = "rnn,lstm1997,lstm,peephole,gru"
    sweep_seeds: int = 3

    def cell_options(self) -> dict[str, float]:
        """The initial gate biases that are set, as the cell's options (``LSTMOptions``)."""
        return {k: getattr(self, k) for k in BIAS_FIELDS if getattr(self, k) is not None}

    def validate(self) -> None:
        get_task(self.task)
        get_cell(self.cell)  # raises for an unknown cell
        if self.T < MIN_T:
            raise ValueError(f"T must be at least {MIN_T}; got {self.T}")
        order = get_cell(self.cell).gates()
        for name in ("input_gate_bias", "output_gate_bias"):
            if getattr(self, name) is not None and BIAS_FIELDS[name] not in order:
                raise ValueError(
                    f"{name} needs a cell with gate {BIAS_FIELDS[name]!r}; cell {self.cell!r} "
                    f"has blocks {'/'.join(order)}"
                )
        get_cell(self.cell, **self.cell_options())  # e.g. forget_bias needs a forget gate
        check_at_least(
            self,
            1,
            "hidden_size",
            "batch_size",
            "budget",
            "window",
            "test_size",
            "threads",
            "sweep_seeds",
        )
        if not self.lr > 0:
            raise ValueError(f"lr must be positive; got {self.lr}")
        if self.clip < 0 or self.log_every < 0:
            raise ValueError(f"clip and log_every must be ≥ 0; got {self.clip}, {self.log_every}")
        for name in sweep_lists(self)[0]:
            get_task(name)
        for cell in sweep_lists(self)[2]:
            if cell not in CELLS:
                raise ValueError(f"unknown cell {cell!r} in sweep_cells; known: {', '.join(CELLS)}")


def sweep_lists(cfg: LagConfig) -> tuple[list[str], list[int], list[str]]:
    """The sweep's tasks, lengths T and cells from their comma-separated fields."""
    tasks = [t.strip() for t in cfg.sweep_tasks.split(",") if t.strip()]
    cells = [c.strip() for c in cfg.sweep_cells.split(",") if c.strip()]
    try:
        lengths = [int(t) for t in cfg.sweep_T.split(",") if t.strip()]
    except ValueError as err:
        raise ValueError(f"sweep_T must be comma-separated integers; got {cfg.sweep_T!r}") from err
    if not tasks or not cells or not lengths:
        raise ValueError("sweep_tasks, sweep_T and sweep_cells must each name at least one")
    bad = [t for t in lengths if t < MIN_T]
    if bad:
        raise ValueError(f"sweep_T values must be at least {MIN_T}; got {bad}")
    return tasks, lengths, cells


#: the config fields that set an initial gate bias (LSTMOptions' own), and the gate of each
BIAS_FIELDS = GATE_BIASES


class LagModel(nn.Module):
    """A recurrent layer of ``cell`` and a linear read-out of its last output(s)."""

    def __init__(
        self,
        task: str,
        cell: str,
        hidden_size: int,
        **options: float,
    ) -> None:
        super().__init__()
        self.spec = get_task(task)
        # the cell's options: initial gate biases (forget_bias, input_gate_bias, ...)
        self.rnn = make_layer(cell, self.spec.input_size, hidden_size, **options)
        self.head = nn.Linear(hidden_size, self.spec.num_outputs)

    def forward(self, batch: Batch) -> Tensor:
        """Raw outputs: regression (B,); classification logits (B, C); copy (k, B, C)."""
        if self.spec.kind == "sequence":
            out, _ = self.rnn(batch.x)  # (T, B, H)
            return self.head(out[-batch.target.size(0) :])  # (k, B, C)
        _, state = self.rnn(batch.x, lengths=batch.lengths)
        h = state[0] if isinstance(state, tuple) else state  # (1, B, H) at each last real step
        y = self.head(h[-1])  # (B, C)
        return y.squeeze(1) if self.spec.kind == "regression" else y

    def loss(self, raw: Tensor, batch: Batch) -> Tensor:
        if self.spec.kind == "regression":
            return nn.functional.mse_loss(raw, batch.target)
        return nn.functional.cross_entropy(raw.reshape(-1, raw.size(-1)), batch.target.reshape(-1))

    def prediction(self, raw: Tensor) -> Tensor:
        """What the criterion judges: the value, or the class probabilities."""
        if self.spec.kind == "classification":
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


@torch.no_grad()
def evaluate(model: LagModel, task: str, test: list[Batch]) -> tuple[int, float, float]:
    """(wrong sequences, mean absolute error, max absolute error) on the test batches."""
    model.eval()
    wrong, errs = 0, []
    for batch in test:
        pred = model.prediction(model(batch))
        wrong += int((~correct(task, pred, batch.target)).sum())
        errs.append(_abs_error(model.spec.kind, pred, batch.target).flatten())
    model.train()
    err = torch.cat(errs)
    return wrong, float(err.mean()), float(err.max())


def _abs_error(kind: str, pred: Tensor, target: Tensor) -> Tensor:
    if kind == "regression":
        return (pred - target).abs()
    if kind == "classification":
        return (pred - nn.functional.one_hot(target, pred.size(-1)).to(pred.dtype)).abs()
    return (torch.softmax(pred, -1) - nn.functional.one_hot(target, pred.size(-1))).abs()


def run_lag(cfg: LagConfig, log=print) -> LagResult:
    """Train ``cfg.cell`` on ``cfg.task`` until solved or ``cfg.budget`` sequences."""
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = LagModel(cfg.task, cfg.cell, cfg.hidden_size, **cfg.cell_options())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    test = build_test_set(cfg.task, cfg.T, cfg.test_size, cfg.seed)
    make = model.spec.make
    recent: deque[bool] = deque(maxlen=cfg.window)
    seen, tests_run, solved = 0, 0, False
    wrong, err, max_err = -1, math.nan, math.nan
    losses: list[float] = []
    next_log = cfg.log_every
    start = time.perf_counter()
    while seen < cfg.budget:
        B = min(cfg.batch_size, cfg.budget - seen)
        batch = make(B, cfg.T, gen)
        raw = model(batch)
        loss = model.loss(raw, batch)
        opt.zero_grad()
        loss.backward()
        if cfg.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        seen += B
        losses.append(loss.item())
        recent.extend(correct(cfg.task, model.prediction(raw.detach()), batch.target).tolist())
        if len(recent) == cfg.window and all(recent):
            wrong, err, max_err = evaluate(model, cfg.task, test)
            tests_run += 1
            log(f"  test after {seen:,} sequences: {wrong} of {cfg.test_size} wrong")
            if wrong == 0:
                solved = True
                break
            recent.clear()
        if cfg.log_every and seen >= next_log:
            next_log += cfg.log_every
            log(
                f"{seen:>9,} sequences  loss {sum(losses) / len(losses):.4g}  "
                f"recent correct {sum(recent) / max(len(recent), 1):.3f}  "
                f"{time.perf_counter() - start:.0f}s"
            )
            losses.clear()
    if not solved:
        wrong, err, max_err = evaluate(model, cfg.task, test)
        tests_run += 1
    wall = time.perf_counter() - start
    result = LagResult(
        cfg.task,
        cfg.T,
        cfg.cell,
        cfg.seed,
        solved,
        seen,
        wrong,
        err,
        max_err,
        tests_run,
        wall,
        dataclasses.asdict(cfg),
    )
    return result


def describe(r: LagResult) -> str:
    """The one-paragraph verdict ``carousel lag`` prints."""
    head = f"{r.task} T={r.T} cell={r.cell} seed={r.seed}: "
    if r.solved:
        head += f"solved after {r.sequences:,} training sequences"
    else:
        head += f"not solved within the budget of {r.sequences:,} training sequences"
    return (
        f"{head}\n  test: {r.test_wrong} of {r.config['test_size']} sequences wrong, "
        f"mean abs error {r.test_error:.4f}, max {r.test_max_error:.4f}; "
        f"wall time {r.wall_s:.1f}s"
    )


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it an ordinary file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def result_json(r: LagResult) -> str:
    return json.dumps(dataclasses.asdict(r), indent=2) + "\n"


__all__ = ["TASKS", "LagConfig", "LagModel", "LagResult", "describe", "run_lag"]
