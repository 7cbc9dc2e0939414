"""CoNLL-U and CoNLL-2000 readers on hand-written fixtures, malformed lines included."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from carousel.data.conll import chunk_f1, iob_chunks, read_conll2000, read_conllu

CONLLU = """\
# sent_id = a-1
# text = I can't go.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tcan't\t_\t_\t_\t_\t_\t_\t_\t_
2\tca\tcan\tAUX\tMD\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\tSpaceAfter=No
4.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t_\t_
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = a-2
1\tHello\thello\tINTJ\tUH\t_\t0\troot\t_\t_
"""

CONLL2000 = """\
Confidence NN B-NP
in IN B-PP
the DT B-NP
pound NN I-NP

Chancellor NNP O
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_conllu_reads_words_and_tags_skipping_ranges_and_empty_nodes(tmp_path):
    sents = read_conllu(write(tmp_path, "x.conllu", CONLLU))
    assert len(sents) == 2
    assert sents[0].words == ("I", "ca", "n't", "go", ".")
    assert sents[0].tags["upos"] == ("PRON", "AUX", "PART", "VERB", "PUNCT")
    assert sents[0].tags["xpos"] == ("PRP", "MD", "RB", "VB", ".")
    assert sents[0].line == 3
    assert sents[1].words == ("Hello",) and sents[1].line == 12


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_", "expected 10 tab-separated"),
        ("x\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_", "expected an integer token id"),
        ("2\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_", "expected token id 1"),
        ("1\tI\tI\tPRONOUN\tPRP\t_\t3\tnsubj\t_\t_", "expected a UPOS tag"),
        ("1\t\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_", "empty FORM"),
        ("1-x\tI\t_\t_\t_\t_\t_\t_\t_\t_", "expected a token id like"),
    ],
)
def test_conllu_errors_name_the_line(tmp_path, bad_line, message):
    text = "# comment\n1\tA\ta\tDET\tDT\t_\t0\troot\t_\t_\n\n" + bad_line + "\n"
    path = write(tmp_path, "bad.conllu", text)
    with pytest.raises(ValueError, match=message) as err:
        read_conllu(path)
    assert f"{path}:4:" in str(err.value)


def test_conllu_empty_or_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no sentences"):
        read_conllu(write(tmp_path, "empty.conllu", "# only a comment\n\n"))
    with pytest.raises(ValueError, match="cannot read"):
        read_conllu(tmp_path / "missing.conllu")


def test_conll2000_reads_columns(tmp_path):
    sents = read_conll2000(write(tmp_path, "train.txt", CONLL2000))
    assert [s.words for s in sents] == [("Confidence", "in", "the", "pound"), ("Chancellor",)]
    assert sents[0].tags["pos"] == ("NN", "IN", "DT", "NN")
    assert sents[0].tags["chunk"] == ("B-NP", "B-PP", "B-NP", "I-NP")
    assert sents[1].line == 6


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("pound NN", "expected 3 space-separated fields"),
        ("pound NN I-NP extra", "expected 3 space-separated fields"),
        ("pound NN X-NP", "expected a chunk tag"),
        ("pound NN B-", "expected a chunk tag"),
    ],
)
def test_conll2000_errors_name_the_line(tmp_path, bad_line, message):
    path = write(tmp_path, "bad.txt", "the DT B-NP\n\n" + bad_line + "\n")
    with pytest.raises(ValueError, match=message) as err:
        read_conll2000(path)
    assert f"{path}:3:" in str(err.value)


def test_iob_chunks_follow_conlleval():
    assert iob_chunks(["B-NP", "I-NP", "O", "B-VP"]) == {("NP", 0, 2), ("VP", 3, 4)}
    # I- after O or after another type starts a chunk; B- after B- starts a new one
    assert iob_chunks(["I-NP", "I-VP", "B-VP", "B-VP"]) == {
        ("NP", 0, 1),
        ("VP", 1, 2),
        ("VP", 2, 3),
        ("VP", 3, 4),
    }
    assert iob_chunks(["O", "O"]) == set()


def test_chunk_f1_counts_exact_chunks():
    gold = [["B-NP", "I-NP", "O", "B-VP"]]
    assert chunk_f1(gold, gold) == 1.0
    # one of two chunks right: precision 1/2 (2 predicted), recall 1/2
    assert chunk_f1(gold, [["B-NP", "B-NP", "O", "B-VP"]]) == pytest.approx(
        2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2)
    )
    assert chunk_f1(gold, [["O", "O", "O", "O"]]) == 0.0


def _shared_data() -> Path:
    root = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("CAROUSEL_DATA", root.parent / "shared" / "data"))


def test_real_files_parse_with_published_counts():
    data = _shared_data()
    ewt = data / "ud_english_ewt" / "en_ewt-ud-test.conllu"
    chunks = data / "conll2000" / "test.txt"
    if not ewt.is_file() or not chunks.is_file():
        pytest.skip(f"real data not found under {data} (set CAROUSEL_DATA to the shared data)")
    sents = read_conllu(ewt)
    assert (len(sents), sum(map(len, sents))) == (2077, 25094)
    sents = read_conll2000(chunks)
    assert (len(sents), sum(map(len, sents))) == (2012, 47377)
