"""UNIPEN online handwriting: the archive's parser, the writer-independent split by
contributing organisation, and stroke files in UNIPEN's notation (what ``carousel read``
reads).  What is done with the strokes (features, composed lines) is
:mod:`carousel.data.strokes`.

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
import re
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from carousel.io import atomic_write

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
    """Write ``strokes`` ((n, 2) arrays) as a stroke file :func:`read_stroke_file` reads
    (atomically: :func:`carousel.io.atomic_write`)."""
    lines = [".COORD X Y"]
    for s in strokes:
        a = np.asarray(s, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 2 or len(a) == 0:
            raise ValueError(f"expected strokes of shape (n ≥ 1, 2); got {a.shape}")
        lines.append(".PEN_DOWN")
        lines += [f"{x:.6g} {y:.6g}" for x, y in a]
        lines.append(".PEN_UP")
    atomic_write(path, ("\n".join(lines) + "\n").encode("latin-1"))
