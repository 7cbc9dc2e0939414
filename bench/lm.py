"""Language-model training throughput: the same model (embedding → 2-layer LSTM → softmax)
built from torch.nn (nn.LSTM, nn.Linear, F.cross_entropy) and from carousel (its layer on
``backend="auto"``, the fused kernels, and its fused output layer + loss), each in float32
and under bf16 autocast, in the same process, alternating runs; prints tokens/s, the ratio to
torch.nn in float32, and where each one's time goes (recurrent layers, output layer + loss,
the rest: embedding and Adam).

    .venv/bin/python bench/lm.py                # character and word models
    .venv/bin/python bench/lm.py --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from carousel.kernels.softmax import linear_cross_entropy
from carousel.lm.config import LMConfig
from carousel.lm.model import RNNLM

MODELS = {
    # name: (vocabulary, LMConfig fields) — shapes of the benchmarks in BENCHMARKS.md
    "char 2x256 (B 32, T 100, V 65)": (
        65,
        dict(embed_size=64, hidden_size=256, num_layers=2, batch_size=32, bptt=100),
    ),
    "word 2x200 zaremba-small (B 20, T 20, V 10000)": (
        10000,
        dict(hidden_size=200, num_layers=2, batch_size=20, bptt=20),
    ),
}


def build(vocab: int, cfg: LMConfig, torch_nn: bool) -> RNNLM:
    torch.manual_seed(0)
    model = RNNLM(vocab, cfg)
    if torch_nn:
        ref = nn.LSTM(cfg.embed, cfg.hidden_size, cfg.num_layers)
        ref.load_state_dict(model.rnn.state_dict())
        model.rnn = ref
    return model


def step_time(
    model: RNNLM, vocab: int, cfg: LMConfig, steps: int, fused: bool, bf16: bool
) -> tuple[float, float, float]:
    """Seconds per training step (forward, backward, Adam), and the seconds of it spent in the
    recurrent layers (forward + backward) and in the output layer with its loss (forward +
    backward).  ``fused``: the model's own fused output layer + cross-entropy
    (``model(ids, targets=...)``'s path); else nn.Linear + F.cross_entropy.  ``bf16``: under
    ``torch.autocast("cpu", dtype=torch.bfloat16)``."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (cfg.bptt + 1, cfg.batch_size), generator=g)
    targets = x[1:].reshape(-1)
    total = rnn = head = 0.0
    for i in range(steps + 1):
        t0 = time.perf_counter()
        emb = model.embedding(x[:-1])
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y, _ = model.rnn(emb)
        t2 = time.perf_counter()
        out = y.detach().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            h = out.reshape(-1, out.size(-1))
            if fused:
                w, b = model.decoder.weight, model.decoder.bias
                loss = linear_cross_entropy(h, w, b, targets)
            else:
                loss = nn.functional.cross_entropy(model.decoder(h).float(), targets)
        opt.zero_grad()
        loss.backward()
        t3 = time.perf_counter()
        y.backward(out.grad.to(y.dtype))
        t4 = time.perf_counter()
        opt.step()
        t5 = time.perf_counter()
        if i:  # the first step warms up
            total += t5 - t0
            rnn += (t2 - t1) + (t4 - t3)
            head += t3 - t2
    return total / steps, rnn / steps, head / steps


#: the contenders: (label, recurrent layer from torch.nn, fused output layer, bf16 autocast)
CONTENDERS = (
    ("torch.nn (LSTM + Linear + cross_entropy), float32", True, False, False),
    ("carousel (fused kernels + fused output layer), float32", False, True, False),
    ("torch.nn under bf16 autocast", True, False, True),
    ("carousel, precision bf16", False, True, True),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--float32-only", action="store_true", help="skip the bf16 contenders")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    contenders = [c for c in CONTENDERS if not (args.float32_only and c[3])]
    for name, (vocab, fields) in MODELS.items():
        cfg = LMConfig(**fields)
        models = [build(vocab, cfg, torch_nn) for _, torch_nn, _, _ in contenders]
        times: list[list[tuple[float, float, float]]] = [[] for _ in contenders]
        dead: dict[int, str] = {}  # a contender that crashes on this CPU, and why
        for _ in range(args.repeats):
            for k, (model, (_, _, fused, bf16)) in enumerate(zip(models, contenders)):
                if k in dead:
                    continue
                try:
                    times[k].append(step_time(model, vocab, cfg, args.steps, fused, bf16))
                except RuntimeError as err:  # torch's oneDNN bf16 LSTM without AVX-512
                    dead[k] = str(err).strip().splitlines()[0][:120]
        tokens = cfg.batch_size * cfg.bptt
        anchor = statistics.median(t[0] for t in times[0])
        print(f"{name}:")
        for k, ((label, *_), ts) in enumerate(zip(contenders, times)):
            if k in dead:
                print(f"  {label}: unavailable on this CPU ({dead[k]})", flush=True)
                continue
            total = statistics.median(t[0] for t in ts)
            rnn = statistics.median(t[1] / t[0] for t in ts)
            head = statistics.median(t[2] / t[0] for t in ts)
            print(
                f"  {label}: {tokens / total:,.0f} tok/s, {1e3 * total:.1f} ms/step, "
                f"× {anchor / total:.2f} of torch.nn float32; recurrent {100 * rnn:.0f} %, "
                f"output layer + loss {100 * head:.0f} %, rest {100 * (1 - rnn - head):.0f} %",
                flush=True,
            )


if __name__ == "__main__":
    main()
