"""The one training loop: every job (``lm``, ``lag``, ``tagging``, ``handwriting``, ``ntm``)
trains through :func:`fit`, and no other module calls ``optimizer.step()``.

A job hands the loop four things and owns nothing else of training:

- a **model** (an ``nn.Module``);
- a **job** object (:class:`Job`): a resumable stream of batches (``batches(epoch, start)``),
  ``loss(model, batch)`` → (mean loss, items trained), ``evaluate(model)`` → scores, and
  optionally the state it carries between batches (an LM's recurrent state), checkpointed
  with the run;
- its **settings**, a dataclass subclassing :class:`TrainSettings` (the loop's fields:
  optimizer, learning-rate schedule, clipping, epochs, limits, logging and checkpoint
  intervals, early stopping, seed, device, threads);
- a **run folder** (:class:`Run`), locked for the life of the training.

The loop owns everything around them: torch.optim, clipping, the progress display,
``metrics.jsonl``, ``curves.png``, atomic checkpoints that resume bit-identically (model,
optimizer, every RNG, data cursor, the job's carried state, the best model so far), Ctrl-C
(finish the step, evaluate, save, exit 130), best-model selection and early stopping,
``max_steps`` / ``max_minutes``, divergence (a NaN/inf loss or gradient, or a loss far above
those of its first steps, stops with one line and keeps the last good checkpoint) and data-parallel
training under torchrun (DistributedDataParallel; the job shards its own stream).

A job's entry point reads like this (see ``carousel.lm.train``)::

    with open_run(folder, resume=resume) as run:
        cfg = run.settings(LMConfig, cfg, overrides)      # a resumed run keeps its own
        device = setup(cfg)                               # threads, device, torchrun, seed
        model = RNNLM(...).to(device)
        return fit(model, LMJob(...), cfg, run)
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import fcntl
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn
from tqdm import tqdm

from carousel import distributed as ddp
from carousel.checkpoint import flatten_state, load_checkpoint, save_checkpoint, unflatten_state
from carousel.config import check_at_least, config_from_dict, config_to_dict
from carousel.io import atomic_write, pyplot, save_figure

LOG2 = math.log(2)
S = TypeVar("S", bound="TrainSettings")


class TrainingDiverged(ValueError):
    """The loss became NaN, infinite or far above those of the first steps; the last good
    checkpoint is kept."""


class RunInUse(ValueError):
    """Another process is training in this run folder."""


# ---------------------------------------------------------------------------- settings
OPTIMIZERS = ("sgd", "adam", "rmsprop")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """The settings the loop reads; every job's config subclasses this (and may change the
    defaults).  Any field is a ``--field-name`` option of ``carousel train JOB``."""

    optimizer: str = "adam"  # "sgd", "adam" or "rmsprop" (torch.optim)
    lr: float = 1e-3
    momentum: float = 0.0  # SGD's and RMSProp's momentum (Adam has its betas)
    rmsprop_alpha: float = 0.99  # RMSProp's smoothing of the squared gradient (torch's alpha)
    optimizer_eps: float = 1e-8  # Adam's and RMSProp's ε, added to the root of the squares
    lr_schedule: str = "step"  # "step", "cosine" or "plateau": see lr_at
    lr_decay: float = 1.0  # step: × this after each epoch (plateau: after each bad evaluation)
    decay_after: int = 0  # step: ... once this many epochs are done
    warmup_steps: int = 0  # the learning rate rises linearly over this many first steps
    weight_decay: float = 0.0
    clip: float = 5.0  # gradient-norm clipping; 0 turns it off
    epochs: int = 1
    max_steps: int | None = None  # stop after this many steps in all
    max_minutes: float | None = None  # stop after this much training time
    eval_every: int = 0  # steps between evaluations besides each epoch's end; 0: epochs only
    log_every: int = 10  # steps between training rows of metrics.jsonl
    checkpoint_every: int = 0  # steps between checkpoints besides each evaluation
    patience: int = 0  # stop after this many evaluations without a better score; 0: never
    max_loss_factor: float = 100.0  # divergence: a loss above this × the start's; 0: off
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    threads: int | None = None  # torch intra-op threads (default: torch's choice)

    #: settings a resumed run may change: how long and how often, not what is learnt
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        "epochs",
        "max_steps",
        "max_minutes",
        "eval_every",
        "log_every",
        "checkpoint_every",
        "patience",
        "threads",
        "device",
    )
    #: settings that define the model's architecture (named as such in a refused resume)
    ARCHITECTURE: ClassVar[tuple[str, ...]] = ()

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}"
            )
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1); got {self.momentum}")
        if self.momentum and self.optimizer == "adam":
            raise ValueError(f"momentum is for sgd and rmsprop, not adam; got {self.momentum}")
        if not 0 < self.rmsprop_alpha < 1:
            raise ValueError(f"rmsprop_alpha must be in (0, 1); got {self.rmsprop_alpha}")
        if not self.optimizer_eps > 0:
            raise ValueError(f"optimizer_eps must be positive; got {self.optimizer_eps}")
        if self.lr_schedule not in ("step", "cosine", "plateau"):
            raise ValueError(
                f"lr_schedule must be 'step', 'cosine' or 'plateau'; got {self.lr_schedule!r}"
            )
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be cpu, cuda or auto; got {self.device!r}")
        check_at_least(self, 1, "epochs", "log_every", "max_steps", "threads")
        check_at_least(
            self, 0, "eval_every", "checkpoint_every", "decay_after", "patience", "warmup_steps"
        )
        if self.lr <= 0 or self.lr_decay <= 0 or self.clip < 0 or self.weight_decay < 0:
            raise ValueError("lr and lr_decay must be positive, clip and weight_decay not negative")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive; got {self.max_minutes}")
        if self.max_loss_factor < 0:
            raise ValueError(f"max_loss_factor must be ≥ 0; got {self.max_loss_factor}")

    def lr_at(self, epoch: int, step: int = 0, bad_evaluations: int = 0) -> float:
        """The learning rate of step ``step`` (0-based, counted over the run) in epoch
        ``epoch`` (0-based).  ``"step"``: ``lr`` for the first ``decay_after`` epochs (at
        least one), then multiplied by ``lr_decay`` once per epoch; ``"cosine"``:
        ``lr · (1 + cos(π · epoch / epochs)) / 2``, torch's CosineAnnealingLR stepped once an
        epoch; ``"plateau"``: ``lr · lr_decay ** bad_evaluations``, multiplied by ``lr_decay``
        after each evaluation that did not beat the best one (torch's ReduceLROnPlateau
        with patience 0; the evaluation a Ctrl-C makes counts, as it does for ``patience``).
        Over the first ``warmup_steps`` steps every schedule is scaled
        by (step + 1) / warmup_steps."""
        if self.lr_schedule == "cosine":
            lr = self.lr * (1 + math.cos(math.pi * min(epoch, self.epochs) / self.epochs)) / 2
        elif self.lr_schedule == "plateau":
            lr = self.lr * self.lr_decay**bad_evaluations
        else:
            lr = self.lr * self.lr_decay ** max(0, epoch + 1 - max(self.decay_after, 1))
        if step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr


# ---------------------------------------------------------------------------- the job
class Job(abc.ABC):
    """What a job hands the loop.  Subclass it and fill in ``batches``, ``loss`` and
    ``evaluate``; the rest has defaults."""

    kind: str = "job"  # the checkpoint's "kind"; `carousel eval` dispatches on it
    metric: str = "loss"  # the score of `evaluate` that selects the best model
    higher_is_better: bool = False
    keep_best: bool = False  # end with the best-scoring weights (kept in the checkpoint too)
    shards: bool = False  # whether `batches` splits the stream over data-parallel processes
    unit: str = "nats"  # what the loss is measured in (metrics rows, the curves' axis)
    item: str = "item"  # what `loss` counts (token, sequence, sentence): progress shows items/s

    @abc.abstractmethod
    def batches(self, epoch: int, start: int) -> Iterator[Any]:
        """The batches of epoch ``epoch`` from index ``start`` on (a resumed run starts
        mid-epoch); the same (epoch, start) must give the same batches every time."""

    def steps_in_epoch(self, epoch: int) -> int | None:
        """How many batches epoch ``epoch`` has, if known (for the progress display)."""
        return None

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, int]:
        """The mean loss of ``batch`` (to minimise) and the number of items it trained."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Scores of ``model`` (in eval mode) on held-out data; holds ``self.metric``."""

    def wants_evaluation(self) -> bool:
        """Asked after every step: evaluate now (e.g. the lag criterion's window is full)."""
        return False

    def finished(self, scores: dict[str, float]) -> str | None:
        """Asked after every evaluation: a reason to stop (e.g. ``"solved"``), or None."""
        return None

    def describe(self, scores: dict[str, float]) -> str:
        """An evaluation as one line of the log."""
        return "  ".join(f"{k} {v:.4g}" for k, v in scores.items())

    def describe_loss(self, loss: float) -> str:
        """A training loss for the progress display."""
        return f"loss {loss:.4g}"

    def meta(self) -> dict[str, Any]:
        """JSON the checkpoint keeps for this job (a vocabulary, the data's fingerprint)."""
        return {}

    def state(self) -> tuple[dict[str, Tensor], Any]:
        """What the job carries between batches (called on every process; gather here)."""
        return {}, None

    def load_state(self, tensors: dict[str, Tensor], data: Any) -> None:
        """Restore what :meth:`state` returned (this process's share of it)."""


