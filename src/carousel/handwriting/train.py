"""Training the handwriting models on UNIPEN digits through the shared loop
(:func:`carousel.train.fit`).

:class:`HandwritingJob` is all that is particular to handwriting: an epoch's batches
(isolated digits, or digit strings composed afresh each epoch from the training digits;
with ``augment``, every digit randomly distorted), each a pure function of (seed, epoch) so
a run resumes mid-epoch exactly; the loss (cross-entropy over the 10 digits, or CTC); and
the validation score that selects the model kept (accuracy, or greedy CER).

Python API (what the CLI wires up)::

    samples = read_unipen("…/unipen_1a.tar.gz")
    cfg = resolve_config(HandwritingConfig, "unipen-digits")
    model, metrics = train_digit_classifier(cfg, samples, "runs/digits")  # isolated digits
    cfg = resolve_config(HandwritingConfig, "unipen-strings")
    model, metrics = train_string_recogniser(cfg, samples)  # BLSTM + CTC, in a temp folder
    recognise(model, strokes, cfg.featurisation)             # -> "4711"
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import random
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from carousel.checkpoint import load_checkpoint
from carousel.config import config_from_dict
from carousel.data.batching import length_batches, pad_batch
from carousel.data.strokes import distort, line_features, sample_features
from carousel.data.unipen import Sample, split_by_organisation
from carousel.handwriting.config import HandwritingConfig
from carousel.handwriting.model import (
    DIGITS,
    DigitClassifier,
    RecogniserShape,
    StringRecogniser,
    recogniser_from_json,
)
from carousel.handwriting.recognise import (
    compose_strings,
    confusion_by_organisation,
    decode,
    digit_scores,
    evaluate_strings,
    frame_log_probs,
    string_scores,
)
from carousel.train import Job, fit, load_weights, open_run, setup

KIND = "handwriting"
TASKS = ("digits", "strings")
Recogniser = DigitClassifier | StringRecogniser


def ctc_targets(labels: Sequence[str]) -> tuple[Tensor, Tensor]:
    """CTC targets of digit strings: the labels (digit k is label k + 1) concatenated, and
    each string's length."""
    flat = torch.tensor([DIGITS.index(c) + 1 for label in labels for c in label])
    return flat, torch.tensor([len(label) for label in labels])


def fingerprint(samples: Sequence[Sample]) -> str:
    """SHA-256 of samples' labels, organisations and points (a resumed run checks it)."""
    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.label}\0{s.organisation}\0{len(s.strokes)}\0".encode())
        for stroke in s.strokes:
            h.update(np.ascontiguousarray(stroke, dtype=np.float32).tobytes())
    return h.hexdigest()


