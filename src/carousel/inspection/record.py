"""Record everything a recurrent layer computes: every gate, the internal state s and the output
h of each layer and direction at every step, on the reference path (:func:`reference_sequence`
with ``record``, which calls the same :meth:`CellOptions.step_with_gates` that the cell's
``step`` is made of, so the record cannot disagree with the layer).

Shapes follow the legend in :mod:`carousel`: T, B, I, H, L, D.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from carousel.backends import reference_sequence
from carousel.layers import RecurrentLayer, State

#: the order in which a record's signals are listed: outputs and states first, then gates
SIGNAL_ORDER = ("h", "s", "i", "f", "g", "o", "r", "z", "n")
#: signals that a sigmoid makes (values in (0, 1)): the ones that can saturate
SIGMOID_GATES = ("i", "f", "o", "r", "z")


@dataclasses.dataclass(frozen=True)
class Recording:
    """What a layer computed on one batch.

    Attributes:
        values: ``values[k][d]`` is a dict for layer k, direction d (0 forward, 1 backward):
            signal name (``"h"``, ``"s"`` for LSTM cells, and the cell's gates: LSTM ``i f g
            o``, GRU ``r z n``) -> (T, B, H), in the input's time order; zero past a
            sequence's length.
        output: (T, B, D·H), the layer's output (time first, whatever ``batch_first`` says).
        final: the final state as the layer returns it: ``h_n`` or ``(h_n, c_n)``, (L·D, B, H).
        lengths: (B,) true lengths, or ``None`` when every sequence is T long.
    """

    values: list[list[dict[str, Tensor]]]
    output: Tensor
    final: State
    lengths: Tensor | None = None

    @property
    def num_layers(self) -> int:
        return len(self.values)

    @property
    def num_directions(self) -> int:
        return len(self.values[0])

    @property
    def hidden_size(self) -> int:
        return self.values[0][0]["h"].size(-1)

    def signals(self) -> Iterator[tuple[str, Tensor]]:
        """``(label, values (T, B, H))`` for every recorded signal: labels like ``"l0 h"``,
        ``"l1 s"``, ``"l0r i"`` (``r``: the backward direction), layer by layer."""
        for k, layer in enumerate(self.values):
            for d, rec in enumerate(layer):
                for name in sorted(rec, key=SIGNAL_ORDER.index):
                    yield signal_label(k, d, name), rec[name]

    def signal(self, label: str) -> Tensor:
        """The (T, B, H) values of one signal by its label (see :meth:`signals`)."""
        for name, values in self.signals():
            if name == label:
                return values
        known = ", ".join(name for name, _ in self.signals())
        raise ValueError(f"no signal {label!r} in this recording; known: {known}")


def signal_label(layer: int, direction: int, name: str) -> str:
    """``"l{layer}{r if backward} {name}"``: ``"l0 h"``, ``"l1r s"``."""
    return f"l{layer}{'r' if direction else ''} {name}"


@torch.no_grad()
def record(
    layer: RecurrentLayer,
    input: Tensor,
    hx: State | None = None,
    *,
    lengths: Tensor | Sequence[int] | None = None,
) -> Recording:
    """Run ``layer`` over ``input`` on the reference path and record every gate and state.

    Args:
        layer: any carousel layer (:class:`carousel.RNN`, :class:`carousel.LSTM`, ...); its
            ``backend`` is not used (the reference step is what is recorded), and dropout
            between layers is left out, as in ``layer.eval()``.
        input: (T, B, I), (B, T, I) with ``batch_first``, or (T, I) unbatched (then B = 1).
        hx, lengths: as for ``layer(input, hx, lengths=...)``.

    Returns:
        a :class:`Recording`, time first and with a batch dimension (B = 1 for unbatched
        input); its ``output`` and ``final`` are what ``layer.eval()(input, hx,
        lengths=lengths)`` returns, in that layout.
    """
    if not isinstance(layer, RecurrentLayer):
        raise ValueError(f"record needs a carousel layer; got {type(layer).__name__}")
    if not isinstance(input, Tensor):
        raise ValueError(f"record needs a Tensor input; got {type(input).__name__}")
    x, lengths, _, unbatched = layer._prepare_input(input, lengths)
    state = layer._prepare_state(hx, x, unbatched)  # each (L·D, B, H), B = 1 unbatched
    D = layer.num_directions
    values: list[list[dict[str, Tensor]]] = []
    finals: list[tuple[Tensor, ...]] = []
    for k in range(layer.num_layers):
        outputs, recs = [], []
        masks = layer.layer_masks(x, k, training=False)  # eval: zoneout's expectation
        for d in range(D):
            idx = k * D + d
            rec: dict[str, Tensor] = {}
            out, final = reference_sequence(
                layer.cell,
                x,
                tuple(s[idx] for s in state),
                layer.layer_weights(idx),
                lengths,
                d == 1,
                record=rec,
                masks=masks[d],
            )
            outputs.append(out)
            finals.append(final)
            recs.append(rec)
        values.append(recs)
        x = outputs[0] if D == 1 else torch.cat(outputs, dim=2)  # (T, B, D·H)
    h_n = tuple(torch.stack(parts) for parts in zip(*finals))  # each (L·D, B, H)
    return Recording(values, x, h_n[0] if len(h_n) == 1 else h_n, lengths)
