"""Online handwriting recognition of UNIPEN digits with (bi)directional recurrent layers:
an isolated-digit classifier and a BLSTM + CTC reader of digit strings.  See
:mod:`carousel.handwriting.train` for the Python API."""

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
from carousel.handwriting.train import (
    HandwritingConfig,
    compose_strings,
    confusion_by_organisation,
    evaluate_digits,
    evaluate_strings,
    feature_options,
    recognise,
    train_digit_classifier,
    train_string_recogniser,
    transcribe,
)

__all__ = [
    "DIGITS",
    "DigitClassifier",
    "HandwritingConfig",
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
    "feature_options",
    "greedy_decode",
    "recognise",
    "recogniser_from_json",
    "recogniser_from_parts",
    "recogniser_to_parts",
    "string_accuracy",
    "train_digit_classifier",
    "train_string_recogniser",
    "transcribe",
]
