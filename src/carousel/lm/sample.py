"""Generate text from a language model, streamed token by token, and list the most likely
continuations of a prefix."""

from __future__ import annotations

from collections.abc import Callable

import torch

from carousel.data.corpora import Vocab
from carousel.kernels.native import frozen_weights
from carousel.lm.model import RNNLM


def _prime_ids(vocab: Vocab, prime: str) -> torch.Tensor:
    if vocab.level == "char":
        return vocab.encode(list(prime), "--prime")
    return vocab.encode(prime.split(), "--prime")


@torch.no_grad()
def _prime(model: RNNLM, vocab: Vocab, prime: str):
    """Run the model over ``prime``; the logits (V,) after it and the state."""
    if not prime:
        raise ValueError("--prime must hold at least one token")
    ids = _prime_ids(vocab, prime)
    device = next(model.parameters()).device
    logits, state = model(ids.view(-1, 1).to(device))  # (T, 1, V)
    return logits[-1, 0], state


@torch.no_grad()
def generate(
    model: RNNLM,
    vocab: Vocab,
    prime: str,
    length: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    emit: Callable[[str], None] | None = None,
) -> str:
    """Sample ``length`` tokens after ``prime`` at ``temperature``, from the ``top_k`` most
    likely tokens if given; ``emit`` receives each token's text as it is drawn."""
    if length < 0:
        raise ValueError(f"length must be 0 or more; got {length}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive; got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be positive; got {top_k}")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    model.eval()
    logits, state = _prime(model, vocab, prime)
    device = logits.device
    out = []
    with frozen_weights():  # the native kernel packs W_hh once, not once per token
        for _ in range(length):
            scores = logits.float().cpu() / temperature
            if top_k is not None and top_k < scores.numel():
                kth = torch.topk(scores, top_k).values[-1]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            nxt = int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=gen))
            text = vocab.decode([nxt])
            out.append(text)
            if emit is not None:
                emit(text)
            logits, state = model(torch.tensor([[nxt]], device=device), state)
            logits = logits[-1, 0]
    return "".join(out)


@torch.no_grad()
def top_continuations(model: RNNLM, vocab: Vocab, prefix: str, k: int) -> list[tuple[str, float]]:
    """The ``k`` most likely next tokens after ``prefix`` with their probabilities."""
    if k < 1:
        raise ValueError(f"--top must be positive; got {k}")
    model.eval()
    logits, _ = _prime(model, vocab, prefix)
    probs = torch.softmax(logits.float(), dim=-1)
    values, ids = torch.topk(probs, min(k, probs.numel()))
    return [(vocab.tokens[i], float(p)) for p, i in zip(values.tolist(), ids.tolist())]
