"""The deep shortcut network of Vatanen et al. (2013) as a `meanfield.Network`: the authors' architecture and
initialization, the function-preserving re-estimation of the transformations, and the authors' trainer.

Source: T. Vatanen, T. Raiko, H. Valpola and Y. LeCun (2013), arXiv:1301.3476, and the authors' code
``tvatanen/ltmlp-neuralnet`` (file and line references below are to it); the architecture is that of Raiko,
Valpola and LeCun (2012).

The network (the paper's)
-------------------------
Layers 1 (the input, width n_1), 2, ..., L (the output, width n_L). Every layer l >= 2 reads every earlier one
(ltmlp_ff.m lines 14-20):

    X_l = b_l + sum_{s<l} W{l,s} Y_s,        Y_l = f_l(X_l),

with f_l the transformed tanh of each hidden unit, f_i(x) = gamma_i (tanh(x) + alpha_i x + beta_i) (nonlin.m
line 12), and a linear output layer (regression). `network` builds it as nonlinear layers stacked directly,
each a ``Concat(branch=[Linear(W_l, b_l), Activation(f_l)])`` (the state [Y_1, ..., Y_l] grows by one layer), and
a final ``Linear(W_L, b_L)`` reading the whole state; W_l's column blocks are the W{l,s}, the groups
``"W{l},{s}"`` of `meanfield.fisher.parameters`. The authors' initialization (ltmlp_init.m lines 14-29):
biases uniform on [-0.5, 0.5] (``bias_init_scale = 0.5``, ltmlp_opt.m line 18), the direct weights W{l,l-1}
uniform on +-sqrt(6 / (n_l + n_{l-1})), every shortcut W{l,s}, s < l-1, zero; no transformation
(alpha = beta = 0, gamma = 1, ltmlp_init.m lines 62-68).

The function-preserving update (the paper's)
--------------------------------------------
`update_transforms` re-estimates every hidden layer's transformation on the data and compensates the later
weights so that the network computes exactly the same function (ltmlp_transform.m). First alpha and beta, layer by
layer (lines 23-54): with a = alpha, b = beta, gamma the unit's current gamma and d_a = (a_old - a_new) gamma,
d_b = (b_old - b_new) gamma, since f_old(x) = f_new(x) + d_a x + d_b and x = b_l + sum_s W{l,s} Y_s, for every
later layer m:

    b_m     += W{m,l} (d_a * b_l + d_b)                     (line 42)
    W{m,s}  += W{m,l} diag(d_a) W{l,s}   for every s < l    (line 45)

Then gamma, layer by layer (lines 56-98): gamma_new from the chosen form (`meanfield.transformations`) and
W{m,l} <- W{m,l} diag(gamma_old / gamma_new) (line 86). Each step preserves the function exactly in real
arithmetic; in float64 the outputs agree to round-off.

The trainer (the paper's protocol, a small numpy version)
--------------------------------------------------------
`train` follows ltmlp_train.m with the defaults of ltmlp_opt.m: consecutive minibatches cycling through the data
(lines 70-72); the transformations re-estimated on the full training input every ``every`` iterations (default 1,
``transf_every_n_iters``, lines 83-93), before the gradient; the gradient of the squared error averaged over the
minibatch; momentum (default 0.9) as direction <- grad + momentum * direction (lines 163-171), kept across
transformation updates (line 95-102); the step lr * scale * direction with the per-connection scale
2^-(l - s - 1) for W{l,s} (smaller steps for longer shortcuts, lines 23-27) and 1 for biases; optionally the
learning rate decaying linearly to 0 over the second half of the run (lines 198-201; the authors measure the run
in CPU time, here in steps). Not included: weight decay and input noise (both 0 by default), the softmax output,
and ltmlp_train2.m's burn-in schedule. Training-time claims belong to the torch side of the toolkit; this trainer is
only as large as the paper's protocol needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import ArrayLike

import hermite
from meanfield import fisher
from meanfield.core.validate import check_array, check_bool, check_int, check_real
from meanfield.layers import Activation, Block, Concat, Linear
from meanfield.network import Network
from meanfield.transformations import _form, empirical, gamma_value

__all__ = ["network", "preactivations", "update_transforms", "step_scales", "unit_stats", "TrainResult", "train"]


# ----------------------------------------------------------------------------------------------------
# the architecture as a list of weight matrices (the paper's W{l,s} as column blocks) and its Network
# ----------------------------------------------------------------------------------------------------
@dataclass
class _Spec:
    """widths n_1..n_L; W[l], b[l] for l = 2..L (W[l] reads the state of widths n_1..n_{l-1}); acts[l] for the
    hidden layers; names of the blocks; whether the output layer has an activation."""

    widths: list
    W: dict
    b: dict
    acts: dict
    names: list
    out_act: Activation | None = None

    @property
    def L(self) -> int:
        return len(self.widths)

    def cols(self, s: int) -> slice:
        """The columns of layer s's output in the state."""
        start = sum(self.widths[: s - 1])
        return slice(start, start + self.widths[s - 1])

    def network(self) -> Network:
        blocks = []
        for l in range(2, self.L):
            cat = Concat(branch=(Linear(self.W[l], self.b[l]), Activation(self.acts[l])))
            blocks.append(Block((cat,), name=self.names[l - 2]))
        out = [Linear(self.W[self.L], self.b[self.L])] + ([self.out_act] if self.out_act is not None else [])
        blocks.append(Block(tuple(out), name=self.names[-1]))
        return Network(blocks)

    def forward(self, X: np.ndarray) -> tuple[list, np.ndarray]:
        """The hidden pre-activations X_l (l = 2..L-1) and the output."""
        state, pre = X, []
        for l in range(2, self.L):
            x = state @ self.W[l].T + self.b[l]
            pre.append(x)
            state = np.concatenate([state, self.acts[l].fn(x)], axis=1)
        y = state @ self.W[self.L].T + self.b[self.L]
        return pre, (y if self.out_act is None else self.out_act.act.fn(y))


