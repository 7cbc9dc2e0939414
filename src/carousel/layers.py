"""Layers: a cell run over time, in one or two directions, stacked to any depth.

:class:`RecurrentLayer` owns everything that is not a cell's math: torch.nn's arguments and
parameter layout, batch_first, unbatched input, ``PackedSequence`` and ``lengths``,
initial and final states, dropout between layers, truncated-BPTT helpers and validation of
everything a user passes in.  :class:`RNN`, :class:`LSTM` and :class:`GRU` only choose the cell.

Shapes follow the legend in :mod:`carousel`: T, B, I, H, G, L (layers), D (directions).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from carousel.backends import BACKENDS, LayerWeights, check_backend, needs, select_backend
from carousel.cells import CELLS, FAMILIES, CellOptions, get_cell
from carousel.cells.lstm import LN_PARAMETERS
from carousel.cells.masks import draw_masks, drop_weight
from carousel.errors import ArgumentError, ArgumentTypeError

State = Tensor | tuple[Tensor, ...]


def detach_state(state: State | None) -> State | None:
    """Cut the graph behind a state for truncated BPTT: ``h`` or ``(h, c)`` detached."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    return tuple(s.detach() for s in state)


def reset_state(state: State | None, reset: Tensor | Sequence[bool]) -> State | None:
    """Zero the state of the sequences whose document ended.

    Args:
        state: ``h`` or ``(h, c)``, each (L·D, B, H).
        reset: (B,) booleans; True zeroes that sequence's state in every layer and direction.
    """
    if state is None:
        return None
    tensors = (state,) if isinstance(state, Tensor) else tuple(state)
    reset = torch.as_tensor(reset, device=tensors[0].device)
    B = tensors[0].size(-2)
    if reset.shape != (B,) or reset.dtype not in (torch.bool, torch.uint8, torch.int64):
        raise ArgumentError(
            f"reset must be a (B,) = ({B},) boolean mask; got {reset.dtype} {tuple(reset.shape)}"
        )
    keep = (~reset.bool()).to(tensors[0].dtype).unsqueeze(-1)  # (B, 1)
    out = tuple(s * keep for s in tensors)
    return out[0] if isinstance(state, Tensor) else out