# ---------------------------------------------------------------------------- the run folder
@dataclasses.dataclass
class Cursor:
    """Where a run stands: what a checkpoint holds besides tensors."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # next batch index within the epoch
    elapsed: float = 0.0  # training seconds so far
    seen: int = 0  # items trained (tokens, sequences), over all processes
    best: float | None = None  # the best score of job.metric so far
    best_step: int = -1
    stale: int = 0  # evaluations since the best one (early stopping)
    bad_evaluations: int = 0  # evaluations that did not beat the best (plateau schedule)
    evaluated: int = -1  # the step of the last evaluation (a resumed run does not repeat it)
    first_loss: float | None = None  # the largest loss of the first START_STEPS (divergence)
    window_loss: float = 0.0  # sum of step losses since the last training row
    window_steps: int = 0
    window_grad_norm: float = 0.0  # sum of the steps' gradient norms (before clipping)
    stopped: str | None = None  # a final reason that no new limit undoes: solved, early stop


class Run:
    """A run folder: ``checkpoint.safetensors``, ``metrics.jsonl``, ``curves.png``.

    While open (``with open_run(...)``) it holds an OS lock on ``.lock`` in the folder, so a
    second training or ``--resume`` of the same folder is refused with one line naming the
    process; the lock goes with the process, so a kill -9 leaves none behind.
    """

    def __init__(self, root: str | os.PathLike, resume: bool = False) -> None:
        self.root = Path(root)
        self.resuming = resume
        self.tensors: dict[str, Tensor] = {}
        self.meta: dict[str, Any] = {}
        self._lock: int | None = None
        self._made = False  # whether lock() created the folder

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.safetensors"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    def lock(self) -> None:
        if os.environ.get("RANK", "0") != "0":  # under torchrun, process 0 holds the lock
            return
        if self.resuming and not self.root.is_dir():
            raise ValueError(f"no run folder at {self.root}")
        self._made = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunInUse(
                f"{self.root} is in use by another training (process {other}); "
                "wait for it to end or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock = fd

    def unlock(self) -> None:
        """Release the lock; a folder this run created and left empty is removed."""
        if self._lock is None:
            return
        lock = self.root / ".lock"
        if self._made and [p.name for p in self.root.iterdir()] == [".lock"]:
            lock.unlink()
            self.root.rmdir()
        os.close(self._lock)  # closing the descriptor releases the lock
        self._lock = None

    def settings(self, cls: type[S], cfg: S | None, overrides: dict[str, Any] | None = None) -> S:
        """The run's settings: ``cfg`` for a new run; for a resumed one, the checkpoint's with
        the command line's ``overrides``, which may touch only ``cls.RESUMABLE`` fields."""
        if not self.resuming:
            if cfg is None:
                raise ValueError("a new run needs its settings")
            return cfg
        saved = config_from_dict(cls, self.meta["config"])
        merged = config_from_dict(cls, overrides or {}, base=saved)
        for f in dataclasses.fields(cls):
            old, new = getattr(saved, f.name), getattr(merged, f.name)
            if f.name not in cls.RESUMABLE and old != new:
                what = "architecture" if f.name in cls.ARCHITECTURE else "setting"
                raise ValueError(
                    f"cannot resume {self.root} with {f.name}={new!r}: it was trained with "
                    f"{old!r} ({what} change); start a new run with --out"
                )
        return merged