def _layers(layers):
    for layer in layers:
        if isinstance(layer, Block):
            yield from _layers(layer.layers)
        else:
            yield layer


def _parse(owner: str, net) -> _Spec:
    """The paper's network family: Concat([Linear, Activation]) per hidden layer, then a Linear (and optionally an
    Activation) reading the whole state."""
    if not isinstance(net, Network):
        raise ValueError(f"{owner}: net must be a meanfield.Network (see meanfield.shortcuts.network), got "
                         f"{type(net).__name__}")
    hint = ("net must be the paper's shortcut network: hidden layers Concat(branch=[Linear, Activation]) stacked "
            "directly, then a Linear output layer (see meanfield.shortcuts.network)")
    names = [b.name for b in net.blocks]
    flat = list(_layers(net.layers))
    spec = _Spec([], {}, {}, {}, [])
    l, k = 1, 0
    while k < len(flat) and isinstance(flat[k], Concat):
        br = list(_layers(flat[k].branch))
        if len(br) != 2 or not isinstance(br[0], Linear) or not isinstance(br[1], Activation):
            raise ValueError(f"{owner}: layer {flat[k]!r}: {hint}")
        lin, act = br
        if l == 1:
            spec.widths.append(lin.W.shape[1])
        l += 1
        spec.widths.append(lin.W.shape[0])
        spec.W[l], spec.b[l], spec.acts[l] = np.array(lin.W), np.array(lin.b), act.act
        k += 1
    rest = flat[k:]
    if l == 1 or not rest or not isinstance(rest[0], Linear) or len(rest) > 2 or \
            (len(rest) == 2 and not isinstance(rest[1], Activation)):
        raise ValueError(f"{owner}: {hint}")
    spec.widths.append(rest[0].W.shape[0])
    spec.W[l + 1], spec.b[l + 1] = np.array(rest[0].W), np.array(rest[0].b)
    spec.out_act = rest[1] if len(rest) == 2 else None
    for m in range(2, spec.L + 1):
        if spec.W[m].shape[1] != sum(spec.widths[: m - 1]):
            raise ValueError(f"{owner}: layer {m} reads {spec.W[m].shape[1]} features but the state has "
                             f"{sum(spec.widths[: m - 1])}; {hint}")
    for m, a in spec.acts.items():
        n = spec.widths[m - 1]
        if a.per_unit and a.units != n:
            raise ValueError(f"{owner}: layer {m}'s activation has {a.units} units but the layer has {n}")
    spec.names = names if len(names) == spec.L - 1 else [f"layer {m}" for m in range(2, spec.L)] + ["output"]
    return spec


