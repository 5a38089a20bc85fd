"""Fisher information, exact Hessian and the gradient-Newton angle of small MLPs at initialization.

Source: T. Vatanen, T. Raiko, H. Valpola and Y. LeCun (2013), "Pushing stochastic gradient towards
second-order methods - backpropagation learning with transformations in nonlinearities" (ICONIP 2013),
building on T. Raiko, H. Valpola and Y. LeCun (2012), "Deep learning made easier by linear
transformations in perceptrons" (AISTATS 2012).

The network
-----------
A `ShortcutMLP` is a stack of K blocks; block k maps z_{k-1} (z_0 = x) to

    z_k = A_k f_k(B_k z_{k-1} + b_k) + C_k z_{k-1} + d_k,

with the shortcut term C_k z_{k-1} optional, and the network output is y = z_K. A single block is the
paper's one-hidden-layer network y = A f(B x + b) + C x + d. Each hidden unit h of block k uses the
transformed activation

    f(u) = gamma_h (phi(u) + alpha_h u + beta_h),

where phi is a scalar function with known first and second derivatives (`Phi`; built-ins "tanh",
"relu", "identity", "sigmoid", "softplus") and alpha, beta, gamma are fixed per unit (they are not
trained: the transformations of Vatanen et al. set them from data, see ``meanfield.transformations``).
This module is independent of the ``hermite`` package.

Parameter vector
----------------
All trainable parameters form one float64 vector theta, block after block (input to output), and inside
each block in the order

    A (n_out x n_hidden), B (n_hidden x n_in), b (n_hidden), C (n_out x n_in, only with a shortcut),
    d (n_out),

each matrix flattened row-major (C order). With one block the groups are named "A", "B", "b", "C", "d";
with K > 1 blocks they carry the block number, "A1", "B1", ..., "dK". ``net.layout`` maps each name to
its slice of theta, ``net.unflatten()`` returns the named arrays and ``net.flatten(mapping)`` builds
theta back.

Second-order quantities
-----------------------
For a data set X (N x n_in) and targets Y (N x n_out), with the squared loss
L = 1/(2N) sum_n ||y(x_n) - y_n||^2:

- `jacobian`: J[n, o, p] = d y_o(x_n) / d theta_p, by backpropagation of every output (reverse mode,
  vectorized over samples and outputs);
- `gauss_newton`: G = J^T J / N = (1/N) sum_n J_n^T J_n, the Fisher information of the model
  y ~ N(y(x), I) and the Gauss-Newton matrix of L;
- `hessian`: the exact Hessian of L, H = G + (1/N) sum_{n,o} r_no d^2 y_o(x_n) / d theta^2 with
  r = y(X) - Y, computed by forward-over-reverse differentiation (Pearlmutter's R-operator, through the
  second derivative of phi) for all parameter directions at once; no finite differences;
- `spectrum`, `block_norms`, `gradient_newton_angle`: the diagnostics of Vatanen et al.

All are exact up to float64 round-off; the memory of `hessian` grows like P * chunk * width and that of
`jacobian` like N * n_out * P, so they are meant for small networks (P up to a few thousand).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "Phi",
    "PHIS",
    "get_phi",
    "ShortcutBlock",
    "ShortcutMLP",
    "shortcut_mlp",
    "forward",
    "loss",
    "gradient",
    "jacobian",
    "gauss_newton",
    "hessian",
    "Spectrum",
    "spectrum",
    "block_norms",
    "gradient_newton_angle",
]

ArrayFn = Callable[[np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------------------------------
# Scalar activations with derivatives
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Phi:
    """A scalar activation phi with numpy implementations of phi, phi' and phi''.

    For functions with kinks (relu), phi' and phi'' are the derivatives away from the kinks (phi'' = 0
    almost everywhere for relu); the Hessian is then the almost-everywhere Hessian.
    """

    name: str
    fn: ArrayFn
    d1: ArrayFn
    d2: ArrayFn


def _tanh_d1(x: np.ndarray) -> np.ndarray:
    t = np.tanh(x)
    return 1.0 - t * t


def _tanh_d2(x: np.ndarray) -> np.ndarray:
    t = np.tanh(x)
    return -2.0 * t * (1.0 - t * t)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _sigmoid_d1(x: np.ndarray) -> np.ndarray:
    s = _sigmoid(x)
    return s * (1.0 - s)


def _sigmoid_d2(x: np.ndarray) -> np.ndarray:
    s = _sigmoid(x)
    return s * (1.0 - s) * (1.0 - 2.0 * s)


PHIS: dict[str, Phi] = {
    "tanh": Phi("tanh", np.tanh, _tanh_d1, _tanh_d2),
    "relu": Phi("relu", lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(np.float64),
                lambda x: np.zeros_like(x)),
    "identity": Phi("identity", lambda x: np.array(x, dtype=np.float64, copy=True),
                    lambda x: np.ones_like(x), lambda x: np.zeros_like(x)),
    "sigmoid": Phi("sigmoid", _sigmoid, _sigmoid_d1, _sigmoid_d2),
    "softplus": Phi("softplus", lambda x: np.logaddexp(0.0, x), _sigmoid, _sigmoid_d1),
}


def get_phi(spec: str | Phi | tuple) -> Phi:
    """Resolve an activation: a built-in name, a `Phi`, or a tuple (fn, d1, d2) of numpy callables.

    Built-ins: "tanh", "relu" (phi'' = 0 a.e.), "identity", "sigmoid", "softplus".
    """
    if isinstance(spec, Phi):
        return spec
    if isinstance(spec, str):
        if spec not in PHIS:
            raise ValueError(f"phi={spec!r} is not a built-in activation; valid names: {sorted(PHIS)}, or "
                             "pass a Phi or a tuple (fn, d1, d2) of callables")
        return PHIS[spec]
    if isinstance(spec, tuple) and len(spec) == 3 and all(callable(c) for c in spec):
        return Phi(getattr(spec[0], "__name__", "custom"), *spec)
    raise ValueError(f"phi={spec!r} must be a built-in name {sorted(PHIS)}, a Phi, or a tuple (fn, d1, d2) "
                     "of three callables")


# ----------------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------------
def _array(x: ArrayLike, name: str, ndim: int | None = None) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real numeric array, got {type(x).__name__}") from exc
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (no NaN or inf), got {np.count_nonzero(~np.isfinite(a))} "
                         "non-finite entries")
    return a


def _positive_int(x: object, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1:
        raise ValueError(f"{name}={x!r} must be an integer >= 1")
    return int(x)


def _square_symmetric(M: ArrayLike, name: str, rtol: float = 1e-8) -> np.ndarray:
    Ma = _array(M, name, 2)
    if Ma.shape[0] != Ma.shape[1] or Ma.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square matrix, got shape {Ma.shape}")
    scale = np.max(np.abs(Ma))
    asym = np.max(np.abs(Ma - Ma.T))
    if asym > rtol * scale:
        raise ValueError(f"{name} must be symmetric: max |M - M^T| = {asym:.3g} exceeds {rtol:g} * max |M| "
                         f"= {rtol * scale:.3g}")
    return 0.5 * (Ma + Ma.T)


# ----------------------------------------------------------------------------------------------------
# Network description
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ShortcutBlock:
    """One block z_out = A f(B z_in + b) + C z_in + d, f(u) = gamma (phi(u) + alpha u + beta) per unit.

    alpha, beta and gamma are float64 arrays of shape (n_hidden,); C is present only when
    ``shortcut`` is True.
    """

    n_in: int
    n_hidden: int
    n_out: int
    phi: Phi
    shortcut: bool = True
    alpha: np.ndarray = field(default=None)  # type: ignore[assignment]
    beta: np.ndarray = field(default=None)  # type: ignore[assignment]
    gamma: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        for name in ("n_in", "n_hidden", "n_out"):
            object.__setattr__(self, name, _positive_int(getattr(self, name), name))
        object.__setattr__(self, "phi", get_phi(self.phi))
        object.__setattr__(self, "shortcut", bool(self.shortcut))
        for name, default in (("alpha", 0.0), ("beta", 0.0), ("gamma", 1.0)):
            value = getattr(self, name)
            a = _array(default if value is None else value, name)
            try:
                a = np.array(np.broadcast_to(a, (self.n_hidden,)), dtype=np.float64)
            except ValueError as exc:
                raise ValueError(f"{name} must be a scalar or have shape ({self.n_hidden},) (one value per "
                                 f"hidden unit), got shape {a.shape}") from exc
            a.setflags(write=False)
            object.__setattr__(self, name, a)

    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """The block's parameter groups in theta order, as (letter, shape)."""
        out = [("A", (self.n_out, self.n_hidden)), ("B", (self.n_hidden, self.n_in)),
               ("b", (self.n_hidden,))]
        if self.shortcut:
            out.append(("C", (self.n_out, self.n_in)))
        out.append(("d", (self.n_out,)))
        return out

    def f(self, u: np.ndarray) -> np.ndarray:
        """f(u) = gamma (phi(u) + alpha u + beta), unit by unit along the last axis."""
        return self.gamma * (self.phi.fn(u) + self.alpha * u + self.beta)

    def df(self, u: np.ndarray) -> np.ndarray:
        """f'(u) = gamma (phi'(u) + alpha)."""
        return self.gamma * (self.phi.d1(u) + self.alpha)

    def d2f(self, u: np.ndarray) -> np.ndarray:
        """f''(u) = gamma phi''(u)."""
        return self.gamma * self.phi.d2(u)


