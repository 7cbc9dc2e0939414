"""The success criteria of Hochreiter & Schmidhuber (1997), per sequence.

* adding, multiplication (Exp. 4, 5): the absolute error at the sequence end is below 0.04.
* temporal order (Exp. 6a, 6b): every output's absolute error is below 0.3 (outputs are the
  class probabilities, targets one-hot).
* copy: every recalled symbol is the right one (argmax).

A task counts as solved when every one of the 2,560 test sequences is processed correctly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from carousel.data.tasks import get_task

REGRESSION_TOLERANCE = 0.04
CLASS_TOLERANCE = 0.3


def correct(task: str, prediction: Tensor, target: Tensor) -> Tensor:
    """(B,) booleans: which sequences ``prediction`` processes correctly.

    Args:
        prediction: regression (B,) values; temporal order (B, C) class probabilities;
            copy (k, B, C) scores of each symbol at each recall step.
        target: as :class:`carousel.data.Batch`'s ``target``.
    """
    spec = get_task(task)
    if spec.output == "regression":
        _shape(task, prediction, tuple(target.shape))
        return (prediction - target).abs() < REGRESSION_TOLERANCE
    if spec.output == "classification":
        _shape(task, prediction, (target.size(0), spec.num_outputs))
        onehot = torch.nn.functional.one_hot(target, spec.num_outputs).to(prediction.dtype)
        return ((prediction - onehot).abs() < CLASS_TOLERANCE).all(dim=1)
    _shape(task, prediction, (*target.shape, spec.num_outputs))
    return (prediction.argmax(dim=2) == target).all(dim=0)


def _shape(task: str, prediction: Tensor, want: tuple[int, ...]) -> None:
    if tuple(prediction.shape) != want:
        raise ValueError(
            f"{task}: expected predictions of shape {want}; got {tuple(prediction.shape)}"
        )
