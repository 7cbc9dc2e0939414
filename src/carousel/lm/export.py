"""A trained language model as one ONNX file: ``carousel export RUN --onnx FILE``.

The graph takes token ids (T, B) int64 and the recurrent state, ``h0`` (L, B, H) (and
``c0`` for LSTM cells), and returns ``logits`` (T, B, V) and the new state ``h`` (and
``c``); T and B stay dynamic, so one file both reads a prompt and samples step by step.  The
recurrent layers are ONNX's own LSTM/GRU/RNN operators (:mod:`carousel.onnx_export`).  The
vocabulary travels in the model's metadata (``carousel.vocab``: JSON with ``level`` and
``tokens``), so onnxruntime alone can sample from the file.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from carousel.data.corpora import Vocab
from carousel.io import atomic_write
from carousel.lm.model import RNNLM


class _Stateful(nn.Module):
    """``(ids, h0[, c0]) -> (logits, h[, c])``: the model with its state as flat tensors."""

    def __init__(self, model: RNNLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, h0: Tensor, c0: Tensor | None = None) -> tuple[Tensor, ...]:
        logits, new = self.model(ids, h0 if c0 is None else (h0, c0))
        return (logits, *(new if isinstance(new, tuple) else (new,)))


def state_names(model: RNNLM) -> tuple[str, ...]:
    """The names of the recurrent state tensors: ``("h",)`` or ``("h", "c")``."""
    return tuple(model.rnn.cell.state_names)


def export_onnx(model: RNNLM, vocab: Vocab, path: str | os.PathLike) -> Path:
    """Write ``model`` (in eval mode) as an ONNX file at ``path`` (atomically); return it."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx.export's translations)
    except ImportError as err:
        raise ValueError(
            f"ONNX export needs the onnx and onnxscript packages ({err}); install "
            "carousel-rnn[onnx]"
        ) from err
    path = Path(path)
    model = model.eval()
    param = next(model.parameters())
    LD = model.rnn.num_layers * model.rnn.num_directions
    names = state_names(model)
    # an example of T = 3, B = 2: sizes 0 and 1 would be specialised, these stay symbolic
    ids = torch.zeros(3, 2, dtype=torch.long, device=param.device)
    state = tuple(
        torch.zeros(LD, 2, model.rnn.hidden_size, dtype=param.dtype, device=param.device)
        for _ in names
    )
    T, B = torch.export.Dim("T"), torch.export.Dim("B")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            _Stateful(model),
            (ids, *state),
            dynamo=True,
            dynamic_shapes=({0: T, 1: B}, *({1: B} for _ in names)),
            input_names=["ids", *(f"{n}0" for n in names)],
            output_names=["logits", *names],
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(
        proto,
        {
            "carousel.vocab": json.dumps(vocab.to_json(), ensure_ascii=False),
            "carousel.cell": model.rnn.cell.family,
            "carousel.state": ",".join(names),
        },
    )
    atomic_write(path, proto.SerializeToString())
    return path


__all__ = ["export_onnx", "state_names"]
