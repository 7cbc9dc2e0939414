"""The regularisers' masks: drawn by the layer, handed to the reference step and the kernels.

A cell's regulariser options (:class:`carousel.cells.CellOptions`: ``zoneout_hidden``,
``recurrent_dropout``, ``weight_drop``; the LSTM's ``zoneout_state`` and ``update_dropout``)
are rates.  In training mode the layer draws, for each direction of each layer and each call,
the masks below from torch's random number generator (so a seeded run draws the same masks,
and a checkpoint's RNG state resumes bit-identically), and hands the same :class:`Masks` to
whichever backend runs: the reference step and the fused kernels read the masks, never the
rates, so the two can be compared with fixed masks.  No masks (``None``) is the plain cell.

========================= ============ =============================================
mask                      shape        value
========================= ============ =============================================
``zoneout_state`` d_s      (T, B, H)    1 (keep s_{t−1}) with probability rate, else 0
``zoneout_hidden`` d_h     (T, B, P)    the same for h (P = H without a projection)
``recurrent`` m            (B, P)       one per sequence, 0 or 1/(1 − p): inverted dropout
``update`` u               (T, B, H)    0 or 1/(1 − p), per step and unit
========================= ============ =============================================

In eval mode the dropout masks are absent (inverted dropout's expectation is the plain cell)
and zoneout's masks hold the rate itself, the expectation of d (Krueger et al. 2016:
s_t = d s_{t−1} + (1 − d) s̃_t with d the rate).  Per-step masks are laid out in the
input's time order, indexed like x by each sequence's own position, so the two directions
and ragged batches read them as they read x.

DropConnect (``weight_drop``) is not a mask of the kernels: the layer multiplies W_hh by one
mask per call (:func:`drop_weight`) under autograd, and every backend runs on that weight.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

#: per-step masks (T, B, ·); the others are per sequence (B, ·)
PER_STEP = ("zoneout_state", "zoneout_hidden", "update")
#: the name of the cell option each mask comes from (what a backend must support)
OPTION = {
    "zoneout_state": "zoneout_state",
    "zoneout_hidden": "zoneout_hidden",
    "recurrent": "recurrent_dropout",
    "update": "update_dropout",
}


@dataclasses.dataclass(frozen=True)
class Masks:
    """The masks of one direction of one layer for one call (see the module docstring), or,
    from :meth:`at`, of one step: then the per-step masks are (B, ·)."""

    zoneout_state: Tensor | None = None
    zoneout_hidden: Tensor | None = None
    recurrent: Tensor | None = None
    update: Tensor | None = None

    def needs(self) -> frozenset[str]:
        """The cell options whose masks are present (what a backend must support)."""
        return frozenset(OPTION[f] for f in OPTION if getattr(self, f) is not None)

    def at(self, t: int) -> Masks:
        """The masks step ``t`` reads: per-step masks at row ``t``, the others as they are."""
        return dataclasses.replace(
            self, **{f: getattr(self, f)[t] for f in PER_STEP if getattr(self, f) is not None}
        )

    def map_per_step(self, fn) -> Masks:
        """``fn`` applied to each per-step mask (T, B, ·) present."""
        return dataclasses.replace(
            self, **{f: fn(getattr(self, f)) for f in PER_STEP if getattr(self, f) is not None}
        )

    def repeat(self, V: int) -> Masks:
        """The masks of V copies of the batch side by side (copy v's sequence b at v·B + b)."""
        changes = {}
        for f in OPTION:
            m = getattr(self, f)
            if m is not None:
                changes[f] = m.repeat(1, V, 1) if f in PER_STEP else m.repeat(V, 1)
        return dataclasses.replace(self, **changes)

    def tensors(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, f) for f in OPTION if getattr(self, f) is not None)


def _keep(shape, keep: float, like: Tensor) -> Tensor:
    """1 with probability ``keep``, else 0 (torch's default generator)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(keep)


def _dropout(shape, p: float, like: Tensor) -> Tensor:
    """Inverted dropout's mask: 1/(1 − p) with probability 1 − p, else 0."""
    return _keep(shape, 1.0 - p, like).div_(1.0 - p)


def draw_masks(cell, x: Tensor, H: int, P: int, training: bool) -> Masks | None:
    """The masks of one direction of one layer for input x (T, B, ·): H state units, P units
    of h (P = H without a projection); ``None`` when the cell runs as the plain cell.

    The draws happen in a fixed order (recurrent, zoneout on s, zoneout on h, update), each
    only when its rate is above 0, so a seeded call draws the same masks on every backend.
    """
    T, B = x.size(0), x.size(1)
    zs, zh = getattr(cell, "zoneout_state", 0.0), cell.zoneout_hidden
    rd, ud = cell.recurrent_dropout, getattr(cell, "update_dropout", 0.0)
    if training:
        if not (zs or zh or rd or ud):
            return None
        return Masks(
            recurrent=_dropout((B, P), rd, x) if rd else None,
            zoneout_state=_keep((T, B, H), zs, x) if zs else None,
            zoneout_hidden=_keep((T, B, P), zh, x) if zh else None,
            update=_dropout((T, B, H), ud, x) if ud else None,
        )
    if not (zs or zh):  # eval: the dropouts' expectation is the plain cell
        return None
    return Masks(  # eval: zoneout's expectation, d = the rate
        zoneout_state=torch.full((T, B, H), zs, dtype=x.dtype, device=x.device) if zs else None,
        zoneout_hidden=torch.full((T, B, P), zh, dtype=x.dtype, device=x.device) if zh else None,
    )


def drop_weight(w_hh: Tensor, p: float) -> Tensor:
    """DropConnect on the recurrent weights (Wan et al. 2013; AWD-LSTM's weight drop): W_hh ⊙ M
    with one inverted-dropout mask M (0 or 1/(1 − p)) for the whole call, under autograd."""
    return w_hh * _dropout(w_hh.shape, p, w_hh.detach())


def zoneout(d: Tensor | None, previous: Tensor, new: Tensor) -> Tensor:
    """Krueger et al. (2016): d ⊙ previous + (1 − d) ⊙ new (``new`` when d is None)."""
    return new if d is None else d * previous + (1 - d) * new


__all__ = ["OPTION", "PER_STEP", "Masks", "draw_masks", "drop_weight", "zoneout"]
