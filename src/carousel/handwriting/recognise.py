"""Reading with a trained recogniser, and its scores: the digit of an isolated sample
(accuracy, a confusion matrix per organisation), the digits of a line (greedy or beam CTC
decoding; character error rate, string accuracy), and the strings composed from held-out
digits that strings are scored on."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from carousel.data.batching import length_batches, pad_batch
from carousel.data.strokes import (
    DEFAULT_FEATURISATION,
    Featurisation,
    compose_string,
    line_features,
    normalise,
    sample_features,
)
from carousel.data.unipen import Sample
from carousel.handwriting.config import HandwritingConfig
from carousel.handwriting.decode import (
    beam_decode,
    character_error_rate,
    greedy_decode,
    string_accuracy,
)
from carousel.handwriting.model import DIGITS, DigitClassifier, StringRecogniser


def _batched(model: nn.Module, features: Sequence[np.ndarray], size: int) -> Iterator:
    """(indices, (T, B, ·) outputs, lengths) of ``model`` over ``features`` in batches of
    similar length, in eval mode without gradients (on the model's device, back on CPU)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in length_batches([len(f) for f in features], size):
            x, lengths = pad_batch([features[i] for i in batch])
            yield batch, model(x.to(device), lengths).cpu(), lengths
    model.train(was_training)


def digit_scores(model: DigitClassifier, features: Sequence[np.ndarray]) -> Tensor:
    """(N, 10) class scores of the classifier for N feature sequences."""
    out = torch.zeros(len(features), len(DIGITS))
    for batch, scores, _ in _batched(model, features, 256):
        out[batch] = scores
    return out


def predict_digits(model: DigitClassifier, features: Sequence[np.ndarray]) -> list[int]:
    """The class (0–9) the classifier gives each feature sequence."""
    return digit_scores(model, features).argmax(1).tolist()


def frame_log_probs(model: StringRecogniser, features: Sequence[np.ndarray]) -> list[Tensor]:
    """Each feature sequence's (T_i, 11) per-frame label log-probabilities (0 the blank)."""
    out: list[Tensor] = [torch.empty(0)] * len(features)
    for batch, log_probs, lengths in _batched(model, features, 128):
        for b, i in enumerate(batch):
            out[i] = log_probs[: int(lengths[b]), b]
    return out


def confusion_by_organisation(
    model: DigitClassifier,
    samples: Sequence[Sample],
    featurisation: Featurisation = DEFAULT_FEATURISATION,
) -> dict[str, np.ndarray]:
    """``{organisation: (10, 10) int64 confusion matrix}`` of the classifier on isolated
    digits, rows the true digit and columns the predicted one (accuracy = trace / sum)."""
    if not samples:
        raise ValueError("expected at least one sample to evaluate on")
    predicted = predict_digits(model, [sample_features(s.strokes, featurisation) for s in samples])
    out: dict[str, np.ndarray] = {}
    for s, p in zip(samples, predicted):
        matrix = out.setdefault(s.organisation, np.zeros((10, 10), np.int64))
        matrix[DIGITS.index(s.label), p] += 1
    return dict(sorted(out.items()))


def evaluate_digits(
    model: DigitClassifier,
    samples: Sequence[Sample],
    featurisation: Featurisation = DEFAULT_FEATURISATION,
) -> float:
    """Accuracy (a fraction) of the classifier on isolated digit samples."""
    matrices = confusion_by_organisation(model, samples, featurisation).values()
    return sum(int(np.trace(m)) for m in matrices) / len(samples)


def compose_strings(
    samples: Sequence[Sample],
    count: int,
    seed: int | str,
    cfg: HandwritingConfig,
    min_digits: int | None = None,
) -> list[tuple[list[np.ndarray], str]]:
    """``count`` strings (strokes, label) of ``min_digits`` (default ``cfg.min_digits``) to
    ``cfg.max_digits`` digits composed from ``samples`` with ``seed``."""
    rng = random.Random(seed)
    low = cfg.min_digits if min_digits is None else min_digits
    return [compose_string(samples, rng, low, cfg.max_digits) for _ in range(count)]


def transcribe(
    model: StringRecogniser, features: Sequence[np.ndarray], beam_width: int = 0
) -> list[str]:
    """Decoded strings of feature sequences: greedy when ``beam_width`` is 0, else prefix
    beam search with that width."""
    return [decode(frames, beam_width) for frames in frame_log_probs(model, features)]


def decode(frames: Tensor, beam_width: int = 0) -> str:
    """The digits of (T, 11) per-frame log-probabilities: greedy, or beam search."""
    labels = beam_decode(frames, beam_width) if beam_width else greedy_decode(frames)
    return "".join(DIGITS[k - 1] for k in labels)


def string_scores(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """``{"cer", "string_accuracy"}`` (fractions) of hypotheses against references."""
    return {
        "cer": character_error_rate(references, hypotheses),
        "string_accuracy": string_accuracy(references, hypotheses),
    }


def evaluate_strings(
    model: StringRecogniser,
    strings: Sequence[tuple[Sequence[np.ndarray], str]],
    featurisation: Featurisation = DEFAULT_FEATURISATION,
    beam_width: int = 0,
) -> dict[str, float]:
    """``{"cer", "string_accuracy"}`` (fractions) of greedy (``beam_width`` 0) or beam
    decoding on composed strings."""
    if not strings:
        raise ValueError("expected at least one string to evaluate on")
    features = [line_features(s, featurisation) for s, _ in strings]
    return string_scores([label for _, label in strings], transcribe(model, features, beam_width))


def _check_strokes(strokes: Sequence[np.ndarray]) -> list[np.ndarray]:
    out = []
    for k, s in enumerate(strokes):
        a = np.asarray(s, dtype=np.float32)
        if a.ndim != 2 or a.shape[1] != 2 or len(a) == 0:
            raise ValueError(
                f"expected each stroke to be (n ≥ 1, 2) points; stroke {k} is {a.shape}"
            )
        out.append(a)
    if not out:
        raise ValueError("expected at least one stroke")
    return out


def recognise(
    model: DigitClassifier | StringRecogniser,
    strokes: Sequence[np.ndarray],
    featurisation: Featurisation = DEFAULT_FEATURISATION,
    beam_width: int = 0,
) -> str:
    """The digits written in ``strokes`` (pen-down trajectories, each (n, 2) x, y in any
    units, y upwards), featurised as the model was trained (``featurisation``).  A
    :class:`DigitClassifier` returns one digit; a :class:`StringRecogniser` reads the whole
    line (greedy, or beam search)."""
    strokes = _check_strokes(strokes)
    if isinstance(model, DigitClassifier):
        return DIGITS[predict_digits(model, [sample_features(strokes, featurisation)])[0]]
    if isinstance(model, StringRecogniser):
        features = line_features(normalise(strokes), featurisation)
        return transcribe(model, [features], beam_width)[0]
    raise ValueError(f"expected a DigitClassifier or StringRecogniser; got {type(model).__name__}")


__all__ = [
    "compose_strings",
    "confusion_by_organisation",
    "decode",
    "digit_scores",
    "evaluate_digits",
    "evaluate_strings",
    "frame_log_probs",
    "predict_digits",
    "recognise",
    "string_scores",
    "transcribe",
]