class ShortcutMLP:
    """A stack of shortcut blocks with its flat parameter vector theta (see the module docstring).

    Parameters
    ----------
    blocks : sequence of ShortcutBlock
        Consecutive blocks; block k's n_in must equal block k-1's n_out.
    theta : array_like, shape (n_params,), optional
        The parameters in the documented order (zeros if omitted).
    """

    def __init__(self, blocks: Sequence[ShortcutBlock], theta: ArrayLike | None = None) -> None:
        blocks = tuple(blocks)
        if not blocks or not all(isinstance(b, ShortcutBlock) for b in blocks):
            raise ValueError(f"blocks must be a non-empty sequence of ShortcutBlock, got {blocks!r}")
        for k in range(1, len(blocks)):
            if blocks[k].n_in != blocks[k - 1].n_out:
                raise ValueError(f"block {k + 1} has n_in={blocks[k].n_in} but block {k} has "
                                 f"n_out={blocks[k - 1].n_out}; consecutive widths must match")
        self.blocks = blocks
        layout: dict[str, slice] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        start = 0
        for k, blk in enumerate(blocks):
            for letter, shape in blk.shapes():
                name = letter if len(blocks) == 1 else f"{letter}{k + 1}"
                size = int(np.prod(shape))
                layout[name] = slice(start, start + size)
                shapes[name] = shape
                start += size
        self.layout: dict[str, slice] = layout
        self.shapes: dict[str, tuple[int, ...]] = shapes
        self.n_params: int = start
        if theta is None:
            theta = np.zeros(start)
        t = _array(theta, "theta", 1)
        if t.shape[0] != start:
            raise ValueError(f"theta must have length n_params={start}, got {t.shape[0]}")
        t = t.copy()
        t.setflags(write=False)
        self.theta: np.ndarray = t

    @property
    def n_in(self) -> int:
        return self.blocks[0].n_in

    @property
    def n_out(self) -> int:
        return self.blocks[-1].n_out

    def _name(self, letter: str, k: int) -> str:
        return letter if len(self.blocks) == 1 else f"{letter}{k + 1}"

    def unflatten(self, theta: ArrayLike | None = None) -> dict[str, np.ndarray]:
        """The named parameter arrays (read-only views of theta, default ``self.theta``)."""
        t = self.theta if theta is None else _array(theta, "theta", 1)
        if t.shape[0] != self.n_params:
            raise ValueError(f"theta must have length n_params={self.n_params}, got {t.shape[0]}")
        return {name: t[s].reshape(self.shapes[name]) for name, s in self.layout.items()}

    def flatten(self, params: Mapping[str, ArrayLike]) -> np.ndarray:
        """theta from named arrays; every group in ``layout`` must be given with its shape."""
        missing = set(self.layout) - set(params)
        extra = set(params) - set(self.layout)
        if missing or extra:
            raise ValueError(f"params must have exactly the keys {list(self.layout)}; missing "
                             f"{sorted(missing)}, unexpected {sorted(extra)}")
        theta = np.empty(self.n_params)
        for name, s in self.layout.items():
            a = _array(params[name], name)
            if a.shape != self.shapes[name]:
                raise ValueError(f"params[{name!r}] must have shape {self.shapes[name]}, got {a.shape}")
            theta[s] = a.ravel()
        return theta

    def with_theta(self, theta: ArrayLike) -> ShortcutMLP:
        """The same architecture with new parameters."""
        return ShortcutMLP(self.blocks, theta)

    def with_transform(self, block: int = 0, alpha: ArrayLike | None = None, beta: ArrayLike | None = None,
                       gamma: ArrayLike | None = None) -> ShortcutMLP:
        """The same network with block ``block``'s (0-based) alpha, beta, gamma replaced (None keeps)."""
        if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or \
                not 0 <= block < len(self.blocks):
            raise ValueError(f"block={block!r} must be an integer in [0, {len(self.blocks) - 1}]")
        old = self.blocks[block]
        new = ShortcutBlock(old.n_in, old.n_hidden, old.n_out, old.phi, old.shortcut,
                    old.alpha if alpha is None else alpha, old.beta if beta is None else beta,
                    old.gamma if gamma is None else gamma)
        blocks = list(self.blocks)
        blocks[block] = new
        return ShortcutMLP(blocks, self.theta)

    def __repr__(self) -> str:
        desc = ", ".join(f"{b.n_in}-{b.n_hidden}({b.phi.name})-{b.n_out}{'+C' if b.shortcut else ''}"
                         for b in self.blocks)
        return f"ShortcutMLP([{desc}], n_params={self.n_params})"


