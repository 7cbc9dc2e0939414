"""Language-model training throughput: the same model (embedding → 2-layer LSTM → softmax)
with carousel's layer (``backend="auto"``) and with torch.nn.LSTM, in the same process,
alternating runs; prints tokens/s of each and their ratio, and where carousel's time goes
(recurrent layers vs the rest: embedding, softmax, optimizer).

    .venv/bin/python bench/lm.py                # character and word models
    .venv/bin/python bench/lm.py --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

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


def step_time(model: RNNLM, vocab: int, cfg: LMConfig, steps: int) -> tuple[float, float]:
    """Seconds per training step (forward, backward, Adam), and seconds of it spent in the
    recurrent layers' forward and backward."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (cfg.bptt + 1, cfg.batch_size), generator=g)
    total = rnn = 0.0
    for i in range(steps + 1):
        t0 = time.perf_counter()
        emb = model.embedding(x[:-1])
        t1 = time.perf_counter()
        y, _ = model.rnn(emb)
        t2 = time.perf_counter()
        out = y.detach().requires_grad_()
        loss = nn.functional.cross_entropy(model.decoder(out).reshape(-1, vocab), x[1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        t3 = time.perf_counter()
        y.backward(out.grad)
        t4 = time.perf_counter()
        opt.step()
        t5 = time.perf_counter()
        if i:  # the first step warms up
            total += t5 - t0
            rnn += (t2 - t1) + (t4 - t3)
    return total / steps, rnn / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, (vocab, fields) in MODELS.items():
        cfg = LMConfig(**fields)
        times: dict[str, list[float]] = {"carousel": [], "torch.nn": []}
        rnn_share: list[float] = []
        models = {"carousel": build(vocab, cfg, False), "torch.nn": build(vocab, cfg, True)}
        for _ in range(args.repeats):
            for kind, model in models.items():  # alternate: carousel, torch.nn, carousel, ...
                t, r = step_time(model, vocab, cfg, args.steps)
                times[kind].append(t)
                if kind == "carousel":
                    rnn_share.append(r / t)
        tokens = cfg.batch_size * cfg.bptt
        ours, ref = statistics.median(times["carousel"]), statistics.median(times["torch.nn"])
        print(
            f"{name}: carousel {tokens / ours:,.0f} tok/s, torch.nn.LSTM {tokens / ref:,.0f} "
            f"tok/s, ratio carousel/torch.nn {ref / ours:.3f}; carousel time in recurrent "
            f"layers {100 * statistics.median(rnn_share):.0f} %",
            flush=True,
        )


if __name__ == "__main__":
    main()
