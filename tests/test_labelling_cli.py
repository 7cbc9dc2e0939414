"""The sequence-labelling commands: ``carousel train tagger``, ``eval``, ``tag``, ``read``,
from a user's side: files in, one line per mistake out."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from carousel.checkpoint import load_checkpoint
from carousel.cli import main
from carousel.data.strokes import Featurisation
from carousel.data.unipen import write_stroke_file
from carousel.handwriting import cli as handwriting_cli
from carousel.handwriting.recognise import recognise
from carousel.handwriting.train import train_digit_classifier
from test_handwriting import TINY, fake_samples, glyph

SENTENCES = [
    ("the dog runs", "DET NOUN VERB"),
    ("a cat sleeps", "DET NOUN VERB"),
    ("the cat runs", "DET NOUN VERB"),
    ("dogs sleep", "NOUN VERB"),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def conllu(sentences) -> str:
    out = []
    for words, tags in sentences:
        for i, (w, t) in enumerate(zip(words.split(), tags.split()), 1):
            out.append(f"{i}\t{w}\t{w}\t{t}\t_\t_\t0\t_\t_\t_")
        out.append("")
    return "\n".join(out) + "\n"


@pytest.fixture
def ewt(tmp_path: Path) -> Path:
    folder = tmp_path / "ewt"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        (folder / f"toy-{split}.conllu").write_text(conllu(SENTENCES * 3), encoding="utf-8")
    return folder


TAGGER = [
    "--hidden-size",
    "16",
    "--word-dim",
    "8",
    "--char-features",
    "8",
    "--epochs",
    "25",
    "--min-count",
    "1",
    "--batch-size",
    "4",
    "--lr",
    "0.02",
    "--dropout",
    "0",
]


def test_train_eval_and_tag(ewt, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "tagger", "--data", str(ewt), "--out", str(run), *TAGGER]) == 0
    out = capsys.readouterr().out
    assert "test: token accuracy 100.00 %" in out and str(run / "checkpoint.safetensors") in out

    test = ewt / "toy-test.conllu"
    assert main(["eval", str(run), "--data", str(test)]) == 0
    assert capsys.readouterr().out.strip() == f"{test}: 12 sentences, token accuracy 100.00 %"

    monkeypatch.setattr("sys.stdin", io.StringIO("the dog sleeps\n\na cat runs\n"))
    assert main(["tag", str(run)]) == 0
    assert capsys.readouterr().out == "the/DET dog/NOUN sleeps/VERB\n\na/DET cat/NOUN runs/VERB\n"


def one_line_error(capsys, command: str, needle: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith(f"carousel {command}: error: ") and err.count("\n") == 1, err
    assert needle in err


def test_mistakes_get_one_line(ewt, tmp_path, capsys):
    assert main(["train", "tagger", "--data", str(tmp_path / "nope")]) == 2
    one_line_error(capsys, "train", "is not a directory")
    assert main(["train", "tagger", "--data", str(ewt), "--cell", "lstm3"]) == 2
    one_line_error(capsys, "train", "unknown cell 'lstm3'")
    assert main(["tag", str(tmp_path / "missing")]) == 2
    one_line_error(capsys, "tag", "no checkpoint at")
    assert main(["train", "handwriting", "--data", str(tmp_path / "u.tar.gz")]) == 2
    one_line_error(capsys, "train", "u.tar.gz")


def test_read_recognises_a_stroke_file_and_checks_the_checkpoint_kind(
    ewt, tmp_path, capsys, monkeypatch
):
    parts = {"train": fake_samples(10, "a", 0), "validation": fake_samples(10, "b", 1)}
    # arc-length resampling and smoothing: `read` must featurise as training did
    options = {"resampling": "arc", "smooth": 0.03}
    cfg = TINY.__class__(**{**TINY.__dict__, "epochs": 40, "hidden_size": 32, **options})
    train_digit_classifier(cfg, parts, tmp_path / "hw", progress=False)
    ckpt = tmp_path / "hw" / "checkpoint.safetensors"
    capsys.readouterr()  # the training's evaluation lines
    assert {k: load_checkpoint(ckpt)[1]["config"][k] for k in options} == options
    strokes = tmp_path / "three.txt"
    write_stroke_file(strokes, glyph(3, random.Random(7)))
    seen: dict = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return recognise(*args, **kwargs)

    monkeypatch.setattr(handwriting_cli, "recognise", spy)
    assert main(["read", str(ckpt), str(strokes)]) == 0
    assert capsys.readouterr().out.strip() == "3"
    assert seen["featurisation"] == Featurisation(cfg.resample_distance, **options)

    assert (
        main(
            [
                "train",
                "tagger",
                "--data",
                str(ewt),
                "--out",
                str(tmp_path / "t"),
                *TAGGER,
                "--epochs",
                "1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["read", str(tmp_path / "t"), str(strokes)]) == 2
    one_line_error(capsys, "read", "checkpoint of a 'tagger' job, not handwriting")
    assert main(["tag", str(ckpt)]) == 2
    one_line_error(capsys, "tag", "checkpoint of a 'handwriting' job, not tagger")
