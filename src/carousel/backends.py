"""The seam between layers and kernels: one function runs one direction of one layer.

A backend is a function with the signature of :func:`reference_sequence`: it takes a whole
sequence and returns the whole output and the final state, and autograd (or the backend's own
``torch.autograd.Function``) carries the gradient back through time.  The layers pick a backend
by name (``"reference"``, a registered kernel such as ``"fused"``, or ``"auto"``) and never
care which one ran.

Shapes follow the legend in :mod:`carousel`: T, B, I, H, G.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from carousel.cells import CellOptions
from carousel.cells.masks import Masks
from carousel.errors import ArgumentError


@dataclasses.dataclass(frozen=True)
class LayerWeights:
    """The parameters of one direction of one layer, as the kernels receive them."""

    w_ih: Tensor  # (G·H, I)
    w_hh: Tensor  # (G·H, H)
    b_ih: Tensor | None  # (G·H,)
    b_hh: Tensor | None  # (G·H,)
    peep: dict[str, Tensor]  # name -> (H,)
    w_hr: Tensor | None = None  # (P, H): the LSTM's projection (proj_size P), if any
    #: the LSTM's layer-norm parameters (``layer_norm``), name -> (G·H,) or (H,); else None
    ln: dict[str, Tensor] | None = None


SequenceFn = Callable[
    [CellOptions, Tensor, tuple[Tensor, ...], LayerWeights, Tensor | None, bool],
    tuple[Tensor, tuple[Tensor, ...]],
]


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of x (T, B, ...) within its own length; padding stays put.

    With ``lengths`` (B,) the backward direction of a bidirectional layer starts at each
    sequence's own last step, as in Schuster & Paliwal.
    """
    if lengths is None:
        return x.flip(0)
    T = x.size(0)
    t = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
    src = torch.where(t < lengths, lengths - 1 - t, t)  # (T, B)
    src = src.view(T, -1, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, src)