def _check_positive_int(name: str, value: object) -> int:
    """``value`` as an int, or torch.nn's TypeError / ValueError (both ArgumentErrors)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ArgumentTypeError(
            f"{name} should be of type int, got: {type(value).__name__} "
            f"(expected a positive integer; got {value!r})"
        )
    if value <= 0:
        raise ArgumentError(
            f"{name} must be greater than zero (expected a positive integer; got {value})"
        )
    return int(value)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ArgumentTypeError(
            f"{name} should be of type bool, got: {type(value).__name__} "
            f"(expected True or False; got {value!r})"
        )
    return value


class RecurrentLayer(nn.Module):
    """A stack of (bi)directional recurrent layers of one cell, with torch.nn's interface.

    Args:
        cell: the cell's options (an entry of :data:`carousel.CELLS`, possibly changed).
        input_size: I, features of each input step.
        hidden_size: H, units of each direction.
        num_layers: L, stacked layers; layer k > 0 reads the D·H outputs of layer k − 1.
        bias: whether each layer has ``bias_ih`` and ``bias_hh``.
        batch_first: input and output are (B, T, ·) instead of (T, B, ·); states are not.
        dropout: dropout on the outputs of every layer but the last, in training.
        bidirectional: add a backward direction (suffix ``_reverse``) and concatenate.
        backend: ``"auto"`` (fastest available), ``"reference"`` (autograd through the
            step equations) or a registered kernel's name.

    Parameters are named and shaped as in torch.nn (``weight_ih_l{k}{suffix}`` (G·H, I),
    ``weight_hh_l{k}{suffix}`` (G·H, H), ``bias_ih_l{k}{suffix}``, ``bias_hh_l{k}{suffix}``
    (G·H,), peepholes ``weight_c{i,f,o}_l{k}{suffix}`` (H,)), initialised uniformly in
    ±1/√H as torch.nn does.  An LSTM cell with ``proj_size`` P > 0 adds torch.nn's
    ``weight_hr_l{k}{suffix}`` (P, H) after the biases; its outputs and h states then have P
    units (``weight_hh`` is (G·H, P), layer k > 0 reads D·P inputs) while c keeps H.
    """

    def __init__(
        self,
        cell: CellOptions,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        cell.validate()
        self.cell = cell
        self.input_size = _check_positive_int("input_size", input_size)
        self.hidden_size = _check_positive_int("hidden_size", hidden_size)
        self.num_layers = _check_positive_int("num_layers", num_layers)
        _check_bool("bias", bias)
        _check_bool("batch_first", batch_first)
        _check_bool("bidirectional", bidirectional)
        if (
            not isinstance(dropout, numbers.Real)
            or isinstance(dropout, bool)
            or not 0 <= dropout <= 1
        ):
            raise ArgumentError(
                "dropout should be a number in range [0, 1] representing the probability of "
                f"an element being zeroed; got {dropout!r}"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout acts between stacked layers; with num_layers=1 it does nothing "
                f"(got dropout={dropout})",
                UserWarning,
                stacklevel=2,
            )
        if cell.needs_bias() and not bias:
            raise ArgumentError(f"{cell!r} sets an initial bias, so it needs bias=True; got False")
        check_backend(backend)
        self.proj_size = int(getattr(cell, "proj_size", 0))
        if self.proj_size >= self.hidden_size:
            raise ArgumentError(
                "proj_size has to be smaller than hidden_size; got "
                f"proj_size={self.proj_size}, hidden_size={self.hidden_size}"
            )
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.backend = backend
        self.num_directions = 2 if bidirectional else 1

        G, H = cell.num_gates, self.hidden_size
        out = self.output_size
        factory = {"device": device, "dtype": dtype}
        self._weight_names: list[list[str]] = []  # per (layer, direction), k·D + d
        for k in range(self.num_layers):
            layer_in = self.input_size if k == 0 else out * self.num_directions
            for d in range(self.num_directions):
                sfx = f"_l{k}" + ("_reverse" if d else "")
                shapes = {f"weight_ih{sfx}": (G * H, layer_in), f"weight_hh{sfx}": (G * H, out)}
                if bias:
                    shapes |= {f"bias_ih{sfx}": (G * H,), f"bias_hh{sfx}": (G * H,)}
                if self.proj_size:
                    shapes |= {f"weight_hr{sfx}": (self.proj_size, H)}
                shapes |= {f"weight_{p}{sfx}": (H,) for p in cell.peephole_names()}
                if cell.layer_norm_on:  # the LSTM's layer-norm gains and biases
                    units = {"G·H": G * H, "H": H}
                    shapes |= {f"{n}{sfx}": (units[u],) for n, (u, _) in LN_PARAMETERS.items()}
                for name, shape in shapes.items():
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                self._weight_names.append(list(shapes))
        self.reset_parameters()

    # ------------------------------------------------------------------ parameters
    @property
    def output_size(self) -> int:
        """Units of each direction's output and h state: proj_size if set, else hidden_size."""
        return self.proj_size or self.hidden_size

    def state_sizes(self) -> tuple[int, ...]:
        """Units of each state tensor (``cell.state_names``): h has :attr:`output_size`, the
        LSTM's c has hidden_size."""
        return tuple(
            self.output_size if i == 0 else self.hidden_size
            for i in range(len(self.cell.state_names))
        )

    def reset_parameters(self) -> None:
        """torch.nn's initialisation, U(−1/√H, 1/√H) for every parameter, then the cell's
        own bias adjustments (``forget_bias``, ``input_gate_bias``, ``output_gate_bias``)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-bound, bound)
            if self.bias:
                for idx in range(len(self._weight_names)):
                    w = self.layer_weights(idx)
                    self.cell.init_bias(w.b_ih, w.b_hh, self.hidden_size)
            if self.cell.layer_norm_on:  # gains 1, biases 0 (Ba et al.)
                for idx in range(len(self._weight_names)):
                    for name, p in self.layer_weights(idx).ln.items():
                        p.fill_(LN_PARAMETERS[name][1])

    def layer_weights(self, index: int) -> LayerWeights:
        """The parameters of layer-direction ``index`` = k·D + d."""
        names = self._weight_names[index]
        params = {n.rsplit("_l", 1)[0]: getattr(self, n) for n in names}
        return LayerWeights(
            w_ih=params["weight_ih"],
            w_hh=params["weight_hh"],
            b_ih=params.get("bias_ih"),
            b_hh=params.get("bias_hh"),
            peep={p: params[f"weight_{p}"] for p in self.cell.peephole_names()},
            w_hr=params.get("weight_hr"),
            ln={n: params[n] for n in LN_PARAMETERS} if self.cell.layer_norm_on else None,
        )

    def layer_masks(self, x: Tensor, k: int, training: bool | None = None) -> tuple:
        """The regularisers' masks of layer k's directions for its input x (T, B, ·), drawn
        from torch's generator in training mode (``training``, default ``self.training``);
        ``None`` where the cell runs plain (:mod:`carousel.cells.masks`)."""
        training = self.training if training is None else training
        H, P = self.hidden_size, self.output_size
        return tuple(draw_masks(self.cell, x, H, P, training) for _ in range(self.num_directions))

    def _call_weights(self, index: int) -> LayerWeights:
        """:meth:`layer_weights` as a forward call uses them: in training with
        ``weight_drop`` > 0, W_hh ⊙ M with a fresh DropConnect mask (under autograd)."""
        w = self.layer_weights(index)
        p = self.cell.weight_drop
        if p and self.training:
            w = dataclasses.replace(w, w_hh=drop_weight(w.w_hh, p))
        return w

    @property
    def _flat_weights_names(self) -> list[str]:
        """torch.nn's list of weight names, layer by layer, direction by direction."""
        return [name for names in self._weight_names for name in names]

    @property
    def _all_weights(self) -> list[list[str]]:
        """torch.nn's weight names per layer-direction (k·D + d)."""
        return [list(names) for names in self._weight_names]

    @property
    def _flat_weights(self) -> list[Tensor | None]:
        """The current tensors under ``_flat_weights_names``, read afresh each time, so a
        reparametrisation (``torch.nn.utils.weight_norm``, ``parametrizations``, pruning)
        shows here as in torch.nn."""
        return [getattr(self, name, None) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """torch.nn's ``all_weights``: the tensors of each layer-direction."""
        return [[getattr(self, name) for name in names] for names in self._weight_names]

    def flatten_parameters(self) -> None:
        """Kept for code written for torch.nn; carousel's parameters need no flattening."""

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input: Tensor | PackedSequence,
        hx: State | None = None,
        *,
        lengths: Tensor | Sequence[int] | None = None,
        reset: Tensor | Sequence[bool] | None = None,
    ) -> tuple[Tensor | PackedSequence, State]:
        """Run the stack over a batch of sequences.

        Args:
            input: (T, B, I), or (B, T, I) with ``batch_first``, or (T, I) unbatched, or a
                ``PackedSequence`` (sorted or not).
            hx: initial state, ``h0`` or ``(h0, c0)`` for LSTM cells, each (L·D, B, H)
                ((L·D, H) unbatched; h0 (L·D, B, P) with ``proj_size`` P); zeros if omitted.
            lengths: (B,) true lengths in 1..T of a padded batch; need not be sorted.
                Output past a sequence's length is zero and its final state is taken at its
                last real step.
            reset: (B,) booleans: zero ``hx`` for these sequences first (their document ended).

        Returns:
            ``(output, h_n)``, or ``(output, (h_n, c_n))`` for LSTM cells, as torch.nn:
            output (T, B, D·H) (batch_first: (B, T, D·H); packed in, packed out) and final
            states (L·D, B, H); with ``proj_size`` P, P in place of H for output and h_n.
        """
        x, lengths, packed, unbatched = self._prepare_input(input, lengths)
        state = self._prepare_state(hx, x, unbatched)
        if reset is not None:
            state = reset_state(state, reset)
        if torch.onnx.is_in_onnx_export():  # ONNX's own recurrent operators, one per layer
            from carousel.onnx_export import export_layers

            if packed is not None:
                raise ArgumentError(
                    "ONNX export takes padded input (T, B, I) with lengths=; got a PackedSequence"
                )
            return self._finish(*export_layers(self, x, state, lengths), packed, unbatched)

        finals: list[tuple[Tensor, ...]] = []
        for k in range(self.num_layers):
            idxs = [k * self.num_directions + d for d in range(self.num_directions)]
            weights = tuple(self._call_weights(idx) for idx in idxs)  # DropConnect first,
            masks = self.layer_masks(x, k)  # then the masks: a fixed order of draws
            wanted = needs(self.cell, masks[0])
            if x.size(1) == 0:  # no sequences: autograd through the equations, as torch.nn
                backend = BACKENDS["reference"]
            else:
                backend = select_backend(self.backend, self.cell, x, wanted)
            states = tuple(tuple(s[idx] for s in state) for idx in idxs)
            kw = {"masks": masks} if wanted else {}  # only backends with features take it
            if len(idxs) == 2 and backend.run_pair is not None:
                results = backend.run_pair(self.cell, x, states, weights, lengths, **kw)
            else:
                results = [
                    backend.run(
                        self.cell,
                        x,
                        states[d],
                        weights[d],
                        lengths,
                        d == 1,
                        **({"masks": masks[d]} if wanted else {}),
                    )
                    for d in range(len(idxs))
                ]
            outputs = [out for out, _ in results]
            finals.extend(final for _, final in results)
            x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)  # (T, B, D·H|P)
            if self.dropout > 0 and self.training and k < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, training=True)

        h_n = tuple(torch.stack(parts) for parts in zip(*finals))  # each (L·D, B, H)
        return self._finish(x, h_n, packed, unbatched)

    def _finish(
        self,
        x: Tensor,
        h_n: tuple[Tensor, ...],
        packed: PackedSequence | None,
        unbatched: bool,
    ) -> tuple[Tensor | PackedSequence, State]:
        """torch.nn's return values from x (T, B, D·H) and the final states (L·D, B, H)."""
        if unbatched:
            x, h_n = x.squeeze(1), tuple(s.squeeze(1) for s in h_n)
        output: Tensor | PackedSequence
        if packed is not None:
            output = _repack(x, packed)
        else:
            output = x.transpose(0, 1) if self.batch_first and not unbatched else x
        return output, (h_n[0] if len(h_n) == 1 else h_n)

    def _prepare_input(
        self, input: Tensor | PackedSequence, lengths: Tensor | Sequence[int] | None
    ) -> tuple[Tensor, Tensor | None, PackedSequence | None, bool]:
        """Validate the input; return x (T, B, I), lengths (B,) or None, packed, unbatched."""
        packed, unbatched = None, False
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ArgumentError("pass either a PackedSequence or lengths, not both")
            packed = input
            x, lengths = pad_packed_sequence(input)  # (T, B, I), original batch order
            x = self._from_autocast(x)
            self._check_tensor("input", x)
        elif isinstance(input, Tensor):
            input = self._from_autocast(input)
            self._check_tensor("input", input)
            if input.dim() not in (2, 3):
                raise ArgumentError(
                    "expected input of rank 3, (T, B, I) or (B, T, I) with batch_first, or "
                    f"rank 2 (T, I) unbatched; got rank {input.dim()} with shape "
                    f"{tuple(input.shape)}"
                )
            unbatched = input.dim() == 2
            if unbatched:
                x = input.unsqueeze(1)
            else:
                x = input.transpose(0, 1) if self.batch_first else input
        else:
            raise ArgumentTypeError(
                f"expected input to be a Tensor or PackedSequence; got {type(input).__name__}"
            )
        if x.size(-1) != self.input_size:
            raise ArgumentError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got "
                f"{x.size(-1)} (features of each step; input shape {tuple(x.shape)})"
            )
        T, B = x.size(0), x.size(1)
        if T == 0:
            raise ArgumentError(
                "Expected sequence length to be larger than 0 in RNN (expected T >= 1; got "
                f"input shape {tuple(x.shape)})"
            )
        if lengths is not None and torch.onnx.is_in_onnx_export():
            lengths = torch.as_tensor(lengths)  # values are data: ONNX's sequence_lens
            if lengths.shape != (B,):
                raise ArgumentError(f"lengths must have shape (B,); got {tuple(lengths.shape)}")
        elif lengths is not None:
            lengths = _check_lengths(lengths, T, B, x.device)
        return x, lengths, packed, unbatched

    def _from_autocast(self, t: Tensor) -> Tensor:
        """Inside ``torch.autocast``, input in the autocast dtype (the output of an autocast
        layer before this one) is taken in the parameters' dtype: states stay in float32, and
        the matrix products' precision is the backend's choice (the fused kernels run them in
        bfloat16 under CPU bfloat16 autocast)."""
        device = t.device.type
        if (
            torch.amp.is_autocast_available(device)
            and torch.is_autocast_enabled(device)
            and t.dtype == torch.get_autocast_dtype(device)
            and self.weight_ih_l0.dtype == torch.float32
        ):
            return t.to(torch.float32)
        return t

    def _check_tensor(self, what: str, t: Tensor) -> None:
        """``t`` (the input or a state) in the parameters' dtype, on their device; torch's
        wording for the input."""
        ref = self.weight_ih_l0
        if not t.is_floating_point():
            raise ArgumentError(f"expected {what} of a floating-point dtype; got {t.dtype}")
        if t.dtype != ref.dtype:
            if what == "input":
                raise ArgumentError(
                    f"RNN input dtype ({t.dtype}) does not match weight dtype ({ref.dtype}): "
                    f"expected input of dtype {ref.dtype} (the parameters'); got {t.dtype}. "
                    f"Convert input: input.to({ref.dtype}), or convert model: model.to({t.dtype})"
                )
            raise ArgumentError(
                f"expected {what} of dtype {ref.dtype} (the parameters'); got {t.dtype}"
            )
        if t.device != ref.device:
            kind = "parameter" if what == "input" else "hidden"
            raise ArgumentError(
                f"Input and {kind} tensors are not at the same device: expected {what} on "
                f"{ref.device} (the parameters' device); got {t.device}"
            )

    def _prepare_state(self, hx: State | None, x: Tensor, unbatched: bool) -> tuple[Tensor, ...]:
        """Validate hx (or make zeros); return one (L·D, B, H) tensor per state name."""
        names = self.cell.state_names
        LD, B = self.num_layers * self.num_directions, x.size(1)
        sizes = self.state_sizes()
        if hx is None:
            zeros = {n: torch.zeros(LD, B, n, dtype=x.dtype, device=x.device) for n in set(sizes)}
            return tuple(zeros[n] for n in sizes)
        parts = (hx,) if isinstance(hx, Tensor) else tuple(hx)
        if len(parts) != len(names) or not all(isinstance(p, Tensor) for p in parts):
            want = "a tensor h0" if len(names) == 1 else "a tuple (h0, c0)"
            raise ArgumentTypeError(
                f"expected hx to be {want} for a {self.cell.family} layer; got "
                f"{type(hx).__name__} of {len(parts)}"
            )
        for i, (name, size, p) in enumerate(zip(names, sizes, parts)):
            want_shape = (LD, size) if unbatched else (LD, B, size)
            units = "P" if size != self.hidden_size else "H"
            if tuple(p.shape) != want_shape:
                which = "hidden" if len(names) == 1 else f"hidden[{i}]"
                raise ArgumentError(
                    f"Expected {which} size {want_shape}, got {list(p.shape)} "
                    f"({name}0 is (L·D, {'' if unbatched else 'B, '}{units}))"
                )
            self._check_tensor(f"{name}0", p)
        return tuple(p.unsqueeze(1) for p in parts) if unbatched else parts

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        s += f", cell={self.cell!r}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s