@contextlib.contextmanager
def open_run(root: str | os.PathLike, *, resume: bool, kind: str | None = None) -> Iterator[Run]:
    """Lock run folder ``root`` for a training; with ``resume`` read its checkpoint (of job
    ``kind``), else refuse a folder that already holds one."""
    run = Run(root, resume)
    run.lock()
    try:
        if resume:
            run.tensors, run.meta = load_checkpoint(run.checkpoint, kind=kind)
        elif run.checkpoint.exists():
            raise ValueError(
                f"{run.root} already holds a checkpoint; resume it with --resume "
                f"{run.root} or choose another --out"
            )
        yield run
    finally:
        run.unlock()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but no CUDA device is available")
    if name == "cuda" and ddp.world_size_from_env() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def setup(cfg: TrainSettings) -> torch.device:
    """Threads, the device, the torchrun process group, and the seed of model initialisation
    (the same on every process; :func:`fit` gives each process its own stream after that)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    ddp.init(device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    return device


# ---------------------------------------------------------------------------- the loop
def say(line: str) -> None:
    """A line on stdout, flushed (the default ``echo`` of evaluation lines)."""
    print(line, flush=True)


def fit(
    model: nn.Module,
    job: Job,
    cfg: TrainSettings,
    run: Run,
    *,
    progress: bool = True,
    echo: Callable[[str], None] | None = say,
    on_checkpoint: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Train ``model`` on ``job`` with settings ``cfg`` into ``run`` (new, or resumed).

    Returns the final cursor with ``trained`` (False: the run was already finished and
    nothing was done or written), ``reason`` (``done``, ``max_steps``, ``max_minutes``,
    ``early_stop`` or the job's own, e.g. ``solved``), the last ``scores`` and
    ``valid_loss`` (the last evaluation's loss, NaN if it reports none).  With
    ``job.keep_best`` the model ends with its best-scoring weights.  Raises
    ``KeyboardInterrupt`` after saving when Ctrl-C stopped it, :class:`TrainingDiverged`
    when the loss diverged.  ``echo`` takes the evaluation lines (and a finished run's "nothing
    to do") when no progress bar shows them; None: quiet.  ``on_checkpoint(step)`` runs
    after each checkpoint is on disk;
    ``clock`` measures training time (tests inject one).
    """
    device = next(model.parameters()).device
    rank, world = ddp.rank(), ddp.world_size()
    main = rank == 0
    if world > 1 and not job.shards:
        raise ValueError(f"the {job.kind} job does not support data-parallel training")
    optimizer = make_optimizer(
        model.parameters(),
        cfg.optimizer,
        cfg.lr,
        cfg.weight_decay,
        momentum=cfg.momentum,
        alpha=cfg.rmsprop_alpha,
        eps=cfg.optimizer_eps,
    )
    cursor, best = Cursor(), None
    if run.resuming:
        cursor, best = restore(run, model, optimizer, job, rank, device)
    elif rank:
        torch.manual_seed(cfg.seed + 7919 * rank)  # each process its own dropout masks
    reason = _limit_reached(cursor, cfg, epoch_start=True)
    if reason is not None:
        if main and echo is not None:
            echo(f"{run.root}: finished ({reason} at step {cursor.step}); nothing to do")
        if job.keep_best and best is not None:
            model.load_state_dict(best)
        return {
            **dataclasses.asdict(cursor),
            "reason": reason,
            "scores": {},
            "valid_loss": math.nan,
            "trained": False,
        }

    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    log = MetricsLog(run.metrics, enabled=main)
    if run.resuming:
        log.truncate_after(cursor.step)
    bar = Progress(_planned_steps(job, cfg), cursor.step, enabled=progress and main, echo=echo)
    stop = StopFlag()
    scores: dict[str, float] = {}
    saved_at = -1
    net.train()
    with stop.catching():
        while reason is None:
            reason = _limit_reached(cursor, cfg, epoch_start=True)
            if reason is not None:
                break
            batches = job.batches(cursor.epoch, cursor.batch)
            while reason is None:
                reason = _limit_reached(cursor, cfg)
                batch = next(batches, None) if reason is None else None
                if batch is None:
                    break
                set_lr(optimizer, cfg.lr_at(cursor.epoch, cursor.step, cursor.bad_evaluations))
                t0 = clock()
                loss, items = job.loss(net, batch)
                # one all-reduce: the mean loss, and whether any process was asked to stop
                shared = ddp.mean(
                    torch.stack([loss.detach().float(), loss.new_tensor(stop.requested)])
                )
                shown, stop.requested = float(shared[0]), bool(shared[1] > 0)
                _check_loss(shown, cursor, cfg, run)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = clip_gradients(model, cfg.clip)
                _check_finite("gradient norm", grad_norm, cursor, run)
                optimizer.step()
                dt = clock() - t0
                cursor.step += 1
                cursor.batch += 1
                cursor.elapsed += dt
                cursor.seen += items * world
                cursor.window_loss += shown
                cursor.window_grad_norm += grad_norm
                cursor.window_steps += 1
                bar.update(f"{job.describe_loss(shown)} {items * world / dt:,.0f} {job.item}/s")
                if cursor.step % cfg.log_every == 0:
                    log.write(**_train_row(cursor, optimizer, job))
                    cursor.window_loss, cursor.window_grad_norm, cursor.window_steps = 0.0, 0.0, 0
                wanted = job.wants_evaluation()  # asked every step, even when one is due anyway
                if wanted or _every(cursor.step, cfg.eval_every):
                    scores, best = evaluate(model, job, cursor, cfg, log, bar, best)
                    reason = cursor.stopped
                if stop.requested:
                    reason = "interrupted"
                if reason is None and (
                    cursor.evaluated == cursor.step or _every(cursor.step, cfg.checkpoint_every)
                ):
                    save(run, model, optimizer, job, cursor, cfg, best)
                    saved_at = cursor.step
                    if on_checkpoint is not None:
                        on_checkpoint(cursor.step)
            if reason is not None:
                break
            # the epoch is over: evaluate, move on, save
            if cursor.evaluated != cursor.step:
                scores, best = evaluate(model, job, cursor, cfg, log, bar, best)
            reason = cursor.stopped
            cursor.epoch, cursor.batch = cursor.epoch + 1, 0
            save(run, model, optimizer, job, cursor, cfg, best)
            saved_at = cursor.step
            if on_checkpoint is not None:
                on_checkpoint(cursor.step)
        if saved_at != cursor.step:  # stopped mid-epoch: evaluate and save where it stands
            if cursor.evaluated != cursor.step:
                scores, best = evaluate(model, job, cursor, cfg, log, bar, best)
            save(run, model, optimizer, job, cursor, cfg, best)
            if on_checkpoint is not None:
                on_checkpoint(cursor.step)
    bar.close()
    ddp.barrier()
    if job.keep_best and best is not None:
        model.load_state_dict(best)
    if reason == "interrupted":
        raise KeyboardInterrupt
    return {
        **dataclasses.asdict(cursor),
        "reason": reason or "done",
        "scores": scores,
        "valid_loss": scores.get("loss", math.nan),
        "trained": True,
    }


