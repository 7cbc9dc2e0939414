"""Vocabularies of a tagger: words (lower-cased, rare ones mapped to ``<unk>``), characters
(for the character-level encoder that spells out every word, known or not) and tags.

A vocabulary is plain data: :meth:`TaggerVocab.to_json` gives a JSON-ready dict and
:meth:`TaggerVocab.from_json` rebuilds it, so it travels next to a model's ``state_dict``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

PAD, UNK = "<pad>", "<unk>"
MAX_WORD_CHARS = 20  # longer words are spelled by their first 10 and last 10 characters


def spell(word: str) -> str:
    """The characters the character encoder reads for ``word`` (at most MAX_WORD_CHARS)."""
    if len(word) <= MAX_WORD_CHARS:
        return word
    half = MAX_WORD_CHARS // 2
    return word[:half] + word[-half:]


class TaggerVocab:
    """Index maps for words, characters and tags; index 0 is ``<pad>``, 1 is ``<unk>``
    (tags have no pad or unk).

    Args:
        words: known words (lower-cased), without ``<pad>``/``<unk>``.
        chars: known characters, without ``<pad>``/``<unk>``.
        tags: the tag set, in a fixed order.
        tagset: the annotation the tags come from (``upos``, ``chunk``, …).
    """

    def __init__(
        self, words: Sequence[str], chars: Sequence[str], tags: Sequence[str], tagset: str
    ) -> None:
        self.words = [PAD, UNK, *words]
        self.chars = [PAD, UNK, *chars]
        self.tags = list(tags)
        self.tagset = tagset
        if len(set(self.words)) != len(self.words) or len(set(self.chars)) != len(self.chars):
            raise ValueError("vocabulary entries must be unique (and not <pad>/<unk>)")
        if not self.tags or len(set(self.tags)) != len(self.tags):
            raise ValueError(f"expected a non-empty list of distinct tags; got {self.tags!r}")
        self.word_index = {w: i for i, w in enumerate(self.words)}
        self.char_index = {c: i for i, c in enumerate(self.chars)}
        self.tag_index = {t: i for i, t in enumerate(self.tags)}

    @classmethod
    def build(
        cls,
        sentences: Iterable[Sequence[str]],
        tags: Iterable[Sequence[str]],
        tagset: str,
        min_count: int = 2,
    ) -> TaggerVocab:
        """From training sentences: words seen at least ``min_count`` times (lower-cased),
        every character, every tag (sorted)."""
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1; got {min_count}")
        word_counts: Counter[str] = Counter()
        char_counts: Counter[str] = Counter()
        for words in sentences:
            for w in words:
                word_counts[w.lower()] += 1
                char_counts.update(spell(w))
        tag_set = sorted({t for seq in tags for t in seq})
        kept = sorted(w for w, n in word_counts.items() if n >= min_count)
        return cls(kept, sorted(char_counts), tag_set, tagset)

    # ------------------------------------------------------------------ encoding
    def word_ids(self, words: Sequence[str]) -> list[int]:
        return [self.word_index.get(w.lower(), 1) for w in words]

    def char_ids(self, word: str) -> list[int]:
        return [self.char_index.get(c, 1) for c in spell(word)]

    def tag_ids(self, tags: Sequence[str]) -> list[int]:
        try:
            return [self.tag_index[t] for t in tags]
        except KeyError as err:
            raise ValueError(
                f"tag {err.args[0]!r} is not in the tagger's tag set ({', '.join(self.tags)})"
            ) from None

    def spell_batch(self, words: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Character ids (C, N) of N words, padded to the longest, C ≤ MAX_WORD_CHARS, and
        their lengths (N,)."""
        ids = [self.char_ids(w) or [1] for w in words]
        lengths = torch.tensor([len(s) for s in ids])
        out = torch.zeros(int(lengths.max()), len(ids), dtype=torch.long)
        for j, s in enumerate(ids):
            out[: len(s), j] = torch.tensor(s)
        return out, lengths

    # ------------------------------------------------------------------ serialisation
    def to_json(self) -> dict:
        """A JSON-ready dict; :meth:`from_json` rebuilds an equal vocabulary."""
        return {
            "words": self.words[2:],
            "chars": self.chars[2:],
            "tags": self.tags,
            "tagset": self.tagset,
        }

    @classmethod
    def from_json(cls, data: dict) -> TaggerVocab:
        try:  # checkpoints written before the rename call the tagset "layer"
            tagset = data["tagset"] if "tagset" in data else data["layer"]
            return cls(data["words"], data["chars"], data["tags"], tagset)
        except (KeyError, TypeError) as err:
            raise ValueError(
                f"expected a tagger vocabulary dict with words, chars, tags, tagset; got {err}"
            ) from None

    @property
    def iob(self) -> bool:
        """Whether the tags are IOB chunk tags (``O``, ``B-X``, ``I-X``): scored by chunk F1."""
        return all(t == "O" or t[:2] in ("B-", "I-") for t in self.tags)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaggerVocab) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return (
            f"TaggerVocab({len(self.words)} words, {len(self.chars)} chars, "
            f"{len(self.tags)} {self.tagset} tags)"
        )