def shortcut_mlp(widths: Sequence[int], phi: str | Phi | tuple | Sequence = "tanh", shortcut: bool = True,
                 seed: int | np.random.Generator | None = 0, sigma_w: float = 1.0,
                 sigma_b: float = 0.0) -> ShortcutMLP:
    """Build a `ShortcutMLP` with Gaussian random parameters.

    Parameters
    ----------
    widths : sequence of int
        (n_0, H_1, n_1, H_2, n_2, ..., H_K, n_K): input width n_0, then for every block its hidden width
        H_k and output width n_k (odd length >= 3). ``(3, 4, 2)`` is y = A f(B x + b) + C x + d with 3
        inputs, 4 hidden units and 2 outputs.
    phi : name, Phi, (fn, d1, d2), or a list of these (one per block)
        The activation core of every block.
    shortcut : bool or sequence of bool
        Whether each block has the shortcut C.
    seed : int, Generator or None
        Random seed for the initial parameters.
    sigma_w, sigma_b : float
        Every weight matrix (A, B, C) has i.i.d. N(0, sigma_w^2 / fan_in) entries, every bias (b, d)
        i.i.d. N(0, sigma_b^2) entries; alpha = beta = 0 and gamma = 1 (no transformation).

    Returns
    -------
    ShortcutMLP
    """
    widths = list(widths)
    if len(widths) < 3 or len(widths) % 2 == 0:
        raise ValueError(f"widths={widths!r} must be (n_0, H_1, n_1, ..., H_K, n_K): odd length >= 3")
    for i, w in enumerate(widths):
        _positive_int(w, f"widths[{i}]")
    K = (len(widths) - 1) // 2
    phis = list(phi) if isinstance(phi, list) else [phi] * K
    shortcuts = list(shortcut) if isinstance(shortcut, (list, tuple)) else [shortcut] * K
    if len(phis) != K or len(shortcuts) != K:
        raise ValueError(f"phi and shortcut lists must have one entry per block ({K}), got {len(phis)} and "
                         f"{len(shortcuts)}")
    if not (np.isfinite(sigma_w) and sigma_w >= 0):
        raise ValueError(f"sigma_w={sigma_w!r} must be a finite number >= 0")
    if not (np.isfinite(sigma_b) and sigma_b >= 0):
        raise ValueError(f"sigma_b={sigma_b!r} must be a finite number >= 0")
    blocks = [ShortcutBlock(widths[2 * k], widths[2 * k + 1], widths[2 * k + 2], phis[k], shortcuts[k])
              for k in range(K)]
    net = ShortcutMLP(blocks)
    from meanfield.core.validate import check_seed

    rng = np.random.default_rng(check_seed("shortcut_mlp", seed, generator=True))
    params = {}
    for name, shape in net.shapes.items():
        if len(shape) == 2:
            params[name] = rng.standard_normal(shape) * (sigma_w / np.sqrt(shape[1]))
        else:
            params[name] = rng.standard_normal(shape) * sigma_b
    return net.with_theta(net.flatten(params))


