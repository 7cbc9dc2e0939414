"""UNIPEN online handwriting: parser, writer-independent split, per-point features, and
digit strings composed from isolated digits.

The parser reads straight from ``unipen_1a.tar.gz`` (root ``train_r01_v07/``): every
segmentation file ``data/1a/ORG/**.dat`` ``.INCLUDE``\\s files under ``include/`` holding
the pen trajectories and lists ``.SEGMENT CHARACTER <delineation> <quality> "<label>"``.

Keywords start a line with ``.``; the lines after ``.PEN_DOWN`` / ``.PEN_UP`` are points
``x y`` (extra columns are ignored).  A *component* is a ``.PEN_DOWN`` block, or a
``.PEN_UP`` block that holds points (empty ``.PEN_UP`` markers do not count); components
are numbered from 0 across a file's includes in order.  A delineation is a comma-separated
list of ranges ``A`` or ``A-B`` where ``A``/``B`` is ``component`` or
``component:point`` (0-based, inclusive): ``14-15``, ``426:18-426:68``, ``379-380:1``.

A sample keeps the pen-down strokes of its segment (pen-up trajectories are recorded by
some tablets and not others, so they are dropped; where the pen was lifted is kept as a
feature).
"""

from __future__ import annotations

import dataclasses
import posixpath
import random
import re
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

ROOT = "train_r01_v07/"

#: Folder under ``data/1a`` -> contributing organisation.  Apple (apa, apb, app) and
#: CEDAR (cea, ceb, ced) each sent several sets; a writer-independent split keeps each
#: organisation whole.
ORGANISATIONS = {
    "aga": "att",
    "apa": "apple",
    "apb": "apple",
    "app": "apple",
    "art": "art",
    "cea": "cedar",
    "ceb": "cedar",
    "ced": "cedar",
    "gmd": "gmd",
    "ibm": "ibm",
    "imp": "imp",
    "lou": "ucl",
    "pri": "princeton",
    "syn": "synaptics",
    "tos": "toshiba",
    "uqb": "uqtr",
    "val": "valladolid",
}

#: The default writer-independent split by organisation (sample counts in the 1a set:
#: test 2,284 = IBM 1,571 + Toshiba 543 + ART 170; validation 1,867 = Valladolid 1,462 +
#: AT&T 405; training the other 11,802).
TEST_ORGANISATIONS = ("ibm", "toshiba", "art")
VALIDATION_ORGANISATIONS = ("valladolid", "att")


@dataclasses.dataclass(frozen=True)
class Sample:
    """One labelled segment: ``strokes`` are pen-down trajectories, each an (n, 2) float32
    array of x, y in the tablet's units; ``source`` is ``"file:line"`` of its ``.SEGMENT``."""

    label: str
    strokes: tuple[np.ndarray, ...]
    organisation: str
    source: str

    @property
    def num_points(self) -> int:
        return sum(len(s) for s in self.strokes)


_POINT = re.compile(r"^\s*(-?\d+(?:\.\d*)?)\s+(-?\d+(?:\.\d*)?)")
_SEGMENT = re.compile(r'^\.SEGMENT\s+(\S+)\s+(\S+)\s+(\S+)\s+"([^"]*)"\s*$')


def _components(
    text: str, name: str, files: dict[str, str], depth: int = 0
) -> list[tuple[bool, list[tuple[float, float]]]]:
    """The components of one trajectory file, following its own ``.INCLUDE``\\s."""
    if depth > 4:
        raise ValueError(f"{name}: .INCLUDE nested deeper than 4 files")
    comps: list[tuple[bool, list[tuple[float, float]]]] = []
    current: list[tuple[float, float]] | None = None
    down = False

    def close() -> None:
        if current is not None and (down or current):
            comps.append((down, current))

    for number, line in enumerate(text.split("\n"), start=1):
        if line.startswith("."):
            keyword, _, rest = line.partition(" ")
            keyword = keyword.split("\t")[0]
            if keyword in (".PEN_DOWN", ".PEN_UP"):
                close()
                current, down = [], keyword == ".PEN_DOWN"
                continue
            close()
            current = None
            if keyword == ".INCLUDE":
                target = rest.strip()
                comps += _components(
                    _include(files, target, f"{name}:{number}"), target, files, depth + 1
                )
            continue
        if current is None or not line.strip():
            continue
        m = _POINT.match(line)
        if m is None:
            raise ValueError(
                f"{name}:{number}: expected a point 'x y' after .PEN_DOWN/.PEN_UP; "
                f"got {line.strip()[:40]!r}"
            )
        current.append((float(m.group(1)), float(m.group(2))))
    close()
    return comps


def _include(files: dict[str, str], target: str, where: str) -> str:
    path = ROOT + "include/" + posixpath.normpath(target)
    if path not in files:
        raise ValueError(f"{where}: .INCLUDE {target} not found (looked for {path})")
    return files[path]


def _position(text: str, where: str) -> tuple[int, int | None]:
    comp, _, point = text.partition(":")
    if not comp.isdigit() or (point and not point.isdigit()):
        raise ValueError(
            f"{where}: expected a component like 14 or 14:3 in the delineation; got {text!r}"
        )
    return int(comp), int(point) if point else None


