"""Single-step cell modules with ``torch.nn.RNNCell`` / ``GRUCell`` / ``LSTMCell``'s interface.

For users who write their own loop over time (a Neural Turing Machine's controller, a
decoder feeding back its own samples): ``cell(x_t, state)`` runs one step of the registered
cell's reference equations (:meth:`carousel.cells.CellOptions.step`; the math lives only in
``carousel/cells/<family>.py``) and returns the new state as torch.nn does, ``h`` or
``(h, c)``.  Parameters are named and shaped as torch.nn's cells (``weight_ih`` (G·H, I),
``weight_hh`` (G·H, H), ``bias_ih``, ``bias_hh`` (G·H,)), so state dicts move both ways;
variants with peepholes add ``weight_ci``/``weight_cf``/``weight_co`` (H,).

Shapes follow the legend in :mod:`carousel`: B, I, H, G.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carousel.cells import CELLS, CellOptions, get_cell
from carousel.errors import ArgumentError, ArgumentTypeError

CellState = Tensor | tuple[Tensor, Tensor]

_TORCH_NAMES = {"rnn": "RNNCell", "gru": "GRUCell", "lstm": "LSTMCell"}


def _check_size(name: str, value: object, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ArgumentTypeError(
            f"{name} should be of type int, got: {type(value).__name__} "
            f"(expected an integer >= {minimum}; got {value!r})"
        )
    if value < minimum:
        raise ArgumentError(f"{name} must be at least {minimum}; got {value}")
    return int(value)


class RecurrentCell(nn.Module):
    """One step of a registered cell, with torch.nn's cell interface.

    Args:
        cell: the cell's options (an entry of :data:`carousel.CELLS`, possibly changed).
        input_size: I, features of the input.
        hidden_size: H, units of the state (0 is allowed, as in torch.nn).
        bias: whether the cell has ``bias_ih`` and ``bias_hh``.
    """

    def __init__(
        self,
        cell: CellOptions,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        cell.validate()
        extras = [*cell.active_regularisers(), *(["layer_norm"] if cell.layer_norm_on else [])]
        if extras:
            got = ", ".join(f"{n}={getattr(cell, n)!r}" for n in extras)
            raise ArgumentError(
                f"{', '.join(extras)} act in the layers (carousel.LSTM, GRU, RNN), which draw "
                "the masks per sequence; a cell module runs one step of the plain cell "
                f"(expected none of them; got {got})"
            )
        self.cell = cell
        self.input_size = _check_size("input_size", input_size, 1)
        self.hidden_size = _check_size("hidden_size", hidden_size, 0)
        # as torch.nn's cells, any truthy ``bias`` means biases (torch's own tests pass
        # ``RNNCell(10, 20, 'relu')``, i.e. bias='relu')
        if cell.needs_bias() and not bias:
            raise ArgumentError(f"{cell!r} sets an initial bias, so it needs bias=True; got False")
        self.bias = bias
        G, H = cell.num_gates, self.hidden_size
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(G * H, self.input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(G * H, H, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G * H, **factory))
            self.bias_hh = nn.Parameter(torch.empty(G * H, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        for p in cell.peephole_names():
            self.register_parameter(f"weight_{p}", nn.Parameter(torch.empty(H, **factory)))
        self.reset_parameters()

    @property
    def _name(self) -> str:
        return _TORCH_NAMES[self.cell.family]

    def reset_parameters(self) -> None:
        """torch.nn's initialisation, U(−1/√H, 1/√H), then the cell's bias adjustments."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-bound, bound)
            if self.bias:
                self.cell.init_bias(self.bias_ih, self.bias_hh, self.hidden_size)

    def forward(self, input: Tensor, hx: CellState | None = None) -> CellState:
        """One step.

        Args:
            input: (B, I), or (I,) unbatched.
            hx: ``h`` (RNN, GRU) or ``(h, c)`` (LSTM family), each (B, H) ((H,) unbatched);
                zeros if omitted.

        Returns:
            the new state, ``h'`` or ``(h', c')``, shaped as ``hx``.
        """
        x, states, unbatched = self._prepare(input, hx)
        gx = F.linear(x, self.weight_ih, self.bias_ih)  # (B, G·H)
        peep = {p: getattr(self, f"weight_{p}") for p in self.cell.peephole_names()}
        new = self.cell.step(gx, states, self.weight_hh, self.bias_hh, peep)
        if unbatched:
            new = tuple(s.squeeze(0) for s in new)
        return new[0] if len(new) == 1 else tuple(new)

    def _prepare(
        self, input: Tensor, hx: CellState | None
    ) -> tuple[Tensor, tuple[Tensor, ...], bool]:
        """Validate; return x (B, I), the state tensors (B, H) each, and unbatched."""
        name, names = self._name, self.cell.state_names
        if not isinstance(input, Tensor):
            raise ArgumentTypeError(f"expected input to be a Tensor; got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ArgumentError(
                f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead "
                f"(expected (B, I) or (I,); got shape {tuple(input.shape)})"
            )
        self._check_tensor("input", input)
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        if x.size(1) != self.input_size:
            raise ArgumentError(
                f"input has inconsistent input_size: got {x.size(1)} expected {self.input_size}"
            )
        B, H = x.size(0), self.hidden_size
        if hx is None:
            zeros = torch.zeros(B, H, dtype=x.dtype, device=x.device)
            return x, tuple(zeros for _ in names), unbatched
        parts = (hx,) if isinstance(hx, Tensor) else tuple(hx)
        if len(parts) != len(names) or not all(isinstance(p, Tensor) for p in parts):
            want = "a tensor h" if len(names) == 1 else "a tuple (h, c)"
            raise ArgumentTypeError(
                f"expected hx to be {want} for {name}; got {type(hx).__name__} of {len(parts)}"
            )
        states = []
        for i, p in enumerate(parts):
            if p.dim() not in (1, 2):
                which = "hidden" if len(names) == 1 else f"hx[{i}]"
                raise ArgumentError(
                    f"{name}: Expected {which} to be 1D or 2D, got {p.dim()}D instead"
                )
            if p.dim() != input.dim():
                raise ArgumentError(
                    f"expected hx of rank {input.dim()} like the input "
                    f"({'(H,)' if unbatched else '(B, H)'}); got shape {tuple(p.shape)}"
                )
            p = p.unsqueeze(0) if unbatched else p
            if p.size(0) != B:
                raise ArgumentError(
                    f"Input batch size {B} doesn't match hidden{i} batch size {p.size(0)}"
                )
            if p.size(1) != H:
                raise ArgumentError(
                    f"hidden{i} has inconsistent hidden_size: got {p.size(1)}, expected {H}"
                )
            self._check_tensor(f"hx[{i}]" if len(names) > 1 else "hx", p)
            states.append(p)
        return x, tuple(states), unbatched

    def _check_tensor(self, what: str, t: Tensor) -> None:
        ref = self.weight_ih
        if not t.is_floating_point() or t.dtype != ref.dtype:
            raise ArgumentError(
                f"expected {what} of dtype {ref.dtype} (the parameters'); got {t.dtype}"
            )
        if t.device != ref.device:
            raise ArgumentError(
                f"expected {what} on {ref.device} (the parameters' device); got {t.device}"
            )

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s + f", cell={self.cell!r}"


