"""ONNX export: every registered cell, uni- and bidirectional, stacked, with dynamic sequence
length and batch, runs in onnxruntime and agrees with carousel to 1e-5; so does the language
model, step by step, and ``carousel export RUN --onnx FILE``."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import carousel
from carousel.cli import main

ort = pytest.importorskip("onnxruntime", reason="ONNX tests need onnxruntime (dev extra)")
onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx (dev extra)")
pytest.importorskip("onnxscript", reason="torch.onnx.export needs onnxscript (dev extra)")

pytestmark = pytest.mark.usefixtures("one_thread")

I, H = 3, 4
TOL = {"rtol": 1e-5, "atol": 1e-5}
CONFIGS = {"uni": {"num_layers": 1}, "bi2": {"num_layers": 2, "bidirectional": True}}
WITH_LENGTHS = ("lstm", "peephole", "gru", "rnn")


def _export(module: nn.Module, args: tuple, dynamic_shapes, path) -> ort.InferenceSession:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, args, dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False
        )
    program.save(str(path))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


class Zoo(nn.Module):
    """Every registered cell in every configuration, in one graph (one export for all)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleDict(
            {
                f"{name}-{cfg}": carousel.make_layer(name, I, H, **kw)
                for name in carousel.CELLS
                for cfg, kw in CONFIGS.items()
            }
        )
        self.batch_first = carousel.LSTM(I, H, batch_first=True, variant="cifg")

    def forward(self, x, h1, h4, lengths):
        outs = []
        for key, layer in self.layers.items():
            h = h1 if key.endswith("uni") else h4
            hx = (h, 2 * h) if layer.cell.family == "lstm" else h
            y, state = layer(x, hx)
            outs += [y, *(state if isinstance(state, tuple) else (state,))]
            if key.split("-")[0] in WITH_LENGTHS:
                y, state = layer(x, lengths=lengths)
                outs += [y, *(state if isinstance(state, tuple) else (state,))]
        y, (h, c) = self.batch_first(x.transpose(0, 1))
        return (*outs, y, h, c)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    torch.manual_seed(0)
    model = Zoo().eval()
    T, B = torch.export.Dim("T"), torch.export.Dim("B")
    example = (torch.randn(5, 3, I), torch.randn(1, 3, H), torch.randn(4, 3, H))
    example += (torch.tensor([5, 2, 4]),)
    shapes = ({0: T, 1: B}, {1: B}, {1: B}, {0: B})
    session = _export(model, example, shapes, tmp_path_factory.mktemp("onnx") / "zoo.onnx")
    # another sequence length and batch than the example's, ragged lengths
    x, h1, h4 = torch.randn(7, 4, I), torch.randn(1, 4, H), torch.randn(4, 4, H)
    lengths = torch.tensor([7, 1, 4, 6])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), (x, h1, h4, lengths))}
    got = session.run(None, feeds)
    with torch.no_grad():
        want = [t.numpy() for t in model(x, h1, h4, lengths)]
    return model, session, got, want


def _slices(model: Zoo) -> dict[str, slice]:
    """Where each layer's outputs sit in the zoo's flat output list."""
    at, where = 0, {}
    for key, layer in model.layers.items():
        n = 1 + len(layer.cell.state_names)
        where[key] = slice(at, at + n)
        at += n
        if key.split("-")[0] in WITH_LENGTHS:
            where[key + "-lengths"] = slice(at, at + n)
            at += n
    where["batch_first"] = slice(at, at + 3)
    return where


@pytest.mark.parametrize("name", list(carousel.CELLS))
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_every_registered_cell_exports(zoo, name, cfg):
    model, _, got, want = zoo
    where = _slices(model)
    for key in (f"{name}-{cfg}", f"{name}-{cfg}-lengths"):
        if key in where:
            for a, b in zip(got[where[key]], want[where[key]]):
                np.testing.assert_allclose(a, b, err_msg=key, **TOL)


def test_batch_first_and_dynamic_axes(zoo):
    model, session, got, want = zoo
    where = _slices(model)["batch_first"]
    for a, b in zip(got[where], want[where]):
        np.testing.assert_allclose(a, b, **TOL)
    assert got[where][0].shape == (4, 7, H)  # (B, T, H) for another T and B than exported
    shape = session.get_inputs()[0].shape
    assert isinstance(shape[0], str) and isinstance(shape[1], str)  # T and B symbolic


