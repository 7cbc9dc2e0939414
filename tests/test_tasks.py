"""The long-time-lag task generators: the 1997 paper's definitions, and determinism."""

import pytest
import torch

from carousel.data import TASKS, get_task, make_batch
from carousel.data.tasks import COPY_K, COPY_SYMBOLS, adding, multiplication, order6a, order6b


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("T", [10, 100, 500])
@pytest.mark.parametrize("make", [adding, multiplication])
def test_marked_pairs(make, T):
    b = make(400, T, gen())
    B = 400
    assert b.x.shape == (int(b.lengths.max()), B, 2)
    assert int(b.lengths.min()) >= T and int(b.lengths.max()) <= T + T // 10
    values, markers = b.x[..., 0], b.x[..., 1]
    lo = -1.0 if make is adding else 0.0
    assert values.min() >= lo and values.max() <= 1.0
    for j in range(B):
        L = int(b.lengths[j])
        m = markers[:L, j]
        ones = (m == 1).nonzero().flatten().tolist()
        assert len(ones) == 2
        p1, p2 = ones
        assert p1 < 10 or p2 < 10  # one of the first ten pairs
        assert min(p1, p2) < T // 2 and max(p1, p2) < max(10, T // 2)
        for end in (0, L - 1):
            assert m[end] == (1.0 if end in ones else -1.0)
        others = [t for t in range(1, L - 1) if t not in ones]
        assert (m[others] == 0).all()
        assert (b.x[L:, j] == 0).all()  # padding
        x1, x2 = values[p1, j], values[p2, j]
        if p1 == 0:
            assert x1 == (0.0 if make is adding else 1.0)
        want = 0.5 + (x1 + x2) / 4 if make is adding else x1 * x2
        assert b.target[j] == pytest.approx(float(want))
    assert b.target.min() >= 0 and b.target.max() <= 1


def test_adding_markers_spread_over_their_ranges():
    b = adding(3000, 100, gen())
    m = b.x[..., 1]
    first = (m[:10] == 1).any(0)
    assert first.all()
    pos = [(m[:, j] == 1).nonzero().flatten() for j in range(3000)]
    second = torch.stack([p[1] if p[0] < 10 and p[1] >= 10 else p[0] for p in pos])
    assert int(second.max()) == 49 and int(second.min()) == 0  # before T/2 = 50
    assert set(b.lengths.tolist()) == set(range(100, 111))


@pytest.mark.parametrize("make, relevant", [(order6a, 2), (order6b, 3)])
def test_temporal_order(make, relevant):
    b = make(4000, 100, gen())
    assert b.x.shape[2] == 8
    symbols = b.x.argmax(2)
    onehot_rows = b.x.sum(2)
    windows = [(10, 20), (50, 60)] if relevant == 2 else [(10, 20), (33, 43), (66, 76)]
    assert set(b.lengths.tolist()) == set(range(100, 111))
    for j in range(0, 4000, 37):
        L = int(b.lengths[j])
        assert (onehot_rows[:L, j] == 1).all() and (onehot_rows[L:, j] == 0).all()
        s = symbols[:L, j]
        assert s[0] == 0 and s[L - 1] == 1  # E ... B
        rel = ((s == 6) | (s == 7)).nonzero().flatten().tolist()
        assert len(rel) == relevant
        cls = 0
        for t, (lo, hi) in zip(rel, windows):
            assert lo <= t <= hi
            cls = cls * 2 + int(s[t] == 7)
        assert int(b.target[j]) == cls
        middle = [t for t in range(1, L - 1) if t not in rel]
        assert ((s[middle] >= 2) & (s[middle] <= 5)).all()
    counts = torch.bincount(b.target, minlength=2**relevant).float()
    expected = 4000 / 2**relevant
    assert ((counts - expected).abs() < 0.2 * expected).all(), counts  # classes balanced


def test_copy_task():
    T = 30
    b = make_batch("copy", 64, T, 1)
    assert b.x.shape == (2 * COPY_K + T + 1, 64, COPY_SYMBOLS + 2)
    symbols = b.x.argmax(2)
    assert torch.equal(symbols[:COPY_K], b.target)
    assert (symbols[COPY_K : COPY_K + T] == COPY_SYMBOLS).all()
    assert (symbols[COPY_K + T] == COPY_SYMBOLS + 1).all()
    assert (symbols[COPY_K + T + 1 :] == COPY_SYMBOLS).all()
    assert b.target.max() < COPY_SYMBOLS


@pytest.mark.parametrize("task", list(TASKS))
def test_deterministic_under_a_seed(task):
    a, b, c = make_batch(task, 8, 20, 5), make_batch(task, 8, 20, 5), make_batch(task, 8, 20, 6)
    assert torch.equal(a.x, b.x) and torch.equal(a.target, b.target)
    assert torch.equal(a.lengths, b.lengths)
    assert not torch.equal(a.x[: c.x.size(0)], c.x[: a.x.size(0)]) or a.x.shape != c.x.shape
    spec = get_task(task)
    assert a.x.size(2) == spec.input_size


def test_bad_arguments():
    with pytest.raises(ValueError, match="T must be an integer ≥ 10; got 9"):
        make_batch("adding", 4, 9, 0)
    with pytest.raises(ValueError, match="unknown task 'add'; known: adding"):
        make_batch("add", 4, 100, 0)
    with pytest.raises(ValueError, match="batch size"):
        make_batch("order6a", 0, 100, 0)