# ----------------------------------------------------------------------------------------------------
# Forward, loss, gradient
# ----------------------------------------------------------------------------------------------------
@dataclass
class _Cache:
    z_in: np.ndarray
    u: np.ndarray
    a: np.ndarray
    fp: np.ndarray
    fpp: np.ndarray | None


def _check_net(net: ShortcutMLP) -> None:
    if not isinstance(net, ShortcutMLP):
        raise ValueError(f"net must be a ShortcutMLP (see shortcut_mlp), got {type(net).__name__}")


def _check_X(net: ShortcutMLP, X: ArrayLike) -> np.ndarray:
    Xa = _array(X, "X", 2)
    if Xa.shape[0] == 0:
        raise ValueError(f"X is an empty batch (shape {Xa.shape}); it needs at least one sample")
    if Xa.shape[1] != net.n_in:
        raise ValueError(f"X has {Xa.shape[1]} features but the network has n_in={net.n_in}")
    return Xa


def _check_Y(net: ShortcutMLP, Y: ArrayLike, n: int) -> np.ndarray:
    Ya = _array(Y, "Y", None)
    if Ya.ndim == 1 and net.n_out == 1:
        Ya = Ya[:, None]
    if Ya.shape != (n, net.n_out):
        raise ValueError(f"Y must have shape (N, n_out) = {(n, net.n_out)}, got {Ya.shape}")
    return Ya


def _params(net: ShortcutMLP, k: int, P: Mapping[str, np.ndarray]) -> tuple:
    blk = net.blocks[k]
    C = P[net._name("C", k)] if blk.shortcut else None
    return P[net._name("A", k)], P[net._name("B", k)], P[net._name("b", k)], C, P[net._name("d", k)]