def network(widths, act="tanh", *, seed: int = 0, bias_scale: float = 0.5) -> Network:
    """The paper's deep shortcut network with the authors' initialization, as a `meanfield.Network`.

    Layer l = 2..L-1 is ``Concat(branch=[Linear(W_l, b_l), Activation(f_l)])`` with f_l the per-unit transformed
    ``act`` at alpha = beta = 0, gamma = 1; the output is ``Linear(W_L, b_L)``; W_l has the column blocks W{l,s}
    for the earlier layers s = 1..l-1. Initialization (ltmlp_init.m lines 14-29): b_l ~ U[-bias_scale,
    bias_scale], W{l,l-1} ~ U[-r, r] with r = sqrt(6 / (n_l + n_{l-1})), W{l,s} = 0 for s < l-1. The laws are the
    authors'; the random numbers are numpy's (``numpy.random.default_rng(seed)``).

    Parameters
    ----------
    widths : sequence of int >= 1
        (n_1, ..., n_L): the input, at least one hidden layer, and the output.
    act : activation phi of the hidden units (the paper: "tanh")
    seed : int
    bias_scale : float >= 0
        The authors' ``bias_init_scale`` (0.5).

    Examples
    --------
    >>> from meanfield import shortcuts, fisher
    >>> net = shortcuts.network((3, 4, 4, 1))
    >>> list(fisher.parameters(net).layout)
    ['W2,1', 'b2', 'W3,1', 'W3,2', 'b3', 'W4,1', 'W4,2', 'W4,3', 'b4']
    """
    owner = "shortcuts.network"
    ws = list(widths) if not isinstance(widths, (str, bytes)) and hasattr(widths, "__iter__") else None
    if ws is None or len(ws) < 3:
        raise ValueError(f"{owner}: widths={widths!r} must be (n_1, ..., n_L) with at least one hidden layer "
                         "(length >= 3)")
    ws = [check_int(owner, f"widths[{i}]", w, lo=1) for i, w in enumerate(ws)]
    bias_scale = check_real(owner, "bias_scale", bias_scale, 0.0)
    a = hermite.activation(act)
    if a.per_unit:
        raise ValueError(f"{owner}: act={a.name!r} has per-unit parameters; give the plain nonlinearity phi")
    rng = np.random.default_rng(check_int(owner, "seed", seed, lo=0))
    spec = _Spec(ws, {}, {}, {}, [f"layer {m}" for m in range(2, len(ws))] + ["output"])
    for m in range(2, len(ws) + 1):
        n, prev = ws[m - 1], ws[m - 2]
        spec.b[m] = bias_scale * (2.0 * rng.random(n) - 1.0)
        W = np.zeros((n, sum(ws[: m - 1])))
        W[:, spec.cols(m - 1)] = math.sqrt(6.0 / (n + prev)) * (2.0 * rng.random((n, prev)) - 1.0)
        spec.W[m] = W
        if m < len(ws):
            spec.acts[m] = replace(a, alpha=np.zeros(n), beta=np.zeros(n), gamma=np.ones(n), label=None)
    return spec.network()


