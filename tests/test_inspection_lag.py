"""The long-lag picture: a lag model's record, the units the read-out uses, and the PNG of the
1997 LSTM's carousel beside the Elman RNN's state."""

import pytest
import torch

from carousel.data.tasks import make_batch
from carousel.inspection.lag import (
    carousel_figure,
    lag_summary,
    marked_steps,
    readout_units,
    record_lag,
)
from carousel.lag.train import LagModel

pytestmark = pytest.mark.usefixtures("one_thread")

PNG = b"\x89PNG\r\n\x1a\n"


def planted_adder(H: int = 4, K: float = 20.0) -> LagModel:
    """A 1997 LSTM whose unit 0 adds tanh(value) of each marked pair to its internal state:
    the input gate opens only at marker 1, the read-out sees only unit 0."""
    model = LagModel("adding", "lstm1997", H)
    rnn = model.rnn
    i, g, o = 0, H, 2 * H  # unit 0's rows in the i, g, o blocks
    with torch.no_grad():
        for row in (i, g, o):
            rnn.weight_ih_l0[row] = 0.0
            rnn.weight_hh_l0[row] = 0.0
            rnn.bias_ih_l0[row] = 0.0
            rnn.bias_hh_l0[row] = 0.0
        rnn.weight_ih_l0[i, 1], rnn.bias_ih_l0[i] = K, -K / 2  # open iff marker = 1
        rnn.weight_ih_l0[g, 0] = 1.0  # g = tanh(value)
        rnn.bias_ih_l0[o] = K  # output gate open
        model.head.weight.zero_()
        model.head.weight[0, 0] = 1.0
    return model.eval()


def test_the_planted_carousel_holds_the_marked_values():
    model = planted_adder()
    batch = make_batch("adding", 6, 20, 0)
    rec = record_lag(model, batch)
    s = rec.values[0][0]["s"]
    assert readout_units(model, rec, 2)[0] == 0
    for b in range(6):
        marks = marked_steps("adding", batch, b)
        assert len(marks) == 2
        n = int(batch.lengths[b])
        held = s[marks[1] : n, b, 0]
        want = torch.tanh(batch.x[marks, b, 0]).sum()
        torch.testing.assert_close(held, want.expand_as(held), rtol=0, atol=1e-3)
        assert float(s[n:, b].abs().sum()) == 0  # nothing recorded past the end
    summary = lag_summary(model, batch, rec)
    assert float(summary["gate"][:, 0].max()) < 1e-3  # shut between the marks
    assert float(summary["drift"][:, 0].max()) < 1e-3  # the state does not move


def test_marked_steps_of_each_task():
    order = make_batch("order6a", 2, 20, 1)
    steps = marked_steps("order6a", order, 0)
    assert len(steps) == 2 and all(int(order.x[t, 0].argmax()) in (6, 7) for t in steps)
    assert marked_steps("copy", make_batch("copy", 1, 10, 0)) == list(range(10))
    assert len(marked_steps("multiplication", make_batch("multiplication", 1, 20, 0))) == 2


def test_the_lag_picture_is_written(tmp_path):
    batch = make_batch("adding", 8, 20, 3)
    models = {"lstm1997 (planted)": planted_adder(), "rnn": LagModel("adding", "rnn", 4)}
    png = carousel_figure(models, batch, sequence=1, title="adding T = 20")
    assert png.startswith(PNG) and len(png) > 10_000
    (tmp_path / "lag.png").write_bytes(png)
    gru = {"gru": LagModel("order6a", "gru", 3)}
    assert carousel_figure(gru, make_batch("order6a", 2, 20, 0)).startswith(PNG)
    with pytest.raises(ValueError, match="share one task"):
        carousel_figure({"a": planted_adder(), **gru}, batch)
    with pytest.raises(ValueError, match=r"sequence must lie in 0\.\.7"):
        carousel_figure(models, batch, sequence=8)


# ---------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def lag_runs(tmp_path_factory):
    from carousel.cli import main

    folder = tmp_path_factory.mktemp("lag")
    runs = {}
    for cell, task in (("lstm1997", "adding"), ("rnn", "adding"), ("gru", "order6a")):
        run = folder / f"{task}-{cell}"
        argv = ["lag", "--task", task, "--T", "12", "--cell", cell, "--hidden-size", "4"]
        assert main([*argv, "--budget", "64", "--no-progress", "--out", str(run)]) == 0
        runs[cell] = run
    return runs


def test_cli_inspect_lag_runs_side_by_side(lag_runs, tmp_path, capsys):
    from carousel.cli import main

    capsys.readouterr()
    argv = ["inspect", str(lag_runs["lstm1997"]), "--beside", str(lag_runs["rnn"])]
    assert main([*argv, "--sequence", "2", "--seed", "5", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mean input gate" in out and "rnn (adding-rnn) unit" in out
    assert (tmp_path / "lag.png").read_bytes().startswith(PNG)
    assert main(["inspect", str(lag_runs["gru"])]) == 0  # default: RUN/inspect/lag.png
    assert (lag_runs["gru"] / "inspect" / "lag.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--beside", "gru"], "same task and T"),
        (["--text", "x.txt"], "--text and --prime are for language models"),
        (["--sequence", "64"], "--sequence must lie in 0..63"),
    ],
)
def test_cli_inspect_lag_errors_are_one_line(lag_runs, capsys, extra, needle):
    from carousel.cli import main

    extra = [str(lag_runs["gru"]) if e == "gru" else e for e in extra]
    capsys.readouterr()
    assert main(["inspect", str(lag_runs["lstm1997"]), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("carousel inspect: error:"), err
    assert needle in err[0], err[0]
