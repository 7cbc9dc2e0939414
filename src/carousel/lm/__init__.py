"""Language modelling: characters or words, embedding → recurrent stack → softmax."""

from carousel.lm.config import LMConfig
from carousel.lm.model import RNNLM

__all__ = ["RNNLM", "LMConfig"]
