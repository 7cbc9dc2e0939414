"""Data-parallel training: 2 processes under torchrun (gloo, CPU) end with the parameters of
a 1-process run with the same global batch."""

import os
import random
import socket
import subprocess
import sys

import torch

from carousel.checkpoint import load_checkpoint
from carousel.lm.model import RNNLM
from carousel.lm.train import load_lm

# gradients are averaged over processes (2 partial sums instead of 1), so the runs agree to
# float32 rounding, not bit for bit
ATOL, RTOL = 1e-5, 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    rng = random.Random(0)
    words = "to be or not that is the question whether tis nobler in mind".split()
    data = tmp_path / "tiny.txt"
    data.write_text(" ".join(rng.choice(words) for _ in range(500)), encoding="utf-8")
    common = [
        "train",
        "--data",
        str(data),
        "--hidden-size",
        "16",
        "--num-layers",
        "2",
        "--batch-size",
        "4",
        "--bptt",
        "10",
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--max-steps",
        "6",
        "--threads",
        "1",
        "--no-progress",
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "MASTER_ADDR": "127.0.0.1",
    }
    one = subprocess.run(
        [sys.executable, "-m", "carousel", *common, "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_free_port()),
            "-m",
            "carousel",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    # both ends of stderr: a rank's own error line comes long before torchrun's report
    assert two.returncode == 0, two.stderr[:3000] + "\n[...]\n" + two.stderr[-3000:]
    (t1, m1), (t2, m2) = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    assert m2["world_size"] == 2 and m1["cursor"]["step"] == m2["cursor"]["step"] == 6
    names = [k for k in t1 if k.startswith("model.")]
    assert names
    for name in names:
        torch.testing.assert_close(t2[name], t1[name], atol=ATOL, rtol=RTOL)
    # the carried state of all 4 streams is gathered from both processes
    for name in ("job.state.0", "job.state.1"):
        torch.testing.assert_close(t2[name], t1[name], atol=ATOL, rtol=RTOL)
    # and training moved the parameters well beyond the tolerance (the test can fail)
    _, vocab, cfg, _ = load_lm(tmp_path / "one")
    torch.manual_seed(cfg.seed)
    init = RNNLM(len(vocab), cfg).state_dict()
    moved = max(float((t1[f"model.{k}"] - v).abs().max()) for k, v in init.items())
    assert moved > 100 * ATOL
