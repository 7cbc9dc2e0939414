"""The tagger: vocabularies, batching by length, serialisation, and a tiny model that
overfits a few sentences (unidirectional and bidirectional)."""

from __future__ import annotations

import json

import pytest
import torch

from carousel.data.batching import length_batches
from carousel.data.conll import Sentence
from carousel.tagging import (
    TaggerConfig,
    TaggerVocab,
    build_tagger,
    encode_batch,
    evaluate_tagger,
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
    cfg = TaggerConfig(**{**TINY.__dict__, "tagset": "chunk", "epochs": 25})
    model, vocab, _ = train_tagger(cfg, data={"train": chunks, "dev": chunks}, log=None)
    scores = evaluate_tagger(model, vocab, chunks)
    assert scores == {"accuracy": 1.0, "chunk_f1": 1.0}


def test_bad_inputs_raise_value_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown cell"):
        TaggerConfig(cell="transformer").validate()
    with pytest.raises(ValueError, match="tagset 'xpos' is not in this data"):
        train_tagger(TaggerConfig(tagset="xpos"), data={"train": TOY, "dev": TOY}, log=None)
    with pytest.raises(ValueError, match="expected CoNLL-U files"):
        train_tagger(TaggerConfig(), tmp_path, log=None)
    vocab = TaggerVocab.build([s.words for s in TOY], [s.tags["upos"] for s in TOY], "upos", 1)
    model = build_tagger(
        TaggerConfig(hidden_size=4, word_dim=4, char_dim=4, char_features=4), vocab
    )
    with pytest.raises(ValueError, match="non-empty list of words"):
        tag_sentences(model, vocab, ["not a list of words"])


# ---------------------------------------------------------------------------- exact resume
def conllu_folder(folder, seed: int = 0):
    """A toy CoNLL-U treebank (train 40, dev 10, test 10 sentences of 1-9 words)."""
    import random

    rng = random.Random(seed)
    words = [("the", "DET"), ("a", "DET"), ("dog", "NOUN"), ("cat", "NOUN"), ("runs", "VERB")]
    words += [("sees", "VERB"), ("red", "ADJ"), ("big", "ADJ"), ("can", "AUX"), ("I", "PRON")]
    folder.mkdir()
    for split, n in (("train", 40), ("dev", 10), ("test", 10)):
        lines = []
        for _ in range(n):
            for i in range(1, rng.randint(1, 9) + 1):
                w, t = rng.choice(words)
                lines.append(f"{i}\t{w}\t{w}\t{t}\t_\t_\t0\t_\t_\t_")
            lines.append("")
        (folder / f"toy-{split}.conllu").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


# `carousel train tagger` in a subprocess whose loop runs `hook` after each checkpoint
# (a kill -9 or a Ctrl-C of its own process at step AT)
RESUME_SCRIPT = """
import os, signal, sys
import carousel.tagging.train as tt
from carousel.cli import main

at, how, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]

def hook(step):
    if step == at:
        os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGINT)

real = tt.fit
tt.fit = lambda *a, **k: real(*a, **{**k, "on_checkpoint": hook})
sys.exit(main(argv))
"""

RESUME_SETTINGS = [
    "--hidden-size", "12", "--word-dim", "8", "--char-dim", "4", "--char-features", "8",
    "--dropout", "0.3", "--min-count", "1", "--batch-size", "4", "--lr", "0.01",
    "--epochs", "3", "--eval-every", "7", "--log-every", "1", "--checkpoint-every", "1",
    "--seed", "3", "--threads", "1", "--no-progress",
]  # fmt: skip


def _train(argv, at=-1, how="kill"):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", RESUME_SCRIPT, str(at), how, "train", "tagger", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done


def _rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("time", None)
    return rows


def _files(run):
    """Every file of a run folder with its bytes and modification time (not the lock)."""
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.name != ".lock"
    }


