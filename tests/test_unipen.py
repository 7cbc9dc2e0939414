"""UNIPEN parser on a hand-made archive (component counting, delineations, includes,
malformed lines), the writer-independent split, features and string composition."""

from __future__ import annotations

import io
import os
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest

from carousel.data.strokes import (
    FEATURES,
    Featurisation,
    compose_string,
    distort,
    normalise,
    point_features,
    resample,
    resample_arc,
    sample_features,
    smooth_strokes,
)
from carousel.data.unipen import (
    Sample,
    box_rescaled,
    read_stroke_file,
    read_unipen,
    split_by_organisation,
    write_stroke_file,
)

TRAJECTORY = """\
.INCLUDE xyz/xyz.doc
.WRITER_ID 7
.PEN_UP
.PEN_DOWN
\t0 0
\t0 10
\t0 20
.PEN_UP
\t1 20
\t5 20
.PEN_DOWN
\t10 0
\t10 20
.PEN_UP
.PEN_DOWN
20 0 123
20 5 124
20 10 125
20 15 126
"""
# components: 0 = first pen-down (3 points), 1 = pen-up with points (2), 2 = pen-down (2),
# 3 = pen-down (4 points); the empty .PEN_UP markers are not counted.

DOC = """\
.COMMENT a description that mentions
         .PEN_DOWN inside text (not a keyword: it does not start the line)
.COORD X Y
"""

SEGMENTS = """\
.VERSION 1.0
.INCLUDE xyz/data/w7.dat
.SEGMENT CHARACTER 0 ? "1"
.SEGMENT CHARACTER 0-2 OK "4"
.SEGMENT CHARACTER 3:1-3:2 ? "7"
.SEGMENT CHARACTER 2:1-3:0 ? "2"
.SEGMENT CHARACTER 0,3 ? "9"
.SEGMENT WORD 0-3 ? "hello"
"""