# ----------------------------------------------------------------------------------------------------
# the transformations on a network
# ----------------------------------------------------------------------------------------------------
def _plain(a: hermite.Activation) -> hermite.Activation:
    """phi: the activation without its transformation (alpha = beta = 0, gamma = 1; the gain is kept)."""
    return replace(a, alpha=0.0, beta=0.0, gamma=1.0, label=None)


def _per_unit(a: hermite.Activation, n: int) -> tuple:
    return tuple(np.array(np.broadcast_to(np.asarray(getattr(a, k), dtype=float), (n,))) for k in
                 ("alpha", "beta", "gamma"))


def _data(owner: str, spec: _Spec, X) -> np.ndarray:
    Xa = check_array(owner, "X", X, ndim=2)
    if Xa.shape[0] == 0:
        raise ValueError(f"{owner}: X is an empty batch (shape {Xa.shape}); it needs at least 2 samples")
    if Xa.shape[1] != spec.widths[0]:
        raise ValueError(f"{owner}: X has {Xa.shape[1]} features but the network has {spec.widths[0]} inputs")
    return Xa


def preactivations(net: Network, X: ArrayLike) -> list:
    """The hidden pre-activations X_l = b_l + sum_{s<l} W{l,s} Y_s on the data, one (N, n_l) array per hidden
    layer l = 2..L-1."""
    spec = _parse("shortcuts.preactivations", net)
    return spec.forward(_data("shortcuts.preactivations", spec, X))[0]


def update_transforms(net: Network, X: ArrayLike, gamma: str | None = "vatanen_geometric") -> Network:
    """Re-estimate every hidden layer's transformation on the data X and compensate (ltmlp_transform.m).

    alpha and beta per unit by `meanfield.transformations.empirical` (the averages over X), then gamma by the
    form ``gamma`` (the paper's default "vatanen_geometric"; None keeps every gamma, the code's ``num_transf =
    2``), each compensated in the later layers' weights and biases as in the module docstring, so that the
    returned network computes the same function as ``net`` (to round-off) on every input, not only on X.

    Parameters
    ----------
    net : Network
        The paper's shortcut network (`network`).
    X : (N, n_1) array
        The data: the authors use the whole training input.
    gamma : one of `meanfield.transformations.GAMMA_FORMS`
    """
    owner = "shortcuts.update_transforms"
    form = _form(owner, gamma)
    spec = _parse(owner, net)
    pre, _ = spec.forward(_data(owner, spec, X))
    L = spec.L
    hidden = list(range(2, L))
    for l, x in zip(hidden, pre):  # alpha and beta (lines 23-54)
        n = spec.widths[l - 1]
        a0, b0, g0 = _per_unit(spec.acts[l], n)
        t = empirical(_plain(spec.acts[l]), x, gamma=None)
        da, db = (a0 - t.alpha) * g0, (b0 - t.beta) * g0
        for m in range(l + 1, L + 1):
            Wml = spec.W[m][:, spec.cols(l)]
            spec.b[m] = spec.b[m] + Wml @ (da * spec.b[l] + db)
            spec.W[m][:, : spec.W[l].shape[1]] += (Wml * da) @ spec.W[l]
        spec.acts[l] = replace(_plain(spec.acts[l]), alpha=t.alpha, beta=t.beta, gamma=g0)
    if form is not None:  # gamma (lines 56-98)
        for l, x in zip(hidden, pre):
            a = spec.acts[l]
            phi = _plain(a)
            G = phi.fn(x) + a.alpha * x + a.beta
            Gd = phi.derivative(x) + a.alpha
            g_new = gamma_value(np.mean(G * G, axis=0), np.mean(Gd * Gd, axis=0), form, owner)
            for m in range(l + 1, L + 1):
                spec.W[m][:, spec.cols(l)] *= a.gamma / g_new
            spec.acts[l] = replace(a, gamma=g_new)
    return spec.network()