def _forward(net: ShortcutMLP, X: np.ndarray, second: bool = False) -> tuple[np.ndarray, list[_Cache]]:
    P = net.unflatten()
    z = X
    caches = []
    for k, blk in enumerate(net.blocks):
        A, B, b, C, d = _params(net, k, P)
        u = z @ B.T + b
        a = blk.f(u)
        out = a @ A.T + d
        if C is not None:
            out = out + z @ C.T
        caches.append(_Cache(z, u, a, blk.df(u), blk.d2f(u) if second else None))
        z = out
    return z, caches


def forward(net: ShortcutMLP, X: ArrayLike) -> np.ndarray:
    """The network output y(X), shape (N, n_out); block by block z_k = A f(B z + b) + C z + d."""
    _check_net(net)
    return _forward(net, _check_X(net, X))[0]


def loss(net: ShortcutMLP, X: ArrayLike, Y: ArrayLike) -> float:
    """The squared loss L = 1/(2N) sum_n ||y(x_n) - y_n||^2."""
    _check_net(net)
    Xa = _check_X(net, X)
    Ya = _check_Y(net, Y, Xa.shape[0])
    r = _forward(net, Xa)[0] - Ya
    return float(0.5 * np.sum(r * r) / Xa.shape[0])


def gradient(net: ShortcutMLP, X: ArrayLike, Y: ArrayLike) -> np.ndarray:
    """The gradient of L = 1/(2N) sum_n ||y(x_n) - y_n||^2 with respect to theta (backpropagation).

    With g_K = (y(X) - Y)/N and, going down block by block, delta = (g_out A) * f'(u):
    grad A = g_out^T a, grad B = delta^T z_in, grad b = sum_n delta, grad C = g_out^T z_in,
    grad d = sum_n g_out, and g_in = delta B + g_out C.
    """
    _check_net(net)
    Xa = _check_X(net, X)
    Ya = _check_Y(net, Y, Xa.shape[0])
    y, caches = _forward(net, Xa)
    P = net.unflatten()
    g = (y - Ya) / Xa.shape[0]
    grad = np.empty(net.n_params)
    for k in range(len(net.blocks) - 1, -1, -1):
        c = caches[k]
        A, B, b, C, d = _params(net, k, P)
        delta = (g @ A) * c.fp
        grad[net.layout[net._name("A", k)]] = (g.T @ c.a).ravel()
        grad[net.layout[net._name("B", k)]] = (delta.T @ c.z_in).ravel()
        grad[net.layout[net._name("b", k)]] = delta.sum(axis=0)
        grad[net.layout[net._name("d", k)]] = g.sum(axis=0)
        g_in = delta @ B
        if C is not None:
            grad[net.layout[net._name("C", k)]] = (g.T @ c.z_in).ravel()
            g_in = g_in + g @ C
        g = g_in
    return grad


# ----------------------------------------------------------------------------------------------------
# Jacobian and Gauss-Newton
# ----------------------------------------------------------------------------------------------------
def _jacobian(net: ShortcutMLP, X: np.ndarray) -> np.ndarray:
    """J[n, o, p] by reverse mode with one adjoint per output (R[n, o, :] = d y_o / d z_k)."""
    y, caches = _forward(net, X)
    P = net.unflatten()
    N, O = y.shape
    J = np.empty((N, O, net.n_params))
    R = np.broadcast_to(np.eye(O), (N, O, O))
    for k in range(len(net.blocks) - 1, -1, -1):
        c = caches[k]
        A, B, b, C, d = _params(net, k, P)
        n_out, n_hid, n_in = A.shape[0], A.shape[1], B.shape[1]
        J[:, :, net.layout[net._name("A", k)]] = (R[:, :, :, None] * c.a[:, None, None, :]).reshape(
            N, O, n_out * n_hid)
        J[:, :, net.layout[net._name("d", k)]] = R
        delta = (R @ A) * c.fp[:, None, :]  # (N, O, H)
        J[:, :, net.layout[net._name("B", k)]] = (delta[:, :, :, None] * c.z_in[:, None, None, :]).reshape(
            N, O, n_hid * n_in)
        J[:, :, net.layout[net._name("b", k)]] = delta
        R_in = delta @ B
        if C is not None:
            J[:, :, net.layout[net._name("C", k)]] = (R[:, :, :, None] * c.z_in[:, None, None, :]).reshape(
                N, O, n_out * n_in)
            R_in = R_in + R @ C
        R = R_in
    return J


def jacobian(net: ShortcutMLP, X: ArrayLike) -> np.ndarray:
    """The Jacobian of the outputs with respect to the parameters, J[n, o, p] = d y_o(x_n)/d theta_p.

    Reverse mode with one adjoint per output, vectorized over samples: with R = d y / d z_out of shape
    (N, n_out_net, width) (the identity at the top) and delta = (R A) * f'(u),
    dy/dA_ij = R_i a_j, dy/dB_hj = delta_h z_j, dy/db_h = delta_h, dy/dC_ij = R_i z_j, dy/dd_i = R_i,
    then R <- delta B + R C for the block below.

    Returns
    -------
    ndarray, shape (N, n_out, n_params)
    """
    _check_net(net)
    return _jacobian(net, _check_X(net, X))


