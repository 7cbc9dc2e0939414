"""The NTM memory tasks: layouts as the paper defines them, shapes, masks and seeds."""

from __future__ import annotations

import math

import pytest
import torch

from carousel.data.memory_tasks import (
    MEMORY_TASKS,
    associative_recall,
    copy,
    get_memory_task,
    memory_batch,
    priority_sort,
    repeat_copy,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", list(MEMORY_TASKS))
def test_shapes_and_masks(name):
    spec = MEMORY_TASKS[name]
    b = memory_batch(name, 5, seed=1)
    T = b.x.size(0)
    assert b.x.shape == (T, 5, spec.input_size)
    assert b.target.shape == (T, 5, spec.output_size)
    assert b.mask.shape == (T, 5) and b.mask.dtype == torch.bool
    assert b.lengths.shape == (5,)
    lo, hi = spec.length_range
    assert ((b.lengths >= lo) & (b.lengths <= hi)).all()
    assert b.mask.any(0).all()  # every sequence has something to answer
    assert torch.all(b.target[~b.mask] == 0)
    bits = b.target[b.mask]
    assert torch.all((bits == 0) | (bits == 1))


@pytest.mark.parametrize("name", list(MEMORY_TASKS))
def test_seeded_stream(name):
    a, b = memory_batch(name, 4, seed=7, index=3), memory_batch(name, 4, seed=7, index=3)
    for f in ("x", "target", "mask", "lengths"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    other = memory_batch(name, 4, seed=7, index=4)
    assert a.x.shape != other.x.shape or not torch.equal(a.x, other.x)
    assert not torch.equal(memory_batch(name, 4, seed=8, index=3).target, a.target)


def test_copy_layout():
    b = copy(3, gen(), 1, 20)
    for s in range(3):
        L = int(b.lengths[s])
        x, y, m = b.x[:, s], b.target[:, s], b.mask[:, s]
        assert torch.all(x[L, :8] == 0) and x[L, 8] == 1  # the delimiter
        assert x[:, 8].sum() == 1 and torch.all(x[:L, 8] == 0)
        assert torch.all(x[L + 1 :] == 0)  # nothing but zeros while it answers
        assert m.nonzero().flatten().tolist() == list(range(L + 1, 2 * L + 1))
        assert torch.equal(y[L + 1 : 2 * L + 1], x[:L, :8])


def test_copy_fixed_length_for_generalisation():
    b = memory_batch("copy", 2, seed=0, min_length=120, max_length=120)
    assert b.lengths.tolist() == [120, 120] and b.x.shape == (241, 2, 9)
    assert b.mask.sum(0).tolist() == [120, 120]


def test_repeat_copy_layout():
    b = repeat_copy(4, gen(2))
    std = math.sqrt((10**2 - 1) / 12)
    for s in range(4):
        x, y, m = b.x[:, s], b.target[:, s], b.mask[:, s]
        L = int(b.lengths[s])
        assert x[L, 8] == 1 and x[:, 8].sum() == 1
        R = round(float(x[L + 1, 9]) * std + 5.5)
        assert 1 <= R <= 10
        start = L + 2
        assert m.nonzero().flatten().tolist() == list(range(start, start + L * R + 1))
        assert torch.equal(y[start : start + L * R, :8], x[:L, :8].repeat(R, 1))
        assert y[:, 8].nonzero().flatten().tolist() == [start + L * R]  # the end marker


def test_repeat_count_normalised_to_mean_zero_variance_one():
    counts = torch.arange(1, 11, dtype=torch.float64)
    std = math.sqrt((10**2 - 1) / 12)
    z = (counts - 5.5) / std
    assert z.mean().abs() < 1e-12 and abs(z.var(unbiased=False).item() - 1) < 1e-12
    with pytest.raises(ValueError, match="repeats"):
        repeat_copy(2, gen(), min_repeats=3, max_repeats=2)


def test_associative_recall_layout():
    b = associative_recall(6, gen(3))
    for s in range(6):
        x, y, m = b.x[:, s], b.target[:, s], b.mask[:, s]
        K = int(b.lengths[s])
        items = [x[4 * i + 1 : 4 * i + 4, :6] for i in range(K)]
        assert all(x[4 * i, 6] == 1 for i in range(K)) and x[:, 6].sum() == K
        query = x[4 * K + 1 : 4 * K + 4, :6]
        assert x[4 * K, 7] == 1 and x[4 * K + 4, 7] == 1 and x[:, 7].sum() == 2
        q = next(i for i in range(K - 1) if torch.equal(items[i], query))
        out = m.nonzero().flatten().tolist()
        assert out == [4 * K + 5, 4 * K + 6, 4 * K + 7]
        assert torch.equal(y[out], items[q + 1])


def test_associative_recall_twelve_items_for_generalisation():
    b = memory_batch("associative-recall", 3, seed=0, min_length=12, max_length=12)
    assert b.lengths.tolist() == [12, 12, 12] and b.x.shape == (4 * 12 + 8, 3, 8)


def test_priority_sort_layout():
    b = priority_sort(3, gen(4))
    for s in range(3):
        x, y, m = b.x[:, s], b.target[:, s], b.mask[:, s]
        assert x[20, 9] == 1 and m.sum() == 16
        order = torch.argsort(x[:20, 8], descending=True)[:16]
        assert torch.equal(y[21:37], x[order, :8])
        assert x[:20, 8].abs().max() <= 1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: copy(0, gen()), "batch size"),
        (lambda: copy(2, gen(), 5, 3), "min_length must be ≤ max_length"),
        (lambda: associative_recall(2, gen(), 1, 3), "min_length must be an integer ≥ 2"),
        (lambda: get_memory_task("sorting"), "unknown memory task 'sorting'; known: copy"),
    ],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