def make_archive(tmp_path: Path, files: dict[str, str], name: str = "u.tar.gz") -> Path:
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        for member, text in files.items():
            data = text.encode("latin-1")
            info = tarfile.TarInfo("train_r01_v07/" + member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def standard_files(segments: str = SEGMENTS, trajectory: str = TRAJECTORY) -> dict[str, str]:
    return {
        "data/1a/xyz/w7.dat": segments,
        "include/xyz/data/w7.dat": trajectory,
        "include/xyz/xyz.doc": DOC,
    }


def test_parser_counts_components_and_resolves_delineations(tmp_path):
    samples = read_unipen(make_archive(tmp_path, standard_files()))
    assert [s.label for s in samples] == ["1", "4", "7", "2", "9"]  # "hello" is not a digit
    one, four, seven, two, nine = samples
    assert [len(s) for s in one.strokes] == [3]
    # 0-2 spans the pen-up component 1, whose points are dropped
    assert [len(s) for s in four.strokes] == [3, 2]
    np.testing.assert_array_equal(seven.strokes[0], [[20, 5], [20, 10]])  # inclusive, 0-based
    np.testing.assert_array_equal(two.strokes[0], [[10, 20]])
    np.testing.assert_array_equal(two.strokes[1], [[20, 0]])
    assert [len(s) for s in nine.strokes] == [3, 4]
    assert one.organisation == "xyz" and one.source == "data/1a/xyz/w7.dat:3"
    assert len(read_unipen(make_archive(tmp_path, standard_files(), "b.tar.gz"), labels=None)) == 6


@pytest.mark.parametrize(
    ("segments", "trajectory", "message", "where"),
    [
        (
            '.INCLUDE xyz/data/w7.dat\n.SEGMENT CHARACTER 4 ? "1"\n',
            TRAJECTORY,
            "names components 4..4; the file has 4",
            "w7.dat:2",
        ),
        (
            '.INCLUDE xyz/data/w7.dat\n.SEGMENT CHARACTER 3:2-3:9 ? "1"\n',
            TRAJECTORY,
            "asks for points 2..9 of component 3, which has 4",
            "w7.dat:2",
        ),
        (
            '.INCLUDE xyz/data/w7.dat\n.SEGMENT CHARACTER a-b ? "1"\n',
            TRAJECTORY,
            "expected a component like 14",
            "w7.dat:2",
        ),
        (
            ".INCLUDE xyz/data/w7.dat\n.SEGMENT CHARACTER 1\n",
            TRAJECTORY,
            "expected .SEGMENT LEVEL DELINEATION",
            "w7.dat:2",
        ),
        (
            '.INCLUDE xyz/data/w7.dat\n.SEGMENT CHARACTER 1 ? "1"\n',
            TRAJECTORY,
            "holds no pen-down points",
            "w7.dat:2",
        ),
        (".INCLUDE xyz/data/nope.dat\n", TRAJECTORY, "not found", "w7.dat:1"),
        (
            ".INCLUDE xyz/data/w7.dat\nstray text\n",
            TRAJECTORY,
            "expected a keyword line",
            "w7.dat:2",
        ),
        (
            ".INCLUDE xyz/data/w7.dat\n",
            TRAJECTORY.replace("\t0 10", "\t0 ten"),
            "expected a point 'x y'",
            "xyz/data/w7.dat:6",
        ),
    ],
)
def test_parser_errors_name_file_and_line(tmp_path, segments, trajectory, message, where):
    archive = make_archive(tmp_path, standard_files(segments, trajectory))
    with pytest.raises(ValueError, match=message) as err:
        read_unipen(archive)
    assert where in str(err.value)


def test_parser_rejects_missing_or_empty_archives(tmp_path):
    with pytest.raises(ValueError, match="cannot read UNIPEN archive"):
        read_unipen(tmp_path / "missing.tar.gz")
    with pytest.raises(ValueError, match="no segmentation files"):
        read_unipen(make_archive(tmp_path, {"README.md": "hi"}))


def fake(label: str, org: str, k: int = 0) -> Sample:
    stroke = np.array([[0, 0], [1 + k, 4], [2, 8]], dtype=np.float32)
    return Sample(label, (stroke, stroke + 3), org, f"f{k}:1")


def test_split_holds_out_whole_organisations():
    samples = [fake(str(i % 10), org, i) for i, org in enumerate(["a", "b", "c", "d", "e"] * 4)]
    parts = split_by_organisation(samples, validation=("b",), test=("c", "d"))
    orgs = {k: {s.organisation for s in v} for k, v in parts.items()}
    assert orgs == {"train": {"a", "e"}, "validation": {"b"}, "test": {"c", "d"}}
    sources = [{s.source for s in v} for v in parts.values()]
    assert not (sources[0] & sources[1] or sources[0] & sources[2] or sources[1] & sources[2])
    assert sum(map(len, parts.values())) == len(samples)
    with pytest.raises(ValueError, match="overlap"):
        split_by_organisation(samples, validation=("b",), test=("b",))
    with pytest.raises(ValueError, match="validation part is empty"):
        split_by_organisation(samples, validation=("zz",), test=("c",))


def test_features_are_scale_and_offset_free():
    strokes = [
        np.array([[0, 0], [0, 10], [0, 20]], np.float32),
        np.array([[5, 0], [5, 20]], np.float32),
    ]
    moved = [s * 3.5 + np.array([100, -40], np.float32) for s in strokes]
    np.testing.assert_allclose(sample_features(strokes), sample_features(moved), atol=1e-6)
    norm = normalise(strokes)
    assert np.concatenate(norm)[:, 1].min() == -0.5 and np.concatenate(norm)[:, 1].max() == 0.5
    f = point_features(norm)
    assert f.shape == (5, FEATURES)
    np.testing.assert_allclose(f[:, 3], [0, 0, 0, 1, 0])  # pen lifted before the 4th point
    np.testing.assert_allclose(f[3, :2], [0.25, -1.0])  # the jump to the second stroke
    dense = [np.stack([np.zeros(101), np.linspace(0, 1, 101)], 1).astype(np.float32)]
    assert len(resample(dense, 0.1)[0]) == 11


def test_arc_resampling_spaces_points_evenly_whatever_the_tablet_rate():
    # An L: 0.6 up then 0.3 right, written by a sparse tablet (3 points, one repeated)...
    sparse = np.array([[0, 0.6], [0, 0.6], [0, 0], [0.3, 0]], np.float32)
    # ...and by a dense one (61 + 31 points along the same path).
    dense = np.concatenate(
        [
            np.stack([np.zeros(61), np.linspace(0.6, 0, 61)], 1),
            np.stack([np.linspace(0.01, 0.3, 30), np.zeros(30)], 1),
        ]
    ).astype(np.float32)
    a, b = resample_arc([sparse], 0.1)[0], resample_arc([dense], 0.1)[0]
    assert len(a) == len(b) == 10  # 0.9 of arc length: 9 intervals of 0.1, ends kept
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(np.hypot(*np.diff(a, axis=0).T), 0.1, atol=1e-5)
    np.testing.assert_allclose(a[[0, 6, 9]], [[0, 0.6], [0, 0], [0.3, 0]], atol=1e-6)
    # the old rule only drops points: the sparse tablet's jumps of 0.6 stay
    assert len(resample([sparse], 0.1)[0]) == 3
    # a dot (shorter than step / 2) keeps one point; a zero-length stroke too
    dot = np.array([[1, 1], [1.02, 1]], np.float32)
    assert resample_arc([dot, dot[:1]], 0.1)[0].shape == (1, 2)
    assert resample_arc([dot, dot[:1]], 0.1)[1].shape == (1, 2)
    with pytest.raises(ValueError, match="distance must be positive"):
        resample_arc([dense], 0.0)


def test_smoothing_removes_a_coordinate_staircase():
    # A diagonal as a tablet with a coarse grid records it: a staircase of 0.1 steps.
    steps = [[0.1 * (k // 2 + k % 2), 0.1 * (k // 2)] for k in range(21)]
    stair = np.array(steps, np.float32)  # from (0, 0) to (1, 1) via (0.1, 0), (0.1, 0.1)...
    smoothed = smooth_strokes([stair], 0.1)[0]
    inner = smoothed[len(smoothed) // 5 : -len(smoothed) // 5]  # away from the padded ends
    # on the stair's centre line x - y = 0.05, where the raw points swing between 0 and 0.1
    np.testing.assert_allclose(inner[:, 0] - inner[:, 1], 0.05, atol=0.002)
    assert np.ptp(stair[:, 0] - stair[:, 1]) == pytest.approx(0.1)
    np.testing.assert_allclose(smooth_strokes([stair], 0.0)[0], stair)
    f = sample_features([stair], Featurisation(0.1, resampling="arc", smooth=0.1))
    directions = f[1:, :2] / np.linalg.norm(f[1:, :2], axis=1, keepdims=True)
    np.testing.assert_allclose(directions[3:-3], np.sqrt(0.5), atol=0.05)  # 45° throughout
    with pytest.raises(ValueError, match="resampling must be one of"):
        sample_features([stair], Featurisation(0.1, resampling="cubic"))
    with pytest.raises(ValueError, match="sigma must be"):
        smooth_strokes([stair], -1.0)


def test_box_rescaled_samples_are_told_by_their_origin():
    # IBM's late boxes: rescaled so the sample starts at (0, 0) (here an upright of a 4)
    upright = np.array([[2843, 5688], [2843, 2500], [2843, 0]], np.float32)
    crossbar = np.array([[0, 400], [4000, 0]], np.float32)
    assert box_rescaled(Sample("4", (upright, crossbar), "ibm", "r:1"))
    assert box_rescaled(Sample("1", (np.zeros((3, 2), np.float32),), "ibm", "r:2"))
    # tablet coordinates: touching one axis is not enough
    assert not box_rescaled(Sample("4", (upright + np.float32(10),), "ibm", "r:3"))
    assert not box_rescaled(Sample("7", (crossbar + np.float32(90),), "val", "v:1"))


def test_composed_strings_concatenate_digits_left_to_right():
    samples = [fake(str(d), "a", d) for d in range(10)]
    rng = random.Random(3)
    for _ in range(20):
        strokes, label = compose_string(samples, rng, 3, 5)
        assert 3 <= len(label) <= 5 and label.isdigit()
        assert len(strokes) == 2 * len(label)
        starts = [s[:, 0].min() for s in strokes[::2]]
        assert starts == sorted(starts)


def test_real_archive_resolves_every_segment():
    root = Path(__file__).resolve().parents[1]
    data = Path(os.environ.get("CAROUSEL_DATA", root.parent / "shared" / "data"))
    archive = data / "unipen_1a" / "unipen_1a.tar.gz"
    if not archive.is_file():
        pytest.skip(f"UNIPEN archive not found at {archive} (set CAROUSEL_DATA)")
    samples = read_unipen(archive)
    assert len(samples) == 15953
    assert len({s.organisation for s in samples}) == 13
    parts = split_by_organisation(samples)
    assert [len(parts[k]) for k in ("train", "validation", "test")] == [11802, 1867, 2284]


def test_stroke_files_round_trip_and_fail_loudly(tmp_path):
    strokes = [np.array([[0, 0], [1.5, 2]], np.float32), np.array([[3, 1]], np.float32)]
    path = tmp_path / "line.strokes"
    write_stroke_file(path, strokes)
    again = read_stroke_file(path)
    assert len(again) == 2
    for a, b in zip(again, strokes):
        np.testing.assert_array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["line.strokes"]
    bad = tmp_path / "bad.strokes"
    bad.write_text(".PEN_DOWN\n1 2\n3 x\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"bad.strokes:3: expected a point"):
        read_stroke_file(bad)
    bad.write_text(".COMMENT nothing here\n", encoding="latin-1")
    with pytest.raises(ValueError, match="no pen-down points"):
        read_stroke_file(bad)
    bad.write_text(".INCLUDE x.dat\n", encoding="latin-1")
    with pytest.raises(ValueError, match="not allowed"):
        read_stroke_file(bad)
    with pytest.raises(ValueError, match="cannot read"):
        read_stroke_file(tmp_path / "missing")


def test_distortion_is_an_affine_map_about_the_centre():
    strokes = [
        np.array([[0, 0], [0, 10], [4, 10]], np.float32),
        np.array([[8, 0], [8, 6]], np.float32),
    ]
    rng = np.random.default_rng(0)
    same = distort(strokes, rng, 0.0)
    for a, b in zip(same, strokes):
        np.testing.assert_allclose(a, b, atol=1e-5)
    moved = distort(strokes, rng, 1.0)
    assert [m.shape for m in moved] == [s.shape for s in strokes]
    np.testing.assert_allclose(
        np.concatenate(moved).mean(0), np.concatenate(strokes).mean(0), atol=1e-4
    )
    assert not np.allclose(np.concatenate(moved), np.concatenate(strokes))
    with pytest.raises(ValueError, match="strength"):
        distort(strokes, rng, -1.0)
