"""The settings of a handwriting run (presets ``unipen-digits``, ``unipen-strings``)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from carousel.cells import get_cell
from carousel.config import check_at_least
from carousel.data.strokes import Featurisation
from carousel.train import TrainSettings


@dataclasses.dataclass(frozen=True)
class HandwritingConfig(TrainSettings):
    """A handwriting model, its features and its training (the loop's own settings are
    those of :class:`~carousel.train.TrainSettings`: optimizer, lr, clip, epochs, seed, ...).

    Features (:class:`~carousel.data.strokes.Featurisation`): ``resample_distance`` in units
    of a digit's height, ``resampling`` ``"drop"`` or ``"arc"``, ``smooth`` a Gaussian's
    width along the stroke.  For strings, ``train_strings`` new random strings are composed
    from the training organisations every epoch, ``train_min_digits``..``max_digits`` long
    (short ones help CTC leave its all-blank start); validation and test use
    ``eval_strings`` fixed strings of ``min_digits``..``max_digits`` composed from their own
    (held-out) organisations.  ``max_train_samples`` > 0 keeps only that many training
    digits (quick runs).  ``augment`` > 0: every epoch, each training digit gets a fresh
    random affine distortion of that strength (:func:`~carousel.data.strokes.distort`).
    ``beam_width``: the prefix beam search of test scores and ``carousel read`` (validation
    decodes greedily).
    """

    cell: str = "lstm"
    bidirectional: bool = True
    num_layers: int = 2
    hidden_size: int = 64
    dropout: float = 0.2
    resample_distance: float = 0.04
    resampling: str = "drop"
    smooth: float = 0.0
    batch_size: int = 32
    max_train_samples: int = 0
    train_strings: int = 4000
    eval_strings: int = 500
    min_digits: int = 3
    max_digits: int = 8
    train_min_digits: int = 1
    beam_width: int = 8
    augment: float = 0.0
    # the loop's settings, with this job's defaults: Adam, cosine decay over the epochs
    lr: float = 0.003
    lr_schedule: str = "cosine"
    epochs: int = 10

    RESUMABLE: ClassVar[tuple[str, ...]] = (*TrainSettings.RESUMABLE, "beam_width")
    ARCHITECTURE: ClassVar[tuple[str, ...]] = (
        "cell",
        "bidirectional",
        "num_layers",
        "hidden_size",
    )

    @property
    def featurisation(self) -> Featurisation:
        return Featurisation(self.resample_distance, self.resampling, self.smooth)

    def validate(self) -> None:
        super().validate()
        get_cell(self.cell)  # raises for an unknown cell
        check_at_least(
            self,
            1,
            "num_layers",
            "hidden_size",
            "batch_size",
            "train_strings",
            "eval_strings",
            "min_digits",
            "beam_width",
        )
        check_at_least(self, 0, "max_train_samples")
        if self.max_digits < max(self.min_digits, self.train_min_digits):
            raise ValueError(
                f"max_digits must be ≥ min_digits and train_min_digits; got {self.max_digits}"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        if self.augment < 0:
            raise ValueError(f"augment must be ≥ 0; got {self.augment}")
        _ = self.featurisation  # raises for bad feature settings


__all__ = ["HandwritingConfig"]
