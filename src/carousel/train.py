"""The training loop, and the parts any job can reuse.

Reusable parts: :func:`make_optimizer` (torch.optim SGD or Adam), :func:`set_lr`,
:func:`clip_gradients`, :class:`MetricsLog` (one JSON object a line in ``metrics.jsonl``),
:func:`plot_metrics` (the PNG of training and validation curves), :class:`StopFlag` (Ctrl-C
finishes the current step, then the loop saves and evaluates before leaving) and
:class:`RunDir` (the files of a run); checkpoints are :mod:`carousel.checkpoint`.

:func:`train_lm` is the language-modelling loop: truncated BPTT over B streams with the
state carried across batches, evaluation every epoch (and every ``eval_every`` steps),
checkpoints that resume bit-identically (model, optimizer, carried state, data cursor and
RNG states), a tqdm progress bar, and data-parallel training under torchrun.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from carousel import distributed as ddp
from carousel.checkpoint import (
    atomic_write_bytes,
    flatten_state,
    load_checkpoint,
    save_checkpoint,
    unflatten_state,
)
from carousel.config import config_from_dict, config_to_dict
from carousel.data.batching import batchify, epoch_layout, get_batch, shard_columns
from carousel.data.corpora import Corpus, Vocab, load_corpus
from carousel.layers import State, detach_state
from carousel.lm.config import ARCHITECTURE, RESUMABLE, LMConfig
from carousel.lm.model import RNNLM

LOG2 = math.log(2)


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ---------------------------------------------------------------------------- reusable parts
@dataclasses.dataclass(frozen=True)
class RunDir:
    """The files of a training run."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.safetensors"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"


