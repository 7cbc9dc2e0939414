"""Pen strokes as a recurrent network reads them: geometry (normalising, resampling,
smoothing, random distortion), per-point features, and lines of digits composed from
isolated ones.

A stroke is an (n, 2) float32 array of x, y (y upwards) of one pen-down trajectory.  How
points become features is one record, :class:`Featurisation` (resampling distance, rule and
smoothing), kept in a model's settings so reading featurises exactly as training did.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from carousel.data.unipen import Sample

RESAMPLINGS = ("drop", "arc")
FEATURES = 4  # dx, dy, y, pen lifted before this point


@dataclasses.dataclass(frozen=True)
class Featurisation:
    """How strokes become per-point features.

    ``resample_distance``: the spacing of the points kept, in digit heights; ``resampling``
    ``"drop"`` keeps raw points at least that far apart (:func:`resample`), ``"arc"``
    interpolates one point every ``resample_distance`` of arc length (:func:`resample_arc`);
    ``smooth`` > 0 first smooths each stroke along its length by a Gaussian of that width
    in heights (:func:`smooth_strokes`).
    """

    resample_distance: float = 0.04
    resampling: str = "drop"
    smooth: float = 0.0

    def __post_init__(self) -> None:
        if self.resampling not in RESAMPLINGS:
            raise ValueError(
                f"resampling must be one of {', '.join(RESAMPLINGS)}; got {self.resampling!r}"
            )
        if not self.resample_distance > 0:
            raise ValueError(f"resample_distance must be positive; got {self.resample_distance}")
        if self.smooth < 0:
            raise ValueError(f"smooth must be ≥ 0; got {self.smooth}")


DEFAULT_FEATURISATION = Featurisation()


# ---------------------------------------------------------------------------- geometry
def distort(
    strokes: Sequence[np.ndarray], rng: np.random.Generator, strength: float = 1.0
) -> list[np.ndarray]:
    """A random affine distortion about the strokes' centre for training-time augmentation:
    rotation up to ±0.15·strength rad, shear up to ±0.3·strength, horizontal stretch by
    exp(±0.2·strength).  ``strength`` 0 returns copies unchanged."""
    if strength < 0:
        raise ValueError(f"strength must be ≥ 0; got {strength}")
    angle = rng.uniform(-0.15, 0.15) * strength
    shear = rng.uniform(-0.3, 0.3) * strength
    stretch = float(np.exp(rng.uniform(-0.2, 0.2) * strength))
    c, s = np.cos(angle), np.sin(angle)
    matrix = np.array([[c, -s], [s, c]]) @ np.array([[stretch, shear], [0.0, 1.0]])
    centre = np.concatenate(strokes).mean(0)
    return [((p - centre) @ matrix.T + centre).astype(np.float32) for p in strokes]


def normalise(strokes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Strokes scaled to unit height (y spans [-0.5, 0.5]; a flat sample is scaled by its
    width instead), x starting at 0, aspect ratio kept."""
    points = np.concatenate(strokes)
    lo, hi = points.min(0), points.max(0)
    height = hi[1] - lo[1]
    scale = height if height > 0.2 * (hi[0] - lo[0]) else max(hi[0] - lo[0], 1e-6)
    centre = np.array([lo[0], (lo[1] + hi[1]) / 2], dtype=np.float32)
    return [((s - centre) / scale).astype(np.float32) for s in strokes]


def resample(strokes: Sequence[np.ndarray], distance: float) -> list[np.ndarray]:
    """Drop points closer than ``distance`` to the last kept point of their stroke (keeping
    each stroke's first and last point), so the rate of the tablet stops mattering."""
    out = []
    for s in strokes:
        keep = [0]
        for i in range(1, len(s)):
            if np.hypot(*(s[i] - s[keep[-1]])) >= distance:
                keep.append(i)
        if keep[-1] != len(s) - 1:
            keep.append(len(s) - 1)
        out.append(s[keep])
    return out


def _arc_positions(stroke: np.ndarray) -> np.ndarray:
    """Cumulative arc length at each point of an (n, 2) stroke: (n,)."""
    return np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(stroke, axis=0).T))])


def _interpolate(stroke: np.ndarray, count: int) -> np.ndarray:
    """``count`` ≥ 2 points at equal arc-length spacing along ``stroke`` (its first and last
    point included); a stroke of zero length gives its first point alone."""
    s = _arc_positions(stroke.astype(np.float64))
    if s[-1] <= 0:
        return stroke[:1].astype(np.float32)
    keep = np.concatenate([[True], np.diff(s) > 0])  # drop repeated points
    s, points = s[keep], stroke[keep].astype(np.float64)
    at = np.linspace(0.0, s[-1], count)
    return np.column_stack([np.interp(at, s, points[:, 0]), np.interp(at, s, points[:, 1])])


