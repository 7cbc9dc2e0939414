"""The Neural Turing Machine job: the model (:mod:`carousel.ntm.model`), its loss and
metrics (:mod:`carousel.ntm.metrics`)."""

from carousel.ntm.metrics import bce_loss, bit_errors, bits_per_sequence
from carousel.ntm.model import MEMORY_INITS, NTM, LSTMBaseline, NTMState

__all__ = [
    "MEMORY_INITS",
    "NTM",
    "LSTMBaseline",
    "NTMState",
    "bce_loss",
    "bit_errors",
    "bits_per_sequence",
]
