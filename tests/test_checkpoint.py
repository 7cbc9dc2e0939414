"""Checkpoints: round trip, atomic replacement under SIGKILL, and refusal of truncated,
foreign and tampered files."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from carousel.checkpoint import (
    flatten_state,
    load_checkpoint,
    save_checkpoint,
    unflatten_state,
)


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 4, generator=g), "b": torch.arange(5), "s": torch.tensor(2.5)}


def test_round_trip(tmp_path):
    path = tmp_path / "c.safetensors"
    meta = {"kind": "x", "step": 3, "lr": 0.1 + 0.2, "vocab": ["a", "\n", "é"]}
    save_checkpoint(path, _tensors(), meta)
    tensors, got = load_checkpoint(path)
    assert got == meta
    for k, v in _tensors().items():
        assert torch.equal(tensors[k], v)
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary left


def test_tied_tensors_are_stored(tmp_path):
    w = torch.randn(4, 4)
    save_checkpoint(tmp_path / "t.safetensors", {"emb": w, "dec": w}, {})
    tensors, _ = load_checkpoint(tmp_path / "t.safetensors")
    assert torch.equal(tensors["emb"], tensors["dec"])


def test_optimizer_state_round_trip():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([p], lr=0.01)
    p.grad = torch.randn(3)
    opt.step()
    tensors = {}
    flat = flatten_state("optim", opt.state_dict(), tensors)
    flat = json.loads(json.dumps(flat))  # it must survive JSON
    back = unflatten_state(flat, tensors)
    opt2 = torch.optim.Adam([torch.nn.Parameter(p.detach().clone())], lr=0.5)
    opt2.load_state_dict(back)
    assert opt2.param_groups[0]["lr"] == 0.01
    for k, v in opt.state[p].items():
        assert torch.equal(opt2.state[opt2.param_groups[0]["params"][0]][k], v)


def test_sigkill_during_write_keeps_previous(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, _tensors(), {"step": 1})
    before = path.read_bytes()
    # a second write is killed after its bytes are written and before the rename
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        import carousel.checkpoint as ck
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
        ck.save_checkpoint({str(path)!r}, {{"a": torch.zeros(1000)}}, {{"step": 2}})
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert done.returncode == -9
    assert path.read_bytes() == before
    assert load_checkpoint(path)[1] == {"step": 1}


def test_truncated(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, _tensors(), {"step": 1})
    data = path.read_bytes()
    for cut in (4, 40, len(data) - 3):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated or foreign"):
            load_checkpoint(path)


def test_foreign(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match="not a carousel checkpoint"):
        load_checkpoint(plain)
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a checkpoint at all\n")
    with pytest.raises(ValueError, match="truncated or foreign"):
        load_checkpoint(text)
    with pytest.raises(ValueError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_tampered(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, _tensors(), {"step": 1})
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="modified after it was written"):
        load_checkpoint(path)


def test_tampered_json(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, _tensors(), {"step": 1})
    tensors, _ = load_checkpoint(path)
    # rewrite the header's metadata by hand: same tensors, different sha256
    from safetensors.torch import save

    bad = save(
        tensors,
        metadata={
            "format": "carousel-checkpoint",
            "version": "1",
            "json": "{}",
            "sha256": "0" * 64,
        },
    )
    path.write_bytes(bad)
    with pytest.raises(ValueError, match="modified"):
        load_checkpoint(path)
    assert os.path.getsize(path) == len(bad)
