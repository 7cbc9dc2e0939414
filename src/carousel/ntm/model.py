"""The Neural Turing Machine (Graves, Wayne & Danihelka 2014), batched over B, and the LSTM
baseline it is compared with.

A controller (any registered carousel cell, stepped one time step at a time with its state
carried, or a feed-forward net) reads the input x_t and the previous read vectors, and emits,
for every head, the parameters of one addressing step; read heads then read the memory and
write heads erase and add.  Every head of every sequence is addressed at once: tensors are
(B, Hd, N) for weightings over the N memory locations of Hd = R + W heads, (B, N, M) for the
memory.  The equations, numbered as in §3 of the paper:

Reading (§3.1)::

    (1)  Σ_i w_t(i) = 1,  0 ≤ w_t(i) ≤ 1                   a weighting over the N locations
    (2)  r_t = Σ_i w_t(i) M_t(i)                           the read vector, length M

Writing (§3.2), with erase e_t ∈ (0, 1)^M and add a_t ∈ (−1, 1)^M::

    (3)  M̃_t(i) = M_{t−1}(i) [1 − w_t(i) e_t]              erase
    (4)  M_t(i) = M̃_t(i) + w_t(i) a_t                      add

With several write heads the erasures multiply and the additions sum (the paper: "the order
in which the adds are performed by multiple heads is irrelevant").

Addressing (§3.3), per head, from the key k_t (length M), key strength β_t, interpolation gate
g_t, shift weighting s_t over the shifts −S..S and sharpening γ_t::

    (5)  w^c_t(i) = exp(β_t K[k_t, M_t(i)]) / Σ_j exp(β_t K[k_t, M_t(j)])   content
    (6)  K[u, v] = u · v / (‖u‖_ε ‖v‖_ε),  ‖u‖_ε = √(u · u + ε)             cosine similarity
    (7)  w^g_t = g_t w^c_t + (1 − g_t) w_{t−1}                              interpolation
    (8)  w̃_t(i) = Σ_{j=0}^{N−1} w^g_t(j) s_t((i − j) mod N)                 circular shift
    (9)  w_t(i) = (w̃_t(i) + ε)^γ_t / Σ_j (w̃_t(j) + ε)^γ_t                  sharpening

The controller's raw outputs become the head parameters as the paper asks (β ≥ 0, g ∈ [0, 1],
s a distribution, γ ≥ 1), through functions that keep the gradient finite everywhere::

    β = softplus(β̂),  g = σ(ĝ),  s = softmax(ŝ),  γ = 1 + softplus(γ̂),
    k = tanh(k̂),  e = σ(ê),  a = tanh(â)

ε in (6) sits inside the square roots, so an all-zero memory gives K = 0 and a finite
gradient (√ at 0 would give 0/0); ε in (9) keeps 0^γ's derivative in γ (0 · log 0) finite.
The raw controller outputs are clipped to ±``clip`` (Collier & Beel 2018's remedy against
NaNs; 0 switches it off).

One step, in order: the controller reads [x_t, r_{t−1}]; every head addresses M_{t−1}
(5)–(9); reads r_t come from M_{t−1} (2); writes make M_t (3)–(4); the output is
y_t = W_o [h_t, r_t] + b_o (logits: a sigmoid gives the bits' probabilities).  At t = 0 the
weightings are one-hot on location 0, the read vectors a learned (R, M) parameter (starting at
0) and the memory one of ``MEMORY_INITS``: ``constant`` (every cell 10⁻⁶, Collier & Beel's
fastest), ``learned`` (a parameter) or ``random`` (tanh of N(0, 0.5²) values, drawn once when
the model is built and kept fixed).

Shapes follow the legend in :mod:`carousel` (T, B, I, H); N, M are the memory's locations and
width, R and W the read and write heads, Hd = R + W, S the shift range.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carousel.cells import CELLS
from carousel.layers import make_layer

MEMORY_INITS = ("constant", "learned", "random")
FEEDFORWARD = "feedforward"
EPS = 1e-8
CONSTANT_INIT = 1e-6


# ------------------------------------------------------------------ the equations, batched
def cosine_similarity(k: Tensor, memory: Tensor, eps: float = EPS) -> Tensor:
    """(6): K[k, M(i)] for every head and location: k (B, Hd, M), memory (B, N, M) →
    (B, Hd, N)."""
    dot = torch.matmul(k, memory.transpose(1, 2))  # (B, Hd, N)
    k_norm = torch.sqrt((k * k).sum(-1, keepdim=True) + eps)  # (B, Hd, 1)
    m_norm = torch.sqrt((memory * memory).sum(-1) + eps).unsqueeze(1)  # (B, 1, N)
    return dot / (k_norm * m_norm)


def content_weighting(k: Tensor, beta: Tensor, memory: Tensor, eps: float = EPS) -> Tensor:
    """(5): softmax over locations of β K; k (B, Hd, M), β (B, Hd, 1) → w^c (B, Hd, N)."""
    return torch.softmax(beta * cosine_similarity(k, memory, eps), dim=-1)


def interpolate(w_c: Tensor, w_prev: Tensor, g: Tensor) -> Tensor:
    """(7): w^g = g w^c + (1 − g) w_{t−1}; g (B, Hd, 1)."""
    return g * w_c + (1 - g) * w_prev


def circular_shift(w_g: Tensor, s: Tensor) -> Tensor:
    """(8): w̃(i) = Σ_j w^g(j) s(i − j mod N), s (B, Hd, 2S + 1) over the shifts −S..S.

    Written as a sum over the shifts, w̃(i) = Σ_δ s(δ) w^g((i − δ) mod N): shift δ moves
    weight from location j to j + δ (mod N), so location N − 1 shifted by +1 lands on 0.
    2S + 1 ≤ N keeps every shift distinct.
    """
    N, S = w_g.size(-1), (s.size(-1) - 1) // 2
    # source[i, d] = (i − δ_d) mod N for the shifts δ_d = −S..S: one gather for all shifts
    source = (
        torch.arange(N, device=w_g.device).unsqueeze(1) - torch.arange(-S, S + 1, device=w_g.device)
    ) % N  # (N, 2S+1)
    shifted = w_g[..., source]  # (B, Hd, N, 2S+1): shifted[..., i, d] = w_g[(i − δ_d) mod N]
    return torch.matmul(shifted, s.unsqueeze(-1)).squeeze(-1)


def sharpen(w_tilde: Tensor, gamma: Tensor, eps: float = EPS) -> Tensor:
    """(9): w = (w̃ + ε)^γ / Σ_j (w̃(j) + ε)^γ; γ (B, Hd, 1) ≥ 1."""
    powered = (w_tilde + eps) ** gamma
    return powered / powered.sum(-1, keepdim=True)


def address(
    k: Tensor,
    beta: Tensor,
    g: Tensor,
    s: Tensor,
    gamma: Tensor,
    w_prev: Tensor,
    memory: Tensor,
    eps: float = EPS,
) -> Tensor:
    """(5)–(9) for every head at once: the new weightings (B, Hd, N)."""
    w_c = content_weighting(k, beta, memory, eps)
    return sharpen(circular_shift(interpolate(w_c, w_prev, g), s), gamma, eps)


def read(w: Tensor, memory: Tensor) -> Tensor:
    """(2): r = Σ_i w(i) M(i); w (B, R, N), memory (B, N, M) → (B, R, M)."""
    return torch.matmul(w, memory)


def write(memory: Tensor, w: Tensor, e: Tensor, a: Tensor) -> Tensor:
    """(3)–(4) for W write heads: w (B, W, N), e and a (B, W, M) → M_t (B, N, M)."""
    keep = (1 - w.unsqueeze(-1) * e.unsqueeze(-2)).prod(dim=1)  # (B, N, M): Π_h (1 − w_h e_hᵀ)
    return memory * keep + torch.matmul(w.transpose(1, 2), a)  # Σ_h w_h a_hᵀ


# ------------------------------------------------------------------ the module
class NTMState(NamedTuple):
    """What one step hands the next: memory (B, N, M), reads (B, R, M), weightings
    (B, Hd, N) of the R read heads then the W write heads, and the controller's state
    (``None`` for a feed-forward controller, else the layer's ``h`` or ``(h, c)``)."""

    memory: Tensor
    reads: Tensor
    weights: Tensor
    controller: Tensor | tuple[Tensor, ...] | None


class NTM(nn.Module):
    """A Neural Turing Machine: controller, N × M memory, R read and W write heads.

    Args:
        input_size: I, features of x_t.
        output_size: outputs of y_t (logits).
        controller: a name of :data:`carousel.CELLS` (``"lstm"``, the default, ``"gru"``,
            ``"lstm1997"``, …) or ``"feedforward"`` (``tanh`` layers that see only x_t and
            r_{t−1}).
        controller_size, controller_layers: H and L of the controller.
        memory_size, memory_width: N locations of M numbers (the paper's 128 × 20).
        read_heads, write_heads: R and W.
        shift_range: S, shifts −S..S (the paper's copy task: 1).
        memory_init: one of :data:`MEMORY_INITS`.
        clip: clip the controller's raw head outputs to ±clip (0: no clipping).
        eps: ε of (6) and (9).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        controller: str = "lstm",
        controller_size: int = 100,
        controller_layers: int = 1,
        memory_size: int = 128,
        memory_width: int = 20,
        read_heads: int = 1,
        write_heads: int = 1,
        shift_range: int = 1,
        memory_init: str = "constant",
        clip: float = 20.0,
        eps: float = EPS,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("input_size", input_size, 1),
            ("output_size", output_size, 1),
            ("controller_size", controller_size, 1),
            ("controller_layers", controller_layers, 1),
            ("memory_size", memory_size, 1),
            ("memory_width", memory_width, 1),
            ("read_heads", read_heads, 1),
            ("write_heads", write_heads, 0),
            ("shift_range", shift_range, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer ≥ {low}; got {value!r}")
        if 2 * shift_range + 1 > memory_size:
            raise ValueError(
                f"shift_range S needs 2S + 1 ≤ memory_size so every shift is distinct; got "
                f"S = {shift_range}, memory_size = {memory_size}"
            )
        if memory_init not in MEMORY_INITS:
            raise ValueError(
                f"memory_init must be one of {', '.join(MEMORY_INITS)}; got {memory_init!r}"
            )
        if controller != FEEDFORWARD and controller not in CELLS:
            raise ValueError(
                f"controller must be {FEEDFORWARD} or a cell of carousel.CELLS "
                f"({', '.join(CELLS)}); got {controller!r}"
            )
        if not clip >= 0:
            raise ValueError(f"clip must be ≥ 0 (0: no clipping); got {clip!r}")
        self.input_size, self.output_size = input_size, output_size
        self.N, self.M = memory_size, memory_width
        self.R, self.W, self.S = read_heads, write_heads, shift_range
        self.controller_name = controller
        self.controller_size = controller_size
        self.memory_init = memory_init
        self.clip, self.eps = float(clip), float(eps)

        ctrl_in = input_size + read_heads * memory_width
        if controller == FEEDFORWARD:
            sizes = [ctrl_in] + [controller_size] * controller_layers
            self.controller = nn.Sequential(
                *(m for a, b in itertools.pairwise(sizes) for m in (nn.Linear(a, b), nn.Tanh()))
            )
        else:
            # one step at a time: the reference path (the fused kernels pay off over many steps)
            self.controller = make_layer(
                controller,
                ctrl_in,
                controller_size,
                num_layers=controller_layers,
                backend="reference",
            )
        # per head: k (M), β̂, ĝ, ŝ (2S + 1), γ̂; then per write head: ê (M), â (M)
        self.head_size = memory_width + 3 + 2 * shift_range + 1
        n_params = (read_heads + write_heads) * self.head_size + write_heads * 2 * memory_width
        self.heads = nn.Linear(controller_size, n_params)
        self.output = nn.Linear(controller_size + read_heads * memory_width, output_size)
        self.read0 = nn.Parameter(torch.zeros(read_heads, memory_width))  # r_0
        w0 = torch.zeros(read_heads + write_heads, memory_size)
        w0[:, 0] = 1.0
        self.register_buffer("weights0", w0)  # w_0: one-hot on location 0
        if memory_init == "constant":
            self.register_buffer("memory0", torch.full((memory_size, memory_width), CONSTANT_INIT))
        else:
            m0 = torch.tanh(0.5 * torch.randn(memory_size, memory_width))  # torch's global RNG
            if memory_init == "learned":
                self.memory0 = nn.Parameter(m0)
            else:
                self.register_buffer("memory0", m0)

    # ---------------------------------------------------------------- state and step
    def initial_state(self, batch_size: int) -> NTMState:
        """The state before the first step, for ``batch_size`` sequences."""
        B = batch_size
        return NTMState(
            memory=self.memory0.unsqueeze(0).expand(B, -1, -1),
            reads=self.read0.unsqueeze(0).expand(B, -1, -1),
            weights=self.weights0.unsqueeze(0).expand(B, -1, -1),
            controller=None,
        )

    def _controller_step(self, inp: Tensor, state):
        if self.controller_name == FEEDFORWARD:
            return self.controller(inp), None
        out, new = self.controller(inp.unsqueeze(0), state)  # one step, state carried
        return out[0], new

    def _head_parameters(self, h: Tensor):
        """The controller output h (B, H) → k, β, g, s, γ for every head, e, a per write head."""
        raw = self.heads(h)
        if self.clip:
            raw = raw.clamp(-self.clip, self.clip)
        B, Hd, M = h.size(0), self.R + self.W, self.M
        per_head = raw[:, : Hd * self.head_size].view(B, Hd, self.head_size)
        k = torch.tanh(per_head[..., :M])
        beta = F.softplus(per_head[..., M : M + 1])
        g = torch.sigmoid(per_head[..., M + 1 : M + 2])
        s = torch.softmax(per_head[..., M + 2 : M + 3 + 2 * self.S], dim=-1)
        gamma = 1 + F.softplus(per_head[..., -1:])
        ea = raw[:, Hd * self.head_size :].view(B, self.W, 2, M)
        e, a = torch.sigmoid(ea[:, :, 0]), torch.tanh(ea[:, :, 1])
        return k, beta, g, s, gamma, e, a

    def address(self, k, beta, g, s, gamma, w_prev, memory) -> Tensor:
        """(5)–(9) for every head of every sequence (a seam for ``bench/ntm.py``'s loop)."""
        return address(k, beta, g, s, gamma, w_prev, memory, self.eps)

    def step(self, x: Tensor, state: NTMState) -> tuple[Tensor, NTMState]:
        """One time step: x (B, I) → logits (B, output_size) and the next state."""
        B = x.size(0)
        h, ctrl = self._controller_step(
            torch.cat([x, state.reads.reshape(B, -1)], dim=1), state.controller
        )
        k, beta, g, s, gamma, e, a = self._head_parameters(h)
        w = self.address(k, beta, g, s, gamma, state.weights, state.memory)
        reads = read(w[:, : self.R], state.memory)  # (2) from M_{t−1}
        memory = write(state.memory, w[:, self.R :], e, a) if self.W else state.memory
        logits = self.output(torch.cat([h, reads.reshape(B, -1)], dim=1))
        return logits, NTMState(memory, reads, w, ctrl)

    def forward(
        self, x: Tensor, state: NTMState | None = None, *, trace: bool = False
    ) -> tuple[Tensor, NTMState] | tuple[Tensor, NTMState, Tensor]:
        """Run x (T, B, I) from ``state`` (default: the initial state).

        Returns logits (T, B, output_size) and the final state; with ``trace`` also the
        weightings of every step, (T, B, Hd, N) (read heads first), for plots.
        """
        if x.dim() != 3 or x.size(-1) != self.input_size:
            raise ValueError(
                f"expected input (T, B, I) with I = {self.input_size}; got shape {tuple(x.shape)}"
            )
        if state is None:
            state = self.initial_state(x.size(1))
        outputs, weights = [], []
        for x_t in x:
            y, state = self.step(x_t, state)
            outputs.append(y)
            if trace:
                weights.append(state.weights)
        out = torch.stack(outputs)
        if trace:
            return out, state, torch.stack(weights)
        return out, state


class LSTMBaseline(nn.Module):
    """The paper's baseline: a stack of recurrent layers (3 × 256 LSTM for copy) and a linear
    output, run over the whole sequence at once (the fused kernels on CPU)."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        cell: str = "lstm",
        hidden_size: int = 256,
        num_layers: int = 3,
    ) -> None:
        super().__init__()
        self.input_size, self.output_size = input_size, output_size
        self.rnn = make_layer(cell, input_size, hidden_size, num_layers=num_layers)
        self.output = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor, state=None, *, trace: bool = False):
        """x (T, B, I) → logits (T, B, output_size) and the final state."""
        if trace:
            raise ValueError("the LSTM baseline has no memory weightings to trace")
        out, state = self.rnn(x, state)
        return self.output(out), state