def _every(step: int, interval: int) -> bool:
    return bool(interval) and step % interval == 0


def _limit_reached(cursor: Cursor, cfg: TrainSettings, epoch_start: bool = False) -> str | None:
    """Why the run must not take another step, or None."""
    if cursor.stopped is not None:
        return cursor.stopped
    if epoch_start and cursor.epoch >= cfg.epochs:
        return "done"
    if cfg.max_steps is not None and cursor.step >= cfg.max_steps:
        return "max_steps"
    if cfg.max_minutes is not None and cursor.elapsed >= 60 * cfg.max_minutes:
        return "max_minutes"
    return None


def _planned_steps(job: Job, cfg: TrainSettings) -> int | None:
    per_epoch = job.steps_in_epoch(0)
    planned = None if per_epoch is None else cfg.epochs * per_epoch
    if cfg.max_steps is not None:
        planned = cfg.max_steps if planned is None else min(planned, cfg.max_steps)
    return planned


#: the divergence test's start: the largest loss of a run's first steps
START_STEPS = 10


def _check_finite(what: str, value: float, cursor: Cursor, run: Run) -> None:
    if not math.isfinite(value):
        _diverged(f"the {what} became {value}", cursor, run)


def _check_loss(loss: float, cursor: Cursor, cfg: TrainSettings, run: Run) -> None:
    """NaN or inf is divergence at once; a loss over ``max_loss_factor`` × the run's start
    (the largest loss of its first START_STEPS steps, not the first alone: a run started
    from trained weights can draw one easy first batch) is divergence after those steps."""
    _check_finite("loss", loss, cursor, run)
    if cursor.step < START_STEPS:
        cursor.first_loss = max(loss, cursor.first_loss or 0.0)
    elif cfg.max_loss_factor and loss > cfg.max_loss_factor * max(cursor.first_loss, 1e-12):
        _diverged(
            f"the loss reached {loss:.4g}, over {cfg.max_loss_factor:g}× its largest value "
            f"in the first {START_STEPS} steps, {cursor.first_loss:.4g}",
            cursor,
            run,
        )


