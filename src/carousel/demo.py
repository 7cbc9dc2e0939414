"""A small runnable example: a character-level LSTM learns a few of Shakespeare's sonnets
(public domain, embedded below) in well under a minute on 2 cores, then writes a sample.

The language-modelling job (``carousel train``) is the full version of this loop.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn

from carousel.layers import make_layer

SONNETS = """\
Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date:
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance, or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall Death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.

When in disgrace with fortune and men's eyes,
I all alone beweep my outcast state,
And trouble deaf heaven with my bootless cries,
And look upon myself and curse my fate,
Wishing me like to one more rich in hope,
Featured like him, like him with friends possess'd,
Desiring this man's art and that man's scope,
With what I most enjoy contented least;
Yet in these thoughts myself almost despising,
Haply I think on thee, and then my state,
Like to the lark at break of day arising
From sullen earth, sings hymns at heaven's gate;
For thy sweet love remember'd such wealth brings
That then I scorn to change my state with kings.
"""


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Settings of ``carousel demo`` (preset ``demo``; any field can be overridden)."""

    cell: str = "lstm"
    hidden_size: int = 128
    steps: int = 300
    lr: float = 0.01
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1; got {self.steps}")


class CharModel(nn.Module):
    """Embedding → recurrent layer → linear softmax over characters."""

    def __init__(self, vocab: int, cell: str, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.rnn = make_layer(cell, 32, hidden)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, ids, state=None):  # ids (T, B) -> logits (T, B, V)
        y, state = self.rnn(self.embed(ids), state)
        return self.out(y), state


def run_demo(cfg: DemoConfig) -> str:
    """Train on the sonnets for ``cfg.steps`` Adam steps, print progress and a sample."""
    torch.manual_seed(cfg.seed)
    steps = cfg.steps
    chars = sorted(set(SONNETS))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in SONNETS])
    model = CharModel(len(chars), cfg.cell, cfg.hidden_size)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    T, B = 64, 16
    start = time.perf_counter()
    for step in range(1, steps + 1):
        starts = torch.randint(0, len(data) - T - 1, (B,))
        batch = torch.stack([data[s : s + T + 1] for s in starts], dim=1)  # (T+1, B)
        logits, _ = model(batch[:-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, len(chars)), batch[1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if step % 50 == 0 or step == steps:
            bpc = loss.item() / torch.log(torch.tensor(2.0)).item()
            print(
                f"step {step:4d}  loss {loss.item():.3f} nats/char ({bpc:.2f} bits/char)  "
                f"{time.perf_counter() - start:.1f}s",
                flush=True,
            )
    text = sample(model, chars, prime="Shall I", length=300)
    print("\n--- sample (temperature 0.5) ---\n" + text)
    return text


@torch.no_grad()
def sample(
    model: CharModel, chars: list[str], prime: str, length: int, temperature: float = 0.5
) -> str:
    index = {c: i for i, c in enumerate(chars)}
    model.eval()
    logits, state = model(torch.tensor([[index[c]] for c in prime]))  # (T, 1, V)
    out = list(prime)
    for _ in range(length):
        probs = torch.softmax(logits[-1, 0] / temperature, dim=-1)
        nxt = int(torch.multinomial(probs, 1))
        out.append(chars[nxt])
        logits, state = model(torch.tensor([[nxt]]), state)
    return "".join(out)