def _check_lengths(
    lengths: Tensor | Sequence[int], T: int, B: int, device: torch.device
) -> Tensor | None:
    """lengths as int64 (B,) on ``device``, or ``None`` when every sequence is T long."""
    try:
        lengths = torch.as_tensor(lengths)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ArgumentError(f"lengths must be B = {B} integers; got {lengths!r}") from err
    if lengths.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ArgumentError(f"lengths must be integers; got dtype {lengths.dtype}")
    if lengths.shape != (B,):
        raise ArgumentError(f"lengths must have shape (B,) = ({B},); got {tuple(lengths.shape)}")
    if B == 0:
        return None
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1 or hi > T:
        raise ArgumentError(f"lengths must lie in 1..T = 1..{T}; got values from {lo} to {hi}")
    if lo == T:
        return None
    return lengths.to(device=device, dtype=torch.int64)


def _repack(x: Tensor, like: PackedSequence) -> PackedSequence:
    """Pack x (T, B, ·) in original batch order with ``like``'s batch sizes and order."""
    lengths = (like.batch_sizes.unsqueeze(0) > torch.arange(x.size(1)).unsqueeze(1)).sum(1)
    order = like.sorted_indices
    if order is not None:
        x = x.index_select(1, order.to(x.device))
    data = pack_padded_sequence(x, lengths, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


def _refuse_proj_size(kwargs: dict) -> None:
    if "proj_size" in kwargs:
        raise ArgumentError(
            "proj_size argument is only supported for LSTM, not RNN or GRU "
            f"(got proj_size={kwargs['proj_size']!r})"
        )


class RNN(RecurrentLayer):
    """Elman RNN with ``torch.nn.RNN``'s arguments: h_t = φ(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).

    ``nonlinearity`` is ``"tanh"`` (default), ``"relu"`` or ``"sigmoid"``.  Returns
    ``(output, h_n)``.  See :class:`RecurrentLayer` for the other arguments and shapes.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        variant: str = "rnn",
        **kwargs,
    ) -> None:
        _refuse_proj_size(kwargs)
        cell, kwargs = variant_cell("rnn", variant, {"nonlinearity": nonlinearity, **kwargs})
        super().__init__(
            cell,
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            **kwargs,
        )
        self.nonlinearity = nonlinearity


class GRU(RecurrentLayer):
    """GRU with ``torch.nn.GRU``'s arguments and equations.  Returns ``(output, h_n)``.
    See :class:`RecurrentLayer` for the arguments and shapes."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        variant: str = "gru",
        **kwargs,
    ) -> None:
        _refuse_proj_size(kwargs)
        cell, kwargs = variant_cell("gru", variant, kwargs)
        super().__init__(
            cell,
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            **kwargs,
        )