def _diverged(what: str, cursor: Cursor, run: Run, step: int | None = None) -> None:
    """Raise TrainingDiverged for ``step`` (the step under way unless given)."""
    kept = (
        f"the last good checkpoint is {run.checkpoint}"
        if run.checkpoint.exists()
        else "no checkpoint was written yet"
    )
    raise TrainingDiverged(
        f"{what} at step {cursor.step + 1 if step is None else step}; stopped ({kept}); "
        "try a lower --lr or --clip"
    )


def _train_row(cursor: Cursor, optimizer: torch.optim.Optimizer, job: Job) -> dict[str, Any]:
    return {
        "kind": "train",
        "step": cursor.step,
        "epoch": cursor.epoch,
        "loss": cursor.window_loss / cursor.window_steps,
        "grad_norm": cursor.window_grad_norm / cursor.window_steps,  # before clipping
        "lr": optimizer.param_groups[0]["lr"],
        "seen": cursor.seen,
        "unit": job.unit,
        "time": round(cursor.elapsed, 3),
    }


def evaluate(
    model: nn.Module,
    job: Job,
    cursor: Cursor,
    cfg: TrainSettings,
    log: MetricsLog,
    bar: Progress,
    best: dict[str, Tensor] | None,
) -> tuple[dict[str, float], dict[str, Tensor] | None]:
    """Evaluate on process 0 (every process gets the scores), log the row, track the best
    score (and, with ``job.keep_best``, its weights) and early stopping; the job's or the
    loop's reason to stop goes to ``cursor.stopped``.  Returns (scores, best weights)."""
    scores: dict[str, float] = {}
    if ddp.rank() == 0:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            scores = job.evaluate(model)
        model.train(was_training)
    scores = ddp.share(scores)
    cursor.evaluated = cursor.step
    value = scores.get(job.metric)
    if value is None:
        raise ValueError(f"the {job.kind} job's evaluation holds no {job.metric!r} score")
    log.write(
        kind="valid",
        step=cursor.step,
        epoch=cursor.epoch,
        seen=cursor.seen,
        **scores,
        unit=job.unit,
        time=round(cursor.elapsed, 3),
    )
    better = cursor.best is None or (
        value > cursor.best if job.higher_is_better else value < cursor.best
    )
    if better:
        cursor.best, cursor.best_step, cursor.stale = value, cursor.step, 0
        if job.keep_best:
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        cursor.stale += 1
        cursor.bad_evaluations += 1
    if ddp.rank() == 0:
        bar.write(f"step {cursor.step} epoch {cursor.epoch + 1}: {job.describe(scores)}")
    cursor.stopped = job.finished(scores)
    if cursor.stopped is None and cfg.patience and cursor.stale >= cfg.patience:
        cursor.stopped = "early_stop"
    return scores, best