def select(
    comps: Sequence[tuple[bool, Sequence[tuple[float, float]]]], delineation: str, where: str
) -> list[np.ndarray]:
    """The pen-down strokes (arrays (n, 2)) that ``delineation`` picks from ``comps``."""
    strokes: list[np.ndarray] = []
    for part in delineation.split(","):
        first, dash, last = part.partition("-")
        (c0, p0), (c1, p1) = _position(first, where), _position(last if dash else first, where)
        if not dash:
            p1 = p0
        if not (c0 <= c1 < len(comps)):
            raise ValueError(
                f"{where}: delineation {delineation!r} names components {c0}..{c1}; the file "
                f"has {len(comps)} (0..{len(comps) - 1})"
            )
        for c in range(c0, c1 + 1):
            down, points = comps[c]
            lo = p0 if (c == c0 and p0 is not None) else 0
            hi = p1 + 1 if (c == c1 and p1 is not None) else len(points)
            if lo >= len(points) or hi > len(points) or lo >= hi:
                raise ValueError(
                    f"{where}: delineation {delineation!r} asks for points {lo}..{hi - 1} of "
                    f"component {c}, which has {len(points)}"
                )
            if down:
                strokes.append(np.asarray(points[lo:hi], dtype=np.float32))
    return strokes


def parse_segmentation(
    text: str, name: str, files: dict[str, str], organisation: str
) -> list[Sample]:
    """The samples of one segmentation file (``name`` is used in error messages)."""
    comps: list[tuple[bool, list[tuple[float, float]]]] = []
    samples: list[Sample] = []
    for number, line in enumerate(text.split("\n"), start=1):
        where = f"{name}:{number}"
        if line.startswith(".INCLUDE"):
            target = line[len(".INCLUDE") :].strip()
            comps += _components(_include(files, target, where), target, files)
        elif line.startswith(".SEGMENT"):
            m = _SEGMENT.match(line.rstrip())
            if m is None:
                raise ValueError(
                    f'{where}: expected .SEGMENT LEVEL DELINEATION QUALITY "LABEL"; '
                    f"got {line[:60]!r}"
                )
            strokes = select(comps, m.group(2), where)
            if not strokes:
                raise ValueError(f"{where}: segment {m.group(2)} holds no pen-down points")
            samples.append(Sample(m.group(4), tuple(strokes), organisation, where))
        elif line.strip() and not line.startswith("."):
            raise ValueError(
                f"{where}: expected a keyword line starting with '.'; got {line[:40]!r}"
            )
    return samples


def read_unipen(archive: str | Path, labels: str | None = "0123456789") -> list[Sample]:
    """Every ``.SEGMENT`` of the ``data/1a`` segmentation files in ``archive`` (a
    ``unipen_1a.tar.gz``), in file order; ``labels`` keeps only single-character labels
    from that set (``None`` keeps all)."""
    archive = Path(archive)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            files = {}
            for member in tar.getmembers():
                if member.isfile():
                    handle = tar.extractfile(member)
                    assert handle is not None
                    files[member.name] = handle.read().decode("latin-1")
    except (OSError, tarfile.TarError, EOFError) as err:
        raise ValueError(f"cannot read UNIPEN archive {archive}: {err}") from err
    prefix = ROOT + "data/1a/"
    names = sorted(n for n in files if n.startswith(prefix) and n.endswith(".dat"))
    if not names:
        raise ValueError(f"{archive}: no segmentation files {prefix}**.dat in the archive")
    samples = []
    for name in names:
        folder = name[len(prefix) :].split("/")[0]
        org = ORGANISATIONS.get(folder, folder)
        for s in parse_segmentation(files[name], name[len(ROOT) :], files, org):
            if labels is None or (len(s.label) == 1 and s.label in labels):
                samples.append(s)
    return samples


def box_rescaled(sample: Sample) -> bool:
    """Whether ``sample``'s coordinates start at exactly (0, 0) on both axes: the mark of
    the part of IBM's files (the later ``.START_BOX`` boxes of every ``ibm/ibm0/r*.dat``) that
    was rescaled box by box to about 0..6000 units.  There a box, and so a ``.SEGMENT``,
    often holds one stroke of a digit written in several: the crossbar or the upright of a
    4, the slash of a slashed 0, the base of a 1, each labelled with the whole digit and
    each in its own coordinates, so the strokes cannot be put together again.  No other
    organisation of the 1a set has a sample starting at (0, 0)."""
    points = np.concatenate(sample.strokes)
    return bool((points.min(0) == 0).all())


def split_by_organisation(
    samples: Iterable[Sample],
    validation: Sequence[str] = VALIDATION_ORGANISATIONS,
    test: Sequence[str] = TEST_ORGANISATIONS,
) -> dict[str, list[Sample]]:
    """``{"train", "validation", "test"}``: whole organisations held out, so no writer is in
    two parts."""
    if set(validation) & set(test):
        raise ValueError(
            f"validation and test organisations overlap: {set(validation) & set(test)}"
        )
    out: dict[str, list[Sample]] = {"train": [], "validation": [], "test": []}
    for s in samples:
        key = (
            "test"
            if s.organisation in test
            else "validation"
            if s.organisation in validation
            else "train"
        )
        out[key].append(s)
    for key, part in out.items():
        if not part:
            raise ValueError(f"the {key} part is empty (organisations {validation} / {test})")
    return out


