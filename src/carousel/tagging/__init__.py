"""Sequence labelling of words: part-of-speech tagging and chunking with (bi)directional
recurrent layers, trained through the shared loop.  See :mod:`carousel.tagging.train` for
the Python API."""

from carousel.tagging.config import TaggerConfig
from carousel.tagging.model import (
    Tagger,
    TaggerShape,
    encode_batch,
    tagger_from_parts,
    tagger_to_parts,
)
from carousel.tagging.train import (
    TaggerJob,
    build_tagger,
    evaluate_tagger,
    load_tagger,
    load_tagging_data,
    tag_sentences,
    tag_text,
    train_tagger,
)
from carousel.tagging.vocab import TaggerVocab

__all__ = [
    "Tagger",
    "TaggerConfig",
    "TaggerJob",
    "TaggerShape",
    "TaggerVocab",
    "build_tagger",
    "encode_batch",
    "evaluate_tagger",
    "load_tagger",
    "load_tagging_data",
    "tag_sentences",
    "tag_text",
    "tagger_from_parts",
    "tagger_to_parts",
    "train_tagger",
]