class LSTM(RecurrentLayer):
    """The LSTM family with ``torch.nn.LSTM``'s arguments.  Returns ``(output, (h_n, c_n))``.

    ``variant`` names an LSTM entry of :data:`carousel.CELLS` (``"lstm"``, the default, is
    torch.nn.LSTM's cell; ``"lstm1997"``, ``"peephole"``, ``"cifg"``, …) and keyword switches
    change it: ``forget_gate``, ``input_gate``, ``output_gate``, ``peepholes``, ``coupled``,
    ``input_activation``, ``output_activation``, ``forget_bias``, ``input_gate_bias``,
    ``output_gate_bias`` (see :class:`carousel.cells.LSTMOptions`).  ``proj_size`` P > 0
    projects every variant's output to P units, h_t = W_hr (o_t ⊙ φ_out(s_t)), as
    ``torch.nn.LSTM(proj_size=P)``.  Other keywords as :class:`RecurrentLayer`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        variant: str = "lstm",
        **kwargs,
    ) -> None:
        if proj_size != 0:
            kwargs = {**kwargs, "proj_size": proj_size}
        cell, layer_kw = variant_cell("lstm", variant, kwargs)
        super().__init__(
            cell,
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            **layer_kw,
        )
        self.variant = variant


#: keywords of :class:`RecurrentLayer` that are not a cell's switches
_LAYER_KEYWORDS = ("backend", "device", "dtype")


def variant_cell(family: str, variant: str, kwargs: dict) -> tuple[CellOptions, dict]:
    """Registry entry ``variant`` of ``family`` with the switches among ``kwargs`` applied,
    and the remaining (layer) keywords."""
    if variant not in CELLS or CELLS[variant].family != family:
        known = [n for n, c in CELLS.items() if c.family == family]
        raise ArgumentError(
            f"unknown {family.upper()} variant {variant!r}; known: {', '.join(known)}"
        )
    layer_kw = {k: kwargs[k] for k in _LAYER_KEYWORDS if k in kwargs}
    switches = {k: v for k, v in kwargs.items() if k not in _LAYER_KEYWORDS}
    return get_cell(variant, **switches), layer_kw


def make_layer(cell: str, input_size: int, hidden_size: int, **kwargs) -> RecurrentLayer:
    """The layer of registry entry ``cell`` ("rnn", "gru", "lstm1997", …) — its family's
    layer class (:data:`carousel.cells.FAMILIES`) — built with torch.nn's arguments and the
    family's switches."""
    if cell not in CELLS:
        raise ArgumentError(f"unknown cell {cell!r}; known: {', '.join(CELLS)}")
    layer = FAMILIES[CELLS[cell].family].layer_class()
    return layer(input_size, hidden_size, variant=cell, **kwargs)