def _test_line(out):
    return next(line for line in out.splitlines() if line.startswith("test: "))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run: (data folder, run folder, what it printed)."""
    root = tmp_path_factory.mktemp("tagger")
    data, run = conllu_folder(root / "data"), root / "straight"
    done = _train(["--data", str(data), "--out", str(run), *RESUME_SETTINGS])
    assert done.returncode == 0, done.stderr
    assert "test: token accuracy" in done.stdout and (run / "curves.png").exists()
    return data, run, done.stdout


def test_kill_9_and_resume_is_bit_identical(tmp_path, straight):
    import random
    import signal

    from carousel.checkpoint import load_checkpoint

    data, run, printed = straight
    steps = load_checkpoint(run)[1]["cursor"]["step"]
    assert steps == 30  # 3 epochs of 10 batches
    at = random.randint(1, steps - 1)  # any step: mid-epoch, at an evaluation, an epoch's end
    killed = tmp_path / "killed"
    first = _train(["--data", str(data), "--out", str(killed), *RESUME_SETTINGS], at, "kill")
    assert first.returncode == -signal.SIGKILL, (at, first.stderr)
    assert load_checkpoint(killed)[1]["cursor"]["step"] == at
    second = _train(["--resume", str(killed), "--no-progress"])
    assert second.returncode == 0, (at, second.stderr)
    assert _test_line(second.stdout) == _test_line(printed), at

    (t1, m1), (t2, m2) = load_checkpoint(run), load_checkpoint(killed)
    m1["cursor"].pop("elapsed"), m2["cursor"].pop("elapsed")  # wall-clock time differs
    assert m1["cursor"] == m2["cursor"] and m1["job_state"] == m2["job_state"], at
    assert set(t1) == set(t2)
    for name in t1:  # the last and the best model, Adam's moments, every RNG
        assert torch.equal(t1[name], t2[name]), (at, name)
    assert _rows(run) == _rows(killed), at  # every training, dev and test row


def test_ctrl_c_saves_evaluates_and_resumes_on_the_same_path(tmp_path, straight):
    from carousel.checkpoint import load_checkpoint

    data, run, printed = straight
    stopped = tmp_path / "stopped"
    first = _train(["--data", str(data), "--out", str(stopped), *RESUME_SETTINGS], 12, "int")
    assert first.returncode == 130 and "interrupted" in first.stderr, first.stderr
    _, meta = load_checkpoint(stopped)
    assert meta["cursor"]["step"] == 13  # the step under way is finished, then saved
    rows = _rows(stopped)
    assert rows[-1]["kind"] == "valid" and rows[-1]["step"] == 13  # ... and evaluated
    second = _train(["--resume", str(stopped), "--no-progress"])
    assert second.returncode == 0, second.stderr

    (t1, m1), (t2, m2) = load_checkpoint(run), load_checkpoint(stopped)
    assert m1["cursor"]["step"] == m2["cursor"]["step"] == 30
    # the evaluation at the interruption is one validation row more (which could be the
    # best model); the training runs exactly as without it
    for name in t1:
        if not name.startswith("best."):
            assert torch.equal(t1[name], t2[name]), name
    interrupted = {"kind": "valid", "step": 13}
    rows = [r for r in _rows(stopped) if {k: r[k] for k in interrupted} != interrupted]
    assert [r for r in rows if r["kind"] != "test"] == [
        r for r in _rows(run) if r["kind"] != "test"
    ]
    if m1["cursor"]["best_step"] == m2["cursor"]["best_step"]:
        assert rows == _rows(run) and _test_line(second.stdout) == _test_line(printed)


def test_resuming_a_finished_run_changes_no_file(straight, capsys):
    from carousel.cli import main

    data, run, printed = straight
    before = _files(run)
    assert main(["train", "tagger", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and _test_line(out) == _test_line(printed)
    assert _files(run) == before
    assert main(["eval", str(run), "--data", str(data / "toy-test.conllu")]) == 0
    assert _test_line(printed).split(": ", 1)[1] in capsys.readouterr().out


def test_the_python_api_keeps_a_run_folder_and_resumes_it(tmp_path):
    cfg = TaggerConfig(**{**TINY.__dict__, "epochs": 2})
    run = tmp_path / "run"
    *_, metrics = train_tagger(cfg, data={"train": TOY, "dev": TOY}, out=run, log=None)
    assert metrics["steps"] == 10 and [h["epoch"] for h in metrics["epochs"]] == [1, 2]
    with pytest.raises(ValueError, match="changed since"):
        train_tagger(None, data={"train": TOY[:4], "dev": TOY}, out=run, resume=True, log=None)
    with pytest.raises(ValueError, match=r"cannot resume .* with hidden_size=8"):
        train_tagger(
            None,
            data={"train": TOY, "dev": TOY},
            out=run,
            resume=True,
            overrides={"hidden_size": 8},
        )
    *_, more = train_tagger(
        None,
        data={"train": TOY, "dev": TOY},
        out=run,
        resume=True,
        overrides={"epochs": 3},
        log=None,
    )
    assert more["steps"] == 15 and [h["epoch"] for h in more["epochs"]] == [1, 2, 3]
    assert more["epochs"][:2] == metrics["epochs"]
