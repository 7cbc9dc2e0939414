"""Recognisers of online handwriting built on carousel's recurrent layers.

* :class:`DigitClassifier`: a (bidirectional) recurrent stack over the per-point features
  of one isolated digit; the top layer's final states (forward at the last point,
  backward at the first) are mapped to 10 classes.
* :class:`StringRecogniser`: a (bidirectional) recurrent stack whose every frame gets a
  distribution over ``blank`` + the 10 digits, trained with ``torch.nn.CTCLoss`` (Graves
  et al. 2006/2008: unsegmented labelling).

Both take a batch (T, B, F) with ``lengths`` (B,), padded only to the batch's longest
sequence, and serialise as ``state_dict`` + :meth:`to_json`.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from carousel.data.strokes import FEATURES
from carousel.layers import make_layer

DIGITS = "0123456789"


@dataclasses.dataclass(frozen=True)
class RecogniserShape:
    """Architecture of a handwriting model (what ``to_json`` stores)."""

    task: str  # "digits" (a class per sample) or "strings" (CTC labels per frame)
    cell: str = "lstm"
    bidirectional: bool = True
    num_layers: int = 2
    hidden_size: int = 64
    dropout: float = 0.2
    features: int = FEATURES


class _Recogniser(nn.Module):
    def __init__(self, shape: RecogniserShape, outputs: int) -> None:
        super().__init__()
        self.shape = shape
        self.encoder = make_layer(
            shape.cell,
            shape.features,
            shape.hidden_size,
            bidirectional=shape.bidirectional,
            num_layers=shape.num_layers,
            dropout=shape.dropout if shape.num_layers > 1 else 0.0,
        )
        D = 2 if shape.bidirectional else 1
        self.dropout = nn.Dropout(shape.dropout)
        self.output = nn.Linear(D * shape.hidden_size, outputs)

    def to_json(self) -> dict:
        """The architecture as a JSON-ready dict; :func:`recogniser_from_json` builds an
        untrained model of that shape to ``load_state_dict`` the saved tensors into."""
        return dataclasses.asdict(self.shape)


class DigitClassifier(_Recogniser):
    """Isolated digits: (T, B, F) features + lengths -> (B, 10) class scores."""

    def __init__(self, shape: RecogniserShape) -> None:
        super().__init__(dataclasses.replace(shape, task="digits"), len(DIGITS))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        _, state = self.encoder(x, lengths=lengths)
        h_n = state[0] if isinstance(state, tuple) else state  # (L·D, B, H)
        D = 2 if self.shape.bidirectional else 1
        top = torch.cat(list(h_n[-D:]), dim=1)  # (B, D·H)
        return self.output(self.dropout(top))  # (B, 10)


class StringRecogniser(_Recogniser):
    """Digit strings: (T, B, F) features + lengths -> (T, B, 11) per-frame log-probabilities,
    label 0 the CTC blank and label k + 1 the digit k."""

    def __init__(self, shape: RecogniserShape) -> None:
        super().__init__(dataclasses.replace(shape, task="strings"), len(DIGITS) + 1)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        out, _ = self.encoder(x, lengths=lengths)  # (T, B, D·H)
        return torch.log_softmax(self.output(self.dropout(out)), dim=-1)  # (T, B, 11)


def recogniser_from_json(data: dict) -> DigitClassifier | StringRecogniser:
    """An untrained model of the architecture ``model.to_json()`` described."""
    fields = {f.name for f in dataclasses.fields(RecogniserShape)}
    try:
        shape = RecogniserShape(**{k: v for k, v in data.items() if k in fields})
    except TypeError as err:
        raise ValueError(f"bad handwriting model description: {err}") from None
    if shape.task == "digits":
        return DigitClassifier(shape)
    if shape.task == "strings":
        return StringRecogniser(shape)
    raise ValueError(f"expected task 'digits' or 'strings'; got {shape.task!r}")


def recogniser_to_parts(
    model: DigitClassifier | StringRecogniser,
) -> tuple[dict[str, Tensor], dict]:
    """``(tensors, meta)``: the state_dict (for safetensors) and the JSON-ready architecture;
    :func:`recogniser_from_parts` inverts it."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return tensors, {"model": model.to_json()}


def recogniser_from_parts(
    tensors: dict[str, Tensor], meta: dict
) -> DigitClassifier | StringRecogniser:
    model = recogniser_from_json(meta["model"])
    model.load_state_dict(tensors)
    model.eval()
    return model
