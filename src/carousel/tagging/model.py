"""The tagger: learned word embeddings plus a character-level encoder, a (stacked,
optionally bidirectional) carousel recurrent layer and a softmax over tags at every token.

Variable-length batches go through the recurrent layer with ``lengths=`` (no sorting, no
packing); a batch is padded only to its own longest sentence.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from carousel.layers import make_layer
from carousel.tagging.vocab import TaggerVocab


@dataclasses.dataclass(frozen=True)
class TaggerShape:
    """The architecture of a :class:`Tagger` (what :meth:`Tagger.to_json` stores)."""

    num_words: int
    num_chars: int
    num_tags: int
    cell: str = "lstm"
    bidirectional: bool = True
    num_layers: int = 1
    hidden_size: int = 128
    word_dim: int = 100
    char_dim: int = 32
    char_features: int = 64
    dropout: float = 0.3


class Tagger(nn.Module):
    """Per-token tag scores for a batch of sentences.

    Word representation: ``[embedding(lower-cased word) ; char encoder(word)]`` where the
    char encoder is a width-3 convolution over the word's character embeddings, max-pooled
    over the word's length (so unknown words still get an informative vector: suffixes,
    capitals, digits, hyphens).  Then the sentence layer ``make_layer(cell, word_dim +
    char_features, hidden_size, bidirectional=..., num_layers=...)`` and a linear map to tag
    scores.  (A convolution rather than a recurrent char encoder: it costs a fraction of the
    time and does the same job for tagging.)
    """

    def __init__(self, shape: TaggerShape) -> None:
        super().__init__()
        self.shape = shape
        s = shape
        self.word_embedding = nn.Embedding(s.num_words, s.word_dim, padding_idx=0)
        self.char_embedding = nn.Embedding(s.num_chars, s.char_dim, padding_idx=0)
        self.char_encoder = nn.Conv1d(s.char_dim, s.char_features, kernel_size=3, padding=1)
        self.encoder = make_layer(
            s.cell,
            s.word_dim + s.char_features,
            s.hidden_size,
            bidirectional=s.bidirectional,
            num_layers=s.num_layers,
            dropout=s.dropout if s.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(s.dropout)
        D = 2 if s.bidirectional else 1
        self.output = nn.Linear(D * s.hidden_size, s.num_tags)

    def forward(
        self, words: Tensor, lengths: Tensor, chars: Tensor, char_lengths: Tensor, spelling: Tensor
    ) -> Tensor:
        """Tag scores.

        Args:
            words: (T, B) word ids, 0 past each sentence's end.
            lengths: (B,) sentence lengths in 1..T.
            chars: (C, N) character ids of N distinct spellings, 0-padded.
            char_lengths: (N,) their lengths.
            spelling: (T, B) index into the N spellings of each token (anything past the end).

        Returns:
            (T, B, num_tags) scores; rows past a sentence's end are meaningless.
        """
        c = self.char_embedding(chars.t()).transpose(1, 2)  # (N, char_dim, C)
        c = torch.tanh(self.char_encoder(c))  # (N, char_features, C)
        C = chars.size(0)
        past = torch.arange(C, device=chars.device).unsqueeze(0) >= char_lengths.unsqueeze(
            1
        )  # (N, C)
        spelled = c.masked_fill(past.unsqueeze(1), -2.0).amax(dim=2)  # (N, char_features)
        x = torch.cat([self.word_embedding(words), spelled[spelling]], dim=2)  # (T, B, ·)
        x = self.dropout(x)
        out, _ = self.encoder(x, lengths=lengths)  # (T, B, D·H)
        return self.output(self.dropout(out))  # (T, B, num_tags)

    # ------------------------------------------------------------------ serialisation
    def to_json(self) -> dict:
        """The architecture as a JSON-ready dict; ``Tagger.from_json(d)`` builds a model
        of the same shape (untrained) to ``load_state_dict`` the saved tensors into."""
        return {"kind": "tagger", **dataclasses.asdict(self.shape)}

    @classmethod
    def from_json(cls, data: dict) -> Tagger:
        if data.get("kind") != "tagger":
            raise ValueError(
                f"expected a tagger description (kind 'tagger'); got {data.get('kind')!r}"
            )
        fields = {f.name for f in dataclasses.fields(TaggerShape)}
        try:
            shape = TaggerShape(**{k: v for k, v in data.items() if k in fields})
        except TypeError as err:
            raise ValueError(f"bad tagger description: {err}") from None
        return cls(shape)


def encode_batch(
    vocab: TaggerVocab, sentences: list[list[str]] | list[tuple[str, ...]]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The inputs of :meth:`Tagger.forward` for a list of token lists (each non-empty)."""
    if not sentences or any(len(s) == 0 for s in sentences):
        raise ValueError("expected a non-empty list of non-empty token lists")
    lengths = torch.tensor([len(s) for s in sentences])
    T, B = int(lengths.max()), len(sentences)
    words = torch.zeros(T, B, dtype=torch.long)
    spelling = torch.zeros(T, B, dtype=torch.long)
    index: dict[str, int] = {}
    for b, sent in enumerate(sentences):
        words[: len(sent), b] = torch.tensor(vocab.word_ids(sent))
        spelling[: len(sent), b] = torch.tensor([index.setdefault(w, len(index)) for w in sent])
    chars, char_lengths = vocab.spell_batch(list(index))
    return words, lengths, chars, char_lengths, spelling


def tagger_to_parts(model: Tagger, vocab: TaggerVocab) -> tuple[dict[str, Tensor], dict]:
    """``(tensors, meta)``: the state_dict (for safetensors) and a JSON-ready dict holding
    the architecture and vocabulary; :func:`tagger_from_parts` inverts it."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return tensors, {"model": model.to_json(), "vocab": vocab.to_json()}


def tagger_from_parts(tensors: dict[str, Tensor], meta: dict) -> tuple[Tagger, TaggerVocab]:
    """The model (in eval mode) and vocabulary saved by :func:`tagger_to_parts`."""
    model = Tagger.from_json(meta["model"])
    model.load_state_dict(tensors)
    model.eval()
    return model, TaggerVocab.from_json(meta["vocab"])
