"""Readers for CoNLL-U (Universal Dependencies) and CoNLL-2000 chunking column files.

Both return a list of :class:`Sentence`: the words, one tag sequence per annotation layer and
the line the sentence starts on.  Every parse error is a ``ValueError`` naming the file and
the line number (1-based) and saying what was expected and what came.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

UPOS_TAGS = (
    "ADJ",
    "ADP",
    "ADV",
    "AUX",
    "CCONJ",
    "DET",
    "INTJ",
    "NOUN",
    "NUM",
    "PART",
    "PRON",
    "PROPN",
    "PUNCT",
    "SCONJ",
    "SYM",
    "VERB",
    "X",
)


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One sentence: ``words`` and, per annotation layer name, a tag for every word.

    CoNLL-U gives layers ``upos`` and ``xpos``; CoNLL-2000 gives ``pos`` and ``chunk``.
    ``line`` is the 1-based line of the sentence's first token line in its file.
    """

    words: tuple[str, ...]
    tags: dict[str, tuple[str, ...]]
    line: int = 0

    def __len__(self) -> int:
        return len(self.words)


def _lines(path: str | Path) -> Iterable[tuple[int, str]]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.rstrip("\r")


def read_conllu(path: str | Path) -> list[Sentence]:
    """Sentences of a CoNLL-U file with layers ``upos`` and ``xpos``.

    Comment lines (``#``) are skipped; multiword-token lines (ids ``3-4``) and empty nodes
    (ids ``8.1``) are skipped, so the words are the syntactic words.  A token line must have
    10 tab-separated fields, an integer id counting 1, 2, … within the sentence, a non-empty
    FORM and a UPOS from the 17 universal tags.
    """
    sentences: list[Sentence] = []
    words: list[str] = []
    upos: list[str] = []
    xpos: list[str] = []
    start = 0

    def flush() -> None:
        nonlocal words, upos, xpos
        if words:
            sentences.append(
                Sentence(tuple(words), {"upos": tuple(upos), "xpos": tuple(xpos)}, start)
            )
        words, upos, xpos = [], [], []

    for number, line in _lines(path):
        where = f"{path}:{number}"
        if not line.strip():
            flush()
            continue
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 10:
            raise ValueError(
                f"{where}: expected 10 tab-separated CoNLL-U fields; got {len(fields)}: "
                f"{line[:60]!r}"
            )
        ident = fields[0]
        if "-" in ident or "." in ident:
            lo, _, hi = ident.replace(".", "-").partition("-")
            if not (lo.isdigit() and hi.isdigit()):
                raise ValueError(f"{where}: expected a token id like 3, 3-4 or 3.1; got {ident!r}")
            continue
        if not ident.isdigit():
            raise ValueError(f"{where}: expected an integer token id; got {ident!r}")
        if int(ident) != len(words) + 1:
            raise ValueError(
                f"{where}: expected token id {len(words) + 1} (ids count 1, 2, … per sentence); "
                f"got {ident}"
            )
        form, tag = fields[1], fields[3]
        if not form:
            raise ValueError(f"{where}: empty FORM field")
        if tag not in UPOS_TAGS:
            raise ValueError(f"{where}: expected a UPOS tag ({', '.join(UPOS_TAGS)}); got {tag!r}")
        if not words:
            start = number
        words.append(form)
        upos.append(tag)
        xpos.append(fields[4])
    flush()
    if not sentences:
        raise ValueError(f"{path}: no sentences found (expected CoNLL-U token lines)")
    return sentences


def read_conll2000(path: str | Path) -> list[Sentence]:
    """Sentences of a CoNLL-2000 chunking file (``word POS chunk`` per line, blank line
    between sentences) with layers ``pos`` and ``chunk``.  Chunk tags must be ``O`` or
    ``B-TYPE`` / ``I-TYPE``."""
    sentences: list[Sentence] = []
    words: list[str] = []
    pos: list[str] = []
    chunk: list[str] = []
    start = 0

    def flush() -> None:
        nonlocal words, pos, chunk
        if words:
            sentences.append(
                Sentence(tuple(words), {"pos": tuple(pos), "chunk": tuple(chunk)}, start)
            )
        words, pos, chunk = [], [], []

    for number, line in _lines(path):
        where = f"{path}:{number}"
        if not line.strip():
            flush()
            continue
        fields = line.split()
        if len(fields) != 3:
            raise ValueError(
                f"{where}: expected 3 space-separated fields (word POS chunk); got {len(fields)}:"
                f" {line[:60]!r}"
            )
        tag = fields[2]
        if not (tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)):
            raise ValueError(f"{where}: expected a chunk tag O, B-TYPE or I-TYPE; got {tag!r}")
        if not words:
            start = number
        words.append(fields[0])
        pos.append(fields[1])
        chunk.append(tag)
    flush()
    if not sentences:
        raise ValueError(f"{path}: no sentences found (expected 'word POS chunk' lines)")
    return sentences


def iob_chunks(tags: Iterable[str]) -> set[tuple[str, int, int]]:
    """The chunks ``(type, start, end)`` (end exclusive) of an IOB tag sequence, read as
    conlleval does: a chunk starts at ``B-X``, or at ``I-X`` after anything but ``B-X``/``I-X``."""
    chunks: set[tuple[str, int, int]] = set()
    kind, begin = None, 0
    tags = list(tags)
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, typ = tag.partition("-")
        starts = prefix == "B" or (prefix == "I" and typ != kind) or prefix == "O"
        if kind is not None and (starts or prefix not in ("B", "I")):
            chunks.add((kind, begin, i))
            kind = None
        if prefix in ("B", "I") and (kind is None):
            kind, begin = typ, i
    return chunks


def chunk_f1(gold: Iterable[Iterable[str]], predicted: Iterable[Iterable[str]]) -> float:
    """Chunk F1 (in [0, 1]) over sentences of IOB tags, as the CoNLL-2000 conlleval script."""
    correct = n_gold = n_pred = 0
    for g, p in zip(gold, predicted, strict=True):
        gc, pc = iob_chunks(g), iob_chunks(p)
        correct += len(gc & pc)
        n_gold += len(gc)
        n_pred += len(pc)
    if correct == 0:
        return 0.0
    precision, recall = correct / n_pred, correct / n_gold
    return 2 * precision * recall / (precision + recall)