# ---------------------------------------------------------------------------- checkpoints
def save(
    run: Run,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    job: Job,
    cursor: Cursor,
    cfg: TrainSettings,
    best: dict[str, Tensor] | None,
) -> None:
    """Write the run's checkpoint (collective under torchrun: every process calls it).  Weights
    that overflowed are divergence: the checkpoint on disk stays the last good one (a finite
    loss can come before them, with a huge step inside the divergence test's first steps)."""
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        _diverged("the weights became non-finite", cursor, run, step=cursor.step)
    device = next(model.parameters()).device
    job_tensors, job_data = job.state()
    rngs = {"cpu": ddp.gather(torch.get_rng_state().unsqueeze(0), dim=0)}
    if device.type == "cuda":
        rngs["cuda"] = ddp.gather(torch.cuda.get_rng_state(device).unsqueeze(0), dim=0)
    if ddp.rank() == 0:
        out = {f"model.{k}": v for k, v in model.state_dict().items()}
        out |= {f"best.{k}": v for k, v in (best or {}).items()}
        out |= {f"job.{k}": v for k, v in job_tensors.items()}
        out |= {f"rng.{d}.{r}": g[r] for d, g in rngs.items() for r in range(g.size(0))}
        meta = {
            **job.meta(),
            "kind": job.kind,
            "config": config_to_dict(cfg),
            "cursor": dataclasses.asdict(cursor),
            "optimizer": flatten_state("optim", optimizer.state_dict(), out),
            "job_state": job_data,
            "rng_python": _python_rng_json(),
            "world_size": ddp.world_size(),
            "torch": torch.__version__,
        }
        save_checkpoint(run.checkpoint, out, meta)
    ddp.barrier()


