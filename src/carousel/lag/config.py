"""The settings of a long-time-lag run (``carousel lag``, ``carousel train lag``; preset
``lag``) and of a sweep (``carousel lag --sweep``; preset ``lag-sweep``): one frozen dataclass
of scalars, the loop's :class:`~carousel.train.TrainSettings` and the task's own."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from carousel.cells import CELLS, get_cell
from carousel.cells.lstm import GATE_BIASES
from carousel.config import check_at_least
from carousel.data.tasks import MIN_T, get_task
from carousel.train import TrainSettings

#: the fields that set an initial gate bias (``LSTMOptions``' own), and the gate of each
BIAS_FIELDS = GATE_BIASES


@dataclasses.dataclass(frozen=True)
class LagConfig(TrainSettings):
    """Task, cell, budget and criterion; any field is a ``--field-name`` option.  The loop's
    settings are :class:`TrainSettings`'s with the 1997 experiments' defaults below (Adam
    0.01, clipping at 1, one thread); ``log_every`` and ``checkpoint_every`` count steps of
    ``batch_size`` sequences.  The ``sweep_*`` fields apply to ``carousel lag --sweep``."""

    #: a resumed run may change how long and how often; the sweep's lists name other runs
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        *TrainSettings.RESUMABLE,
        "sweep_tasks",
        "sweep_T",
        "sweep_cells",
        "sweep_seeds",
    )
    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("task", "cell", "hidden_size")

    task: str = "adding"
    T: int = 100
    cell: str = "lstm1997"
    hidden_size: int = 32
    forget_bias: float | None = None  # initial forget-gate bias (cells with a forget gate)
    input_gate_bias: float | None = None  # initial input-gate bias; unset: the layer's init
    output_gate_bias: float | None = None  # initial output-gate bias; unset: the layer's init
    batch_size: int = 32
    budget: int = 500_000  # training sequences before giving up
    window: int = 2560  # recent training sequences that must all be correct before a test
    test_size: int = 2560
    # the loop's fields, with the experiments' defaults
    lr: float = 0.01
    clip: float = 1.0  # gradient-norm clipping; 0 switches it off
    threads: int | None = 1
    checkpoint_every: int = 200
    # a lag run folder (or checkpoint) whose weights start this run instead of the cell's
    # initialisation: the same task, cell and hidden size at another T (a curriculum); ""
    init_from: str = ""
    sweep_tasks: str = "adding"
    sweep_T: str = "10,20,50"
    sweep_cells: str = "rnn,lstm1997,lstm,peephole,gru"
    sweep_seeds: int = 3

    def cell_options(self) -> dict[str, float]:
        """The initial gate biases that are set, as the cell's options (``LSTMOptions``)."""
        return {k: getattr(self, k) for k in BIAS_FIELDS if getattr(self, k) is not None}

    def validate(self) -> None:
        super().validate()
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
            self, 1, "hidden_size", "batch_size", "budget", "window", "test_size", "sweep_seeds"
        )
        if self.epochs != 1:
            raise ValueError(
                f"epochs must be 1 for a lag run (the budget of training sequences sets its "
                f"length); got {self.epochs}"
            )
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


__all__ = ["BIAS_FIELDS", "LagConfig", "sweep_lists"]