def _chunk_size(chunk: int | None, per_sample: int, n: int) -> int:
    if chunk is None:
        return max(1, min(n, 4_000_000 // max(per_sample, 1)))
    return _positive_int(chunk, "chunk")


def gauss_newton(net: ShortcutMLP, X: ArrayLike, chunk: int | None = None) -> np.ndarray:
    """The Fisher information / Gauss-Newton matrix G = J^T J / N of the squared loss.

    .. math:: G = \\frac{1}{N} \\sum_{n=1}^{N} J_n^T J_n, \\qquad
              (J_n)_{op} = \\partial y_o(x_n) / \\partial \\theta_p

    It is the Fisher information of the model y ~ N(y(x), I) on the inputs X and the Hessian of
    L = 1/(2N) sum ||y - y_n||^2 without the residual term (Vatanen et al. 2013, section 3). G does not
    depend on targets. Symmetric positive semi-definite.

    Parameters
    ----------
    net : ShortcutMLP
    X : array_like, shape (N, n_in)
    chunk : int, optional
        Samples per batch of the Jacobian (memory chunk * n_out * n_params); automatic by default.

    Returns
    -------
    ndarray, shape (n_params, n_params)
    """
    _check_net(net)
    Xa = _check_X(net, X)
    N = Xa.shape[0]
    step = _chunk_size(chunk, net.n_out * net.n_params, N)
    G = np.zeros((net.n_params, net.n_params))
    for s in range(0, N, step):
        J = _jacobian(net, Xa[s:s + step]).reshape(-1, net.n_params)
        G += J.T @ J
    G /= N
    return 0.5 * (G + G.T)


# ----------------------------------------------------------------------------------------------------
# Exact Hessian by forward-over-reverse (R-operator) for all directions at once
# ----------------------------------------------------------------------------------------------------
def _hessian_chunk(net: ShortcutMLP, X: np.ndarray, Y: np.ndarray, N_total: int,
                   basis: dict[str, np.ndarray]) -> np.ndarray:
    """Sum over the samples of X of their contributions to the Hessian of L (rows = directions)."""
    Pn = net.n_params
    y, caches = _forward(net, X, second=True)
    P = net.unflatten()
    K = len(net.blocks)
    # forward tangents: zd[p] = d z / d theta_p, shape (Pn, n, width); None stands for zero
    zd = None
    ud_list, ad_list, zd_in_list = [], [], []
    for k in range(K):
        c = caches[k]
        A, B, b, C, d = _params(net, k, P)
        dA, dB, db, dd = (basis[net._name(s, k)] for s in "ABbd")
        ud = c.z_in @ dB.transpose(0, 2, 1) + db[:, None, :]
        if zd is not None:
            ud = ud + zd @ B.T
        ad = c.fp * ud
        zd_out = c.a @ dA.transpose(0, 2, 1) + ad @ A.T + dd[:, None, :]
        if C is not None:
            dC = basis[net._name("C", k)]
            zd_out = zd_out + c.z_in @ dC.transpose(0, 2, 1)
            if zd is not None:
                zd_out = zd_out + zd @ C.T
        ud_list.append(ud)
        ad_list.append(ad)
        zd_in_list.append(zd)
        zd = zd_out
    # backward pass and its tangent: g = dL/dz, gd[p] = d g / d theta_p
    H = np.zeros((Pn, Pn))
    g = (y - Y) / N_total
    gd = zd / N_total
    for k in range(K - 1, -1, -1):
        c = caches[k]
        A, B, b, C, d = _params(net, k, P)
        dA, dB = basis[net._name("A", k)], basis[net._name("B", k)]
        ud, ad, zd_in = ud_list[k], ad_list[k], zd_in_list[k]
        # A and d
        H[:, net.layout[net._name("A", k)]] = (gd.transpose(0, 2, 1) @ c.a + g.T @ ad).reshape(Pn, -1)
        H[:, net.layout[net._name("d", k)]] = gd.sum(axis=1)
        # hidden adjoint delta = (g A) * f'(u) and its tangent
        ga = g @ A
        gad = gd @ A + g @ dA
        delta = ga * c.fp
        deltad = gad * c.fp + (ga * c.fpp) * ud
        gB = deltad.transpose(0, 2, 1) @ c.z_in
        if zd_in is not None:
            gB = gB + delta.T @ zd_in
        H[:, net.layout[net._name("B", k)]] = gB.reshape(Pn, -1)
        H[:, net.layout[net._name("b", k)]] = deltad.sum(axis=1)
        if C is not None:
            gC = gd.transpose(0, 2, 1) @ c.z_in
            if zd_in is not None:
                gC = gC + g.T @ zd_in
            H[:, net.layout[net._name("C", k)]] = gC.reshape(Pn, -1)
        if k == 0:
            break
        # adjoint of the block input and its tangent
        g_in = delta @ B
        gd_in = deltad @ B + delta @ dB
        if C is not None:
            g_in = g_in + g @ C
            gd_in = gd_in + gd @ C + g @ basis[net._name("C", k)]
        g, gd = g_in, gd_in
    return H


def hessian(net: ShortcutMLP, X: ArrayLike, Y: ArrayLike, chunk: int | None = None,
            symmetrize: bool = True) -> np.ndarray:
    """The exact Hessian of the squared loss L = 1/(2N) sum_n ||y(x_n) - y_n||^2.

    .. math:: H = \\frac{1}{N}\\sum_n \\Big( J_n^T J_n + \\sum_o r_{no}
              \\frac{\\partial^2 y_o(x_n)}{\\partial\\theta\\,\\partial\\theta^T} \\Big) = G + S,
              \\qquad r = y(X) - Y

    computed analytically by differentiating the backpropagation of L (forward-over-reverse, Pearlmutter
    1994) along every parameter direction at once; the second derivatives of the network enter through
    f''(u) = gamma phi''(u) and through the products of parameters (A with B, consecutive blocks). No
    finite differences. For relu (phi'' = 0 a.e.) this is the almost-everywhere Hessian.

    Parameters
    ----------
    net : ShortcutMLP
    X : array_like, shape (N, n_in)
    Y : array_like, shape (N, n_out)
    chunk : int, optional
        Samples per batch (memory ~ n_params * chunk * max width); automatic by default.
    symmetrize : bool
        Return (H + H^T)/2 (default). The raw result is symmetric up to round-off.

    Returns
    -------
    ndarray, shape (n_params, n_params)
    """
    _check_net(net)
    Xa = _check_X(net, X)
    N = Xa.shape[0]
    Ya = _check_Y(net, Y, N)
    Pn = net.n_params
    eye = np.eye(Pn)
    basis = {name: eye[:, s].reshape((Pn,) + net.shapes[name]) for name, s in net.layout.items()}
    width = max(max(b.n_in, b.n_hidden, b.n_out) for b in net.blocks)
    step = _chunk_size(chunk, Pn * width * 4, N)
    H = np.zeros((Pn, Pn))
    for s in range(0, N, step):
        H += _hessian_chunk(net, Xa[s:s + step], Ya[s:s + step], N, basis)
    return 0.5 * (H + H.T) if symmetrize else H


# ----------------------------------------------------------------------------------------------------
# Diagnostics
# ----------------------------------------------------------------------------------------------------
class Spectrum(NamedTuple):
    """Eigenvalues (ascending) of a symmetric matrix and its condition number."""

    eigenvalues: np.ndarray
    condition: float


def spectrum(M: ArrayLike) -> Spectrum:
    """Eigenvalues and condition number of a symmetric matrix (a Fisher or Hessian matrix).

    .. math:: \\kappa(M) = \\frac{\\max_i |\\lambda_i|}{\\min_i |\\lambda_i|}

    (the 2-norm condition number; +inf when an eigenvalue is exactly 0, and for a PSD matrix that is
    singular up to round-off it is of order 1/eps, reported as computed).

    Parameters
    ----------
    M : array_like, shape (P, P)
        Symmetric up to round-off (relative asymmetry <= 1e-8); it is symmetrized before use.

    Returns
    -------
    Spectrum
        ``eigenvalues`` ascending (float64 array), ``condition`` (float).
    """
    Ms = _square_symmetric(M, "M")
    lam = np.linalg.eigvalsh(Ms)
    absl = np.abs(lam)
    lo, hi = absl.min(), absl.max()
    if hi == 0.0:
        cond = float("inf")
    else:
        cond = float("inf") if lo == 0.0 else float(hi / lo)
    return Spectrum(lam, cond)


def block_norms(M: ArrayLike, layout: Mapping[str, slice | ArrayLike],
                normalize: bool = True) -> dict[tuple[str, str], float]:
    """Frobenius norms of the off-diagonal blocks of M between named parameter groups.

    For groups a != b (in the order of ``layout``), with M_ab the block of rows a and columns b,

    .. math:: n_{ab} = \\frac{\\lVert M_{ab} \\rVert_F}{\\sqrt{\\lVert M_{aa} \\rVert_F \\,
              \\lVert M_{bb} \\rVert_F}}

    (``normalize=False`` gives the plain ||M_ab||_F). For a PSD matrix M = R^T R, ||M_ab||_F^2 =
    <R_a R_a^T, R_b R_b^T>_F <= ||M_aa||_F ||M_bb||_F, so n_ab lies in [0, 1]: a scale-free measure of
    how strongly two groups are coupled (invariant to rescaling either group); Vatanen et al.
    (2013) use the size of these blocks to show that the transformations make the Fisher matrix closer
    to block diagonal. A zero denominator gives 0 when the block is zero and +inf otherwise.

    Parameters
    ----------
    M : array_like, shape (P, P)
    layout : mapping name -> slice or integer index array
        The parameter groups (e.g. ``net.layout``).
    normalize : bool

    Returns
    -------
    dict mapping (a, b) -> float, for every pair a before b in layout order.
    """
    Ma = _array(M, "M", 2)
    if Ma.shape[0] != Ma.shape[1]:
        raise ValueError(f"M must be square, got shape {Ma.shape}")
    P = Ma.shape[0]
    if not isinstance(layout, Mapping) or len(layout) < 2:
        raise ValueError(f"layout must be a mapping of at least 2 named groups, got {layout!r}")
    idx: dict[str, np.ndarray] = {}
    for name, sel in layout.items():
        ii = np.arange(P)[sel] if isinstance(sel, slice) else np.asarray(sel)
        if ii.size == 0 or ii.dtype.kind not in "iu" or ii.ndim != 1 or ii.min() < 0 or ii.max() >= P:
            raise ValueError(f"layout[{name!r}]={sel!r} must select a non-empty set of indices in [0, {P})")
        idx[name] = ii
    diag = {name: np.linalg.norm(Ma[np.ix_(ii, ii)]) for name, ii in idx.items()}
    names = list(idx)
    out: dict[tuple[str, str], float] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            num = float(np.linalg.norm(Ma[np.ix_(idx[a], idx[b])]))
            if not normalize:
                out[(a, b)] = num
                continue
            den = float(np.sqrt(diag[a] * diag[b]))
            out[(a, b)] = num / den if den > 0 else (0.0 if num == 0 else float("inf"))
    return out


def gradient_newton_angle(H: ArrayLike, grad: ArrayLike, mus: ArrayLike) -> np.ndarray:
    """Angle between the gradient g and the regularized Newton direction (H + mu I)^{-1} g, in degrees.

    .. math:: \\theta(\\mu) = \\arccos \\frac{g^T (H + \\mu I)^{-1} g}{\\lVert g \\rVert \\,
              \\lVert (H + \\mu I)^{-1} g \\rVert}

    (Vatanen et al. 2013, section 4: the closer to 0, the closer plain gradient descent is to a
    second-order step). With H = Q diag(lambda) Q^T, (H + mu I)^{-1} g = Q diag(1/(lambda + mu)) Q^T g,
    so the angle is 0 for H = c I and tends to 0 like ||H|| / mu as mu grows. For an indefinite H and
    small mu the angle can exceed 90 degrees.

    Parameters
    ----------
    H : array_like, shape (P, P)
        Symmetric (up to relative asymmetry 1e-8), e.g. a Hessian or Gauss-Newton matrix.
    grad : array_like, shape (P,)
        The gradient, not zero.
    mus : array_like
        Damping values mu >= 0; H + mu I must be nonsingular.

    Returns
    -------
    ndarray, shape of ``mus``
        Angles in degrees, in [0, 180].
    """
    Hs = _square_symmetric(H, "H")
    g = _array(grad, "grad", 1)
    if g.shape[0] != Hs.shape[0]:
        raise ValueError(f"grad has length {g.shape[0]} but H is {Hs.shape[0]} x {Hs.shape[0]}")
    gnorm = np.linalg.norm(g)
    if gnorm == 0:
        raise ValueError("grad is the zero vector: the angle to the Newton direction is undefined")
    mu = _array(mus, "mus")
    if np.any(mu < 0):
        raise ValueError(f"mus must be >= 0, got min {mu.min()!r}")
    lam, Q = np.linalg.eigh(Hs)
    c = Q.T @ (g / gnorm)  # unit gradient in the eigenbasis
    denom = lam[None, :] + mu.reshape(-1, 1)  # (M, P)
    scale = np.max(np.abs(lam)) + mu.reshape(-1, 1)
    singular = np.abs(denom) <= 1e-14 * np.maximum(scale, np.finfo(float).tiny)
    if np.any(singular & (c[None, :] != 0)):
        bad = mu.reshape(-1)[np.any(singular, axis=1)]
        raise ValueError(f"H + mu I is singular for mus {bad.tolist()}; choose mu with "
                         "-mu not an eigenvalue of H")
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(singular, 0.0, c[None, :] / np.where(singular, 1.0, denom))
    dot = w @ c
    norm = np.linalg.norm(w, axis=1)
    cos = np.clip(dot / norm, -1.0, 1.0)
    return np.degrees(np.arccos(cos)).reshape(mu.shape)