# ---------------------------------------------------------------------------- features
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


def resample(strokes: Sequence[np.ndarray], step: float) -> list[np.ndarray]:
    """Drop points closer than ``step`` to the last kept point of their stroke (keeping each
    stroke's first and last point), so the rate of the tablet stops mattering."""
    out = []
    for s in strokes:
        keep = [0]
        for i in range(1, len(s)):
            if np.hypot(*(s[i] - s[keep[-1]])) >= step:
                keep.append(i)
        if keep[-1] != len(s) - 1:
            keep.append(len(s) - 1)
        out.append(s[keep])
    return out


RESAMPLINGS = ("drop", "arc")


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


def resample_arc(strokes: Sequence[np.ndarray], step: float) -> list[np.ndarray]:
    """Each stroke re-drawn through points at equal arc-length spacing of about ``step``
    (round(length / step) intervals, first and last point kept, linear interpolation), so
    sparse and dense tablets alike give one point every ``step``; a stroke shorter than
    ``step / 2`` (a dot) keeps its first point only."""
    if not step > 0:
        raise ValueError(f"step must be positive; got {step}")
    out = []
    for stroke in strokes:
        length = float(_arc_positions(stroke.astype(np.float64))[-1])
        intervals = round(length / step)
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


FEATURES = 4  # dx, dy, y, pen lifted before this point


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


def sample_features(
    strokes: Sequence[np.ndarray],
    step: float = 0.04,
    *,
    resampling: str = "drop",
    smooth: float = 0.0,
) -> np.ndarray:
    """Normalise, resample and featurise one sample's strokes: (N, FEATURES), dx and dy in
    units of ``step`` (so they are of order 1 along a stroke).  See :func:`line_features`
    for ``resampling`` and ``smooth``."""
    return line_features(normalise(strokes), step, resampling=resampling, smooth=smooth)


def line_features(
    strokes: Sequence[np.ndarray],
    step: float = 0.04,
    *,
    resampling: str = "drop",
    smooth: float = 0.0,
) -> np.ndarray:
    """Resample and featurise strokes already at unit height (a composed line is not
    re-normalised: its digits keep their own scale): (N, FEATURES), dx and dy in units of
    ``step``.  ``smooth`` > 0 first smooths the strokes (:func:`smooth_strokes`, sigma in
    heights); ``resampling`` ``"drop"`` keeps raw points at least ``step`` apart
    (:func:`resample`), ``"arc"`` interpolates one point every ``step`` of arc length
    (:func:`resample_arc`)."""
    if resampling not in RESAMPLINGS:
        raise ValueError(f"resampling must be one of {RESAMPLINGS}; got {resampling!r}")
    if smooth:
        strokes = smooth_strokes(strokes, smooth)
    points = resample_arc(strokes, step) if resampling == "arc" else resample(strokes, step)
    features = point_features(points)
    features[:, :2] /= step
    return features


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


# ---------------------------------------------------------------------------- stroke files
def read_stroke_file(path: str | Path) -> list[np.ndarray]:
    """The pen-down strokes of a stroke file in UNIPEN's own notation: ``.PEN_DOWN`` (and
    optionally ``.PEN_UP``) keywords each followed by ``x y`` lines; other keyword lines
    (``.COMMENT`` …) are ignored, ``.INCLUDE`` is not allowed.  Returns (n, 2) float32
    arrays, y upwards."""
    path = Path(path)
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as err:
        raise ValueError(f"cannot read stroke file {path}: {err.strerror}") from err
    for number, line in enumerate(text.split("\n"), start=1):
        if line.startswith(".INCLUDE"):
            raise ValueError(f"{path}:{number}: .INCLUDE is not allowed in a stroke file")
    strokes = [
        np.asarray(points, dtype=np.float32)
        for down, points in _components(text, str(path), {})
        if down and points
    ]
    if not strokes:
        raise ValueError(f"{path}: no pen-down points (expected .PEN_DOWN then 'x y' lines)")
    return strokes


def write_stroke_file(path: str | Path, strokes: Sequence[np.ndarray]) -> None:
    """Write ``strokes`` ((n, 2) arrays) as a stroke file :func:`read_stroke_file` reads;
    written to a temporary file in the same folder and renamed."""
    import os
    import tempfile

    path = Path(path)
    lines = [".COORD X Y"]
    for s in strokes:
        a = np.asarray(s, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 2 or len(a) == 0:
            raise ValueError(f"expected strokes of shape (n ≥ 1, 2); got {a.shape}")
        lines.append(".PEN_DOWN")
        lines += [f"{x:.6g} {y:.6g}" for x, y in a]
        lines.append(".PEN_UP")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="latin-1") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