def step_scales(net: Network) -> np.ndarray:
    """The authors' per-parameter step scale (ltmlp_train.m lines 23-27): 2^-(l - s - 1) for the weights W{l,s}
    (1 for the direct connections, halved for every layer a shortcut skips), 1 for the biases; in the layout of
    `meanfield.fisher.parameters`."""
    P = fisher.parameters(net)
    out = np.ones(P.n_params)
    for name, (l, s) in P.sources.items():
        if s is not None:
            out[P.layout[name]] = 2.0 ** -(l - s - 1)
    return out


def unit_stats(net: Network, X: ArrayLike) -> list:
    """Per hidden layer and unit: the scale of the unit's input and of its contribution to later layers.

    For unit i of hidden layer l on the data X: ``input_std`` = the standard deviation over the data of X_l,i;
    ``output_rms`` = ||w_i|| sqrt(<f_i(X_l,i)^2>), where w_i stacks the weights from unit i to every later layer
    (the rms size of the unit's term in their inputs); ``gamma`` = gamma_i. Vatanen et al. report that with the
    third transformation many units end with both input and output close to zero; these are the numbers to
    look at.
    """
    owner = "shortcuts.unit_stats"
    spec = _parse(owner, net)
    pre, _ = spec.forward(_data(owner, spec, X))
    out = []
    for l, x in zip(range(2, spec.L), pre):
        a = spec.acts[l]
        f = a.fn(x)
        w = np.sqrt(sum(np.sum(spec.W[m][:, spec.cols(l)] ** 2, axis=0) for m in range(l + 1, spec.L + 1)))
        out.append({"input_std": x.std(axis=0), "output_rms": w * np.sqrt(np.mean(f * f, axis=0)),
                    "gamma": _per_unit(a, spec.widths[l - 1])[2]})
    return out


