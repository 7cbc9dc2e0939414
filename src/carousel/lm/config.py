"""The settings of a language-modelling run (``carousel train``), one frozen dataclass of
scalars; presets ``zaremba-small``, ``zaremba-medium``, ``zaremba-large``, ``char-small`` and
``char-medium`` are TOML files in ``carousel/presets/``."""

from __future__ import annotations

import dataclasses

from carousel.cells import get_cell
from carousel.config import check_at_least

#: settings that may change when a run is resumed (how long and how often; not what is learnt)
RESUMABLE = (
    "epochs",
    "max_steps",
    "max_minutes",
    "eval_every",
    "log_every",
    "checkpoint_every",
    "valid_tokens",
    "threads",
    "device",
)

#: settings that define the model's architecture
ARCHITECTURE = ("level", "cell", "embed_size", "hidden_size", "num_layers", "tie_weights")


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Language model and training settings; any field is a ``--field-name`` option."""

    # data
    data: str = "shakespeare"  # "shakespeare", a UTF-8 text file, or a word-split folder
    level: str = "char"  # "char" or "word"
    valid_data: str | None = None  # explicit validation file (else the split below)
    valid_fraction: float = 0.1  # characters: the last 10 % of the text validates
    # model
    cell: str = "lstm"  # any entry of carousel.CELLS
    embed_size: int | None = None  # default: hidden_size
    hidden_size: int = 200
    num_layers: int = 2
    dropout: float = 0.0  # on non-recurrent connections (Zaremba et al.)
    tie_weights: bool = False  # output layer shares the embedding (needs embed = hidden)
    # optimisation
    optimizer: str = "sgd"  # "sgd" or "adam"
    lr: float = 1.0
    lr_decay: float = 1.0  # multiply the learning rate by this after each epoch ...
    decay_after: int = 0  # ... once this many epochs are done
    weight_decay: float = 0.0
    clip: float = 5.0  # gradient-norm clipping; 0 turns it off
    # schedule
    epochs: int = 1
    max_steps: int | None = None  # stop after this many steps in all
    max_minutes: float | None = None  # stop after this much training time
    batch_size: int = 20  # B streams (global, over all data-parallel processes)
    bptt: int = 35  # truncated-BPTT length
    random_bptt: bool = False
    eval_every: int = 0  # steps between evaluations besides each epoch's end; 0: epochs only
    valid_tokens: int | None = None  # evaluate on at most this many validation tokens
    eval_batch_size: int = 10
    log_every: int = 10  # steps between training rows of metrics.jsonl
    checkpoint_every: int = 0  # steps between checkpoints besides each evaluation
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    threads: int | None = None  # torch intra-op threads (default: torch's choice)
    #: "float32", or "bf16": the matrix products in bfloat16 (torch.autocast; the fused
    #: kernels keep float32 state and accumulate in float32; the loss stays float32)
    precision: str = "float32"

    def validate(self) -> None:
        if self.level not in ("char", "word"):
            raise ValueError(f"level must be 'char' or 'word'; got {self.level!r}")
        get_cell(self.cell)  # raises for an unknown cell
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam'; got {self.optimizer!r}")
        if self.precision not in ("float32", "bf16"):
            raise ValueError(f"precision must be 'float32' or 'bf16'; got {self.precision!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be cpu, cuda or auto; got {self.device!r}")
        check_at_least(
            self,
            1,
            "hidden_size",
            "num_layers",
            "epochs",
            "batch_size",
            "bptt",
            "eval_batch_size",
            "log_every",
            "embed_size",
            "max_steps",
            "threads",
        )
        check_at_least(self, 2, "valid_tokens")
        check_at_least(self, 0, "eval_every", "checkpoint_every", "decay_after")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        if self.lr <= 0 or self.lr_decay <= 0 or self.clip < 0 or self.weight_decay < 0:
            raise ValueError("lr and lr_decay must be positive, clip and weight_decay not negative")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive; got {self.max_minutes}")
        if self.tie_weights and self.embed_size not in (None, self.hidden_size):
            raise ValueError(
                f"tie_weights needs embed_size = hidden_size = {self.hidden_size}; "
                f"got embed_size {self.embed_size}"
            )

    @property
    def embed(self) -> int:
        return self.embed_size or self.hidden_size

    def lr_at(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (0-based): ``lr`` for the first
        ``decay_after`` epochs (at least one), then multiplied by ``lr_decay`` once per epoch."""
        return self.lr * self.lr_decay ** max(0, epoch + 1 - max(self.decay_after, 1))
