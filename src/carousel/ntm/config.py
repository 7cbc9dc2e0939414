"""The settings of an NTM run (``carousel train ntm``): the loop's
:class:`~carousel.train.TrainSettings` and the machine's own, one frozen dataclass of scalars.

Presets, one a task (``carousel train ntm --task copy`` picks ``ntm-copy``), are TOML files in
``carousel/presets/``: ``ntm-copy``, ``ntm-repeat-copy``, ``ntm-associative-recall``,
``ntm-priority-sort``, and ``ntm-copy-lstm`` (the paper's 3 × 256 LSTM baseline, the same job
with ``--model lstm``).  The paper's Table 1 gives, for the NTM with an LSTM controller: one
head (priority sort: 5) of each kind, 100 controller units, a 128 × 20 memory, and RMSProp
with momentum 0.9 at learning rate 10⁻⁴ (priority sort 3·10⁻⁵); Table 3 the LSTM baselines
(3 × 256, learning rate 3·10⁻⁵ for copy).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from carousel.cells import get_cell
from carousel.config import check_at_least
from carousel.data.memory_tasks import get_memory_task
from carousel.ntm.model import FEEDFORWARD, MEMORY_INITS
from carousel.train import TrainSettings

MODELS = ("ntm", "lstm")


@dataclasses.dataclass(frozen=True)
class NTMConfig(TrainSettings):
    """NTM (or LSTM baseline) and training settings; any field is a ``--field-name`` option.

    One epoch is ``epoch_sequences`` training sequences; each ends with an evaluation on a
    fixed set of ``eval_sequences`` sequences at the training lengths (its own seed), so
    ``epochs × epoch_sequences`` is the budget of training sequences.  The run ends with the
    weights of its best evaluation (the lowest cost in bits per sequence), and with
    ``solved_below`` it stops at the first evaluation under that many bit errors per sequence
    (reason ``solved``).
    """

    RESUMABLE: ClassVar[tuple[str, ...]] = (
        *TrainSettings.RESUMABLE,
        "eval_sequences",
        "solved_below",
    )
    ARCHITECTURE: ClassVar[tuple[str, ...]] = (
        "task",
        "model",
        "controller",
        "controller_size",
        "controller_layers",
        "memory_size",
        "memory_width",
        "read_heads",
        "write_heads",
        "shift_range",
        "memory_init",
        "lstm_cell",
        "lstm_size",
        "lstm_layers",
    )

    # the task
    task: str = "copy"  # a name of carousel.data.memory_tasks.MEMORY_TASKS
    min_length: int | None = None  # training lengths (default: the paper's, e.g. copy 1..20)
    max_length: int | None = None
    # the model
    model: str = "ntm"  # "ntm", or "lstm": the baseline (lstm_* below)
    controller: str = "lstm"  # a cell of carousel.CELLS, or "feedforward"
    controller_size: int = 100
    controller_layers: int = 1
    memory_size: int = 128  # N
    memory_width: int = 20  # M
    read_heads: int = 1
    write_heads: int = 1
    shift_range: int = 1  # shifts −S..S
    memory_init: str = "constant"  # "constant", "learned" or "random"
    head_clip: float = 20.0  # clip the controller's raw head outputs; 0: off
    lstm_cell: str = "lstm"
    lstm_size: int = 256
    lstm_layers: int = 3
    # the data stream
    batch_size: int = 16
    epoch_sequences: int = 4_000
    eval_sequences: int = 512
    eval_batch_size: int = 128
    solved_below: float = 0.0  # stop once an evaluation has fewer bit errors/seq; 0: never
    # the loop's fields, with this job's defaults
    optimizer: str = "adam"
    lr: float = 1e-3
    clip: float = 10.0
    epochs: int = 15
    log_every: int = 25
    threads: int | None = 1  # tiny per-step products: one thread is fastest

    def validate(self) -> None:
        super().validate()
        spec = get_memory_task(self.task)  # raises for an unknown task
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}; got {self.model!r}")
        if self.controller != FEEDFORWARD:
            get_cell(self.controller)
        get_cell(self.lstm_cell)
        if self.memory_init not in MEMORY_INITS:
            raise ValueError(
                f"memory_init must be one of {', '.join(MEMORY_INITS)}; got {self.memory_init!r}"
            )
        check_at_least(
            self,
            1,
            "controller_size",
            "controller_layers",
            "memory_size",
            "memory_width",
            "read_heads",
            "lstm_size",
            "lstm_layers",
            "batch_size",
            "epoch_sequences",
            "eval_sequences",
            "eval_batch_size",
        )
        check_at_least(self, 0, "write_heads", "shift_range", "head_clip", "solved_below")
        least = spec.length_range[0] if spec.name == "associative-recall" else 1
        check_at_least(self, least, "min_length", "max_length")
        lo, hi = self.lengths
        if lo > hi:
            raise ValueError(f"min_length must be ≤ max_length; got {lo} > {hi}")
        if 2 * self.shift_range + 1 > self.memory_size:
            raise ValueError(
                f"shift_range S needs 2S + 1 ≤ memory_size; got S = {self.shift_range}, "
                f"memory_size = {self.memory_size}"
            )

    @property
    def lengths(self) -> tuple[int, int]:
        """The training lengths (min, max): the settings', else the task's."""
        lo, hi = get_memory_task(self.task).length_range
        return (
            self.min_length if self.min_length is not None else lo,
            self.max_length if self.max_length is not None else hi,
        )

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.epoch_sequences // self.batch_size)
