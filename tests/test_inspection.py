"""carousel inspect: the record equals the layer, the text features, the unit finder (a planted
unit is found), the page, the figures and the command line."""

import base64
import json
import random
import re
import shutil
import subprocess

import pytest
import torch

import carousel
from carousel.cells import CELLS
from carousel.cli import main
from carousel.data.corpora import Vocab
from carousel.inspection import find_units, rank_units, record, text_features
from carousel.inspection.features import (
    bracket_depth,
    correlations,
    inside_brackets,
    inside_quotes,
    line_position,
    since_newline,
    upper_case,
    word_start,
)
from carousel.inspection.figures import heatmap_plot, saturation, saturation_plot
from carousel.inspection.lm import inspect_text, record_text, signals_of
from carousel.inspection.page import render_page
from carousel.lm.config import LMConfig
from carousel.lm.model import RNNLM

pytestmark = pytest.mark.usefixtures("one_thread")

PNG = b"\x89PNG\r\n\x1a\n"
GATE_SETS = {
    "rnn": "h",
    "gru": "rzn",
    "lstm": "ifgo",
    "lstm1997": "igo",
    "peephole": "ifgo",
    "nig": "fgo",
    "nfg": "igo",
    "nog": "ifg",
    "niaf": "ifgo",
    "noaf": "ifgo",
    "np": "ifgo",
    "cifg": "ifgo",  # f = 1 − i, recorded
}