def restore(
    run: Run,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    job: Job,
    rank: int,
    device: torch.device,
) -> tuple[Cursor, dict[str, Tensor] | None]:
    """Load a checkpoint into the model, optimizer, RNGs and job; return (cursor, best)."""
    tensors, meta = run.tensors, run.meta
    model.load_state_dict(part(tensors, "model"))
    optimizer.load_state_dict(unflatten_state(meta["optimizer"], tensors))
    torch.set_rng_state(tensors.get(f"rng.cpu.{rank}", tensors["rng.cpu.0"]))
    if device.type == "cuda" and "rng.cuda.0" in tensors:
        torch.cuda.set_rng_state(tensors.get(f"rng.cuda.{rank}", tensors["rng.cuda.0"]), device)
    if meta.get("rng_python") is not None:
        version, state, gauss = meta["rng_python"]
        random.setstate((version, tuple(state), gauss))
    job.load_state(part(tensors, "job"), meta.get("job_state"))
    best = part(tensors, "best") or None
    return Cursor(**meta["cursor"]), best


def part(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors stored under ``prefix.`` with the prefix taken off."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_weights(
    model: nn.Module, tensors: dict[str, Tensor], path: str | os.PathLike, best: bool = False
) -> None:
    """Load a checkpoint's model tensors into ``model`` (with ``best``, those of the best
    evaluation where it holds them); a ValueError naming ``path`` where they do not fit."""
    weights = (best and part(tensors, "best")) or part(tensors, "model")
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"{path}: the model's tensors do not fit its config ({err})") from err


def _python_rng_json() -> list:
    version, state, gauss = random.getstate()
    return [version, list(state), gauss]