def reference_sequence(
    cell: CellOptions,
    x: Tensor,
    state: tuple[Tensor, ...],
    weights: LayerWeights,
    lengths: Tensor | None,
    reverse: bool,
    record: dict[str, Tensor] | None = None,
    masks: Masks | None = None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run ``cell``'s reference step over a whole sequence; autograd gives BPTT.

    Args:
        x: (T, B, I) input.
        state: initial state, one (B, H) tensor per name in ``cell.state_names`` (an LSTM
            with a projection: h (B, P), c (B, H)).
        lengths: (B,) int64 on x's device with values in 1..T, or ``None`` if all are T.
            Steps past a sequence's length leave its state unchanged and output zeros.
        reverse: run from each sequence's last real step back to its first.
        record: a dict to fill with every value the steps computed, each (T, B, H) in the
            input's time order: the gates of :meth:`CellOptions.step_with_gates`, the
            internal state ``"s"`` (LSTM cells' c) and the output ``"h"``; zero past a
            sequence's length.
        masks: the regularisers' masks of this direction (:mod:`carousel.cells.masks`),
            per-step ones in the input's time order; ``None`` runs the plain cell.

    Returns:
        output (T, B, H) (P with a projection) in the input's time order, and the final state
        at each sequence's last real step.
    """
    if reverse:
        x = reverse_padded(x, lengths)
        if masks is not None:
            masks = masks.map_per_step(lambda m: reverse_padded(m, lengths))
    T = x.size(0)
    ln = weights.ln or None
    # (T, B, G·H): all steps in one product, W_ih x + b_ih (or its layer-normed form)
    gx = cell.input_share(x, weights.w_ih, weights.b_ih, ln)
    if lengths is not None:
        live = (torch.arange(T, device=x.device).unsqueeze(1) < lengths).unsqueeze(2)  # (T, B, 1)
    outputs = []
    extra: dict = {} if weights.w_hr is None else {"w_hr": weights.w_hr}  # the projection
    if ln is not None:
        extra["ln"] = ln
    steps: list[dict[str, Tensor]] = []
    for t in range(T):
        if masks is not None:
            extra["masks"] = masks.at(t)
        if record is None:
            new = cell.step(gx[t], state, weights.w_hh, weights.b_hh, weights.peep, **extra)
        else:
            new, gates = cell.step_with_gates(
                gx[t], state, weights.w_hh, weights.b_hh, weights.peep, **extra
            )
            names = ("h", "s")[: len(new)]  # the state (h, c) is recorded as h and s
            steps.append(gates | dict(zip(names, new)))
        if lengths is None:
            state = new
            outputs.append(new[0])
        else:
            state = tuple(torch.where(live[t], n, o) for n, o in zip(new, state))
            outputs.append(torch.where(live[t], new[0], 0.0))
            if record is not None:
                steps[-1] = {k: torch.where(live[t], v, 0.0) for k, v in steps[-1].items()}
    output = torch.stack(outputs)  # (T, B, H)
    if reverse:
        output = reverse_padded(output, lengths)
    if record is not None:
        for name in steps[0]:
            values = torch.stack([step[name] for step in steps])  # (T, B, H)
            record[name] = reverse_padded(values, lengths) if reverse else values
    return output, state


@dataclasses.dataclass(frozen=True)
class Backend:
    """A registered kernel: ``run`` has :func:`reference_sequence`'s signature and
    ``supports(cell, x)`` says whether it can run that cell on that tensor (device, dtype)."""

    name: str
    run: SequenceFn
    supports: Callable[[CellOptions, Tensor], bool]
    #: why the backend cannot run at all on this machine (e.g. its kernels failed to load),
    #: or ``None``; named in the error when a user asks for it explicitly
    unavailable: Callable[[], str | None] = lambda: None
    #: optional: both directions of a bidirectional layer in one call,
    #: ``run_pair(cell, x, (state_f, state_b), (weights_f, weights_b), lengths)`` ->
    #: ``((output_f, final_f), (output_b, final_b))``, free to run them concurrently
    run_pair: Callable | None = None
    #: which of a cell's extras (:func:`needs`: ``"layer_norm"`` and the regularisers whose
    #: masks a call carries, ``"zoneout_state"``, ``"recurrent_dropout"``, …) the backend
    #: runs for that cell; it then takes ``masks=`` (:class:`carousel.cells.masks.Masks`) in
    #: ``run`` and a pair of them in ``run_pair``.  A backend is chosen for a call only
    #: when it runs all the call needs; the default runs none (only the plain cell).
    features: Callable[[CellOptions], frozenset[str]] = lambda cell: frozenset()


#: every extra a cell can need of a backend (what the reference path runs)
FEATURES = frozenset(
    {"layer_norm", "zoneout_state", "zoneout_hidden", "recurrent_dropout", "update_dropout"}
)

BACKENDS: dict[str, Backend] = {
    "reference": Backend(
        "reference", reference_sequence, lambda cell, x: True, features=lambda cell: FEATURES
    ),
}


def needs(cell: CellOptions, masks: Masks | None) -> frozenset[str]:
    """What a call of ``cell`` with ``masks`` asks of a backend beyond the plain cell."""
    extra = masks.needs() if masks is not None else frozenset()
    return extra | {"layer_norm"} if cell.layer_norm_on else extra


def register_backend(backend: Backend) -> None:
    """Make ``backend`` selectable by name and by ``"auto"`` (which prefers it to reference)."""
    BACKENDS[backend.name] = backend


def backend_names() -> tuple[str, ...]:
    return ("auto", *BACKENDS)


def check_backend(name: str) -> None:
    if name not in backend_names():
        raise ArgumentError(f"backend must be one of {', '.join(backend_names())}; got {name!r}")


def select_backend(
    name: str, cell: CellOptions, x: Tensor, wanted: frozenset[str] = frozenset()
) -> Backend:
    """The backend that runs ``cell`` on ``x`` with the extras ``wanted`` (:func:`needs`):
    the one named, or for ``"auto"`` a registered kernel that supports it and runs those
    extras, the most recently registered first (so a user's own kernel overrides the
    built-in ``"fused"``), else the reference path."""
    check_backend(name)
    if name != "auto":
        backend = BACKENDS[name]
        if not backend.supports(cell, x):
            why = backend.unavailable()
            raise ArgumentError(
                f"backend {name!r} cannot run cell family {cell.family!r} on "
                f"{x.device.type} {x.dtype}{f' ({why})' if why else ''}; "
                "use backend='auto' or 'reference'"
            )
        missing = wanted - backend.features(cell)
        if missing:
            raise ArgumentError(
                f"backend {name!r} cannot run {', '.join(sorted(missing))} for cell family "
                f"{cell.family!r} (it runs: {', '.join(sorted(backend.features(cell))) or 'none'})"
                "; use backend='auto' or 'reference'"
            )
        return backend
    for backend in reversed(BACKENDS.values()):  # the latest registered kernel first
        if (
            backend.name != "reference"
            and backend.supports(cell, x)
            and wanted <= backend.features(cell)
        ):
            return backend
    return BACKENDS["reference"]


def _register_fused() -> None:
    """The fused CPU kernels (:mod:`carousel.kernels`); they load lazily on first use."""
    from carousel import kernels

    register_backend(
        Backend(
            "fused",
            kernels.fused_sequence,
            kernels.supports,
            unavailable=kernels.failure,
            run_pair=kernels.fused_pair,
            features=kernels.features,
        )
    )


def _register_native() -> None:
    """The native LSTM-family kernel (:mod:`carousel.kernels.native`), registered after
    ``"fused"`` so that ``"auto"`` prefers it wherever it supports the layer."""
    from carousel.kernels import native

    register_backend(
        Backend(
            "native",
            native.native_sequence,
            native.supports,
            unavailable=native.failure,
        )
    )


_register_fused()
_register_native()
