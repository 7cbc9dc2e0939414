"""What every cell family provides to the layers: its gate blocks, its state, its step.

A *cell* is one time step.  Each family (Elman RNN, LSTM, GRU) is a frozen dataclass of
options whose methods say which weight blocks and peepholes exist and run one step of the
reference equations.  The layers (:mod:`carousel.layers`) own everything else: time,
direction, stacking, lengths, state and validation.

Shapes follow the legend in :mod:`carousel`: T, B, I, H, G.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from carousel.errors import ArgumentError

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "identity": lambda a: a,
}


def check_choice(what: str, value: object, allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming ``what`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ArgumentError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")


def check_rate(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a probability in [0, 1)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ArgumentError(f"{name} must be a number in [0, 1); got {value!r}")
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ArgumentError(f"{name} must be a number in [0, 1); got {value!r}")


#: the regularisers every family has (training mode only; see :mod:`carousel.cells.masks`)
REGULARISERS = ("zoneout_hidden", "recurrent_dropout", "weight_drop")


@dataclasses.dataclass(frozen=True)
class CellOptions(abc.ABC):
    """Base of the per-family option dataclasses.

    Subclasses set ``family`` and ``state_names`` and implement :meth:`gates` and
    :meth:`step_with_gates` (of which :meth:`step` is the first half);
    those with peepholes override :meth:`peephole_names`.

    The regularisers every family shares (keyword-only, all 0 by default: the plain cell;
    they act in training mode only, the masks drawn by the layer, :mod:`carousel.cells.masks`):

    Attributes:
        zoneout_hidden: zoneout on h (Krueger et al. 2016): each unit of each step keeps its
            previous value with this probability, h_t = d ⊙ h_{t−1} + (1 − d) ⊙ h̃_t; in eval
            mode d is the rate itself (the expectation).
        recurrent_dropout: variational dropout on h_{t−1} inside the recurrent product
            (Gal & Ghahramani 2016): one mask per sequence for all its steps, W_hh (m ⊙ h_{t−1})
            with m ∈ {0, 1/(1 − p)}; eval mode is the plain cell.
        weight_drop: DropConnect on W_hh (Wan et al. 2013; AWD-LSTM's weight drop): one mask
            per forward call (batch) on the recurrent weights, W_hh ⊙ M / (1 − p); eval mode is
            the plain cell.
    """

    family: ClassVar[str] = ""
    #: names of the state tensors carried between steps; the first is the output h.
    state_names: ClassVar[tuple[str, ...]] = ("h",)

    zoneout_hidden: float = dataclasses.field(default=0.0, kw_only=True)
    recurrent_dropout: float = dataclasses.field(default=0.0, kw_only=True)
    weight_drop: float = dataclasses.field(default=0.0, kw_only=True)

    @abc.abstractmethod
    def gates(self) -> tuple[str, ...]:
        """Letters of the weight blocks stacked in ``weight_ih``/``weight_hh``, in order."""

    def peephole_names(self) -> tuple[str, ...]:
        """Names of the diagonal peephole weights (``"ci"``, ``"cf"``, ``"co"``) present."""
        return ()

    def validate(self) -> None:
        """Raise ``ValueError`` for an option combination that makes no sense."""
        for name in self.regularisers():
            check_rate(name, getattr(self, name))

    def regularisers(self) -> tuple[str, ...]:
        """Names of the family's regulariser options (rates in [0, 1))."""
        return REGULARISERS

    def active_regularisers(self) -> tuple[str, ...]:
        """The regulariser options set above 0."""
        return tuple(name for name in self.regularisers() if getattr(self, name))

    @property
    def layer_norm_on(self) -> bool:
        """Whether the cell normalises its pre-activations (the LSTM's ``layer_norm``)."""
        return bool(getattr(self, "layer_norm", False))

    def needs_bias(self) -> bool:
        """Whether the options set an initial bias (so a layer without biases is an error)."""
        return False

    def init_bias(self, bias_ih: Tensor, bias_hh: Tensor, hidden_size: int) -> None:
        """Adjust freshly initialised biases in place (default: leave torch's init)."""

    def step(
        self,
        gx: Tensor,
        state: tuple[Tensor, ...],
        w_hh: Tensor,
        b_hh: Tensor | None,
        peep: dict[str, Tensor],
        **extra: object,
    ) -> tuple[Tensor, ...]:
        """One step of the reference equations: :meth:`step_with_gates` without the gates.

        Args:
            gx: ``W_ih x_t + b_ih``, the input's share of every gate, (B, G·H).  The layer
                computes it for all steps in one product.
            state: the previous state, one (B, H) tensor per name in ``state_names``.
            w_hh: (G·H, H) recurrent weights; ``b_hh``: (G·H,) or ``None``.
            peep: peephole weights by name, (H,) each.
            extra: ``masks``, this step's regulariser masks (:meth:`Masks.at
                <carousel.cells.masks.Masks.at>`; none: the plain cell), and the LSTM's
                ``w_hr`` (projection) and ``ln`` (layer-norm parameters).

        Returns:
            the new state; its first tensor is the step's output h_t, (B, H).
        """
        return self.step_with_gates(gx, state, w_hh, b_hh, peep, **extra)[0]

    def input_share(self, x: Tensor, w_ih: Tensor, b_ih: Tensor | None, ln=None) -> Tensor:
        """The input's share of every gate for all steps, W_ih x + b_ih: (T, B, G·H)."""
        return torch.nn.functional.linear(x, w_ih, b_ih)

    @abc.abstractmethod
    def step_with_gates(
        self,
        gx: Tensor,
        state: tuple[Tensor, ...],
        w_hh: Tensor,
        b_hh: Tensor | None,
        peep: dict[str, Tensor],
    ) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        """One step of the reference equations (arguments as :meth:`step`), and the values
        the step computed on the way: ``(new state, {gate letter: (B, H)})``.

        The gates are those of :meth:`gates` that the step computes as tensors (LSTM i, f,
        g, o, the ones the variant has, with CIFG's f = 1 − i; GRU r, z, n; the Elman RNN's
        single block is its output h).  :meth:`step` is this function's first half, so a
        record of the gates cannot disagree with the step.
        """

    def replace(self, **changes: object) -> CellOptions:
        """A copy with some options changed, validated; unknown names raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ArgumentError(
                f"unknown {self.family} option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known)) or 'none'}"
            )
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    @property
    def num_gates(self) -> int:
        return len(self.gates())