def resample_arc(strokes: Sequence[np.ndarray], distance: float) -> list[np.ndarray]:
    """Each stroke re-drawn through points at equal arc-length spacing of about
    ``distance`` (round(length / distance) intervals, first and last point kept, linear
    interpolation), so sparse and dense tablets alike give one point every ``distance``; a
    stroke shorter than ``distance / 2`` (a dot) keeps its first point only."""
    if not distance > 0:
        raise ValueError(f"distance must be positive; got {distance}")
    out = []
    for stroke in strokes:
        length = float(_arc_positions(stroke.astype(np.float64))[-1])
        intervals = round(length / distance)
        if intervals == 0:
            out.append(stroke[:1].astype(np.float32))
        else:
            out.append(_interpolate(stroke, intervals + 1).astype(np.float32))
    return out


def smooth_strokes(strokes: Sequence[np.ndarray], sigma: float) -> list[np.ndarray]:
    """Strokes smoothed by a Gaussian of standard deviation ``sigma`` *along the arc length*
    (in the strokes' units), so the result does not depend on the tablet's sampling rate:
    each stroke is first re-drawn every ``sigma / 4`` and its x, y convolved with the
    Gaussian (ends padded with the end points).  Removes the staircase of tablets with
    coarse coordinate grids (IBM's and Toshiba's are 1/15 to 1/20 of a digit's height).
    ``sigma`` 0 returns copies unchanged."""
    if sigma < 0:
        raise ValueError(f"sigma must be ≥ 0; got {sigma}")
    if sigma == 0:
        return [np.array(s, dtype=np.float32) for s in strokes]
    spacing = sigma / 4
    radius = 12  # 3 sigma, in samples of `spacing`
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / 4.0) ** 2)
    kernel /= kernel.sum()
    out = []
    for stroke in strokes:
        length = float(_arc_positions(stroke.astype(np.float64))[-1])
        if length < spacing:
            out.append(np.array(stroke, dtype=np.float32))
            continue
        dense = _interpolate(stroke, round(length / spacing) + 1)  # (n, 2)
        padded = np.concatenate(
            [np.repeat(dense[:1], radius, 0), dense, np.repeat(dense[-1:], radius, 0)]
        )
        smoothed = np.column_stack(
            [np.convolve(padded[:, k], kernel, mode="valid") for k in range(2)]
        )
        out.append(smoothed.astype(np.float32))
    return out


# ---------------------------------------------------------------------------- features
def point_features(strokes: Sequence[np.ndarray]) -> np.ndarray:
    """(N, 4) float32 per-point features of normalised strokes: dx, dy from the previous
    point (across pen lifts too), y, and 1.0 where the pen was lifted before this point
    (the first point of every stroke but the first)."""
    points = np.concatenate(strokes)
    delta = np.diff(points, axis=0, prepend=points[:1])
    lifted = np.zeros(len(points), dtype=np.float32)
    starts = np.cumsum([len(s) for s in strokes])[:-1]
    lifted[starts] = 1.0
    return np.column_stack([delta, points[:, 1], lifted]).astype(np.float32)


def resampled_points(
    strokes: Sequence[np.ndarray], featurisation: Featurisation = DEFAULT_FEATURISATION
) -> list[np.ndarray]:
    """The points the features are taken at: ``strokes`` (at unit height) smoothed and
    resampled as ``featurisation`` says."""
    f = featurisation
    if f.smooth:
        strokes = smooth_strokes(strokes, f.smooth)
    if f.resampling == "arc":
        return resample_arc(strokes, f.resample_distance)
    return resample(strokes, f.resample_distance)


def line_features(
    strokes: Sequence[np.ndarray], featurisation: Featurisation = DEFAULT_FEATURISATION
) -> np.ndarray:
    """Resample and featurise strokes already at unit height (a composed line is not
    re-normalised: its digits keep their own scale): (N, FEATURES), dx and dy in units of
    the resampling distance (so they are of order 1 along a stroke)."""
    features = point_features(resampled_points(strokes, featurisation))
    features[:, :2] /= featurisation.resample_distance
    return features


def sample_features(
    strokes: Sequence[np.ndarray], featurisation: Featurisation = DEFAULT_FEATURISATION
) -> np.ndarray:
    """Normalise one sample's strokes to unit height, then :func:`line_features`."""
    return line_features(normalise(strokes), featurisation)


# ---------------------------------------------------------------------------- lines
def compose_string(
    samples: Sequence[Sample],
    rng: random.Random,
    min_digits: int = 3,
    max_digits: int = 8,
    gap: tuple[float, float] = (0.1, 0.6),
) -> tuple[list[np.ndarray], str]:
    """A line of ``min_digits``..``max_digits`` digits: samples drawn at random from
    ``samples``, each normalised to unit height and set down left to right with a random
    gap (``gap`` × height) and a small random vertical jitter; returns (strokes, label)."""
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"expected 1 ≤ min_digits ≤ max_digits; got {min_digits}, {max_digits}")
    count = rng.randint(min_digits, max_digits)
    strokes: list[np.ndarray] = []
    label = ""
    cursor = 0.0
    for _ in range(count):
        sample = samples[rng.randrange(len(samples))]
        parts = normalise(sample.strokes)
        width = max(float(s[:, 0].max()) for s in parts)
        shift = np.array([cursor, rng.uniform(-0.05, 0.05)], dtype=np.float32)
        strokes += [s + shift for s in parts]
        label += sample.label
        cursor += width + rng.uniform(*gap)
    return strokes, label