# ---------------------------------------------------------------------------- the record
@pytest.mark.parametrize("name", list(CELLS))
def test_record_equals_the_layer_outputs_and_final_states(name):
    torch.manual_seed(3)
    layer = carousel.make_layer(name, 3, 4, num_layers=2, bidirectional=True).double()
    x = torch.randn(7, 3, 3, dtype=torch.double)
    lengths = torch.tensor([7, 4, 2])
    ref = carousel.make_layer(name, 3, 4, num_layers=2, bidirectional=True, backend="reference")
    ref = ref.double()
    ref.load_state_dict(layer.state_dict())
    want_out, want_final = ref(x, lengths=lengths)
    rec = record(layer, x, lengths=lengths)
    torch.testing.assert_close(rec.output, want_out, rtol=0, atol=0)
    for got, want in zip(_tuple(rec.final), _tuple(want_final)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the default (fused) backend agrees to rounding
    fused_out, _ = layer(x, lengths=lengths)
    torch.testing.assert_close(rec.output, fused_out, rtol=1e-10, atol=1e-10)
    # every layer and direction records the cell's gate set, s for LSTM cells, and h
    family = CELLS[name].family
    want_names = set(GATE_SETS[name]) | {"h"} | ({"s"} if family == "lstm" else set())
    assert [[set(r) for r in layer_rec] for layer_rec in rec.values] == [[want_names] * 2] * 2
    # h of each layer and direction is the layer's output; h_n / c_n its last real step
    H = 4
    for k in range(2):
        for d in range(2):
            h = rec.values[k][d]["h"]
            if k == 1:
                torch.testing.assert_close(h, want_out[..., d * H : (d + 1) * H], rtol=0, atol=0)
            last = h[lengths - 1, torch.arange(3)] if d == 0 else h[0]
            torch.testing.assert_close(last, _tuple(want_final)[0][2 * k + d], rtol=0, atol=0)
            if family == "lstm":
                s = rec.values[k][d]["s"]
                last_s = s[lengths - 1, torch.arange(3)] if d == 0 else s[0]
                torch.testing.assert_close(last_s, want_final[1][2 * k + d], rtol=0, atol=0)
    # nothing past a sequence's length
    assert all(float(v[4:, 1].abs().max()) == 0 for v in rec.values[0][1].values())


def _tuple(state):
    return state if isinstance(state, tuple) else (state,)


def test_recorded_gates_satisfy_the_lstm_equations():
    """s_t = f ⊙ s_{t−1} + i ⊙ g and h_t = o ⊙ tanh(s_t), from the recorded values alone."""
    layer = carousel.LSTM(2, 5).double()
    rec = record(layer, torch.randn(9, 2, 2, dtype=torch.double))
    v = rec.values[0][0]
    s_prev = torch.cat([torch.zeros(1, 2, 5, dtype=torch.double), v["s"][:-1]])
    torch.testing.assert_close(v["s"], v["f"] * s_prev + v["i"] * v["g"])
    torch.testing.assert_close(v["h"], v["o"] * torch.tanh(v["s"]))
    assert float(v["i"].min()) > 0 and float(v["i"].max()) < 1
    cifg = record(carousel.LSTM(2, 5, variant="cifg").double(), torch.randn(4, 1, 2).double())
    torch.testing.assert_close(cifg.values[0][0]["f"], 1 - cifg.values[0][0]["i"])


def test_record_signals_labels_and_bad_input():
    layer = carousel.GRU(2, 3, num_layers=2, bidirectional=True)
    rec = record(layer, torch.randn(5, 2))  # unbatched: B = 1
    labels = [label for label, _ in rec.signals()]
    assert labels[:4] == ["l0 h", "l0 r", "l0 z", "l0 n"]
    assert "l1r h" in labels and rec.signal("l1r z").shape == (5, 1, 3)
    with pytest.raises(ValueError, match="no signal 'l0 s'"):
        rec.signal("l0 s")
    with pytest.raises(ValueError, match="carousel layer"):
        record(torch.nn.LSTM(2, 3), torch.randn(5, 1, 2))
    with pytest.raises(ValueError, match="features"):
        record(layer, torch.randn(5, 1, 3))


# ---------------------------------------------------------------------------- features
def _f(t):
    return t.tolist()


def test_text_features_on_tiny_texts():
    assert _f(inside_quotes('a"bc"d')) == [0, 1, 1, 1, 0, 0]
    assert _f(bracket_depth("a(b[c])d)")) == [0, 1, 1, 2, 2, 1, 0, 0, 0]
    assert _f(inside_brackets("x(y)z")) == [0, 1, 1, 0, 0]
    assert _f(since_newline("ab\ncd\n\ne")) == [1, 2, 0, 1, 2, 0, 0, 1]
    assert _f(line_position("abcd\nab\n\nx")) == [0, 0.25, 0.5, 0.75, 1, 0, 0.5, 1, 0, 0]
    assert _f(word_start("Hi, you2 x")) == [1, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    assert _f(upper_case("aB c\nD")) == [0, 1, 0, 0, 0, 1]
    feats = text_features('A "b" (c)\n')
    assert set(feats) == {
        "inside quotes",
        "inside brackets",
        "bracket depth",
        "line position",
        "since newline",
        "word start",
        "upper case",
    }
    assert all(f.shape == (10,) for f in feats.values())


def test_correlations_and_the_finder_on_planted_columns():
    gen = torch.Generator().manual_seed(0)
    feature = (torch.rand(200, generator=gen) > 0.5).double()
    units = torch.randn(200, 6, generator=gen, dtype=torch.double)
    units[:, 4] = 3 * feature + 0.1 * units[:, 4]  # follows the feature
    units[:, 2] = 7.0  # constant: no correlation
    r = correlations(units, feature)
    assert r[4] > 0.99 and r[2] == 0 and r.abs()[[0, 1, 3, 5]].max() < 0.3
    best = find_units({"l0 h": units[:, :3], "l0 s": units[:, 3:]}, {"f": feature}, top=2)
    assert (best["f"][0].signal, best["f"][0].unit) == ("l0 s", 1)
    assert find_units({"x": units}, {"flat": torch.ones(200)})["flat"] == []
    anti = {"g": 1 - feature}
    ranked = rank_units({"l0 h": units}, {"f": feature} | anti, top=3)
    assert ranked[0].unit == 4 and abs(ranked[0].r) > 0.99
    with pytest.raises(ValueError, match="same T"):
        correlations(units, feature[:10])


# ---------------------------------------------------------------------------- a planted unit
CHARS = sorted(set('abcdefgh "\n'))


def _quote_text(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = []
    for _ in range(n):
        w = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 6)))
        words.append(f'"{w}"' if rng.random() < 0.3 else w)
        words.append("\n" if rng.random() < 0.1 else " ")
    return "".join(words)


