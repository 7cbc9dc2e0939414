"""The tagger: vocabularies, batching by length, serialisation, and a tiny model that
overfits a few sentences (unidirectional and bidirectional)."""

from __future__ import annotations

import json

import pytest
import torch

from carousel.data.conll import Sentence
from carousel.tagging import (
    TaggerConfig,
    TaggerVocab,
    build_tagger,
    encode_batch,
    evaluate_tagger,
    length_batches,
    tag_sentences,
    tag_text,
    tagger_from_parts,
    tagger_to_parts,
    train_tagger,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def sent(text: str, layer: str = "upos") -> Sentence:
    pairs = [p.rsplit("/", 1) for p in text.split()]
    return Sentence(tuple(w for w, _ in pairs), {layer: tuple(t for _, t in pairs)})


# "can" is a verb after a pronoun and a noun after a determiner: only context tells.
TOY = [
    sent("I/PRON can/AUX see/VERB the/DET can/NOUN ./PUNCT"),
    sent("the/DET can/NOUN is/AUX red/ADJ"),
    sent("you/PRON can/AUX run/VERB"),
    sent("a/DET dog/NOUN can/AUX see/VERB a/DET cat/NOUN ./PUNCT"),
    sent("red/ADJ dogs/NOUN run/VERB"),
]

TINY = TaggerConfig(
    hidden_size=24,
    word_dim=16,
    char_dim=8,
    char_features=16,
    dropout=0.0,
    min_count=1,
    epochs=25,
    batch_size=1,
    lr=0.03,
    seed=0,
)


def test_vocab_maps_rare_and_unknown_words_to_unk_and_round_trips_json():
    vocab = TaggerVocab.build(
        [["The", "the", "cat"], ["the", "Dog"]], [["D", "D", "N"], ["D", "N"]], "upos"
    )
    assert vocab.words[2:] == ["the"]  # only "the" is seen twice (lower-cased)
    assert vocab.word_ids(["THE", "cat", "zebra"]) == [2, 1, 1]
    assert vocab.tags == ["D", "N"]
    assert vocab.char_ids("Tz") == [vocab.char_index["T"], 1]
    again = TaggerVocab.from_json(json.loads(json.dumps(vocab.to_json())))
    assert again == vocab
    with pytest.raises(ValueError, match="not in the tagger's tag set"):
        vocab.tag_ids(["X"])


def test_length_batches_cover_every_index_once_and_group_similar_lengths():
    lengths = [5, 1, 9, 3, 3, 7, 2, 8]
    batches = length_batches(lengths, 3, rng=None)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert [[lengths[i] for i in b] for b in batches] == [[1, 2, 3], [3, 5, 7], [8, 9]]
    import random

    shuffled = length_batches(lengths, 3, rng=random.Random(1))
    assert sorted(i for b in shuffled for i in b) == list(range(8))


def test_encode_batch_pads_only_to_the_longest_sentence():
    vocab = TaggerVocab.build([s.words for s in TOY], [s.tags["upos"] for s in TOY], "upos", 1)
    words, lengths, chars, char_lengths, spelling = encode_batch(vocab, [["the", "can"], ["I"]])
    assert words.shape == (2, 2) and lengths.tolist() == [2, 1]
    assert words[1, 1] == 0  # padding
    assert chars.shape == (3, 3) and char_lengths.tolist() == [3, 3, 1]
    assert spelling[:, 0].tolist() == [0, 1] and spelling[0, 1] == 2
    with pytest.raises(ValueError, match="non-empty"):
        encode_batch(vocab, [["a"], []])


def test_padding_does_not_change_a_sentences_tags():
    vocab = TaggerVocab.build([s.words for s in TOY], [s.tags["upos"] for s in TOY], "upos", 1)
    for bidirectional in (False, True):
        model = build_tagger(
            TaggerConfig(
                hidden_size=8, word_dim=8, char_dim=4, char_features=8, bidirectional=bidirectional
            ),
            vocab,
        ).eval()
        short = ["the", "can"]
        alone = model(*encode_batch(vocab, [short]))[:, 0]
        padded = model(*encode_batch(vocab, [short, ["a", "dog", "can", "see", "cats"]]))
        torch.testing.assert_close(padded[:2, 0], alone)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_tiny_tagger_overfits_a_few_sentences(bidirectional):
    cfg = TaggerConfig(**{**TINY.__dict__, "bidirectional": bidirectional})
    model, vocab, metrics = train_tagger(
        cfg, data={"train": TOY, "dev": TOY, "test": TOY}, log=None
    )
    assert metrics["test"]["accuracy"] == 1.0
    assert metrics["epochs"][-1]["loss"] < metrics["epochs"][0]["loss"] / 10
    tags = tag_sentences(model, vocab, [["the", "can", "is", "red"], ["you", "can", "see"]])
    assert tags == [["DET", "NOUN", "AUX", "ADJ"], ["PRON", "AUX", "VERB"]]
    text = "the can is red\n\n you  can see\n"
    assert (
        tag_text(model, vocab, text)
        == "the/DET can/NOUN is/AUX red/ADJ\n\nyou/PRON can/AUX see/VERB\n"
    )


def test_tagger_serialises_as_tensors_plus_json(tmp_path):
    cfg = TaggerConfig(**{**TINY.__dict__, "epochs": 2, "cell": "gru", "num_layers": 2})
    model, vocab, _ = train_tagger(cfg, data={"train": TOY, "dev": TOY}, log=None)
    tensors, meta = tagger_to_parts(model, vocab)
    meta = json.loads(json.dumps(meta))
    again, vocab2 = tagger_from_parts({k: v.clone() for k, v in tensors.items()}, meta)
    words = [["a", "dog", "can", "run"], ["zebras", "see"]]
    assert tag_sentences(again, vocab2, words) == tag_sentences(model, vocab, words)
    assert again.shape.cell == "gru" and again.shape.num_layers == 2


def test_chunk_tags_get_f1():
    chunks = [
        sent("the/B-NP dog/I-NP runs/B-VP", "chunk"),
        sent("a/B-NP cat/I-NP sleeps/B-VP ./O", "chunk"),
    ]
    cfg = TaggerConfig(**{**TINY.__dict__, "layer": "chunk", "epochs": 25})
    model, vocab, _ = train_tagger(cfg, data={"train": chunks, "dev": chunks}, log=None)
    scores = evaluate_tagger(model, vocab, chunks)
    assert scores == {"accuracy": 1.0, "chunk_f1": 1.0}


def test_bad_inputs_raise_value_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown cell"):
        TaggerConfig(cell="transformer").validate()
    with pytest.raises(ValueError, match="layer 'xpos' is not in this data"):
        train_tagger(TaggerConfig(layer="xpos"), data={"train": TOY, "dev": TOY}, log=None)
    with pytest.raises(ValueError, match="expected CoNLL-U files"):
        train_tagger(TaggerConfig(), tmp_path, log=None)
    vocab = TaggerVocab.build([s.words for s in TOY], [s.tags["upos"] for s in TOY], "upos", 1)
    model = build_tagger(
        TaggerConfig(hidden_size=4, word_dim=4, char_dim=4, char_features=4), vocab
    )
    with pytest.raises(ValueError, match="non-empty list of words"):
        tag_sentences(model, vocab, ["not a list of words"])