# ----------------------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """Output of `train`.

    Attributes
    ----------
    steps : (R,) int array
        The recorded iterations (0, record_every, 2 record_every, ...).
    losses : (R,) float array
        Full-data training loss L = 1/(2N) sum ||y - t||^2 at those iterations (NaN after a divergence).
    net : Network
        The final network (after a divergence, the last one with finite parameters and loss).
    history : list
        `unit_stats` at every recorded iteration (with ``track_units``; else only for ``net``).
    diverged : bool
        True when the parameters or the loss became non-finite (training stopped there).
    max_gamma : float
        The largest gamma of any unit at the end.
    """

    steps: np.ndarray
    losses: np.ndarray
    net: Network
    history: list = field(default_factory=list)
    diverged: bool = False
    max_gamma: float = 1.0


def train(net: Network, X: ArrayLike, Y: ArrayLike, *, steps: int = 1000, lr: float = 0.05,
          batch_size: int | None = None, momentum: float = 0.9, transform: bool = True,
          gamma: str | None = "vatanen_geometric", every: int = 1, step_scale: bool = True, anneal: bool = False,
          record_every: int = 10, track_units: bool = False) -> TrainResult:
    """Minibatch gradient descent with momentum and transformations: the authors' protocol (ltmlp_train.m).

    Iteration k = 1..steps: with ``transform``, if k is a multiple of ``every``, `update_transforms` on the whole X
    (function-preserving); then the gradient g of L_B = 1/(2B) sum_{n in B} ||y(x_n) - t_n||^2 on the next
    consecutive minibatch B (cycling through the data in order); direction <- g + momentum * direction;
    theta <- theta - lr_k * s * direction, with s the per-connection scale `step_scales` (``step_scale``; else 1)
    and lr_k = lr, or with ``anneal`` max(1e-8, 2 lr (1 - k/steps)) once k > steps/2. The full-data loss is
    recorded every ``record_every`` iterations; if the parameters or the loss become non-finite (or exceed 1e100)
    training stops (``diverged``).

    Parameters
    ----------
    net : Network
        The paper's shortcut network (`network`).
    X, Y : (N, n_1) and (N, n_L) arrays
    steps, record_every : int >= 1
    lr : float > 0
        The authors' ``stepsize``.
    batch_size : int or None
        Minibatch size (None: the whole data; the authors' default is 1000).
    momentum : float in [0, 1)
        0.9 in the authors' code (their angle comparison, ltmlp_gradComparison.m, uses none).
    transform : bool
        Re-estimate the transformations (False: plain training of the same architecture, ``num_transf = 0``).
    gamma : one of `meanfield.transformations.GAMMA_FORMS`
        The third transformation (None: alpha and beta only, the code's default ``num_transf = 2``).
    every : int >= 1
        Re-estimate every ``every`` iterations (the authors' ``transf_every_n_iters``, default 1).
    step_scale, anneal, track_units : bool
    """
    owner = "shortcuts.train"
    spec = _parse(owner, net)
    Xa = _data(owner, spec, X)
    Ya = check_array(owner, "Y", Y, ndim=(1, 2))
    if Ya.ndim == 1 and spec.widths[-1] == 1:
        Ya = Ya[:, None]
    if Ya.shape != (Xa.shape[0], spec.widths[-1]):
        raise ValueError(f"{owner}: Y must have shape (N, n_out) = {(Xa.shape[0], spec.widths[-1])}, got {Ya.shape}")
    N = Xa.shape[0]
    steps = check_int(owner, "steps", steps, lo=1)
    record_every = check_int(owner, "record_every", record_every, lo=1)
    every = check_int(owner, "every", every, lo=1)
    B = N if batch_size is None else check_int(owner, "batch_size", batch_size, lo=1, hi=N)
    lr = check_real(owner, "lr", lr, 0.0, lo_open=True)
    momentum = check_real(owner, "momentum", momentum, 0.0, 1.0, hi_open=True)
    form = _form(owner, gamma)
    transform, step_scale, anneal, track_units = (check_bool(owner, k, v) for k, v in (
        ("transform", transform), ("step_scale", step_scale), ("anneal", anneal), ("track_units", track_units)))
    scale = step_scales(net) if step_scale else 1.0
    direction = np.zeros(fisher.parameters(net).n_params)
    rec_steps = np.arange(0, steps + 1, record_every)
    losses = np.full(rec_steps.size, np.nan)
    losses[0] = fisher.loss(net, Xa, Ya)
    history = [unit_stats(net, Xa)] if track_units else []
    diverged, r, i0 = False, 1, 0
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(1, steps + 1):
            if transform and k % every == 0:
                net = update_transforms(net, Xa, form)
            idx = slice(i0, min(N, i0 + B))
            i0 = 0 if i0 + B >= N else i0 + B
            direction = fisher.gradient(net, Xa[idx], Ya[idx]) + momentum * direction
            rate = max(1e-8, 2.0 * lr * (1.0 - k / steps)) if anneal and k > steps / 2 else lr
            theta = fisher.parameters(net).theta - rate * scale * direction
            if not np.all(np.isfinite(theta)) or np.max(np.abs(theta)) > 1e100:
                diverged = True
                break
            prev, net = net, fisher.with_theta(net, theta)
            if k % record_every == 0:
                val = fisher.loss(net, Xa, Ya)
                if not math.isfinite(val) or val > 1e100:
                    diverged, net = True, prev
                    break
                losses[r] = val
                r += 1
                if track_units:
                    history.append(unit_stats(net, Xa))
    with np.errstate(over="ignore", invalid="ignore"):  # the last finite network of a diverging run
        if not track_units:
            history = [unit_stats(net, Xa)]
    gmax = max((float(np.max(np.asarray(a.gamma))) for a in _parse(owner, net).acts.values()), default=1.0)
    return TrainResult(rec_steps, losses, net, history, diverged, gmax)