def make_optimizer(
    params: Iterator[nn.Parameter], name: str, lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """torch.optim's plain SGD (Zaremba et al.'s recipe) or Adam."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam'; got {name!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Clip the gradients' global norm to ``max_norm`` (0: no clipping); return the norm
    before clipping (NaN or inf when a gradient is not finite)."""
    limit = max_norm if max_norm > 0 else math.inf
    return float(nn.utils.clip_grad_norm_(model.parameters(), limit))


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
        keep = "".join(json.dumps(r) + "\n" for r in rows if r.get("step", 0) <= step)
        atomic_write_bytes(self.path, keep.encode())


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
    """Write a PNG of a run's training and validation loss against steps; return its path."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    paths = RunDir(Path(run))
    if not paths.metrics.is_file():
        raise ValueError(f"{run} holds no metrics.jsonl (is it a training run's folder?)")
    rows = read_metrics(paths.metrics)
    train = [r for r in rows if r.get("kind") == "train"]
    valid = [r for r in rows if r.get("kind") == "valid"]
    if not train and not valid:
        raise ValueError(f"{paths.metrics} holds no training or validation rows yet")
    unit = (rows[0].get("unit") if rows else None) or "nats/token"
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="training", lw=1)
    if valid:
        ax.plot(
            [r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="validation", lw=2
        )
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss ({unit})")
    ax.set_title(f"carousel: {Path(run).name}")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    target = Path(out) if out else paths.curves
    atomic_write_bytes(target, buf.getvalue())
    return target


class StopFlag:
    """While active, Ctrl-C (SIGINT) sets ``requested`` instead of raising, so the loop can
    finish its step, save and evaluate; a second Ctrl-C raises as usual."""

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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but no CUDA device is available")
    if name == "cuda" and ddp.world_size_from_env() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


# ---------------------------------------------------------------------------- language model
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


def load_lm(path: str | os.PathLike) -> tuple[RNNLM, Vocab, LMConfig, dict]:
    """The model, vocabulary, settings and metadata of a language-model checkpoint."""
    tensors, meta = load_checkpoint(path, kind="lm")
    cfg = config_from_dict(LMConfig, meta["config"])
    vocab = Vocab.from_json(meta["vocab"])
    model = RNNLM(len(vocab), cfg)
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: the model's tensors do not fit its config ({err})") from err
    return model, vocab, cfg, {"tensors": tensors, **meta}


@dataclasses.dataclass
class _Cursor:
    """Where a run stands: what a checkpoint must hold besides tensors."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # next batch index within the epoch
    elapsed: float = 0.0  # training seconds so far
    best_valid: float | None = None
    window_loss: float = 0.0  # sum of step losses since the last training row
    window_steps: int = 0
    tokens: int = 0  # training tokens (targets) seen, over all processes


def _check_resume(saved: LMConfig, wanted: dict[str, Any], run: Path) -> LMConfig:
    """``saved`` with the command line's overrides, which may only touch RESUMABLE fields."""
    merged = config_from_dict(LMConfig, wanted, base=saved)
    for f in dataclasses.fields(LMConfig):
        old, new = getattr(saved, f.name), getattr(merged, f.name)
        if f.name not in RESUMABLE and old != new:
            what = "architecture" if f.name in ARCHITECTURE else "setting"
            raise ValueError(
                f"cannot resume {run} with {f.name}={new!r}: it was trained with {old!r} "
                f"({what} change); start a new run with --out"
            )
    return merged


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
            ``overrides`` may change only how long and how often (``RESUMABLE``).
        on_checkpoint: called with the step after each checkpoint is on disk.

    Returns the last cursor and the last validation loss, as a dict.
    """
    paths = RunDir(Path(run))
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {}
    if resume:
        tensors, meta = load_checkpoint(paths.checkpoint, kind="lm")
        cfg = _check_resume(config_from_dict(LMConfig, meta["config"]), overrides or {}, paths.root)
    else:
        assert cfg is not None
        if paths.checkpoint.exists():
            raise ValueError(
                f"{paths.root} already holds a checkpoint; resume it with --resume "
                f"{paths.root} or choose another --out"
            )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    rank, world = ddp.init(device)
    main = rank == 0
    corpus: Corpus = load_corpus(cfg.data, cfg.level, cfg.valid_data, cfg.valid_fraction)
    if resume:
        if corpus.vocab != Vocab.from_json(meta["vocab"]):
            raise ValueError(
                f"vocabulary mismatch: {cfg.data} now gives {len(corpus.vocab)} "
                f"{cfg.level}s but {paths.root} was trained on {len(meta['vocab']['tokens'])}"
            )
        if corpus.fingerprint() != meta["data_sha256"]:
            raise ValueError(f"the training data {cfg.data} changed since {paths.root} was trained")

    torch.manual_seed(cfg.seed)
    model = RNNLM(len(corpus.vocab), cfg).to(device)
    optimizer = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay)
    cursor = _Cursor()
    state: State | None = None
    if resume:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer.load_state_dict(unflatten_state(meta["optimizer"], tensors))
        cursor = _Cursor(**meta["cursor"])
        torch.set_rng_state(tensors.get(f"rng.cpu.{rank}", tensors["rng.cpu.0"]))
        if device.type == "cuda" and "rng.cuda.0" in tensors:
            torch.cuda.set_rng_state(tensors.get(f"rng.cuda.{rank}", tensors["rng.cuda.0"]), device)
        carried = [tensors[f"state.{i}"] for i in range(meta["state_parts"])]
        if carried:
            per = carried[0].size(1) // world
            parts = tuple(s[:, rank * per : (rank + 1) * per].to(device) for s in carried)
            state = parts[0] if len(parts) == 1 else parts
    elif rank:
        torch.manual_seed(cfg.seed + 7919 * rank)  # each process its own dropout masks
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model)

    paths.root.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(paths.metrics, enabled=main)
    if resume:
        log.truncate_after(cursor.step)
    unit = f"nats/{cfg.level}"
    streams = shard_columns(batchify(corpus.train, cfg.batch_size), rank, world).to(device)
    layouts = {}

    def layout(epoch: int) -> list[tuple[int, int]]:
        if epoch not in layouts:
            layouts[epoch] = epoch_layout(
                streams.size(0), cfg.bptt, cfg.random_bptt, cfg.seed, epoch
            )
        return layouts[epoch]

    per_epoch = len(layout(0))
    planned = cfg.epochs * per_epoch
    if cfg.max_steps is not None:
        planned = min(planned, cfg.max_steps)

    last_saved = [-1]

    def diverged(what: str, value: float) -> None:
        kept = (
            f"the last good checkpoint is {paths.checkpoint}"
            if paths.checkpoint.exists()
            else "no checkpoint was written yet"
        )
        raise TrainingDiverged(
            f"the {what} became {value} at step {cursor.step + 1}; stopped ({kept}); "
            "try a lower --lr or --clip"
        )

    def save() -> None:
        last_saved[0] = cursor.step
        carried = () if state is None else ((state,) if isinstance(state, Tensor) else state)
        full = [ddp.gather(s.detach(), dim=1) for s in carried]  # each (L, B, H)
        rngs = {"cpu": ddp.gather(torch.get_rng_state().unsqueeze(0), dim=0)}
        if device.type == "cuda":
            rngs["cuda"] = ddp.gather(torch.cuda.get_rng_state(device).unsqueeze(0), dim=0)
        if main:
            out = {f"model.{k}": v for k, v in model.state_dict().items()}
            out |= {f"state.{i}": s for i, s in enumerate(full)}
            out |= {f"rng.{d}.{r}": g[r] for d, g in rngs.items() for r in range(g.size(0))}
            optim_json = flatten_state("optim", optimizer.state_dict(), out)
            save_checkpoint(
                paths.checkpoint,
                out,
                {
                    "kind": "lm",
                    "config": config_to_dict(cfg),
                    "vocab": corpus.vocab.to_json(),
                    "data_sha256": corpus.fingerprint(),
                    "cursor": dataclasses.asdict(cursor),
                    "optimizer": optim_json,
                    "state_parts": len(full),
                    "world_size": world,
                    "torch": torch.__version__,
                },
            )
        ddp.barrier()
        if on_checkpoint is not None:
            on_checkpoint(cursor.step)

    last_eval = [-1]

    def validate() -> float:
        last_eval[0] = cursor.step
        loss = math.nan
        if main:
            loss = evaluate(
                model, corpus.valid, cfg.eval_batch_size, cfg.bptt, cfg.valid_tokens, cfg.precision
            )
            log.write(
                kind="valid",
                step=cursor.step,
                epoch=cursor.epoch,
                loss=loss,
                unit=unit,
                time=round(cursor.elapsed, 3),
            )
            if cursor.best_valid is None or loss < cursor.best_valid:
                cursor.best_valid = loss
            bar.write(
                f"step {cursor.step} epoch {cursor.epoch + 1}: validation loss "
                f"{describe_loss(loss, cfg.level)}"
            )
        ddp.barrier()
        return loss

    bar = tqdm(
        total=planned,
        initial=min(cursor.step, planned),
        unit="step",
        dynamic_ncols=True,
        disable=not (progress and main),
        file=sys.stderr,
    )
    stop = StopFlag()
    last_valid = math.nan
    reason = "done"
    net.train()
    with stop.catching():
        while cursor.epoch < cfg.epochs:
            set_lr(optimizer, cfg.lr_at(cursor.epoch))
            batches = layout(cursor.epoch)
            while cursor.batch < len(batches):
                if cfg.max_steps is not None and cursor.step >= cfg.max_steps:
                    reason = "max_steps"
                    break
                if cfg.max_minutes is not None and cursor.elapsed >= 60 * cfg.max_minutes:
                    reason = "max_minutes"
                    break
                t0 = time.perf_counter()
                x, y = get_batch(streams, *batches[cursor.batch])
                state = detach_state(state)
                with autocast(device, cfg.precision):
                    loss, state = net(x, state, targets=y)  # mean nats per token
                # one all-reduce: the mean loss, and whether any process was asked to stop
                shared = ddp.mean(torch.stack([loss.detach(), loss.new_tensor(stop.requested)]))
                shown, stop.requested = float(shared[0]), bool(shared[1] > 0)
                if not math.isfinite(shown):
                    diverged("loss", shown)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = clip_gradients(model, cfg.clip)
                if not math.isfinite(norm):
                    diverged("gradient norm", norm)
                optimizer.step()
                cursor.step += 1
                cursor.batch += 1
                dt = time.perf_counter() - t0
                cursor.elapsed += dt
                cursor.window_loss += shown
                cursor.window_steps += 1
                cursor.tokens += y.numel() * world
                value = shown / LOG2 if cfg.level == "char" else math.exp(min(shown, 700))
                bar.set_postfix_str(
                    f"loss {shown:.3f} {'bpc' if cfg.level == 'char' else 'ppl'} {value:.3g} "
                    f"{x.numel() * world / dt:,.0f} tok/s",
                    refresh=False,
                )
                bar.update(1)
                if cursor.step % cfg.log_every == 0:
                    log.write(
                        kind="train",
                        step=cursor.step,
                        epoch=cursor.epoch,
                        loss=cursor.window_loss / cursor.window_steps,
                        lr=optimizer.param_groups[0]["lr"],
                        tokens=cursor.tokens,
                        unit=unit,
                        time=round(cursor.elapsed, 3),
                    )
                    cursor.window_loss, cursor.window_steps = 0.0, 0
                evaluated = False
                if cfg.eval_every and cursor.step % cfg.eval_every == 0:
                    last_valid = validate()
                    evaluated = True
                if stop.requested:
                    reason = "interrupted"
                    break
                if evaluated or (cfg.checkpoint_every and cursor.step % cfg.checkpoint_every == 0):
                    save()
            if reason != "done":
                break
            if last_eval[0] != cursor.step:
                last_valid = validate()
            cursor.epoch += 1
            cursor.batch = 0
            state = None
            save()
        if reason != "done" and last_saved[0] != cursor.step:
            if last_eval[0] != cursor.step:
                last_valid = validate()
            save()
    bar.close()
    ddp.barrier()
    if reason == "interrupted":
        raise KeyboardInterrupt
    return {**dataclasses.asdict(cursor), "valid_loss": last_valid, "reason": reason}
