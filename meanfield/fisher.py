"""Fisher information, exact Hessian and the gradient-Newton angle of networks with fixed weights.

Source: T. Vatanen, T. Raiko, H. Valpola and Y. LeCun (2013), "Pushing stochastic gradient towards
second-order methods - backpropagation learning with transformations in nonlinearities" (ICONIP 2013,
arXiv:1301.3476), building on T. Raiko, H. Valpola and Y. LeCun (2012), "Deep learning made easier by linear
transformations in perceptrons" (AISTATS 2012); the authors' code is ``tvatanen/ltmlp-neuralnet``.

The network
-----------
Any `meanfield.Network` built from `Linear` layers (fixed weights W and biases b), `Activation` layers (plain or
with per-unit alpha, beta, gamma, e.g. the transformations of `meanfield.transformations`), `Concat` layers
(y = [x, branch(x)], the all-to-all shortcuts) and `Block`s. The paper's deep model (`meanfield.shortcuts.network`)
is one: nonlinear layers stacked directly inside Concat layers, so that layer l computes
X_l = b_l + sum_{s<l} W{l,s} Y_s and Y_l = f_l(X_l) (ltmlp_ff.m lines 14-20), and a final Linear output layer.

Parameters
----------
The parameters are the weights and biases of the Linear layers, one float64 vector theta with a named layout
(`parameters`). Layers are numbered as in the authors' code: 1 is the input, and every Linear layer starts a new
layer l = 2, 3, ... (its output X_l, and the activation of X_l, are layer l). The input of a Linear layer is a
concatenation of earlier layers' outputs (segments: the input, then one segment per Concat); its weight matrix
is split by columns into the groups ``"W{l},{s}"`` (the weights from layer s to layer l, the authors' W{l,s}),
followed by its bias ``"b{l}"``. Groups come in execution order, each matrix flattened row-major (C order). The
authors order theta the same way (params2vector: for l, for s < l) but column-major and without biases (their
Hessian and gradient-Newton angle cover the weights only: ``Parameters.indices("W")``).

Second-order quantities
-----------------------
For data X (N x n_in), targets Y (N x n_out) and the squared loss L = 1/(2N) sum_n ||y(x_n) - y_n||^2 (the
authors' regression loss, ltmlp_train.m lines 118-138: their gradient is sum_n (y_n - t_n) dy_n/dtheta / N):

- `jacobian`: J[n, o, p] = d y_o(x_n) / d theta_p (forward mode, all parameter directions at once);
- `gauss_newton`: G = J^T J / N, the Fisher information of the model y ~ N(y(x), I) and the Gauss-Newton
  matrix of L;
- `hessian`: the exact Hessian of L, H = G + (1/N) sum_{n,o} r_no d^2 y_o(x_n)/d theta^2, r = y(X) - Y, by
  forward-over-reverse differentiation (Pearlmutter's R-operator, through f'' of every activation) for all
  directions at once; the authors approximate it by central differences of the gradient with step 1e-3
  (ltmlp_hessian.m);
- `spectrum`, `block_norms`, `gradient_newton_angle`: the diagnostics of Vatanen et al. (the angle as in
  ltmlp_gradComparison.m, with `AUTHORS_MUS`).

All are exact up to float64 round-off; memory grows like P * chunk * (sum of widths), so they are meant for small
networks (P up to a few thousand).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from meanfield.core.validate import check_array, check_bool, check_int, check_real
from meanfield.layers import Activation, Block, Concat, Linear
from meanfield.network import Network

__all__ = ["Parameters", "parameters", "with_theta", "forward", "loss", "gradient", "jacobian", "gauss_newton",
           "hessian", "Spectrum", "spectrum", "block_norms", "gradient_newton_angle", "AUTHORS_MUS"]

#: the damping values of the authors' angle comparison, ``logspace(-4, -0.3, 20)`` (ltmlp_gradComparison.m line 13)
AUTHORS_MUS = np.logspace(-4, -0.3, 20)
_BUDGET = 8_000_000  # float64 elements of tangents per chunk of samples


# ----------------------------------------------------------------------------------------------------
# the parameters of a network and its compiled program
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Parameters:
    """The named layout of a network's parameters (see the module docstring).

    Attributes
    ----------
    layout : dict name -> slice
        Each group's slice of theta, in theta order ("W{l},{s}" weight blocks, "b{l}" biases).
    shapes : dict name -> shape
    sources : dict name -> (l, s)
        The layer l the group feeds and, for weights, the source layer s (None for a bias).
    theta : ndarray, shape (n_params,)
        The network's current parameters (read-only).
    """

    layout: dict
    shapes: dict
    sources: dict
    theta: np.ndarray

    @property
    def n_params(self) -> int:
        return int(self.theta.size)

    def unflatten(self, theta: ArrayLike | None = None) -> dict:
        """The named arrays (views of theta, default the network's own)."""
        t = self.theta if theta is None else self._theta(theta)
        return {name: t[s].reshape(self.shapes[name]) for name, s in self.layout.items()}

    def flatten(self, params: Mapping) -> np.ndarray:
        """theta from a mapping with every group of ``layout`` at its shape."""
        missing, extra = set(self.layout) - set(params), set(params) - set(self.layout)
        if missing or extra:
            raise ValueError(f"fisher.Parameters.flatten: params must have exactly the keys {list(self.layout)}; "
                             f"missing {sorted(missing)}, unexpected {sorted(extra)}")
        theta = np.empty(self.n_params)
        for name, s in self.layout.items():
            a = check_array("fisher.Parameters.flatten", f"params[{name!r}]", params[name])
            if a.shape != self.shapes[name]:
                raise ValueError(f"fisher.Parameters.flatten: params[{name!r}] must have shape {self.shapes[name]}, "
                                 f"got {a.shape}")
            theta[s] = a.ravel()
        return theta

    def indices(self, kind: str = "W") -> np.ndarray:
        """Indices into theta of the weight groups (kind="W", as in the authors' Hessian) or biases ("b")."""
        if kind not in ("W", "b"):
            raise ValueError(f"fisher.Parameters.indices: kind={kind!r} must be 'W' or 'b'")
        idx = [np.arange(self.n_params)[s] for name, s in self.layout.items() if name[0] == kind]
        return np.concatenate(idx) if idx else np.zeros(0, dtype=int)

    def _theta(self, theta) -> np.ndarray:
        t = check_array("fisher", "theta", theta, ndim=1)
        if t.size != self.n_params:
            raise ValueError(f"fisher: theta must have length n_params={self.n_params}, got {t.size}")
        return t


class _Lin:
    """A compiled Linear layer: its groups (name, theta slice, first column, last column) and bias slice."""

    def __init__(self, layer: Linear, groups: list, bias: slice):
        self.layer, self.groups, self.bias = layer, groups, bias
        self.W, self.b = layer.W, layer.b


class _Act:
    def __init__(self, layer: Activation):
        self.layer, self.act = layer, layer.act


class _Cat:
    def __init__(self, layer: Concat, nodes: list, w_in: int):
        self.layer, self.nodes, self.w_in = layer, nodes, w_in


def _compile(owner: str, net) -> tuple[list, Parameters, int, int]:
    """The program (nested nodes), the parameters, the input and the output width of ``net``."""
    if isinstance(net, (list, tuple, Linear, Activation, Concat, Block)):
        net = Network(net)
    if not isinstance(net, Network):
        raise ValueError(f"{owner}: net must be a meanfield.Network of Linear, Activation, Concat and Block layers, "
                         f"got {type(net).__name__}")
    first = _first_linear(net.layers)
    if first is None:
        raise ValueError(f"{owner}: net has no Linear layer, so no parameters (fixed weights W, b) to differentiate")
    d0 = first.W.shape[1]
    layout, shapes, sources, values = {}, {}, {}, []
    state = {"l": 1, "p": 0}
    seen: set = set()

    def add(name, arr, src):
        layout[name] = slice(state["p"], state["p"] + arr.size)
        shapes[name] = arr.shape
        sources[name] = src
        values.append(arr.ravel())
        state["p"] += arr.size
        return layout[name]

    def walk(layers, segs):
        nodes = []
        for layer in layers:
            width = sum(w for _, w in segs)
            if isinstance(layer, Block):
                sub, segs = walk(layer.layers, segs)
                nodes.extend(sub)
            elif isinstance(layer, Linear):
                if id(layer) in seen:
                    raise ValueError(f"{owner}: {layer!r} appears twice in the network; shared weights are not "
                                     "supported (give each place its own Linear layer)")
                seen.add(id(layer))
                if layer.W.shape[1] != width:
                    raise ValueError(f"{owner}: {layer!r} expects {layer.W.shape[1]} input features but receives "
                                     f"{width}")
                state["l"] += 1
                l, c0, groups = state["l"], 0, []
                for s, w in segs:
                    groups.append((add(f"W{l},{s}", layer.W[:, c0:c0 + w], (l, s)), c0, c0 + w))
                    c0 += w
                nodes.append(_Lin(layer, groups, add(f"b{l}", layer.b, (l, None))))
                segs = [(l, layer.W.shape[0])]
            elif isinstance(layer, Activation):
                if not layer.act.has_derivative:
                    raise ValueError(f"{owner}: activation {layer.act.name!r} has no derivative")
                if layer.act.per_unit and layer.act.units != width:
                    raise ValueError(f"{owner}: activation {layer.act.name!r} has per-unit parameters for "
                                     f"{layer.act.units} units but receives {width} features")
                nodes.append(_Act(layer))
            elif isinstance(layer, Concat):
                sub, bsegs = walk(layer.branch, segs)
                nodes.append(_Cat(layer, sub, width))
                segs = segs + bsegs
            else:
                raise ValueError(f"{owner}: layer {layer!r} is not supported; the parameters of a network are those of "
                                 "its Linear layers, combined by Activation, Concat and Block")
        return nodes, segs

    nodes, segs = walk(net.layers, [(1, d0)])
    theta = np.concatenate(values)
    theta.setflags(write=False)
    return nodes, Parameters(layout, shapes, sources, theta), d0, sum(w for _, w in segs)


def _first_linear(layers):
    for layer in layers:
        if isinstance(layer, Linear):
            return layer
        if isinstance(layer, Concat | Block):
            hit = _first_linear(layer.sublayers())
            if hit is not None:
                return hit
    return None


def parameters(net) -> Parameters:
    """The named parameter layout of ``net`` and its current theta (see the module docstring).

    Examples
    --------
    >>> import numpy as np, meanfield
    >>> from meanfield import fisher
    >>> net = meanfield.Network([meanfield.Concat([meanfield.Linear(np.ones((2, 3))), meanfield.Activation("tanh")]),
    ...                          meanfield.Linear(np.ones((1, 5)))])
    >>> list(fisher.parameters(net).layout)
    ['W2,1', 'b2', 'W3,1', 'W3,2', 'b3']
    """
    return _compile("fisher.parameters", net)[1]


def with_theta(net, theta: ArrayLike) -> Network:
    """The same network with the parameters theta (in the layout of `parameters`)."""
    nodes, P, _, _ = _compile("fisher.with_theta", net)
    t = P._theta(theta)
    new = {}

    def collect(nodes):
        for node in nodes:
            if isinstance(node, _Lin):
                W = np.empty_like(node.W)
                for s, c0, c1 in node.groups:
                    W[:, c0:c1] = t[s].reshape(W.shape[0], c1 - c0)
                new[id(node.layer)] = Linear(W, t[node.bias])
            elif isinstance(node, _Cat):
                collect(node.nodes)

    collect(nodes)

    def rebuild(layer):
        if isinstance(layer, Linear):
            return new[id(layer)]
        if isinstance(layer, Block):
            return replace(layer, layers=tuple(rebuild(x) for x in layer.layers))
        if isinstance(layer, Concat):
            return replace(layer, branch=tuple(rebuild(x) for x in layer.branch))
        return layer

    net = net if isinstance(net, Network) else Network(net)
    return Network([rebuild(b) for b in net.blocks], meta=net.meta)


# ----------------------------------------------------------------------------------------------------
# the program: forward (with tangents along every parameter direction) and reverse (with their tangents)
# ----------------------------------------------------------------------------------------------------
def _run_forward(nodes, x, P: int, tangents: bool, second: bool, tape: list | None, dep: bool = False,
                 xd=None):
    """Outputs (and, with ``tangents``, their derivatives along every parameter, shape (P, N, w)); each node
    appends (x, xd, extra, dep) to ``tape`` (None: no tape, and no derivatives without tangents), dep telling
    whether its input depends on a parameter; a tangent is None where no parameter acts yet. Returns (output,
    its tangent, dep)."""
    for node in nodes:
        dep_in = dep
        if isinstance(node, _Lin):
            z = x @ node.W.T + node.b
            zd = None
            if tangents:
                out, N = node.W.shape[0], x.shape[0]
                zd = np.zeros((P, N, out)) if xd is None else xd @ node.W.T
                r = np.arange(out)
                for s, c0, c1 in node.groups:  # d z_i / d W_ij = x_j
                    zd[s].reshape(out, c1 - c0, N, out)[r, :, :, r] += x[:, c0:c1].T
                zd[node.bias][r, :, r] += 1.0
            if tape is not None:
                tape.append((x, xd, None, dep_in))
            dep = True
        elif isinstance(node, _Act):
            act = node.act
            z = act.fn(x)
            if tape is None and not tangents:  # forward only: no derivatives
                x = z
                continue
            fp = act.derivative(x)
            fpp = act.second_derivative(x) if second else None
            zd = None if xd is None else fp * xd
            if tape is not None:
                tape.append((x, xd, (fp, fpp), dep_in))
        else:  # _Cat
            sub = None if tape is None else []
            zb, zbd, dep = _run_forward(node.nodes, x, P, tangents, second, sub, dep_in, xd)
            z = np.concatenate([x, zb], axis=1)
            zd = None
            if zbd is not None or xd is not None:
                zx = np.zeros((P, x.shape[0], x.shape[1])) if xd is None else xd
                zd = np.concatenate([zx, np.zeros(zx.shape[:2] + (zb.shape[1],)) if zbd is None else zbd], axis=2)
            if tape is not None:
                tape.append((x, xd, sub, dep_in))
        x, xd = z, zd
    return x, xd, dep


def _run_reverse(nodes, tape: list, g, gd, grad, H, need_input: bool = False):
    """Back through ``nodes``: accumulate the gradient (``grad``) or, with tangents ``gd``, the Hessian rows
    (``H[:, group]`` = the tangent of the group's gradient). Returns (g, gd) at the input."""
    for node, (x, xd, extra, dep) in zip(reversed(nodes), reversed(tape)):
        if isinstance(node, _Lin):
            if H is None:
                gw = g.T @ x
                for s, c0, c1 in node.groups:
                    grad[s] += gw[:, c0:c1].ravel()
                grad[node.bias] += g.sum(axis=0)
            else:
                P = gd.shape[0]
                gwd = gd.transpose(0, 2, 1) @ x
                if xd is not None:
                    gwd = gwd + g.T @ xd
                for s, c0, c1 in node.groups:
                    H[:, s] += gwd[:, :, c0:c1].reshape(P, -1)
                H[:, node.bias] += gd.sum(axis=1)
            if not dep and not need_input:  # nothing below depends on a parameter
                return None, None
            g_in = g @ node.W
            gd_in = None
            if gd is not None:
                gd_in = gd @ node.W
                out, N = node.W.shape[0], x.shape[0]
                r = np.arange(out)[:, None]
                for s, c0, c1 in node.groups:  # d(g W)/d W_ij = g_i e_j
                    c = np.arange(c1 - c0)[None, :]
                    gd_in[s].reshape(out, c1 - c0, N, -1)[r, c, :, c0 + c] += g.T[:, None, :]
            g, gd = g_in, gd_in
        elif isinstance(node, _Act):
            fp, fpp = extra
            g_in = g * fp
            if gd is not None:
                gd = gd * fp
                if xd is not None:
                    gd = gd + (g * fpp) * xd
            g = g_in
        else:  # _Cat
            w = node.w_in
            gb, gbd = _run_reverse(node.nodes, extra, g[:, w:], None if gd is None else gd[:, :, w:], grad, H,
                                   need_input=True)
            g = g[:, :w] + gb
            if gd is not None:
                gd = gd[:, :, :w] + gbd
    return g, gd


def _chunk(owner: str, chunk, per_sample: int, N: int) -> int:
    if chunk is None:
        return max(1, min(N, _BUDGET // max(per_sample, 1)))
    return check_int(owner, "chunk", chunk, lo=1)


def _widths(nodes) -> int:
    total = 0
    for node in nodes:
        if isinstance(node, _Lin):
            total += sum(node.W.shape)
        elif isinstance(node, _Cat):
            total += 2 * node.w_in + _widths(node.nodes)
    return total


def _check_second(owner: str, nodes) -> None:
    for node in nodes:
        if isinstance(node, _Act) and not node.act.has_second_derivative:
            raise ValueError(f"{owner}: activation {node.act.name!r} has no second derivative (needed by the exact "
                             "Hessian); pass second_derivative= to hermite.activation")
        if isinstance(node, _Cat):
            _check_second(owner, node.nodes)


def _data(owner: str, d0: int, X, Y=None, n_out: int | None = None):
    Xa = check_array(owner, "X", X, ndim=2)
    if Xa.shape[0] == 0:
        raise ValueError(f"{owner}: X is an empty batch (shape {Xa.shape}); it needs at least one sample")
    if Xa.shape[1] != d0:
        raise ValueError(f"{owner}: X has {Xa.shape[1]} features but the network has {d0} inputs")
    if Y is None:
        return Xa
    Ya = check_array(owner, "Y", Y, ndim=(1, 2))
    if Ya.ndim == 1 and n_out == 1:
        Ya = Ya[:, None]
    if Ya.shape != (Xa.shape[0], n_out):
        raise ValueError(f"{owner}: Y must have shape (N, n_out) = {(Xa.shape[0], n_out)}, got {Ya.shape}")
    return Xa, Ya


# ----------------------------------------------------------------------------------------------------
# public: forward, loss, gradient, Jacobian, Gauss-Newton, Hessian
# ----------------------------------------------------------------------------------------------------
def forward(net, X: ArrayLike) -> np.ndarray:
    """The network output y(X), shape (N, n_out)."""
    nodes, P, d0, dout = _compile("fisher.forward", net)
    return _run_forward(nodes, _data("fisher.forward", d0, X), P.n_params, False, False, None)[0]


def loss(net, X: ArrayLike, Y: ArrayLike) -> float:
    """The squared loss L = 1/(2N) sum_n ||y(x_n) - y_n||^2."""
    nodes, P, d0, dout = _compile("fisher.loss", net)
    Xa, Ya = _data("fisher.loss", d0, X, Y, dout)
    r = _run_forward(nodes, Xa, P.n_params, False, False, None)[0] - Ya
    return float(0.5 * np.sum(r * r) / Xa.shape[0])


def gradient(net, X: ArrayLike, Y: ArrayLike) -> np.ndarray:
    """The gradient of L = 1/(2N) sum_n ||y(x_n) - y_n||^2 with respect to theta, by backpropagation.

    With g = (y(X) - Y)/N at the output and, layer by layer downwards, g <- g f'(x) through an activation,
    grad W = g^T x, grad b = sum_n g and g <- g W through a Linear layer, and the split [g_x, g_branch] of a
    Concat (g <- g_x + branch^T g_branch): the authors' backpropagation (ltmlp_train.m lines 120-150).
    """
    nodes, P, d0, dout = _compile("fisher.gradient", net)
    Xa, Ya = _data("fisher.gradient", d0, X, Y, dout)
    tape: list = []
    y = _run_forward(nodes, Xa, P.n_params, False, False, tape)[0]
    grad = np.zeros(P.n_params)
    _run_reverse(nodes, tape, (y - Ya) / Xa.shape[0], None, grad, None)
    return grad


def jacobian(net, X: ArrayLike, chunk: int | None = None) -> np.ndarray:
    """The Jacobian of the outputs with respect to the parameters, J[n, o, p] = d y_o(x_n) / d theta_p.

    Forward mode along every parameter direction at once: through a Linear layer the tangent is
    z' = x' W^T + x e_j (on the direction W_ij, at output i) + e_i (on b_i); through an activation
    z' = f'(x) x'; through a Concat the tangents of the input and the branch are concatenated.

    Returns
    -------
    ndarray, shape (N, n_out, n_params)
    """
    nodes, P, d0, dout = _compile("fisher.jacobian", net)
    Xa = _data("fisher.jacobian", d0, X)
    N = Xa.shape[0]
    step = _chunk("fisher.jacobian", chunk, P.n_params * _widths(nodes), N)
    parts = []
    for s in range(0, N, step):
        yd = _run_forward(nodes, Xa[s:s + step], P.n_params, True, False, None)[1]
        parts.append(yd.transpose(1, 2, 0))
    return np.concatenate(parts, axis=0)


def gauss_newton(net, X: ArrayLike, chunk: int | None = None) -> np.ndarray:
    """The Fisher information / Gauss-Newton matrix G = J^T J / N of the squared loss.

    .. math:: G = \\frac{1}{N} \\sum_{n=1}^{N} J_n^T J_n, \\qquad
              (J_n)_{op} = \\partial y_o(x_n) / \\partial \\theta_p

    It is the Fisher information of the model y ~ N(y(x), I) on the inputs X and the Hessian of
    L = 1/(2N) sum ||y - y_n||^2 without the residual term (Vatanen et al. 2013, section 3). G does not
    depend on the targets. Symmetric positive semi-definite.

    Parameters
    ----------
    net : Network (Linear, Activation, Concat, Block)
    X : array_like, shape (N, n_in)
    chunk : int, optional
        Samples per batch of tangents (memory chunk * n_params * sum of widths); automatic by default.

    Returns
    -------
    ndarray, shape (n_params, n_params)
    """
    nodes, P, d0, dout = _compile("fisher.gauss_newton", net)
    Xa = _data("fisher.gauss_newton", d0, X)
    N, Pn = Xa.shape[0], P.n_params
    step = _chunk("fisher.gauss_newton", chunk, Pn * _widths(nodes), N)
    G = np.zeros((Pn, Pn))
    for s in range(0, N, step):
        yd = _run_forward(nodes, Xa[s:s + step], Pn, True, False, None)[1]
        J = yd.reshape(Pn, -1)
        G += J @ J.T
    G /= N
    return 0.5 * (G + G.T)


def hessian(net, X: ArrayLike, Y: ArrayLike, chunk: int | None = None, symmetrize: bool = True) -> np.ndarray:
    """The exact Hessian of the squared loss L = 1/(2N) sum_n ||y(x_n) - y_n||^2.

    .. math:: H = \\frac{1}{N}\\sum_n \\Big( J_n^T J_n + \\sum_o r_{no}
              \\frac{\\partial^2 y_o(x_n)}{\\partial\\theta\\,\\partial\\theta^T} \\Big) = G + S,
              \\qquad r = y(X) - Y

    computed analytically by differentiating the backpropagation of L along every parameter direction at once
    (forward-over-reverse, Pearlmutter 1994): the tangent of the output adjoint g = (y - Y)/N is y'/N, and
    going down, through an activation g' <- g' f'(x) + g f''(x) x', through a Linear layer
    (grad W)' = g'^T x + g^T x', (grad b)' = sum_n g', g' <- g' W + g W'. The second derivatives enter through
    f'' (per unit: gamma_i phi'') and the products of weights. No finite differences (the authors use central
    differences of the gradient with step 1e-3, ltmlp_hessian.m); for a kinked phi (relu) this is the
    almost-everywhere Hessian.

    Parameters
    ----------
    net : Network (Linear, Activation, Concat, Block)
    X : array_like, shape (N, n_in)
    Y : array_like, shape (N, n_out)
    chunk : int, optional
        Samples per batch; automatic by default.
    symmetrize : bool
        Return (H + H^T)/2 (default). The raw result is symmetric up to round-off.

    Returns
    -------
    ndarray, shape (n_params, n_params)
    """
    owner = "fisher.hessian"
    nodes, P, d0, dout = _compile(owner, net)
    _check_second(owner, nodes)
    Xa, Ya = _data(owner, d0, X, Y, dout)
    symmetrize = check_bool(owner, "symmetrize", symmetrize)
    N, Pn = Xa.shape[0], P.n_params
    step = _chunk(owner, chunk, 3 * Pn * _widths(nodes), N)
    H = np.zeros((Pn, Pn))
    for s in range(0, N, step):
        tape: list = []
        y, yd, _ = _run_forward(nodes, Xa[s:s + step], Pn, True, True, tape)
        _run_reverse(nodes, tape, (y - Ya[s:s + step]) / N, yd / N, None, H)
    return 0.5 * (H + H.T) if symmetrize else H


# ----------------------------------------------------------------------------------------------------
# diagnostics
# ----------------------------------------------------------------------------------------------------
class Spectrum(NamedTuple):
    """Eigenvalues (ascending) of a symmetric matrix and its condition number."""

    eigenvalues: np.ndarray
    condition: float


def _square_symmetric(owner: str, M: ArrayLike, name: str, rtol: float = 1e-8) -> np.ndarray:
    Ma = check_array(owner, name, M, ndim=2)
    if Ma.shape[0] != Ma.shape[1] or Ma.shape[0] == 0:
        raise ValueError(f"{owner}: {name} must be a non-empty square matrix, got shape {Ma.shape}")
    scale = np.max(np.abs(Ma))
    asym = np.max(np.abs(Ma - Ma.T))
    if asym > rtol * scale:
        raise ValueError(f"{owner}: {name} must be symmetric: max |M - M^T| = {asym:.3g} exceeds {rtol:g} * max |M| "
                         f"= {rtol * scale:.3g}")
    return 0.5 * (Ma + Ma.T)


def spectrum(M: ArrayLike) -> Spectrum:
    """Eigenvalues and condition number of a symmetric matrix (a Fisher or Hessian matrix).

    .. math:: \\kappa(M) = \\frac{\\max_i |\\lambda_i|}{\\min_i |\\lambda_i|}

    (the 2-norm condition number; +inf when an eigenvalue is exactly 0; for a PSD matrix that is singular up
    to round-off it is of order 1/eps, reported as computed). The authors store the eigenvalues and the
    diagonal of their Hessian (ltmlp_gradComparison.m lines 152-153).

    Parameters
    ----------
    M : array_like, shape (P, P)
        Symmetric up to round-off (relative asymmetry <= 1e-8); it is symmetrized before use.

    Returns
    -------
    Spectrum
        ``eigenvalues`` ascending (float64 array), ``condition`` (float).
    """
    Ms = _square_symmetric("fisher.spectrum", M, "M")
    lam = np.linalg.eigvalsh(Ms)
    absl = np.abs(lam)
    lo, hi = absl.min(), absl.max()
    cond = float("inf") if hi == 0.0 or lo == 0.0 else float(hi / lo)
    return Spectrum(lam, cond)


def block_norms(M: ArrayLike, layout: Mapping, normalize: bool = True) -> dict:
    """Frobenius norms of the off-diagonal blocks of M between named parameter groups.

    For groups a != b (in the order of ``layout``), with M_ab the block of rows a and columns b,

    .. math:: n_{ab} = \\frac{\\lVert M_{ab} \\rVert_F}{\\sqrt{\\lVert M_{aa} \\rVert_F \\,
              \\lVert M_{bb} \\rVert_F}}

    (``normalize=False`` gives the plain ||M_ab||_F). For a PSD matrix M = R^T R, ||M_ab||_F^2 =
    <R_a R_a^T, R_b R_b^T>_F <= ||M_aa||_F ||M_bb||_F, so n_ab lies in [0, 1]: a scale-free measure of how
    strongly two groups are coupled (invariant to rescaling either group). Vatanen et al. (2013) argue that the
    transformations make the Fisher matrix closer to block diagonal; this is the toolkit's number for it. A zero
    denominator gives 0 when the block is zero and +inf otherwise.

    Parameters
    ----------
    M : array_like, shape (P, P)
    layout : mapping name -> slice or integer index array
        The parameter groups (e.g. ``fisher.parameters(net).layout``).
    normalize : bool

    Returns
    -------
    dict mapping (a, b) -> float, for every pair a before b in layout order.
    """
    owner = "fisher.block_norms"
    Ma = check_array(owner, "M", M, ndim=2)
    if Ma.shape[0] != Ma.shape[1]:
        raise ValueError(f"{owner}: M must be square, got shape {Ma.shape}")
    P = Ma.shape[0]
    if not isinstance(layout, Mapping) or len(layout) < 2:
        raise ValueError(f"{owner}: layout must be a mapping of at least 2 named groups, got {layout!r}")
    idx: dict = {}
    for name, sel in layout.items():
        ii = np.arange(P)[sel] if isinstance(sel, slice) else np.asarray(sel)
        if ii.size == 0 or ii.dtype.kind not in "iu" or ii.ndim != 1 or ii.min() < 0 or ii.max() >= P:
            raise ValueError(f"{owner}: layout[{name!r}]={sel!r} must select a non-empty set of indices in [0, {P})")
        idx[name] = ii
    diag = {name: np.linalg.norm(Ma[np.ix_(ii, ii)]) for name, ii in idx.items()}
    names = list(idx)
    out: dict = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            num = float(np.linalg.norm(Ma[np.ix_(idx[a], idx[b])]))
            if not normalize:
                out[(a, b)] = num
                continue
            den = float(np.sqrt(diag[a] * diag[b]))
            out[(a, b)] = num / den if den > 0 else (0.0 if num == 0 else float("inf"))
    return out


def gradient_newton_angle(H: ArrayLike, grad: ArrayLike, mus: ArrayLike = AUTHORS_MUS,
                          min_eigenvalue: float | None = None) -> np.ndarray:
    """Angle between the gradient g and the regularized Newton direction (H + mu I)^{-1} g, in degrees.

    .. math:: \\theta(\\mu) = \\arccos \\frac{g^T (H + \\mu I)^{-1} g}{\\lVert g \\rVert \\,
              \\lVert (H + \\mu I)^{-1} g \\rVert}

    (Vatanen et al. 2013, section 4; ltmlp_gradComparison.m lines 167-178, which report radians: the closer
    to 0, the closer plain gradient descent is to a second-order step). With H = Q diag(lambda) Q^T,
    (H + mu I)^{-1} g = Q diag(1/(lambda + mu)) Q^T g, so the angle is 0 for H = c I and tends to 0 like
    ||H|| / mu as mu grows. For an indefinite H and small mu the angle can exceed 90 degrees.

    Parameters
    ----------
    H : array_like, shape (P, P)
        Symmetric (up to relative asymmetry 1e-8), e.g. a Hessian or Gauss-Newton matrix.
    grad : array_like, shape (P,)
        The gradient, not zero.
    mus : array_like
        Damping values mu >= 0 (default: the authors' ``logspace(-4, -0.3, 20)``); H + mu I must be nonsingular.
    min_eigenvalue : float or None
        The authors' rule (line 171): where the smallest eigenvalue of H + mu I is <= min_eigenvalue (they use
        1e-5) the angle is NaN. None: every mu is reported.

    Returns
    -------
    ndarray, shape of ``mus``
        Angles in degrees, in [0, 180] (NaN where excluded by ``min_eigenvalue``).
    """
    owner = "fisher.gradient_newton_angle"
    Hs = _square_symmetric(owner, H, "H")
    g = check_array(owner, "grad", grad, ndim=1)
    if g.shape[0] != Hs.shape[0]:
        raise ValueError(f"{owner}: grad has length {g.shape[0]} but H is {Hs.shape[0]} x {Hs.shape[0]}")
    gnorm = np.linalg.norm(g)
    if gnorm == 0:
        raise ValueError(f"{owner}: grad is the zero vector: the angle to the Newton direction is undefined")
    mu = check_array(owner, "mus", mus)
    if np.any(mu < 0):
        raise ValueError(f"{owner}: mus must be >= 0, got min {mu.min()!r}")
    floor = check_real(owner, "min_eigenvalue", min_eigenvalue, allow_none=True)
    lam, Q = np.linalg.eigh(Hs)
    c = Q.T @ (g / gnorm)  # unit gradient in the eigenbasis
    flat = mu.reshape(-1, 1)
    denom = lam[None, :] + flat  # (M, P)
    scale = np.max(np.abs(lam)) + flat
    singular = np.abs(denom) <= 1e-14 * np.maximum(scale, np.finfo(float).tiny)
    excluded = np.zeros(flat.shape[0], dtype=bool) if floor is None else (lam[0] + flat[:, 0] <= floor)
    if np.any(singular[~excluded] & (c[None, :] != 0)):
        bad = flat[:, 0][np.any(singular, axis=1) & ~excluded]
        raise ValueError(f"{owner}: H + mu I is singular for mus {bad.tolist()}; choose mu with -mu not an "
                         "eigenvalue of H")
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(singular, 0.0, c[None, :] / np.where(singular, 1.0, denom))
    cos = np.clip((w @ c) / np.linalg.norm(w, axis=1), -1.0, 1.0)
    ang = np.degrees(np.arccos(cos))
    ang[excluded] = np.nan
    return ang.reshape(mu.shape)
