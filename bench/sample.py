"""Step-by-step generation, as ``carousel sample`` does it: tokens per second of one token at
a time with carried state (B = 1), the same character model (embedding → LSTM → linear →
softmax → multinomial) with carousel's layer on the native kernel, on the numba kernels, and
with torch.nn.LSTM in its place, in the same process, alternating rounds; prints tokens/s and
the ratio to torch.nn.  The loop is the one of :func:`carousel.lm.sample.generate`.

    .venv/bin/python bench/sample.py
    .venv/bin/python bench/sample.py --hidden 256 512 --layers 1 2 --tokens 500 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from carousel.kernels import native
from carousel.lm.config import LMConfig
from carousel.lm.model import RNNLM
from cells import load, machine

VOCAB = 65


def build(cfg: LMConfig, contender: str) -> RNNLM:
    torch.manual_seed(0)
    model = RNNLM(VOCAB, cfg)
    if contender == "torch.nn.LSTM":
        ref = nn.LSTM(cfg.embed, cfg.hidden_size, cfg.num_layers)
        ref.load_state_dict(model.rnn.state_dict())
        model.rnn = ref
    else:
        model.rnn.backend = contender.split()[-1]
    return model.eval()


@torch.no_grad()
def tokens_per_second(model: RNNLM, tokens: int, seed: int) -> float:
    """``tokens`` steps of generate()'s loop (softmax, multinomial, one-token forward)."""
    gen = torch.Generator().manual_seed(seed)
    logits, state = model(torch.zeros(1, 1, dtype=torch.long))
    logits = logits[-1, 0]
    with native.frozen_weights():
        start = time.perf_counter()
        for _ in range(tokens):
            nxt = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen))
            logits, state = model(torch.tensor([[nxt]]), state)
            logits = logits[-1, 0]
        return tokens / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", nargs="+", type=int, default=[256, 512])
    ap.add_argument("--layers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5, help="alternating rounds")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    contenders = ["torch.nn.LSTM", "carousel native", "carousel fused"]
    if not native.available():
        contenders.remove("carousel native")
    print(f"machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"load average before: {load()}; median of {args.repeats} rounds of {args.tokens} tokens")
    print("| H | layers | " + " | ".join(f"{c} tok/s" for c in contenders) + " | "
          + " | ".join(f"{c}/torch" for c in contenders[1:]) + " |")  # fmt: skip
    print("|---|---|" + "---|" * (2 * len(contenders) - 1))
    for H in args.hidden:
        for L in args.layers:
            cfg = LMConfig(embed_size=64, hidden_size=H, num_layers=L)
            models = [build(cfg, c) for c in contenders]
            rates: list[list[float]] = [[] for _ in contenders]
            for m in models:
                tokens_per_second(m, 20, 0)
            for r in range(args.repeats):
                for m, rs in zip(models, rates):
                    rs.append(tokens_per_second(m, args.tokens, r))
            med = [statistics.median(rs) for rs in rates]
            cells = [f"{v:,.0f}" for v in med] + [f"{v / med[0]:.2f}" for v in med[1:]]
            print(f"| {H} | {L} | " + " | ".join(cells) + " |", flush=True)
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