def test_standard_ops_in_the_graph(zoo, tmp_path):
    """Every layer is one ONNX recurrent operator per stacked layer: no unrolled loop."""
    model, session, _, _ = zoo
    path = session._model_path
    ops = [n.op_type for n in onnx.load(path).graph.node]
    layers = list(model.layers.values())
    calls = {f: 0 for f in ("LSTM", "GRU", "RNN")}
    for key, layer in model.layers.items():
        n = layer.num_layers * (2 if key.split("-")[0] in WITH_LENGTHS else 1)
        calls[layer.cell.family.upper()] += n
    calls["LSTM"] += 1  # the batch_first layer
    assert {op: ops.count(op) for op in calls} == calls
    assert "Loop" not in ops and "Scan" not in ops
    assert len(layers) == 2 * len(carousel.CELLS)


def test_packed_input_is_refused(monkeypatch):
    """A PackedSequence is refused during export, with what to pass instead."""
    from torch.nn.utils.rnn import pack_padded_sequence

    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    packed = pack_padded_sequence(torch.randn(3, 2, I), [3, 2])
    with pytest.raises(ValueError, match=r"padded input .* with lengths=; got a PackedSequence"):
        carousel.GRU(I, H)(packed)


# ---------------------------------------------------------------- the language model
def _tiny_lm(cell: str):
    from carousel.config import config_from_dict
    from carousel.data.corpora import Vocab
    from carousel.lm.config import LMConfig
    from carousel.lm.model import RNNLM

    vocab = Vocab(tuple("abcdefgh \n"), "char")
    cfg = config_from_dict(
        LMConfig, {"cell": cell, "hidden_size": 8, "embed_size": 6, "num_layers": 2}
    )
    torch.manual_seed(0)
    model = RNNLM(len(vocab), cfg).eval()
    model.cfg = cfg
    return model, vocab


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_language_model_export(tmp_path, cell):
    from carousel.lm.export import export_onnx, state_names

    model, vocab = _tiny_lm(cell)
    path = export_onnx(model, vocab, tmp_path / "lm.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = state_names(model)
    assert [i.name for i in session.get_inputs()] == ["ids", *(f"{n}0" for n in names)]
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["carousel.vocab"]) == vocab.to_json()
    ids = torch.randint(len(vocab), (6, 5))
    state = tuple(torch.randn(2, 5, 8) for _ in names)
    logits, *new = session.run(
        None, {"ids": ids.numpy(), **{f"{n}0": s.numpy() for n, s in zip(names, state)}}
    )
    with torch.no_grad():
        want, want_state = model(ids, state if len(state) == 2 else state[0])
    np.testing.assert_allclose(logits, want.numpy(), **TOL)
    for a, b in zip(new, want_state if isinstance(want_state, tuple) else (want_state,)):
        np.testing.assert_allclose(a, b.numpy(), **TOL)
    # one step at a time with the state fed back: the same logits as the whole sequence
    feeds = {f"{n}0": np.zeros((2, 1, 8), np.float32) for n in names}
    for t in range(ids.size(0)):
        step, *st = session.run(None, {"ids": ids[t : t + 1, :1].numpy(), **feeds})
        feeds = {f"{n}0": s for n, s in zip(names, st)}
        with torch.no_grad():
            ref, _ = model(ids[: t + 1, :1])
        np.testing.assert_allclose(step[0], ref[-1].numpy(), **TOL)


def test_export_command(tmp_path, capsys):
    from carousel.checkpoint import save_checkpoint
    from carousel.config import config_to_dict

    model, vocab = _tiny_lm("peephole")
    save_checkpoint(
        tmp_path / "run" / "checkpoint.safetensors",
        {f"model.{k}": v for k, v in model.state_dict().items()},
        {"kind": "lm", "config": config_to_dict(model.cfg), "vocab": vocab.to_json()},
    )
    out = tmp_path / "lm.onnx"
    assert main(["export", str(tmp_path / "run"), "--onnx", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "h", "c"]
    assert main(["export", str(tmp_path / "nowhere"), "--onnx", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no checkpoint" in err
