"""Finite-width operations: what a layer becomes when the simulator compiles a network.

A layer's ``compile(w_in, compiler)`` returns an `Op` with static widths: its forward rule on a stack of
features (seeds, n, width), its vector-Jacobian product (the backward pass of `meanfield.simulate(...,
gradients=True)`), and its memory and cost model (elements per seed, flop-equivalents), from which the
driver chooses chunk sizes. The `Compiler` carries what compilation needs across layers (batch size, block
width, the weight mode, the activation a mean-field Center/Scale refers to); the `Run` carries what a forward
pass needs (backend, random streams, the Gram already computed for the current features, the activation
chain).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meanfield.core.backends import Backend
from meanfield.core.linalg import gram

__all__ = ["Op", "Run", "Compiler", "ChainState", "forward_seq", "backward_seq", "memory_per_seed", "RNG_COST",
           "EIGH_COST"]

# flop-equivalent cost of one Gaussian draw, and of the O(n^3) eigendecomposition per n^3, used to choose
# between the exact shortcut and explicit weights when both are allowed (explicit_weights=None)
RNG_COST = 60.0
EIGH_COST = 30.0


class Op:
    """A compiled layer: static widths plus forward and backward rules on (seeds, n, width) stacks.

    ``chain_role``: "act" starts an activation chain (an Activation whose empirical input variances a later
    mean-field Center/Scale reads), "keep" keeps it, None ends it.
    """

    chain_role: str | None = None
    w_in: int = 0
    w_out: int = 0

    def forward(self, h, rt: Run):
        """(output, cache): the cache is what `backward` needs (None when rt.grad is False)."""
        raise NotImplementedError

    def backward(self, g, cache, rt: Run):
        """The vector-Jacobian product: dL/d(input) from dL/d(output) ``g``."""
        raise NotImplementedError

    # memory model, in elements per seed
    def transient(self, n: int) -> int:
        return 2 * n * max(self.w_in, self.w_out)

    def cache_elems(self, n: int) -> int:
        return 0

    def flops(self, n: int) -> float:
        return 4.0 * n * max(self.w_in, self.w_out)


class ChainState:
    """What a mean-field Center/Scale needs from the preceding Activation at run time."""

    def __init__(self, act, q):
        self.act = act
        self.q = q  # (s, n) empirical mean-square pre-activation per sample
        self.c0 = None  # set by a mean-field Center


class Run:
    """The state of one forward (and backward) pass over a chunk of seeds."""

    def __init__(self, be: Backend, streams, n: int, grad: bool):
        self.be = be
        self.xp = be.xp
        self.streams = streams
        self.n = n
        self.grad = grad
        self.known: tuple | None = None  # (h, K_hat) when the Gram of h is already computed
        self.chain: ChainState | None = None

    def gram_of(self, h):
        """H H^T / width, computed once per feature stack."""
        if self.known is not None and self.known[0] is h:
            return self.known[1]
        k = gram(self.be, h)
        self.known = (h, k)
        return k


class Compiler:
    """Compilation context: turns layers into operations with static widths.

    ``explicit``: None (the exact shortcut where it is exact and cheaper), True (explicit weights everywhere)
    or False (the shortcut wherever it is exact). ``chain`` is the compile-time activation chain
    ({"act": op, "center": bool, "scaled": bool}) that mean-field Center/Scale layers refer to; a layer whose
    class has ``keeps_chain = False`` ends it.
    """

    def __init__(self, n: int, explicit: bool | None, grad: bool, host_staged: bool):
        self.n = n
        self.explicit = explicit
        self.grad = grad
        self.host_staged = host_staged
        self.modes: list = []  # "shortcut" / "explicit" per Dense-like layer, in order
        self.chain: dict | None = None
        self.block_width = 0
        self.where = ""

    def compile_seq(self, layers: Sequence[Any], w: int, where: str) -> tuple[list, int]:
        """Operations for ``layers`` acting on width ``w``; returns (ops, output width)."""
        ops: list = []
        for i, layer in enumerate(layers):
            self.where = f"{where}, layer {i} ({layer!r})"
            keeps = getattr(layer, "keeps_chain", False)
            if not keeps:
                self.chain = None
            op, w = layer.compile(w, self)
            if not keeps and op.chain_role != "act":
                self.chain = None
            ops.append(op)
        return ops, w

    def error(self, message: str) -> ValueError:
        """A ValueError located at the layer being compiled."""
        return ValueError(f"simulate: {self.where}: {message}")


def forward_seq(ops: list, h, rt: Run):
    """Run ``ops`` forward; returns (output, caches)."""
    caches = []
    for op in ops:
        if op.chain_role is None:
            rt.chain = None
        h, c = op.forward(h, rt)
        if op.chain_role is None:
            rt.chain = None
        if h is not (rt.known[0] if rt.known else None):
            rt.known = None
        caches.append(c)
    return h, caches


def backward_seq(ops: list, caches: list, g, rt: Run):
    """The vector-Jacobian products of ``ops`` in reverse order."""
    for op, c in zip(reversed(ops), reversed(caches)):
        g = op.backward(g, c, rt)
    return g


def memory_per_seed(blocks: list, n: int, d0: int, itemsize: int, grad: bool) -> int:
    """Estimated peak bytes per simulated network of the compiled ``blocks``."""
    ops = [op for b in blocks for op in b]
    wmax = max([d0] + [max(op.w_in, op.w_out) for op in ops])
    elems = 6 * n * wmax + 4 * n * n + max(op.transient(n) for op in ops)
    if grad:
        elems += sum(op.cache_elems(n) for op in ops) + 4 * n * wmax
    # a float32 run casts a block's features to float64 for its Gram (linalg.gram)
    cast = 8 * n * wmax if itemsize < 8 else 0
    return int(itemsize * elems + cast + 64 * n * n * len(blocks) + 4096)