class RNNCell(RecurrentCell):
    """Elman cell with ``torch.nn.RNNCell``'s arguments: h' = φ(W_ih x + b_ih + W_hh h + b_hh).

    ``nonlinearity`` is ``"tanh"`` (default), ``"relu"`` or ``"sigmoid"``.  Returns h'.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            get_cell("rnn", nonlinearity=nonlinearity),
            input_size,
            hidden_size,
            bias,
            device=device,
            dtype=dtype,
        )
        self.nonlinearity = nonlinearity


class GRUCell(RecurrentCell):
    """GRU cell with ``torch.nn.GRUCell``'s arguments and equations.  Returns h'."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(get_cell("gru"), input_size, hidden_size, bias, device=device, dtype=dtype)


class LSTMCell(RecurrentCell):
    """The LSTM family's cell with ``torch.nn.LSTMCell``'s arguments.  Returns ``(h', c')``.

    ``variant`` names an LSTM entry of :data:`carousel.CELLS` (``"lstm"``, the default, is
    torch.nn.LSTMCell's cell; ``"lstm1997"``, ``"peephole"``, ``"cifg"``, …) and keyword
    switches change it, as for :class:`carousel.LSTM`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        variant: str = "lstm",
        **switches: object,
    ) -> None:
        if variant not in CELLS or CELLS[variant].family != "lstm":
            known = [n for n, c in CELLS.items() if c.family == "lstm"]
            raise ArgumentError(f"unknown LSTM variant {variant!r}; known: {', '.join(known)}")
        super().__init__(
            get_cell(variant, **switches),
            input_size,
            hidden_size,
            bias,
            device=device,
            dtype=dtype,
        )
        self.variant = variant


def make_cell(cell: str, input_size: int, hidden_size: int, **kwargs) -> RecurrentCell:
    """The cell module for registry entry ``cell`` ("rnn", "gru", "lstm1997", …), built with
    torch.nn's cell arguments and, for LSTM variants, switches."""
    if cell not in CELLS:
        raise ArgumentError(f"unknown cell {cell!r}; known: {', '.join(CELLS)}")
    family = CELLS[cell].family
    if family == "lstm":
        return LSTMCell(input_size, hidden_size, variant=cell, **kwargs)
    return {"rnn": RNNCell, "gru": GRUCell}[family](input_size, hidden_size, **kwargs)


__all__ = ["GRUCell", "LSTMCell", "RNNCell", "RecurrentCell", "make_cell"]
