"""Training and evaluation of the handwriting models on UNIPEN digits.

Python API (what the CLI wires up)::

    samples = read_unipen("…/unipen_1a.tar.gz")
    cfg = resolve_config(HandwritingConfig, "unipen-digits")
    model, metrics = train_digit_classifier(cfg, samples)       # isolated digits
    cfg = resolve_config(HandwritingConfig, "unipen-strings")
    model, metrics = train_string_recogniser(cfg, samples)      # BLSTM + CTC
    recognise(model, strokes)                                   # -> "4711"
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from carousel.cells import get_cell
from carousel.config import check_at_least
from carousel.data.batching import length_batches, pad_batch
from carousel.data.unipen import (
    RESAMPLINGS,
    Sample,
    compose_string,
    distort,
    line_features,
    sample_features,
    split_by_organisation,
)
from carousel.handwriting.decode import (
    beam_decode,
    character_error_rate,
    greedy_decode,
    string_accuracy,
)
from carousel.handwriting.model import (
    DIGITS,
    DigitClassifier,
    RecogniserShape,
    StringRecogniser,
)


@dataclasses.dataclass(frozen=True)
class HandwritingConfig:
    """Settings of a handwriting job (presets ``unipen-digits``, ``unipen-strings``).

    ``step``: resampling distance in units of a digit's height; ``resampling`` ``"drop"``
    keeps raw points at least ``step`` apart, ``"arc"`` interpolates one point every
    ``step`` of arc length; ``smooth`` > 0 first smooths every stroke along its length by a
    Gaussian of that width (in heights).  For strings,
    ``train_strings`` new random strings are composed from the training organisations
    every epoch, ``train_min_digits``..``max_digits`` long (short ones help CTC leave its
    all-blank start); validation and test use ``eval_strings`` fixed strings of
    ``min_digits``..``max_digits`` composed from their own (held-out) organisations.
    ``max_train_samples`` > 0 keeps only that many training digits (quick runs).
    ``augment`` > 0: every epoch, each training digit gets a fresh random affine
    distortion of that strength (:func:`~carousel.data.unipen.distort`).
    """

    cell: str = "lstm"
    bidirectional: bool = True
    num_layers: int = 2
    hidden_size: int = 64
    dropout: float = 0.2
    step: float = 0.04
    resampling: str = "drop"
    smooth: float = 0.0
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.003
    clip: float = 5.0
    seed: int = 0
    max_train_samples: int = 0
    train_strings: int = 4000
    eval_strings: int = 500
    min_digits: int = 3
    max_digits: int = 8
    train_min_digits: int = 1
    beam_width: int = 8
    augment: float = 0.0

    def validate(self) -> None:
        get_cell(self.cell)  # raises for an unknown cell
        check_at_least(
            self,
            1,
            "num_layers",
            "hidden_size",
            "epochs",
            "batch_size",
            "train_strings",
            "eval_strings",
            "min_digits",
            "beam_width",
        )
        if self.max_digits < max(self.min_digits, self.train_min_digits):
            raise ValueError(
                f"max_digits must be ≥ min_digits and train_min_digits; got {self.max_digits}"
            )
        if not 0 <= self.dropout < 1 or not self.step > 0 or not self.lr > 0:
            raise ValueError("dropout must be in [0, 1), step and lr positive")
        if self.resampling not in RESAMPLINGS:
            raise ValueError(
                f"resampling must be one of {', '.join(RESAMPLINGS)}; got {self.resampling!r}"
            )
        if self.smooth < 0:
            raise ValueError(f"smooth must be ≥ 0; got {self.smooth}")
        if self.augment < 0:
            raise ValueError(f"augment must be ≥ 0; got {self.augment}")
        if self.max_train_samples < 0:
            raise ValueError(f"max_train_samples must be ≥ 0; got {self.max_train_samples}")


def feature_options(cfg: HandwritingConfig) -> dict:
    """The keyword arguments (``resampling``, ``smooth``) that the feature functions need
    besides ``step``."""
    return {"resampling": cfg.resampling, "smooth": cfg.smooth}


def _shape(cfg: HandwritingConfig, kind: str) -> RecogniserShape:
    return RecogniserShape(
        kind=kind,
        cell=cfg.cell,
        bidirectional=cfg.bidirectional,
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        dropout=cfg.dropout,
    )


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


def _splits(samples: Sequence[Sample] | dict[str, list[Sample]]) -> dict[str, list[Sample]]:
    if isinstance(samples, dict):
        return samples
    return split_by_organisation(samples)


def _run_epochs(
    cfg: HandwritingConfig,
    model: nn.Module,
    make_batches: Callable[[int], list[tuple[Tensor, Tensor, object]]],
    loss_of: Callable[[Tensor, Tensor, object], Tensor],
    score: Callable[[], dict[str, float]],
    key: str,
    higher_is_better: bool,
    log: Callable[[str], None] | None,
) -> tuple[list[dict], int, float]:
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=cfg.epochs)
    best, best_state, best_epoch, history = -math.inf, None, 0, []
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        total, count = 0.0, 0
        for x, lengths, target in make_batches(epoch):
            loss = loss_of(x, lengths, target)
            optimiser.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimiser.step()
            total += float(loss.detach()) * len(lengths)
            count += len(lengths)
        scheduler.step()
        scores = score()
        history.append({"epoch": epoch, "loss": total / count, "validation": scores})
        if log:
            log(
                f"epoch {epoch}: loss {total / count:.4f}  validation "
                + "  ".join(f"{k} {v:.4f}" for k, v in scores.items())
                + f"  ({time.perf_counter() - start:.0f} s)"
            )
        value = scores[key] if higher_is_better else -scores[key]
        if value > best:
            best, best_epoch = value, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return history, best_epoch, time.perf_counter() - start


# ---------------------------------------------------------------------------- digits
def evaluate_digits(
    model: DigitClassifier,
    samples: Sequence[Sample],
    step: float = 0.04,
    *,
    resampling: str = "drop",
    smooth: float = 0.0,
) -> float:
    """Accuracy (a fraction) of the classifier on isolated digit samples."""
    matrices = confusion_by_organisation(
        model, samples, step, resampling=resampling, smooth=smooth
    ).values()
    return sum(int(np.trace(m)) for m in matrices) / len(samples)


def confusion_by_organisation(
    model: DigitClassifier,
    samples: Sequence[Sample],
    step: float = 0.04,
    *,
    resampling: str = "drop",
    smooth: float = 0.0,
) -> dict[str, np.ndarray]:
    """``{organisation: (10, 10) int64 confusion matrix}`` of the classifier on isolated
    digits, rows the true digit and columns the predicted one (accuracy = trace / sum)."""
    if not samples:
        raise ValueError("expected at least one sample to evaluate on")
    options = {"resampling": resampling, "smooth": smooth}
    out: dict[str, np.ndarray] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in length_batches([s.num_points for s in samples], 256):
            features = [sample_features(samples[i].strokes, step, **options) for i in batch]
            x, lengths = pad_batch(features)
            for i, p in zip(batch, model(x, lengths).argmax(1).tolist()):
                matrix = out.setdefault(samples[i].organisation, np.zeros((10, 10), np.int64))
                matrix[DIGITS.index(samples[i].label), p] += 1
    model.train(was_training)
    return dict(sorted(out.items()))


def train_digit_classifier(
    cfg: HandwritingConfig,
    samples: Sequence[Sample] | dict[str, list[Sample]],
    *,
    log: Callable[[str], None] | None = print,
) -> tuple[DigitClassifier, dict]:
    """Train on the training organisations, select on validation, report test.

    ``samples``: all samples (split by :func:`split_by_organisation`) or a dict
    ``{"train", "validation"[, "test"]}``.  Returns ``(model, metrics)``."""
    cfg.validate()
    parts = _splits(samples)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    train = parts["train"][: cfg.max_train_samples or None]
    options = feature_options(cfg)
    features = [sample_features(s.strokes, cfg.step, **options) for s in train]
    labels = torch.tensor([DIGITS.index(s.label) for s in train])
    model = DigitClassifier(_shape(cfg, "digit"))
    loss_fn = nn.CrossEntropyLoss()

    np_rng = np.random.default_rng(cfg.seed)

    def batches(epoch: int):
        nonlocal features
        if cfg.augment > 0 and epoch > 1:
            features = [
                sample_features(distort(s.strokes, np_rng, cfg.augment), cfg.step, **options)
                for s in train
            ]
        for batch in length_batches([len(f) for f in features], cfg.batch_size, rng):
            x, lengths = pad_batch([features[i] for i in batch])
            yield x, lengths, labels[batch]

    history, best_epoch, seconds = _run_epochs(
        cfg,
        model,
        batches,
        lambda x, lengths, y: loss_fn(model(x, lengths), y),
        lambda: {"accuracy": evaluate_digits(model, parts["validation"], cfg.step, **options)},
        "accuracy",
        True,
        log,
    )
    metrics: dict = {
        "best_epoch": best_epoch,
        "epochs": history,
        "seconds": seconds,
        "train_samples": len(train),
        "validation": {
            "accuracy": evaluate_digits(model, parts["validation"], cfg.step, **options)
        },
    }
    if parts.get("test"):
        metrics["test"] = {"accuracy": evaluate_digits(model, parts["test"], cfg.step, **options)}
        confusion = confusion_by_organisation(model, parts["test"], cfg.step, **options)
        metrics["test_by_organisation"] = {
            org: {"accuracy": float(np.trace(m) / m.sum()), "confusion": m.tolist()}
            for org, m in confusion.items()
        }
    return model, metrics


# ---------------------------------------------------------------------------- strings
def compose_strings(
    samples: Sequence[Sample],
    count: int,
    seed: int,
    cfg: HandwritingConfig,
    min_digits: int | None = None,
) -> list[tuple[list[np.ndarray], str]]:
    """``count`` strings (strokes, label) of ``min_digits`` (default ``cfg.min_digits``) to
    ``cfg.max_digits`` digits composed from ``samples`` with ``seed``."""
    rng = random.Random(seed)
    low = cfg.min_digits if min_digits is None else min_digits
    return [compose_string(samples, rng, low, cfg.max_digits) for _ in range(count)]


def _targets(labels: Sequence[str]) -> tuple[Tensor, Tensor]:
    flat = torch.tensor([DIGITS.index(c) + 1 for label in labels for c in label])
    return flat, torch.tensor([len(label) for label in labels])


def transcribe(
    model: StringRecogniser, features: Sequence[np.ndarray], beam_width: int = 0
) -> list[str]:
    """Decoded strings of feature sequences: greedy when ``beam_width`` is 0, else prefix
    beam search with that width."""
    out: list[str] = [""] * len(features)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in length_batches([len(f) for f in features], 128):
            x, lengths = pad_batch([features[i] for i in batch])
            log_probs = model(x, lengths)  # (T, B, 11)
            for b, i in enumerate(batch):
                frames = log_probs[: int(lengths[b]), b]
                labels = beam_decode(frames, beam_width) if beam_width else greedy_decode(frames)
                out[i] = "".join(DIGITS[k - 1] for k in labels)
    model.train(was_training)
    return out


def evaluate_strings(
    model: StringRecogniser,
    strings: Sequence[tuple[Sequence[np.ndarray], str]],
    step: float = 0.04,
    beam_width: int = 0,
    *,
    resampling: str = "drop",
    smooth: float = 0.0,
) -> dict[str, float]:
    """``{"cer", "string_accuracy"}`` (fractions) of greedy (``beam_width`` 0) or beam
    decoding on composed strings."""
    if not strings:
        raise ValueError("expected at least one string to evaluate on")
    options = {"resampling": resampling, "smooth": smooth}
    features = [line_features(s, step, **options) for s, _ in strings]
    hypotheses = transcribe(model, features, beam_width)
    references = [label for _, label in strings]
    return {
        "cer": character_error_rate(references, hypotheses),
        "string_accuracy": string_accuracy(references, hypotheses),
    }


def train_string_recogniser(
    cfg: HandwritingConfig,
    samples: Sequence[Sample] | dict[str, list[Sample]],
    *,
    log: Callable[[str], None] | None = print,
) -> tuple[StringRecogniser, dict]:
    """BLSTM + CTC on digit strings composed from the training organisations' digits
    (fresh strings every epoch), selected on strings from the validation organisations,
    reported (greedy and beam) on strings from the test organisations."""
    cfg.validate()
    parts = _splits(samples)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    train = parts["train"][: cfg.max_train_samples or None]
    validation = compose_strings(parts["validation"], cfg.eval_strings, cfg.seed + 1, cfg)
    options = feature_options(cfg)
    model = StringRecogniser(_shape(cfg, "string"))
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)

    np_rng = np.random.default_rng(cfg.seed)

    def batches(epoch: int):
        rng = random.Random(cfg.seed * 1000 + epoch)
        source = train
        if cfg.augment > 0:
            source = [
                dataclasses.replace(s, strokes=tuple(distort(s.strokes, np_rng, cfg.augment)))
                for s in train
            ]
        strings = compose_strings(
            source, cfg.train_strings, cfg.seed * 1000 + epoch, cfg, cfg.train_min_digits
        )
        features = [line_features(s, cfg.step, **options) for s, _ in strings]
        for batch in length_batches([len(f) for f in features], cfg.batch_size, rng):
            x, lengths = pad_batch([features[i] for i in batch])
            yield x, lengths, _targets([strings[i][1] for i in batch])

    def loss_of(x: Tensor, lengths: Tensor, target: tuple[Tensor, Tensor]) -> Tensor:
        log_probs = model(x, lengths)  # (T, B, 11)
        return ctc(log_probs, target[0], lengths, target[1])

    history, best_epoch, seconds = _run_epochs(
        cfg,
        model,
        batches,
        loss_of,
        lambda: evaluate_strings(model, validation, cfg.step, **options),
        "cer",
        False,
        log,
    )
    metrics: dict = {
        "best_epoch": best_epoch,
        "epochs": history,
        "seconds": seconds,
        "validation": evaluate_strings(model, validation, cfg.step, **options),
    }
    if parts.get("test"):
        test = compose_strings(parts["test"], cfg.eval_strings, cfg.seed + 2, cfg)
        metrics["test"] = {
            "greedy": evaluate_strings(model, test, cfg.step, **options),
            "beam": evaluate_strings(model, test, cfg.step, cfg.beam_width, **options),
        }
    return model, metrics


def recognise(
    model: DigitClassifier | StringRecogniser,
    strokes: Sequence[np.ndarray],
    step: float = 0.04,
    beam_width: int = 0,
    *,
    resampling: str = "drop",
    smooth: float = 0.0,
) -> str:
    """The digits written in ``strokes`` (pen-down trajectories, each (n, 2) x, y in any
    units, y upwards).  A :class:`DigitClassifier` returns one digit; a
    :class:`StringRecogniser` reads the whole line (greedy, or beam search)."""
    from carousel.data.unipen import normalise

    strokes = _check_strokes(strokes)
    options = {"resampling": resampling, "smooth": smooth}
    if isinstance(model, DigitClassifier):
        x, lengths = pad_batch([sample_features(strokes, step, **options)])
        model.eval()
        with torch.no_grad():
            return DIGITS[int(model(x, lengths).argmax(1))]
    if isinstance(model, StringRecogniser):
        features = line_features(normalise(strokes), step, **options)
        return transcribe(model, [features], beam_width)[0]
    raise ValueError(f"expected a DigitClassifier or StringRecogniser; got {type(model).__name__}")