def planted_model(hidden: int = 8) -> tuple[RNNLM, Vocab]:
    """A 1-layer character LSTM whose unit 0 flips its internal state at every '"': outside
    the quotes s = 0 (before the first) or −1, inside s = +1.  The other units are random."""
    vocab = Vocab(tuple(CHARS), "char")
    cfg = LMConfig(hidden_size=hidden, embed_size=4, num_layers=1)
    model = RNNLM(len(vocab), cfg)
    H, K = hidden, 20.0
    with torch.no_grad():
        model.embedding.weight[:, 0] = 0.0
        model.embedding.weight[vocab.index['"'], 0] = 1.0  # feature 0: "this is a quote"
        rnn = model.rnn
        i, f, g, o = (slice(k * H, k * H + 1) for k in range(4))  # unit 0 of each block
        rows = [k * H for k in range(4)]
        rnn.weight_ih_l0[rows] = 0.0
        rnn.weight_hh_l0[rows] = 0.0
        rnn.weight_hh_l0[:, 0] = 0.0  # no other unit reads unit 0
        rnn.bias_hh_l0[rows] = 0.0
        rnn.weight_ih_l0[i, 0], rnn.bias_ih_l0[i] = 2 * K, -K  # open only at a quote
        rnn.weight_ih_l0[f, 0], rnn.bias_ih_l0[f] = -2 * K, K  # forget only at a quote
        rnn.weight_hh_l0[g, 0], rnn.bias_ih_l0[g] = -K, 5.0  # g = −sign(s) (+1 from s = 0)
        rnn.bias_ih_l0[o] = K  # output gate open: h = tanh(s)
    return model.eval(), vocab


def test_the_finder_recovers_a_planted_quote_unit():
    model, vocab = planted_model()
    text = _quote_text(150)
    rec = record_text(model, vocab, text)
    s = rec.values[0][0]["s"][:, 0, 0]
    inside = inside_quotes(text)
    assert float(s[inside == 1].min()) > 0.99  # the unit does what it was built to do
    best = find_units(signals_of(rec), text_features(text), top=3)["inside quotes"]
    assert (best[0].signal, best[0].unit) in {("l0 s", 0), ("l0 h", 0)}
    assert best[0].r > 0.9
    others = [u for u in best if u.unit != 0]
    assert all(abs(u.r) < 0.6 for u in others), others


# ---------------------------------------------------------------------------- page, figures
def _payload(page: str) -> dict:
    m = re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def test_inspect_text_writes_the_page_and_figures(tmp_path):
    model, vocab = planted_model()
    text = _quote_text(120, seed=1)
    summary = inspect_text(model, vocab, text, tmp_path / "out", page_chars=300)
    page = (tmp_path / "out" / "page.html").read_text(encoding="utf-8")
    data = _payload(page)
    assert data["text"] == text[:300]
    assert page.count("<span>") >= 300
    labels = [s["label"] for s in data["signals"]]
    assert labels == ["l0 h", "l0 s", "l0 i", "l0 f", "l0 g", "l0 o"]
    sig = data["signals"][1]
    q = base64.b64decode(sig["data"])
    assert len(q) == 300 * 8 and sig["H"] == 8 and sig["kind"] == "state"
    assert data["best"]["inside quotes"][0]["unit"] == 0
    assert data["ranked"] and set(data["best"]) == set(text_features("a"))
    # self-contained: no scripts, styles, fonts or images from anywhere
    assert not re.search(r"(src|href)\s*=|https?://|@import|url\(", page)
    for name in ("saturation.png", "heatmap.png"):
        assert (tmp_path / "out" / name).read_bytes().startswith(PNG)
    assert (tmp_path / "out" / "page.html").stat().st_mode & 0o044 == 0o044  # not mkstemp's 0600
    units = json.loads((tmp_path / "out" / "units.json").read_text())
    assert units["best"]["inside quotes"][0]["r"] == summary["best"]["inside quotes"][0]["r"]


