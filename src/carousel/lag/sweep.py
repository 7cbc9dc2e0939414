"""``carousel lag --sweep``: tasks × T × cells × seeds, each run through the same job
(:func:`carousel.lag.train.run_lag`) into its own run folder ``OUT/runs/TASK-TT-CELL-seedS``,
so a sweep cut short resumes where it stopped when the same command runs again; then a
markdown table and a PNG."""

from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
from pathlib import Path

from carousel.cells import get_cell
from carousel.config import config_to_dict
from carousel.io import atomic_write, pyplot, save_figure
from carousel.lag.config import BIAS_FIELDS, LagConfig, sweep_lists
from carousel.lag.train import LagResult, run_lag


def for_cell(cfg: LagConfig, cell: str) -> LagConfig:
    """``cfg`` for one sweep cell: the initial gate biases the cell has no gate for are
    left unset (e.g. ``input_gate_bias`` for ``rnn`` and ``gru``, ``forget_bias`` for
    ``lstm1997``), so one sweep can compare cells with and without those gates."""
    gates = get_cell(cell).gates()
    unset = {name: None for name, gate in BIAS_FIELDS.items() if gate not in gates}
    return dataclasses.replace(cfg, cell=cell, **unset)


def run_sweep(
    cfg: LagConfig, out: str | Path = "lag-sweep", *, progress: bool = False, log=print
) -> list[LagResult]:
    """Run every (task, T, cell, seed) of the sweep, each in run folder
    ``out/runs/TASK-TT-CELL-seedS`` (resumed if it is there: a finished one is only read);
    write ``results.md``, ``results.json`` and ``sweep.png`` into ``out``; return the results.

    Initial gate biases apply to the sweep's cells that have the gate (:func:`for_cell`)."""
    get_cell("peephole", **cfg.cell_options())  # a bad value fails here (it has every gate)
    for_cell(cfg, cfg.cell).validate()
    tasks, lengths, cells = sweep_lists(cfg)
    out = Path(out)
    results: list[LagResult] = []
    for task, T, cell, seed in itertools.product(
        tasks, lengths, cells, range(cfg.seed, cfg.seed + cfg.sweep_seeds)
    ):
        one = dataclasses.replace(for_cell(cfg, cell), task=task, T=T, seed=seed)
        run = out / "runs" / f"{task}-T{T}-{cell}-seed{seed}"
        resume = (run / "checkpoint.safetensors").exists()  # refused if its settings differ
        r = run_lag(one, run, resume=resume, overrides=config_to_dict(one), progress=progress)
        verdict = f"solved after {r.sequences:,}" if r.solved else "not solved"
        wall = f"{r.test_wrong} test wrong, {r.wall_s:.1f}s"
        log(f"{task} T={T} {cell} seed={seed}: {verdict} ({wall})")
        results.append(r)
        # write as we go, so a long sweep leaves its results even if cut short
        atomic_write(out / "results.json", _json(results))
    atomic_write(out / "results.md", sweep_table(results, cfg))
    save_figure(sweep_plot(results), out / "sweep.png", dpi=80)
    log(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'sweep.png'}")
    return results


def _json(results: list[LagResult]) -> str:
    return json.dumps([dataclasses.asdict(r) for r in results], indent=1) + "\n"


def _groups(results: list[LagResult]) -> dict[tuple[str, int, str], list[LagResult]]:
    groups: dict[tuple[str, int, str], list[LagResult]] = {}
    for r in results:
        groups.setdefault((r.task, r.T, r.cell), []).append(r)
    return groups


def sweep_table(results: list[LagResult], cfg: LagConfig) -> str:
    """Markdown: solved fraction, median sequences to solve, median test wrong, wall time."""
    lines = [
        f"Budget {cfg.budget:,} training sequences per run; Adam lr {cfg.lr}, minibatch "
        f"{cfg.batch_size}, H = {cfg.hidden_size}, clip {cfg.clip}; seeds "
        f"{cfg.seed}..{cfg.seed + cfg.sweep_seeds - 1}.{_biases(cfg)}",
        "",
        "| task | T | cell | solved | sequences to solve (median of solved) "
        "| test wrong of 2,560 (median) | wall s (sum) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for (task, T, cell), rs in _groups(results).items():
        done = [r.sequences for r in rs if r.solved]
        med = f"{statistics.median(done):,.0f}" if done else "—"
        wrong = statistics.median(r.test_wrong for r in rs)
        wall = sum(r.wall_s for r in rs)
        lines.append(
            f"| {task} | {T} | {cell} | {len(done)}/{len(rs)} | {med} | {wrong:g} | {wall:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _biases(cfg: LagConfig) -> str:
    """The caption's note on initial gate biases, for the cells that have the gate."""
    set_ = [
        f"{name} {getattr(cfg, name):g}" for name in BIAS_FIELDS if getattr(cfg, name) is not None
    ]
    return f" Initial {', '.join(set_)} (cells that have the gate)." if set_ else ""


def sweep_plot(results: list[LagResult]):
    """A figure: per task, the fraction solved and the sequences needed against T."""
    plt = pyplot()
    groups = _groups(results)
    tasks = list(dict.fromkeys(r.task for r in results))
    cells = list(dict.fromkeys(r.cell for r in results))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(9, 3.2 * len(tasks)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers, styles = "osD^vP*X", ["-", "--", ":", "-."]
    for row, task in zip(axes, tasks):
        for n, cell in enumerate(cells):
            look = {
                "color": colors[n % len(colors)],
                "marker": markers[n % len(markers)],
                "linestyle": styles[n % len(styles)],
                "label": cell,
            }
            keys = sorted((T, rs) for (t, T, c), rs in groups.items() if t == task and c == cell)
            if not keys:
                continue
            Ts = [T for T, _ in keys]
            frac = [sum(r.solved for r in rs) / len(rs) for _, rs in keys]
            row[0].plot(Ts, frac, **look)
            pts = [
                (T, statistics.median(r.sequences for r in rs if r.solved))
                for T, rs in keys
                if any(r.solved for r in rs)
            ]
            if pts:
                row[1].plot(*zip(*pts), **look)
        row[0].set(title=f"{task}: fraction of seeds solved", xlabel="T", ylim=(-0.05, 1.05))
        row[1].set(title=f"{task}: training sequences to solve", xlabel="T", yscale="log")
        row[0].legend(fontsize=8)
        if row[1].lines:
            row[1].legend(fontsize=8)
    fig.tight_layout()
    return fig