class HandwritingJob(Job):
    """Isolated digits (``task="digits"``) or digit strings (``"strings"``) for the loop."""

    kind = KIND
    keep_best = True
    unit = "nats/digit"

    def __init__(
        self,
        task: str,
        cfg: HandwritingConfig,
        parts: dict[str, list[Sample]],
        device: torch.device,
        data: str | None = None,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
        self.task, self.cfg, self.device, self.data = task, cfg, device, data
        self.featurisation = cfg.featurisation
        self.train = parts["train"][: cfg.max_train_samples or None]
        self.validation = parts["validation"]
        self.data_sha256 = fingerprint(self.train + self.validation)
        self.shape = RecogniserShape(
            task=task,
            cell=cfg.cell,
            bidirectional=cfg.bidirectional,
            num_layers=cfg.num_layers,
            hidden_size=cfg.hidden_size,
            dropout=cfg.dropout,
        )
        f = self.featurisation
        if task == "digits":
            self.metric, self.higher_is_better, self.item = "accuracy", True, "digit"
            self.clean = [sample_features(s.strokes, f) for s in self.train]
            self.labels = torch.tensor([DIGITS.index(s.label) for s in self.train])
            self.valid_features = [sample_features(s.strokes, f) for s in self.validation]
            self.valid_labels = torch.tensor([DIGITS.index(s.label) for s in self.validation])
        else:
            self.metric, self.higher_is_better, self.item = "cer", False, "string"
            strings = compose_strings(self.validation, cfg.eval_strings, cfg.seed + 1, cfg)
            self.valid_features = [line_features(s, f) for s, _ in strings]
            self.valid_labels = [label for _, label in strings]
            self.ctc = nn.CTCLoss(blank=0, zero_infinity=True)
        self._epoch: tuple[int, list, list[list[int]], Any] | None = None

    def build(self) -> Recogniser:
        return recogniser_from_json(dataclasses.asdict(self.shape))

    def steps_in_epoch(self, epoch: int) -> int:
        count = len(self.train) if self.task == "digits" else self.cfg.train_strings
        return math.ceil(count / self.cfg.batch_size)

    def epoch(self, epoch: int) -> tuple[list[np.ndarray], list[list[int]], Any]:
        """The epoch's (features, batches of indices, targets); the last epoch's is kept."""
        if self._epoch is None or self._epoch[0] != epoch:
            cfg, f = self.cfg, self.featurisation
            # the epoch's random streams, functions of (seed, epoch) alone
            distortions = np.random.default_rng([cfg.seed, epoch])
            seed = f"handwriting/{cfg.seed}/{epoch}"
            if self.task == "digits":
                features, targets = self.clean, self.labels
                if cfg.augment > 0 and epoch > 0:  # the first epoch sees the digits as written
                    features = [
                        sample_features(distort(s.strokes, distortions, cfg.augment), f)
                        for s in self.train
                    ]
            else:
                source = self.train
                if cfg.augment > 0:
                    source = [
                        dataclasses.replace(
                            s, strokes=tuple(distort(s.strokes, distortions, cfg.augment))
                        )
                        for s in self.train
                    ]
                strings = compose_strings(
                    source, cfg.train_strings, f"{seed}/strings", cfg, cfg.train_min_digits
                )
                features = [line_features(s, f) for s, _ in strings]
                targets = [label for _, label in strings]
            order_rng = random.Random(f"{seed}/order")
            order = length_batches([len(x) for x in features], cfg.batch_size, order_rng)
            self._epoch = (epoch, features, order, targets)
        return self._epoch[1:]

    def batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor, Any]]:
        features, order, targets = self.epoch(epoch)
        for batch in order[start:]:
            x, lengths = pad_batch([features[i] for i in batch])  # (T, B, F), (B,)
            if self.task == "digits":
                target: Any = targets[batch].to(self.device)
            else:
                flat, target_lengths = ctc_targets([targets[i] for i in batch])
                target = (flat.to(self.device), target_lengths)
            yield x.to(self.device), lengths, target

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor, Any]) -> tuple[Tensor, int]:
        x, lengths, target = batch
        if self.task == "digits":
            return nn.functional.cross_entropy(model(x, lengths), target), len(lengths)
        log_probs = model(x, lengths)  # (T, B, 11)
        return self.ctc(log_probs, target[0], lengths, target[1]), len(lengths)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation loss and accuracy, or loss, greedy CER and string accuracy."""
        if self.task == "digits":
            scores, y = digit_scores(model, self.valid_features), self.valid_labels
            right = int((scores.argmax(1) == y).sum())
            loss = nn.functional.cross_entropy(scores, y)
            return {"loss": float(loss), "accuracy": right / len(y)}
        frames = frame_log_probs(model, self.valid_features)
        flat, target_lengths = ctc_targets(self.valid_labels)
        lengths = torch.tensor([len(f) for f in frames])
        loss = self.ctc(nn.utils.rnn.pad_sequence(frames), flat, lengths, target_lengths)
        hypotheses = [decode(f) for f in frames]
        return {"loss": float(loss), **string_scores(self.valid_labels, hypotheses)}

    def describe(self, scores: dict[str, float]) -> str:
        loss = f"validation loss {scores['loss']:.4f}"
        if self.task == "digits":
            return f"{loss}, accuracy {100 * scores['accuracy']:.2f} %"
        return (
            f"{loss}, CER {100 * scores['cer']:.2f} %, "
            f"strings read exactly {100 * scores['string_accuracy']:.1f} %"
        )

    def meta(self) -> dict[str, Any]:
        """What reading and resuming need besides the config: the task, the architecture,
        and the data (the archive's path, if known, and the fingerprint of what trained)."""
        return {
            "task": self.task,
            "model": dataclasses.asdict(self.shape),
            "data": self.data,
            "data_sha256": self.data_sha256,
        }


def held_out_scores(
    model: Recogniser, task: str, cfg: HandwritingConfig, test: Sequence[Sample]
) -> dict[str, Any]:
    """The test scores: digits' accuracy with a confusion matrix per organisation, or
    strings' greedy and beam scores on ``eval_strings`` strings composed from ``test``."""
    f = cfg.featurisation
    if task == "digits":
        confusion = confusion_by_organisation(model, test, f)
        right = sum(int(np.trace(m)) for m in confusion.values())
        return {
            "accuracy": right / len(test),
            "by_organisation": {
                org: {"accuracy": float(np.trace(m) / m.sum()), "confusion": m.tolist()}
                for org, m in confusion.items()
            },
        }
    strings = compose_strings(test, cfg.eval_strings, cfg.seed + 2, cfg)
    return {
        "greedy": evaluate_strings(model, strings, f),
        "beam": evaluate_strings(model, strings, f, cfg.beam_width),
    }


def train_handwriting(
    cfg: HandwritingConfig | None,
    samples: Sequence[Sample] | dict[str, list[Sample]],
    run: str | os.PathLike | None = None,
    *,
    task: str = "digits",
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    data: str | None = None,
    progress: bool = True,
    on_checkpoint: Callable[[int], None] | None = None,
) -> tuple[Recogniser, dict[str, Any]]:
    """Train on the training organisations, keep the model of the best validation score,
    report test, into run folder ``run`` (a temporary one when None), or continue the run
    there (``resume``: its own settings and task; ``overrides`` may change only how long and
    how often).

    ``samples``: all samples (split by :func:`split_by_organisation`) or a dict
    ``{"train", "validation"[, "test"]}``; ``data`` names where they came from (kept in the
    checkpoint).  Returns ``(model, metrics)``: the best model, and the loop's summary with
    ``best_epoch``, ``validation`` and (with a test part) ``test`` scores.
    """
    parts = samples if isinstance(samples, dict) else split_by_organisation(samples)
    with contextlib.ExitStack() as stack:
        if run is None:
            if resume:
                raise ValueError("resuming needs the run folder")
            run = stack.enter_context(tempfile.TemporaryDirectory(prefix="carousel-hw-"))
        with open_run(run, resume=resume, kind=KIND) as folder:
            cfg = folder.settings(HandwritingConfig, cfg, overrides)
            cfg.validate()
            task = folder.meta["task"] if resume else task
            device = setup(cfg)
            job = HandwritingJob(task, cfg, parts, device, data)
            if resume and job.data_sha256 != folder.meta["data_sha256"]:
                raise ValueError(
                    f"the data differ from what {folder.root} was trained on "
                    f"({folder.meta.get('data') or 'samples in memory'})"
                )
            model = job.build().to(device)
            summary = fit(model, job, cfg, folder, progress=progress, on_checkpoint=on_checkpoint)
    model.eval()
    metrics = {
        **summary,
        "task": task,
        "best_epoch": math.ceil(summary["best_step"] / job.steps_in_epoch(0)),
        "train_samples": len(job.train),
        "validation": job.evaluate(model),
    }
    if parts.get("test"):
        metrics["test"] = held_out_scores(model, task, cfg, parts["test"])
    return model, metrics


def train_digit_classifier(
    cfg: HandwritingConfig | None,
    samples: Sequence[Sample] | dict[str, list[Sample]],
    run: str | os.PathLike | None = None,
    **kwargs: Any,
) -> tuple[DigitClassifier, dict[str, Any]]:
    """:func:`train_handwriting` of isolated digits (test: accuracy, and per organisation
    accuracy and confusion matrix)."""
    return train_handwriting(cfg, samples, run, task="digits", **kwargs)


def train_string_recogniser(
    cfg: HandwritingConfig | None,
    samples: Sequence[Sample] | dict[str, list[Sample]],
    run: str | os.PathLike | None = None,
    **kwargs: Any,
) -> tuple[StringRecogniser, dict[str, Any]]:
    """:func:`train_handwriting` of BLSTM + CTC on digit strings composed from the training
    organisations' digits (fresh strings every epoch), selected on strings from the
    validation organisations (greedy CER), reported (greedy and beam) on strings from the
    test organisations."""
    return train_handwriting(cfg, samples, run, task="strings", **kwargs)


def load_recogniser(path: str | os.PathLike) -> tuple[Recogniser, HandwritingConfig, dict]:
    """The model (its best weights, in eval mode), settings and metadata of a handwriting
    checkpoint (file or run folder)."""
    tensors, meta = load_checkpoint(path, kind=KIND)
    cfg = config_from_dict(HandwritingConfig, meta["config"])
    model = recogniser_from_json(meta["model"])
    load_weights(model, tensors, path, best=True)
    model.eval()
    return model, cfg, meta


__all__ = [
    "KIND",
    "TASKS",
    "HandwritingJob",
    "ctc_targets",
    "held_out_scores",
    "load_recogniser",
    "train_digit_classifier",
    "train_handwriting",
    "train_string_recogniser",
]
