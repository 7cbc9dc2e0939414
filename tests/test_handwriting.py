"""Handwriting: CTC decoding on hand-made probability matrices, scores, a tiny digit
classifier and a tiny BLSTM + CTC reader that overfit a few examples, serialisation and
the PNG."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest
import torch

from carousel.data.batching import pad_batch
from carousel.data.strokes import Featurisation, line_features
from carousel.data.unipen import Sample
from carousel.handwriting import (
    DigitClassifier,
    HandwritingConfig,
    RecogniserShape,
    StringRecogniser,
    beam_decode,
    character_error_rate,
    compose_strings,
    confusion_by_organisation,
    draw_probabilities,
    edit_distance,
    evaluate_digits,
    evaluate_strings,
    greedy_decode,
    recognise,
    recogniser_from_parts,
    recogniser_to_parts,
    string_accuracy,
    train_digit_classifier,
    train_string_recogniser,
)
from carousel.handwriting.train import ctc_targets

pytestmark = pytest.mark.usefixtures("one_thread")


def logp(rows):
    return torch.tensor(rows, dtype=torch.float64).clamp_min(1e-12).log()


def brute_force_best(probs: list[list[float]], blank: int = 0) -> tuple[int, ...]:
    """The labelling of highest total probability, summing every path (exhaustive)."""
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(len(probs[0])), repeat=len(probs)):
        p = math.prod(probs[t][c] for t, c in enumerate(path))
        labels = tuple(c for i, c in enumerate(path) if c != blank and (i == 0 or path[i - 1] != c))
        totals[labels] = totals.get(labels, 0.0) + p
    return max(totals, key=totals.get)


def test_greedy_merges_repeats_and_drops_blanks():
    # frames: 1 1 blank 1 2 2 blank  -> 1 1 2
    rows = [
        [0.1, 0.8, 0.1],
        [0.1, 0.8, 0.1],
        [0.8, 0.1, 0.1],
        [0.1, 0.8, 0.1],
        [0.1, 0.1, 0.8],
        [0.2, 0.1, 0.7],
        [0.9, 0.05, 0.05],
    ]
    assert greedy_decode(logp(rows)) == [1, 1, 2]
    assert beam_decode(logp(rows), beam_width=4) == [1, 1, 2]


def test_beam_finds_the_labelling_that_best_path_misses():
    # best path is blank-blank (0.36) -> "", but "1" totals 0.64 over three paths
    rows = [[0.6, 0.4], [0.6, 0.4]]
    assert greedy_decode(logp(rows)) == []
    assert beam_decode(logp(rows), beam_width=2) == [1]
    assert beam_decode(logp(rows), beam_width=1) == []  # a beam of one is best path


def test_beam_matches_exhaustive_search_on_random_matrices():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        probs = torch.softmax(torch.randn(5, 3, generator=gen) * 2, dim=1)
        want = brute_force_best(probs.tolist())
        assert tuple(beam_decode(probs.log(), beam_width=16)) == want


def test_decoders_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"\(T, C\)"):
        greedy_decode(torch.zeros(3))
    with pytest.raises(ValueError, match="beam_width"):
        beam_decode(torch.zeros(3, 2), beam_width=0)


def test_error_rates():
    assert edit_distance("4711", "4711") == 0
    assert edit_distance("4711", "471") == 1
    assert edit_distance("kitten", "sitting") == 3
    assert character_error_rate(["123", "45"], ["123", "4"]) == pytest.approx(1 / 5)
    assert string_accuracy(["123", "45"], ["123", "4"]) == 0.5
    with pytest.raises(ValueError):
        character_error_rate(["1"], [])


def glyph(digit: int, jitter: random.Random) -> tuple[np.ndarray, ...]:
    """A made-up pen trajectory per digit: a polyline on a 3x5 grid, slightly jittered."""
    shapes = {
        0: [(0, 0), (2, 0), (2, 4), (0, 4), (0, 0)],
        1: [(1, 0), (1, 4)],
        2: [(0, 4), (2, 4), (2, 2), (0, 0), (2, 0)],
        3: [(0, 4), (2, 4), (1, 2), (2, 0), (0, 0)],
        4: [(0, 4), (0, 2), (2, 2), (2, 4), (2, 0)],
    }
    pts = np.array(shapes[digit], dtype=np.float32)
    pts += np.array(
        [[jitter.uniform(-0.1, 0.1), jitter.uniform(-0.1, 0.1)] for _ in pts], np.float32
    )
    dense = [
        pts[i] + (pts[i + 1] - pts[i]) * t
        for i in range(len(pts) - 1)
        for t in np.linspace(0, 1, 6)[:-1]
    ]
    return (np.asarray([*dense, pts[-1]], dtype=np.float32) * 100,)


def fake_samples(n: int, org: str, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    return [Sample(str(k % 5), glyph(k % 5, rng), org, f"{org}:{k}") for k in range(n)]


TINY = HandwritingConfig(
    num_layers=1,
    hidden_size=24,
    dropout=0.0,
    epochs=30,
    batch_size=5,
    lr=0.02,
    seed=0,
    train_strings=10,
    eval_strings=10,
    min_digits=2,
    max_digits=3,
    beam_width=4,
)


def test_tiny_digit_classifier_learns_made_up_digits():
    parts = {
        "train": fake_samples(10, "a", 0),
        "validation": fake_samples(10, "b", 1),
        "test": fake_samples(10, "c", 2),
    }
    cfg = HandwritingConfig(**{**TINY.__dict__, "epochs": 40, "hidden_size": 32, "augment": 0.3})
    model, metrics = train_digit_classifier(cfg, parts, progress=False)
    assert metrics["test"]["accuracy"] == 1.0
    by_org = metrics["test"]["by_organisation"]
    assert list(by_org) == ["c"] and by_org["c"]["accuracy"] == 1.0
    assert np.array_equal(np.diag(by_org["c"]["confusion"])[:5], [2, 2, 2, 2, 2])
    # a second organisation whose digits are drawn upside down: confusion rows are the truth
    flipped = [
        Sample(s.label, tuple(p * [1, -1] for p in s.strokes), "z", s.source)
        for s in fake_samples(10, "z", 3)
    ]
    confusion = confusion_by_organisation(model, parts["test"] + flipped)
    assert list(confusion) == ["c", "z"]
    assert confusion["z"].sum() == 10 and confusion["z"][:5].sum(1).tolist() == [2] * 5
    assert evaluate_digits(model, flipped) == np.trace(confusion["z"]) / 10
    assert recognise(model, glyph(3, random.Random(9))) == "3"
    tensors, meta = recogniser_to_parts(model)
    again = recogniser_from_parts(tensors, json.loads(json.dumps(meta)))
    assert isinstance(again, DigitClassifier)
    assert recognise(again, glyph(2, random.Random(9))) == recognise(
        model, glyph(2, random.Random(9))
    )


def test_tiny_ctc_reader_overfits_a_few_strings(tmp_path):
    digits = fake_samples(10, "a", 0)
    parts = {"train": digits, "validation": digits, "test": digits}
    # the same 10 strings every epoch: train_strings fixed by a seed that does not change
    strings = compose_strings(digits, 6, 5, TINY)
    model = StringRecogniser(
        RecogniserShape(task="strings", num_layers=1, hidden_size=24, dropout=0.0)
    )
    coarse = Featurisation(resample_distance=0.1)  # short sequences, a fast test
    features = [line_features(s, coarse) for s, _ in strings]
    x, lengths = pad_batch(features)
    flat, target_lengths = ctc_targets([label for _, label in strings])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    ctc = torch.nn.CTCLoss(zero_infinity=True)
    model.train()
    for _ in range(400):
        loss = ctc(model(x, lengths), flat, lengths, target_lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    scores = evaluate_strings(model, strings, coarse)
    assert scores == {"cer": 0.0, "string_accuracy": 1.0}
    assert evaluate_strings(model, strings, coarse, beam_width=4) == scores
    strokes, label = strings[0]
    assert recognise(model, strokes, coarse) == label
    png = tmp_path / "figs" / "line.png"
    assert draw_probabilities(model, strokes, png, label, coarse) == label
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in png.parent.iterdir() if p.name != "line.png"]  # no temp left
    # the training entry point runs end to end and reports greedy and beam scores
    _, metrics = train_string_recogniser(
        HandwritingConfig(
            **{**TINY.__dict__, "epochs": 1, "resample_distance": 0.1, "augment": 1.0}
        ),
        parts,
        tmp_path / "run",
        progress=False,
    )
    assert set(metrics["test"]) == {"greedy", "beam"} and 0 <= metrics["test"]["beam"]["cer"]


def test_bad_inputs_raise_value_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown cell"):
        HandwritingConfig(cell="cnn").validate()
    with pytest.raises(ValueError, match="max_digits"):
        HandwritingConfig(min_digits=5, max_digits=3).validate()
    with pytest.raises(ValueError, match="max_digits"):
        HandwritingConfig(train_min_digits=9).validate()
    with pytest.raises(ValueError, match="resampling must be one of"):
        HandwritingConfig(resampling="spline").validate()
    with pytest.raises(ValueError, match="smooth must be"):
        HandwritingConfig(smooth=-0.1).validate()
    model = DigitClassifier(tiny_shape())
    with pytest.raises(ValueError, match="each stroke"):
        recognise(model, [np.zeros((3, 3))])
    with pytest.raises(ValueError, match=r"\.png"):
        draw_probabilities(StringRecogniser(tiny_shape()), [np.zeros((3, 2))], tmp_path / "x.jpg")


def tiny_shape():
    return RecogniserShape(task="digits", num_layers=1, hidden_size=4, dropout=0.0)
