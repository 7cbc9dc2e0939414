"""Language modelling end to end on a tiny generated corpus: train, eval, sample, plot,
exact resume after SIGKILL, Ctrl-C, NaN, and every bad input the issue lists (one line on
stderr, exit status 2, no user file changed)."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from carousel.checkpoint import load_checkpoint
from carousel.cli import main

WORDS = "the cat sat on a mat dog ran far away and then came back home".split()


def _text(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(WORDS) + (" " if rng.random() < 0.85 else "\n") for _ in range(n))


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(_text(400), encoding="utf-8")
    return path


TINY = [
    "--hidden-size",
    "16",
    "--num-layers",
    "2",
    "--bptt",
    "8",
    "--batch-size",
    "4",
    "--optimizer",
    "adam",
    "--lr",
    "0.01",
    "--threads",
    "1",
    "--no-progress",
]


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _one_line_error(code, err, cmd, needle):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"carousel {cmd}: error:") and needle in lines[0], lines[0]


def test_train_eval_sample_plot(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    code, out, _ = _run(
        [
            "train",
            "lm",
            "--data",
            str(corpus),
            "--out",
            str(run),
            "--epochs",
            "2",
            "--log-every",
            "2",
            *TINY,
        ],
        capsys,
    )
    assert code == 0
    assert "validation" in out and (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    valid = [r for r in rows if r["kind"] == "valid"]
    assert len(valid) == 2 and train[-1]["loss"] < train[0]["loss"]
    assert valid[1]["loss"] < valid[0]["loss"]

    code, out, _ = _run(["eval", str(run), "--data", str(corpus), "--threads", "1"], capsys)
    assert code == 0 and "bits/char" in out and "nats/char" in out

    argv = [
        "sample",
        str(run / "checkpoint.safetensors"),
        "--prime",
        "the ",
        "--temperature",
        "0.8",
        "--top-k",
        "5",
        "--length",
        "40",
        "--seed",
        "1",
    ]
    code, out1, _ = _run(argv, capsys)
    assert code == 0 and out1.startswith("the ") and len(out1) == len("the ") + 40 + 1
    assert set(out1) <= set(corpus.read_text())
    assert _run(argv, capsys)[1] == out1  # same seed, same text

    code, out, _ = _run(["sample", str(run), "--prime", "the c", "--top", "3"], capsys)
    probs = [float(line.split()[0]) for line in out.splitlines()]
    assert code == 0 and len(probs) == 3 and probs == sorted(probs, reverse=True)

    (run / "curves.png").unlink()
    code, out, _ = _run(["plot", str(run)], capsys)
    assert code == 0 and Path(out.strip()).is_file()


def test_word_level_and_cells(tmp_path, capsys):
    data = tmp_path / "ptb"
    data.mkdir()
    (data / "ptb.train.txt").write_text(_text(600, 1).replace("far", "<unk>"))
    (data / "ptb.valid.txt").write_text(_text(100, 2))
    (data / "ptb.test.txt").write_text(_text(100, 3))
    run = tmp_path / "w"
    code, out, _ = _run(
        [
            "train",
            "--data",
            str(data),
            "--level",
            "word",
            "--out",
            str(run),
            "--cell",
            "lstm1997",
            "--tie-weights",
            "true",
            "--dropout",
            "0.2",
            "--optimizer",
            "sgd",
            "--lr",
            "1",
            "--max-steps",
            "6",
            "--hidden-size",
            "16",
            "--batch-size",
            "4",
            "--bptt",
            "8",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0 and "perplexity" in out
    cfg = load_checkpoint(run)[1]["config"]
    assert cfg["cell"] == "lstm1997" and cfg["tie_weights"]
    code, out, _ = _run(["eval", str(run), "--data", str(data / "ptb.test.txt")], capsys)
    assert code == 0 and "perplexity" in out
    code, out, _ = _run(
        ["sample", str(run), "--prime", "the cat", "--length", "5", "--seed", "0"], capsys
    )
    assert code == 0 and out.startswith("the cat ")


def test_presets_resolve():
    from carousel.config import resolve_config
    from carousel.lm.config import LMConfig

    small = resolve_config(LMConfig, "zaremba-small")
    assert (small.hidden_size, small.num_layers, small.epochs, small.bptt) == (200, 2, 13, 20)
    # Zaremba's lr 1 and clip 5 on a loss summed over 20 steps = lr 20, clip 0.25 on the mean
    assert [round(small.lr_at(e), 4) for e in range(6)] == [20, 20, 20, 20, 10, 5]
    assert small.clip == 0.25
    medium = resolve_config(LMConfig, "zaremba-medium")
    assert medium.dropout == 0.5 and medium.clip == pytest.approx(5 / 35) and medium.bptt == 35
    assert medium.lr_at(5) == 35 and medium.lr_at(6) == pytest.approx(35 / 1.2)
    for name in ("zaremba-large", "char-small", "char-medium"):
        resolve_config(LMConfig, name)


def test_the_result_presets_are_the_commands_of_their_results():
    """ptb-hour and shakespeare-15min hold the settings of EXPERIMENTS.md's commands."""
    from carousel.config import resolve_config
    from carousel.lm.config import LMConfig

    ptb = {"hidden-size": "400", "embed-size": "400", "tie-weights": "true", "num-layers": "2",
           "dropout": "0.3", "embed-dropout": "0.05", "optimizer": "adam", "lr": "0.002",
           "warmup-steps": "300", "lr-schedule": "plateau", "lr-decay": "0.5", "clip": "0.5",
           "batch-size": "20", "bptt": "35", "epochs": "40", "eval-every": "1400",
           "log-every": "100", "max-minutes": "55", "threads": "2"}  # fmt: skip
    command = {k.replace("-", "_"): v for k, v in ptb.items()}
    assert resolve_config(LMConfig, "ptb-hour") == resolve_config(
        LMConfig, "zaremba-small", command
    )
    shk = {"valid_fraction": "0.1000005379", "embed_size": "128", "hidden_size": "256",
           "num_layers": "2", "layer_norm": "true", "zoneout_state": "0.1", "optimizer": "adam",
           "lr": "0.002", "lr_schedule": "plateau", "lr_decay": "0.6", "batch_size": "32",
           "bptt": "100", "epochs": "50", "max_minutes": "15", "eval_every": "200",
           "eval_batch_size": "32", "threads": "2"}  # fmt: skip
    assert resolve_config(LMConfig, "shakespeare-15min") == resolve_config(LMConfig, None, shk)


