"""Training speed of the Neural Turing Machine: batched over B against per-sample loops.

Three contenders train on the same copy-task batches with the same controller, memory and
weights (the paper's copy NTM: LSTM controller of 100 units, 128 × 20 memory, one read and
one write head, shifts −1..1), timed in alternation in one process:

- ``batched``: carousel's NTM, every head of every sequence addressed at once;
- ``loop-shift``: the same step with pytorch-ntm's circular convolution, one ``conv1d`` per
  sequence (``for b in range(batch_size)``, its ``NTMMemory._shift``);
- ``per-sequence``: the batched model run on one sequence at a time (B = 1 calls), the
  cost of pytorch-ntm's default batch size of 1 per sequence.

One training step is forward, BCE loss and backward over a batch of B sequences of length
``--length`` (T = 2L + 1 steps).  Prints sequences per second and how many times faster
``batched`` is (``batched ×``).

    python bench/ntm.py --batch 1 8 32 --length 20 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

from carousel.data.memory_tasks import memory_batch
from carousel.ntm import NTM, bce_loss
from carousel.ntm.model import content_weighting, interpolate, sharpen


def _convolve(w, s):
    """pytorch-ntm's circular convolution of one sequence's weighting (3 shifts)."""
    t = torch.cat([w[-1:], w, w[:1]])
    return F.conv1d(t.view(1, 1, -1), s.view(1, 1, -1)).view(-1)


class LoopShiftNTM(NTM):
    """carousel's NTM with the shift of (8) done one sequence and one head at a time."""

    def address(self, k, beta, g, s, gamma, w_prev, memory):
        w_g = interpolate(content_weighting(k, beta, memory, self.eps), w_prev, g)
        rows = []
        for b in range(w_g.size(0)):
            # pytorch-ntm correlates with s as given: flip it to convolve with (8)'s s(i − j)
            rows.append(
                torch.stack([_convolve(w_g[b, h], s[b, h].flip(0)) for h in range(w_g.size(1))])
            )
        return sharpen(torch.stack(rows), gamma, self.eps)


def train_step(model, batch, per_sequence: bool) -> None:
    model.zero_grad(set_to_none=True)
    if per_sequence:
        for b in range(batch.x.size(1)):
            cols = slice(b, b + 1)
            y, _ = model(batch.x[:, cols])
            bce_loss(y, batch.target[:, cols], batch.mask[:, cols]).backward()
    else:
        y, _ = model(batch.x)
        bce_loss(y, batch.target, batch.mask).backward()


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln),
            platform.processor(),
        )
        flags = next((ln for ln in lscpu.splitlines() if ln.startswith("Flags")), "")
        vec = [f for f in ("avx2", "avx512f", "amx_bf16") if f" {f}" in flags]
    except OSError:
        model, vec = platform.processor() or platform.machine(), []
    return f"{model}, {os.cpu_count()} cores, {'/'.join(vec) or 'no avx2'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--length", type=int, default=20, help="copy length L (T = 2L + 1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batched = NTM(9, 8)
    loop = LoopShiftNTM(9, 8)
    loop.load_state_dict(batched.state_dict())
    print(f"machine: {machine()}; torch {torch.__version__}, {args.threads} thread(s)")
    print("load average before: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg()))
    check = memory_batch("copy", 3, seed=1, min_length=4, max_length=4).x
    torch.testing.assert_close(loop(check)[0], batched(check)[0])  # the same function
    header = f"{'B':>4} {'contender':>13} {'seq/s':>8} {'ms/batch':>9} {'batched ×':>10}"
    print(
        f"copy task, L = {args.length} (T = {2 * args.length + 1}), median of "
        f"{args.repeats} alternating rounds\n{header}"
    )
    for B in args.batch:
        batch = memory_batch("copy", B, seed=0, min_length=args.length, max_length=args.length)
        contenders = {
            "batched": lambda b=batch: train_step(batched, b, False),
            "loop-shift": lambda b=batch: train_step(loop, b, False),
            "per-sequence": lambda b=batch: train_step(batched, b, True),
        }
        if B == 1:
            contenders.pop("per-sequence")  # the same as batched
        for f in contenders.values():
            f()  # warm-up
        times = {name: [] for name in contenders}
        for _ in range(args.repeats):
            for name, f in contenders.items():
                start = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["batched"])
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"{B:>4} {name:>13} {B / med:8.1f} {med * 1e3:9.1f} {med / base:10.2f}")
    print("load average after: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