# ---------------------------------------------------------------------------- the parts
def make_optimizer(
    params: Iterator[nn.Parameter],
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    *,
    momentum: float = 0.0,
    alpha: float = 0.99,
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """torch.optim's SGD (plain: Zaremba et al.'s recipe; or with momentum), Adam, or RMSProp
    (``alpha`` smooths the squared gradient; Graves et al.'s NTM: momentum 0.9, lr 1e-4);
    ``eps`` is Adam's and RMSProp's ε."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, eps=eps)
    if name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum
        )
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Clip the gradients' global norm to ``max_norm`` (0: no clipping); return the norm
    before clipping: NaN or inf only when a gradient element is not finite.

    The norm is taken in float32 and, should the sum of squares overflow there (finite
    gradients of 10²⁰ and more, as an exploding RNN makes), again in float64.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    norm = nn.utils.get_total_norm(grads)
    if torch.isinf(norm) and all(bool(torch.isfinite(g).all()) for g in grads):
        norm = nn.utils.get_total_norm([g.double() for g in grads])
    if max_norm > 0 and torch.isfinite(norm):  # the scaling of torch's clip_grad_norm_
        torch._foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return float(norm)


class MetricsLog:
    """Rows of metrics appended to a JSONL file (one JSON object a line), flushed each row."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, **row: Any) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop the rows logged after ``step`` (a resumed run logs them again)."""
        if not self.enabled or not self.path.exists():
            return
        rows = read_metrics(self.path)
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in rows if r["step"] <= step))


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics file; a torn last line (killed while writing) is skipped."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def plot_metrics(run: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write a PNG of a run's training and validation loss against steps (and, beside it,
    any other validation scores such as accuracy); return its path.  Works for every job."""
    paths = Run(run)
    if not paths.metrics.is_file():
        raise ValueError(f"{run} holds no metrics.jsonl (is it a training run's folder?)")
    rows = read_metrics(paths.metrics)
    train = [r for r in rows if r.get("kind") == "train"]
    valid = [r for r in rows if r.get("kind") == "valid"]
    if not train and not valid:
        raise ValueError(f"{paths.metrics} holds no training or validation rows yet")
    unit = (rows[0].get("unit") if rows else None) or "nats"
    plain = {"kind", "step", "epoch", "loss", "unit", "time", "lr", "seen"}
    others = sorted({k for r in valid for k, v in r.items() if k not in plain and _number(v)})
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if others else 1, figsize=(12 if others else 7, 4.5), dpi=100)
    ax = axes[0] if others else axes
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="training", lw=1)
    scored = [r for r in valid if "loss" in r]
    if scored:
        steps, losses = [r["step"] for r in scored], [r["loss"] for r in scored]
        ax.plot(steps, losses, "o-", label="validation", lw=2)
    ax.set(xlabel="step", ylabel=f"loss ({unit})", title=f"carousel: {Path(run).name}")
    ax.grid(alpha=0.3)
    if train or scored:
        ax.legend()
    if others:
        for key in others:
            points = [(r["step"], r[key]) for r in valid if _number(r.get(key))]
            axes[1].plot(*zip(*points), "o-", label=key)
        axes[1].set(xlabel="step", title="validation scores")
        axes[1].grid(alpha=0.3)
        axes[1].legend()
    return save_figure(fig, Path(out) if out else paths.curves)


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


#: what `compare_runs` can put on the x axis: the loop's step, the items trained (tokens,
#: sequences; counted over all processes) or the training seconds
AXES = {"step": "step", "seen": "items trained", "time": "training seconds"}


def compare_runs(
    runs: list[str | os.PathLike],
    out: str | os.PathLike,
    metric: str = "loss",
    x: str = "step",
    log_y: bool = False,
) -> Path:
    """Write a PNG of one validation score (``metric``) of several runs (seeds, settings,
    jobs) against ``x`` (a key of :data:`AXES`), one line a run named by its folder; return
    its path.  Raises ``ValueError`` naming a run whose metrics.jsonl lacks the score."""
    if x not in AXES:
        raise ValueError(f"x must be one of {', '.join(AXES)}; got {x!r}")
    if not runs:
        raise ValueError("name at least one run folder to compare")
    lines = []
    for run in runs:
        paths = Run(run)
        if not paths.metrics.is_file():
            raise ValueError(f"{run} holds no metrics.jsonl (is it a training run's folder?)")
        rows = read_metrics(paths.metrics)
        points = [
            (r[x], r[metric])
            for r in rows
            if r.get("kind") == "valid" and _number(r.get(metric)) and _number(r.get(x))
        ]
        if not points:
            raise ValueError(f"{paths.metrics} holds no validation {metric!r} against {x!r}")
        unit = (rows[0].get("unit") if rows else None) or "nats"
        lines.append((Path(run).name, points, unit))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for name, points, _ in lines:
        ax.plot(*zip(*points), "o-", ms=3, lw=1.5, label=name)
    label = f"{metric} ({lines[0][2]})" if metric == "loss" else metric
    ax.set(xlabel=AXES[x], ylabel=f"validation {label}", title="carousel: runs compared")
    if log_y:
        ax.set_yscale("symlog", linthresh=0.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, Path(out))


class StopFlag:
    """While active, Ctrl-C (SIGINT) sets ``requested`` instead of raising, so the loop can
    finish its step, evaluate and save; a second Ctrl-C raises as usual."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def catching(self) -> Iterator[StopFlag]:
        try:
            previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


class Progress:
    """On a terminal, a tqdm bar; otherwise (CI, nohup, a log file) a plain line on stderr
    every ``every`` seconds.  Evaluation lines go to ``echo`` (through the bar on a
    terminal) either way; ``echo`` None drops them."""

    def __init__(
        self,
        total: int | None,
        initial: int,
        enabled: bool,
        every: float = 10.0,
        echo: Callable[[str], None] | None = say,
    ) -> None:
        self.enabled, self.echo = enabled, echo
        self.tty = enabled and sys.stderr.isatty()
        self.step, self.total, self.every = initial, total, every
        self.last = time.monotonic()
        self.bar = None
        if self.tty:
            self.bar = tqdm(
                total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr
            )

    def update(self, text: str) -> None:
        self.step += 1
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        elif self.enabled and time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            of = f"/{self.total}" if self.total else ""
            print(f"step {self.step}{of}  {text}", file=sys.stderr, flush=True)

    def write(self, line: str) -> None:
        if self.echo is None:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            self.echo(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = [
    "Cursor",
    "Job",
    "Run",
    "RunInUse",
    "TrainSettings",
    "TrainingDiverged",
    "compare_runs",
    "fit",
    "open_run",
    "plot_metrics",
    "setup",
]
