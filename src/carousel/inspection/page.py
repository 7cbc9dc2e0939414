"""The inspection page: one self-contained HTML file (no network fetches, no external scripts
or fonts) showing a text with each character's background coloured by one unit's value.

A picker chooses the signal (``l0 h``, ``l1 s``, ``l0 i``, ...) and the unit; the best units per
text feature and a ranked list of units (by their strongest correlation with any feature) are
links that show that unit.  The values travel in the page as one byte per character and unit
(base64): sigmoid gates from 0 (blue) to 1 (red), h, g and n from −1 (blue) to +1 (red), the
internal state s from −max to +max of that unit over the page's text.  ``page.html#l1 s/17``
opens on unit 17 of layer 2's internal state.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from carousel.inspection.features import Unit
from carousel.inspection.record import SIGMOID_GATES


def signal_kind(label: str) -> str:
    """How a signal's values are scaled for colour: ``"gate"`` (0..1), ``"state"`` (the
    internal state s, by its largest magnitude) or ``"tanh"`` (−1..1)."""
    name = label.split()[-1]
    if name in SIGMOID_GATES:
        return "gate"
    return "state" if name == "s" else "tanh"


def encode_signal(label: str, values: Tensor) -> dict:
    """One signal (T, H) as the page holds it: its kind, per-unit scale and the values as
    int8 in −127..127 (row-major, t·H + j), base64."""
    v = values.detach().to(torch.float64).cpu()
    kind = signal_kind(label)
    scale = torch.ones(v.size(1), dtype=torch.float64)
    if kind == "gate":
        shown = 2 * v - 1
    elif kind == "state":
        scale = v.abs().amax(dim=0).clamp_min(1e-12)
        shown = v / scale
    else:
        shown = v
    q = (shown.clamp(-1, 1) * 127).round().to(torch.int8).contiguous()
    return {
        "label": label,
        "kind": kind,
        "H": v.size(1),
        "scale": [round(float(s), 6) for s in scale],
        "data": base64.b64encode(q.numpy().tobytes()).decode("ascii"),
    }


def _unit_json(u: Unit) -> dict:
    return {"signal": u.signal, "unit": u.unit, "feature": u.feature, "r": round(u.r, 4)}


def render_page(
    text: str,
    signals: Mapping[str, Tensor],
    best: Mapping[str, Sequence[Unit]],
    ranked: Sequence[Unit],
    title: str = "carousel inspect",
    notes: Sequence[str] = (),
    start: Unit | None = None,
) -> str:
    """The HTML page for ``text`` and ``signals`` (label -> (T, H), T = len(text)).

    Args:
        best: feature -> its best units (from :func:`~carousel.inspection.features.find_units`),
            shown in a table, the first of each with its correlation.
        ranked: units ranked over all features (:func:`rank_units`), shown as a list.
        notes: lines of context (model, text, where the correlations come from).
        start: the unit shown when the page opens (default: the best ranked one).
    """
    if not signals:
        raise ValueError("the page needs at least one signal")
    for label, values in signals.items():
        if values.dim() != 2 or values.size(0) != len(text):
            raise ValueError(
                f"signal {label!r} must be (T, H) with T = {len(text)} characters; got "
                f"{tuple(values.shape)}"
            )
    first = start or (ranked[0] if ranked else None)
    data = {
        "signals": [encode_signal(label, v) for label, v in signals.items()],
        "best": {k: [_unit_json(u) for u in units] for k, units in best.items()},
        "ranked": [_unit_json(u) for u in ranked],
        "start": _unit_json(first) if first else None,
        "text": text,
    }
    payload = json.dumps(data, ensure_ascii=True).replace("</", "<\\/")
    spans = "".join(f"<span>{html.escape(ch)}</span>" for ch in text)
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    parts = {"TITLE": html.escape(title), "NOTES": note_html, "SPANS": spans, "DATA": payload}
    # one pass over the template: a text holding "@DATA@" is not substituted again
    return re.sub("@(TITLE|NOTES|SPANS|DATA)@", lambda m: parts[m.group(1)], _TEMPLATE)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@TITLE@</title>
<style>
body { font-family: sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .3em 0; }
ul.notes { margin: 0 0 .6em 0; padding-left: 1.2em; font-size: .85em; color: #555; }
#controls { position: sticky; top: 0; background: #fff; padding: .4em 0;
  border-bottom: 1px solid #ccc; z-index: 1; }
#controls label { margin-right: 1em; }
#status { font-family: monospace; font-size: .9em; color: #333; margin-left: 1em; }
#legend { font-size: .8em; color: #555; }
#layout { display: flex; gap: 1.5em; align-items: flex-start; margin-top: .6em; }
#text { flex: 3; font-family: monospace; font-size: 13px; line-height: 1.45;
  white-space: pre-wrap; word-break: break-all; border: 1px solid #ddd; padding: .5em; }
#text span { cursor: crosshair; }
#side { flex: 1; min-width: 20em; font-size: .85em; }
#side table { border-collapse: collapse; width: 100%; margin-bottom: 1em; }
#side td, #side th { border-bottom: 1px solid #eee; padding: 2px 4px; text-align: left; }
#side a { color: #0645ad; cursor: pointer; text-decoration: none; }
#side tr.current { background: #fff3c4; }
.r { font-family: monospace; text-align: right; }
</style></head>
<body>
<h1>@TITLE@</h1>
<ul class="notes">@NOTES@</ul>
<div id="controls">
<label>signal <select id="signal"></select></label>
<label>unit <input id="unit" type="number" min="0" value="0" style="width:5em"></label>
<button id="prev" title="previous unit (left arrow)">&larr;</button>
<button id="next" title="next unit (right arrow)">&rarr;</button>
<span id="status"></span>
<div id="legend"></div>
</div>
<div id="layout">
<div id="text">@SPANS@</div>
<div id="side">
<h3>Best unit per feature</h3>
<table id="best"><tr><th>feature</th><th>unit</th><th class="r">r</th></tr></table>
<h3>Ranked units</h3>
<table id="ranked"><tr><th>#</th><th>unit</th><th>feature</th><th class="r">r</th></tr></table>
</div></div>
<script id="data" type="application/json">@DATA@</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const spans = document.getElementById("text").children;
const sel = document.getElementById("signal"), unitBox = document.getElementById("unit");
const status = document.getElementById("status"), legend = document.getElementById("legend");
const T = D.text.length, bySignal = {};
for (const s of D.signals) {
  const raw = atob(s.data), q = new Int8Array(raw.length);
  for (let k = 0; k < raw.length; k++) q[k] = (raw.charCodeAt(k) << 24) >> 24;
  s.q = q; bySignal[s.label] = s;
  const opt = document.createElement("option"); opt.value = s.label; opt.textContent = s.label;
  sel.appendChild(opt);
}
const LEGEND = {
  gate: "gate value: blue 0 (shut), white 0.5, red 1 (open)",
  tanh: "value: blue \\u22121, white 0, red +1",
  state: "internal state s: blue \\u2212max, white 0, red +max of this unit over the text"
};
function value(s, t, j) {
  const d = s.q[t * s.H + j] / 127;
  return s.kind === "gate" ? (d + 1) / 2 : d * s.scale[j];
}
function colour(d) {
  const a = Math.min(Math.abs(d), 1);
  return d >= 0 ? `rgba(220,40,30,${a.toFixed(3)})` : `rgba(30,90,220,${a.toFixed(3)})`;
}
function current() {
  const s = bySignal[sel.value];
  let j = parseInt(unitBox.value, 10);
  if (!(j >= 0)) j = 0;
  if (j >= s.H) j = s.H - 1;
  unitBox.max = s.H - 1; unitBox.value = j;
  return [s, j];
}
function show() {
  const [s, j] = current();
  for (let t = 0; t < T; t++) spans[t].style.backgroundColor = colour(s.q[t * s.H + j] / 127);
  legend.textContent = LEGEND[s.kind] + (s.kind === "state" ?
    ` (max |s| = ${s.scale[j].toPrecision(3)})` : "");
  status.textContent = `${s.label} #${j}`;
  for (const tr of document.querySelectorAll("#side tr[data-key]"))
    tr.classList.toggle("current", tr.dataset.key === `${s.label}#${j}`);
}
function pick(u) { sel.value = u.signal; unitBox.value = u.unit; show(); }
function row(table, cells, u) {
  const tr = document.createElement("tr"); tr.dataset.key = `${u.signal}#${u.unit}`;
  for (const [text, cls, link] of cells) {
    const td = document.createElement("td"); if (cls) td.className = cls;
    if (link) { const a = document.createElement("a"); a.textContent = text;
      a.onclick = () => pick(u); td.appendChild(a); } else td.textContent = text;
    tr.appendChild(td);
  }
  table.appendChild(tr);
}
const best = document.getElementById("best");
for (const [feature, units] of Object.entries(D.best)) {
  if (!units.length) { row(best, [[feature], ["(constant in this text)"], [""]],
    {signal: "", unit: -1}); continue; }
  const u = units[0];
  row(best, [[feature], [`${u.signal} #${u.unit}`, "", true], [u.r.toFixed(3), "r"]], u);
}
const ranked = document.getElementById("ranked");
D.ranked.forEach((u, k) => row(ranked, [[String(k + 1)], [`${u.signal} #${u.unit}`, "", true],
  [u.feature], [u.r.toFixed(3), "r"]], u));
document.getElementById("text").addEventListener("mousemove", (e) => {
  const t = Array.prototype.indexOf.call(spans, e.target);
  if (t < 0) return;
  const [s, j] = current();
  status.textContent = `${s.label} #${j}   step ${t}  ${JSON.stringify(D.text[t])}  ` +
    `value ${value(s, t, j).toFixed(3)}`;
});
sel.onchange = show; unitBox.oninput = show;
document.getElementById("prev").onclick = () => { unitBox.value = +unitBox.value - 1; show(); };
document.getElementById("next").onclick = () => { unitBox.value = +unitBox.value + 1; show(); };
document.addEventListener("keydown", (e) => {
  if (e.target === unitBox) return;
  if (e.key === "ArrowLeft") document.getElementById("prev").click();
  if (e.key === "ArrowRight") document.getElementById("next").click();
});
function fromHash() {  // page.html#l1 s/17 opens that unit
  const m = decodeURIComponent(location.hash.slice(1)).match(/^(.+)[/]([0-9]+)$/);
  return m && bySignal[m[1]] ? {signal: m[1], unit: +m[2]} : null;
}
window.addEventListener("hashchange", () => { const u = fromHash(); if (u) pick(u); });
const first = fromHash() || D.start;
if (first) pick(first); else show();
document.body.dataset.ready = "1";
</script>
</body></html>
"""