def test_page_escapes_the_text_and_refuses_bad_signals():
    text = '<b>"&</script>@DATA@'
    sig = {"l0 h": torch.zeros(len(text), 2)}
    page = render_page(text, sig, {}, [])
    assert _payload(page)["text"] == text
    assert "<b>" not in page.split("<script")[0]
    with pytest.raises(ValueError, match="T = 20"):
        render_page(text, {"l0 h": torch.zeros(3, 2)}, {}, [])


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_page_renders_in_chromium(tmp_path):
    model, vocab = planted_model()
    inspect_text(model, vocab, _quote_text(60), tmp_path, page_chars=200)
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"]
    dom = subprocess.run(
        [*cmd, (tmp_path / "page.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert 'data-ready="1"' in dom  # the script ran to its end
    assert dom.count('style="background-color: rgba(') >= 150  # characters were coloured
    assert dom.count("<option") == 6
    dom = subprocess.run(
        [*cmd, (tmp_path / "page.html").as_uri() + "#l0%20g/3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert '<span id="status">l0 g #3</span>' in dom  # the address picks the unit


def test_saturation_and_heatmap():
    layer = carousel.LSTM(3, 6, num_layers=2)
    rec = record(layer, 4 * torch.randn(30, 2, 3))
    left, right = saturation(rec.values[0][0]["i"], None)
    assert left.shape == (6,) and bool(((left + right) <= 1).all())
    v = torch.tensor([0.05, 0.5, 0.95, 0.99]).view(4, 1, 1)
    assert _f(saturation(v, None)[0]) == [0.25] and _f(saturation(v, None)[1]) == [0.5]
    assert _f(saturation(v, torch.tensor([2]))[1]) == [0.0]
    assert saturation_plot(rec, title="t").startswith(PNG)
    text = "abc\ndef " * 4
    units = rank_units(signals_of(rec), text_features(text[:30]), top=4)
    assert heatmap_plot(text[:30], rec, units, length=20).startswith(PNG)
    with pytest.raises(ValueError, match="sigmoid gates"):
        saturation_plot(record(carousel.RNN(3, 4), torch.randn(5, 1, 3)))


# ---------------------------------------------------------------------------- command line
TINY = ["--hidden-size", "12", "--num-layers", "2", "--bptt", "8", "--batch-size", "4"]
TINY += ["--optimizer", "adam", "--lr", "0.01", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inspect")
    corpus = folder / "tiny.txt"
    corpus.write_text(_quote_text(300, seed=2), encoding="utf-8")
    run = folder / "run"
    assert main(["train", "--data", str(corpus), "--out", str(run), "--max-steps", "4", *TINY]) == 0
    return run, corpus


def test_cli_inspect_text_and_prime(lm_run, tmp_path, capsys):
    run, corpus = lm_run
    capsys.readouterr()
    assert main(["inspect", str(run), "--text", str(corpus), "--length", "400"]) == 0
    out = capsys.readouterr().out
    assert "400 characters recorded" in out and "inside quotes" in out
    assert (run / "inspect" / "page.html").is_file()
    assert (run / "inspect" / "saturation.png").read_bytes().startswith(PNG)
    dest = tmp_path / "own"
    argv = ["inspect", str(run), "--prime", '"ab', "--length", "50", "--out", str(dest)]
    assert main(argv) == 0
    data = _payload((dest / "page.html").read_text(encoding="utf-8"))
    assert data["text"].startswith('"ab') and len(data["text"]) == 53
    assert [s["label"] for s in data["signals"]][:2] == ["l0 h", "l0 s"]
    assert "l1 o" in [s["label"] for s in data["signals"]]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ([], "either --text FILE or --prime TEXT"),
        (["--text", "x.txt", "--prime", "a"], "either --text"),
        (["--text", "/nonexistent/file.txt"], "No such file"),
        (["--prime", "a", "--length", "0"], "--length must be positive"),
        (["--prime", "Z"], "not in the model's vocabulary"),
        (["--prime", "a", "--beside", "x"], "--beside is for lag runs"),
    ],
)
def test_cli_inspect_errors_are_one_line(lm_run, capsys, extra, needle):
    run, _ = lm_run
    capsys.readouterr()
    assert main(["inspect", str(run), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("carousel inspect: error:"), err
    assert needle in err[0], err[0]


def test_cli_inspect_needs_a_checkpoint(tmp_path, capsys):
    assert main(["inspect", str(tmp_path), "--prime", "a"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_char_inspect_preset_resolves():
    from carousel.config import resolve_config

    cfg = resolve_config(LMConfig, "char-inspect")
    assert (cfg.cell, cfg.num_layers, cfg.hidden_size, cfg.max_minutes) == ("lstm", 2, 256, 15.0)