# ---------------------------------------------------------------------------- exact resume
RESUME_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    from carousel.lm.config import LMConfig
    from carousel.lm.train import train_lm

    data, run, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = LMConfig(data=data, hidden_size=16, num_layers=2, dropout=0.3, bptt=10,
                   random_bptt=True, batch_size=4, optimizer="adam", lr=0.01, epochs=3,
                   log_every=1, checkpoint_every=1, eval_every=4, threads=1, seed=3,
                   **json.loads(sys.argv[4]))

    def hook(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    resume = os.path.exists(os.path.join(run, "checkpoint.safetensors"))
    train_lm(None if resume else cfg, run, resume=resume, progress=False, on_checkpoint=hook)
    """
)


#: every regulariser of the language model and the schedules' state, for the resume test
REGULARISED = {
    "zoneout_state": 0.1,
    "zoneout_hidden": 0.05,
    "recurrent_dropout": 0.2,
    "update_dropout": 0.1,
    "weight_drop": 0.2,
    "embed_dropout": 0.1,
    "warmup_steps": 3,
    "lr_schedule": "plateau",
    "lr_decay": 0.5,
}


def _script_run(corpus, run, kill_at, extra=None):
    return subprocess.run(
        [
            sys.executable,
            "-c",
            RESUME_SCRIPT,
            str(corpus),
            str(run),
            str(kill_at),
            json.dumps(extra or {}),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )


def _rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("time")
    return rows


@pytest.mark.parametrize("extra", [{}, REGULARISED], ids=["plain", "regularised"])
def test_sigkill_and_resume_is_bit_identical(tmp_path, corpus, extra):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _script_run(corpus, straight, -1, extra).returncode == 0
    steps = load_checkpoint(straight)[1]["cursor"]["step"]
    assert steps > 12
    kill_at = steps // 2 + 1  # mid-epoch, with dropout, Adam state and random BPTT in play
    first = _script_run(corpus, killed, kill_at, extra)
    assert first.returncode == -signal.SIGKILL
    assert load_checkpoint(killed)[1]["cursor"]["step"] == kill_at
    second = _script_run(corpus, killed, -1, extra)
    assert second.returncode == 0, second.stderr

    (t1, m1), (t2, m2) = load_checkpoint(straight), load_checkpoint(killed)
    m1["cursor"].pop("elapsed"), m2["cursor"].pop("elapsed")  # wall-clock time differs
    assert m1["cursor"] == m2["cursor"]
    assert set(t1) == set(t2)
    for name in t1:
        assert torch.equal(t1[name], t2[name]), name  # parameters, Adam moments, RNG, state
    assert _rows(straight) == _rows(killed)  # every training and validation loss
    if extra:
        lrs = [r["lr"] for r in _rows(straight) if r["kind"] == "train"]
        assert lrs[:3] == pytest.approx([0.01 / 3, 0.02 / 3, 0.01])  # the warm-up
        assert min(lrs) < 0.01  # the plateau schedule decayed (the state is in the cursor)


def test_ctrl_c_saves_and_evaluates(tmp_path, corpus):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "carousel",
            "train",
            "--data",
            str(corpus),
            "--out",
            str(run),
            "--epochs",
            "100000",
            "--log-every",
            "1",
            *TINY,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    _, meta = load_checkpoint(run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["kind"] == "valid" and rows[-1]["step"] == meta["cursor"]["step"] > 0


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    argv = [
        "train",
        "--data",
        str(corpus),
        "--out",
        str(run),
        "--optimizer",
        "sgd",
        "--lr",
        "1e38",
        "--clip",
        "0",
        "--checkpoint-every",
        "1",
        "--max-steps",
        "30",
        "--hidden-size",
        "16",
        "--batch-size",
        "4",
        "--bptt",
        "8",
        "--no-progress",
    ]
    code, _, err = _run(argv, capsys)
    _one_line_error(code, err, "train", "at step")
    tensors, meta = load_checkpoint(run)
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model."))
    assert f"at step {meta['cursor']['step'] + 1}" in err


# ---------------------------------------------------------------------------- bad input
@pytest.fixture
def trained(tmp_path_factory, corpus):
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--data", str(corpus), "--out", str(run), "--max-steps", "3", *TINY]) == 0
    return run


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "no such file"),
        (b"", "is empty"),
        (b"\x00\x01\x02\x03", "binary"),
        (b"caf\xe9\n", "not UTF-8"),
    ],
)
def test_bad_data_files(tmp_path, capsys, trained, content, needle):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    before = _snapshot(tmp_path)
    code, _, err = _run(["train", "--data", str(path), "--out", str(tmp_path / "r"), *TINY], capsys)
    _one_line_error(code, err, "train", needle)
    code, _, err = _run(["eval", str(trained), "--data", str(path)], capsys)
    _one_line_error(code, err, "eval", needle)
    assert _snapshot(tmp_path) == before and not (tmp_path / "r").exists()


def test_token_file_without_lines(tmp_path, capsys):
    (tmp_path / "train.txt").write_text("\u00a0\n\u2003\n")
    (tmp_path / "valid.txt").write_text("a b\n")
    code, _, err = _run(
        ["train", "--data", str(tmp_path), "--level", "word", "--out", str(tmp_path / "r"), *TINY],
        capsys,
    )
    _one_line_error(code, err, "train", "no lines of tokens")


def test_eval_vocabulary_mismatch(tmp_path, capsys, trained):
    other = tmp_path / "other.txt"
    other.write_text("Zebras quietly x-ray 42 jugs.\n")
    code, _, err = _run(["eval", str(trained), "--data", str(other)], capsys)
    _one_line_error(code, err, "eval", "vocabulary mismatch")
    code, _, err = _run(["sample", str(trained), "--prime", "Zebra"], capsys)
    _one_line_error(code, err, "sample", "vocabulary mismatch")


def test_resume_refuses_changes_and_changes_nothing(tmp_path, capsys, trained, corpus):
    before = _snapshot(trained)
    code, _, err = _run(["train", "--resume", str(trained), "--hidden-size", "32"], capsys)
    _one_line_error(code, err, "train", "architecture change")
    code, _, err = _run(["train", "--resume", str(trained), "--data", str(corpus) + "x"], capsys)
    _one_line_error(code, err, "train", "cannot resume")
    # same path, different contents: a new vocabulary
    saved = corpus.read_bytes()
    corpus.write_text(saved.decode() + "QXZ!\n")
    code, _, err = _run(["train", "--resume", str(trained)], capsys)
    _one_line_error(code, err, "train", "vocabulary mismatch")
    # same vocabulary, different text
    corpus.write_text(saved.decode()[::-1])
    code, _, err = _run(["train", "--resume", str(trained)], capsys)
    _one_line_error(code, err, "train", "changed since")
    corpus.write_bytes(saved)
    # a new run into a folder that holds a checkpoint
    code, _, err = _run(["train", "--data", str(corpus), "--out", str(trained), *TINY], capsys)
    _one_line_error(code, err, "train", "already holds a checkpoint")
    assert _snapshot(trained) == before


@pytest.mark.parametrize("damage", ["truncated", "foreign", "tampered"])
def test_bad_checkpoints(tmp_path, capsys, trained, corpus, damage):
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    ckpt.parent.mkdir()
    data = (trained / "checkpoint.safetensors").read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "foreign":
        from safetensors.torch import save

        data = save({"weight": torch.zeros(3)})
    else:
        data = data[:-8] + bytes(b ^ 0xFF for b in data[-8:])
    ckpt.write_bytes(data)
    needle = {
        "truncated": "truncated",
        "foreign": "not a carousel checkpoint",
        "tampered": "modified after",
    }[damage]
    for argv in (
        ["eval", str(ckpt), "--data", str(corpus)],
        ["sample", str(ckpt)],
        ["train", "--resume", str(ckpt.parent)],
    ):
        code, _, err = _run(argv, capsys)
        _one_line_error(code, err, argv[0], needle)
    assert ckpt.read_bytes() == data


def test_resuming_a_finished_run_changes_no_file(tmp_path, capsys, trained):
    def files():  # .lock names the process holding the folder: the run's own bookkeeping
        return {
            p.name: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in trained.iterdir()
            if p.name != ".lock"
        }

    before = files()
    capsys.readouterr()  # the fixture's own training
    code, out, _ = _run(["train", "--resume", str(trained), "--no-progress"], capsys)
    assert code == 0 and "finished (max_steps at step 3); nothing to do" in out
    assert "curves:" not in out
    assert files() == before


def test_embedding_dropout_drops_every_occurrence_of_a_word_and_only_in_training():
    from carousel.lm.config import LMConfig
    from carousel.lm.model import RNNLM

    torch.manual_seed(0)
    model = RNNLM(50, LMConfig(hidden_size=8, num_layers=1, embed_dropout=0.5))
    ids = torch.randint(0, 50, (30, 4))
    x = model.embed(ids)  # (T, B, E)
    w = model.embedding.weight
    dropped = (x == 0).all(-1)
    assert 0 < dropped.float().mean() < 1
    for word in ids.unique():
        at = ids == word
        assert dropped[at].all() or not dropped[at].any()  # one decision per word
    kept = ~dropped
    torch.testing.assert_close(x[kept], 2 * w[ids[kept]])  # scaled by 1 / (1 − p)
    model.eval()
    torch.testing.assert_close(model.embed(ids), w[ids])
    with pytest.raises(ValueError, match=r"embed_dropout must be in \[0, 1\); got 1"):
        LMConfig(embed_dropout=1).validate()
