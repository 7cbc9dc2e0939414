"""Online handwriting recognition of UNIPEN digits with (bi)directional recurrent layers:
an isolated-digit classifier and a BLSTM + CTC reader of digit strings, trained through
the shared loop.  Settings: :mod:`~carousel.handwriting.config`; models:
:mod:`~carousel.handwriting.model`; training: :mod:`~carousel.handwriting.train`; reading
and scores: :mod:`~carousel.handwriting.recognise` and :mod:`~carousel.handwriting.decode`."""

from carousel.handwriting.config import HandwritingConfig
from carousel.handwriting.decode import (
    beam_decode,
    character_error_rate,
    edit_distance,
    greedy_decode,
    string_accuracy,
)
from carousel.handwriting.model import (
    DIGITS,
    DigitClassifier,
    RecogniserShape,
    StringRecogniser,
    recogniser_from_json,
    recogniser_from_parts,
    recogniser_to_parts,
)
from carousel.handwriting.plot import draw_probabilities
from carousel.handwriting.recognise import (
    compose_strings,
    confusion_by_organisation,
    evaluate_digits,
    evaluate_strings,
    recognise,
    transcribe,
)
from carousel.handwriting.train import (
    HandwritingJob,
    held_out_scores,
    load_recogniser,
    train_digit_classifier,
    train_handwriting,
    train_string_recogniser,
)

__all__ = [
    "DIGITS",
    "DigitClassifier",
    "HandwritingConfig",
    "HandwritingJob",
    "RecogniserShape",
    "StringRecogniser",
    "beam_decode",
    "character_error_rate",
    "compose_strings",
    "confusion_by_organisation",
    "draw_probabilities",
    "edit_distance",
    "evaluate_digits",
    "evaluate_strings",
    "greedy_decode",
    "held_out_scores",
    "load_recogniser",
    "recognise",
    "recogniser_from_json",
    "recogniser_from_parts",
    "recogniser_to_parts",
    "string_accuracy",
    "train_digit_classifier",
    "train_handwriting",
    "train_string_recogniser",
    "transcribe",
]
