"""Transformations in nonlinearities: per-unit estimates, shortcut networks, the function-preserving update.

Sources
-------
T. Raiko, H. Valpola and Y. LeCun (2012), "Deep learning made easier by linear transformations in
perceptrons" (AISTATS 2012): the transformations alpha, beta with linear shortcut connections.
T. Vatanen, T. Raiko, H. Valpola and Y. LeCun (2013), "Pushing stochastic gradient towards second-order
methods - backpropagation learning with transformations in nonlinearities" (ICONIP 2013,
arXiv:1301.3476): the third transformation gamma and the second-order analysis.

The transformation
------------------
Every hidden unit i applies

    f_i(u) = gamma_i (phi(u) + alpha_i u + beta_i),        g_i(u) = phi(u) + alpha_i u + beta_i,

with, for the unit's pre-activation u over the data (``<.>`` an average over the data set, or an
expectation over u ~ N(m, q) for the Gaussian estimator),

    alpha_i = -<phi'(u)>                       (zero average slope:   <f_i'(u)> = 0)
    beta_i  = -<phi(u)> - alpha_i <u>          (zero average output:  <f_i(u)> = 0)

and gamma_i one of the two published choices (``gamma=``):

    "variance":  gamma_i = <g_i(u)^2>^(-1/2)                      (unit output variance, <f_i^2> = 1)
    "geometric": gamma_i = <g_i(u)^2>^(-1/4) <g_i'(u)^2>^(-1/4)   (std(f_i) * rms(f_i') = 1: the
                 geometric mean of the output scale and the slope scale of f_i is 1)
    None:        gamma_i = 1 (only the two transformations of Raiko et al. 2012)

Since <g> = 0 and <g'> = 0, <g^2> and <g'^2> are the variances of the unit's output and slope. The
"variance" choice is the gamma of Vatanen et al. (2013, section 2); "geometric" is the alternative that
balances output and slope scales (our reading of the same paper's discussion of the third
transformation; both are offered because both appear in the literature, and the formula above is the one
implemented). For a Gaussian u ~ N(0, q) and a continuous phi, Stein's lemma gives alpha = -c_1(q)/sqrt(q)
and beta = -c_0(q) in the orthonormal Hermite convention, so f has no Hermite orders 0 and 1 at variance
q: with gamma="variance" it is exactly ``hermite.transform(phi, remove=(0, 1), q=q)``.

Estimators
----------
`gaussian(act, q, m, gamma)` takes u ~ N(m, q) (per unit when q, m are arrays): for m = 0 through the
Hermite coefficients c_0, c_1 (`hermite.coefficients`), the second moment (`hermite.second_moment`) and
E phi'^2 (`hermite.kernel` with derivative=1 at rho = 1), i.e. exactly; for m != 0 by composite
Gauss-Legendre quadrature in z (u = m + sqrt(q) z) split at phi's kinks and graded towards the points
where phi varies, accurate to ~1e-14. `empirical(phi, dphi, U, gamma)` takes the averages over the rows
of a data set of pre-activations U (N, units), as the original method does.

Shortcut networks
-----------------
The paper's network y = A f(B x + b) + C x + d is, as a `meanfield.Network` that both engines run,

    Residual(branch=[Dense(1, sigma_b), Activation(f), Dense(sqrt(mix))], alpha=1,
             shortcut=[Dense(sqrt(1 - mix), sigma_d)])

(`shortcut_block`, `shortcut_network`). Deeper versions stack such blocks; each block's linear shortcut
skips its hidden layer, so the input and every hidden layer reach every layer above through the linear
path of the shortcuts (C_L ... C_k), the factored form of shortcuts between all layers. With explicit
parameters (for training) the same structure is `meanfield.fisher.ShortcutMLP`, whose blocks are
z_k = A_k f_k(B_k z_{k-1} + b_k) + C_k z_{k-1} + d_k.

The function-preserving update
------------------------------
When (alpha, beta, gamma) of a block change from (a0, b0, g0) to (a1, b1, g1), writing
phi = f_old/g0 - a0 u - b0 and f_new = g1 (phi + a1 u + b1) gives, exactly,

    A f_old(u) = A diag(g0/g1) f_new(u) + A diag(g0 (a0 - a1)) u + A (g0 (b0 - b1)),  u = B z + b,

so the block's output is unchanged when (`reparameterize`)

    A <- A diag(g0/g1)
    C <- C + A diag(g0 (a0 - a1)) B
    d <- d + A [g0 ((a0 - a1) b + b0 - b1)]          (A, products elementwise per hidden unit)

(the A on the right-hand sides is the old A). The removed linear part moves into the shortcut weights
and biases; the gamma rescaling moves into A. A block without a shortcut can only take updates with
a1 = a0. `update_transforms` re-estimates every block from data and applies this update, so the
network's outputs agree to float64 round-off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import ArrayLike

import hermite
from hermite.quadrature import gaussian_expectation
from meanfield import fisher
from meanfield.core.validate import check_seed
from meanfield.infinite import propagate
from meanfield.layers import Activation, Block, Dense, Residual
from meanfield.network import Network

__all__ = [
    "GAMMA_CHOICES",
    "Transformation",
    "gaussian",
    "empirical",
    "to_activation",
    "correlation_map",
    "shortcut_block",
    "shortcut_network",
    "depth_curves",
    "preactivations",
    "reparameterize",
    "update_transforms",
    "transformed_shortcut_mlp",
    "unit_stats",
    "TrainResult",
    "train",
]

GAMMA_CHOICES = ("variance", "geometric", None)
_EPS = np.finfo(np.float64).eps


# ----------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------
def _check_gamma_choice(gamma) -> str | None:
    if gamma is None or (isinstance(gamma, str) and gamma in ("variance", "geometric")):
        return gamma
    raise ValueError(f"gamma={gamma!r} must be 'variance' (unit output variance), 'geometric' (geometric "
                     "mean of output and slope scales) or None (no scaling)")


def _finite_array(x, name: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={x!r} must be a real number or array of real numbers") from None
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (no NaN or inf), got {x!r}")
    return a


def _hermite_activation(act) -> hermite.Activation:
    """A hermite Activation from a name, formula, callable, hermite Activation or fisher.Phi."""
    if isinstance(act, fisher.Phi):
        if act.name in hermite.builtin_names():
            return hermite.activation(act.name)
        return hermite.activation(act.fn, derivative=act.d1, name=act.name)
    return hermite.activation(act)


# ----------------------------------------------------------------------------------------------------
# the transformation and its estimators
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Transformation:
    """Per-unit transformation f(u) = gamma (phi(u) + alpha u + beta).

    Attributes
    ----------
    alpha, beta, gamma : ndarray
        One value per unit (0-d for a single Gaussian unit).
    choice : "variance", "geometric" or None
        Which gamma (see the module docstring).
    var_output, var_slope : ndarray
        <g^2> and <g'^2> for g = phi + alpha u + beta: the variances of the untransformed-by-gamma output
        and slope (both have zero mean by construction).
    """

    alpha: np.ndarray
    beta: np.ndarray
    gamma: np.ndarray
    choice: str | None
    var_output: np.ndarray
    var_slope: np.ndarray

    def apply(self, phi_u: ArrayLike, u: ArrayLike) -> np.ndarray:
        """f = gamma (phi(u) + alpha u + beta) from phi(u) and u (units along the last axis)."""
        return self.gamma * (np.asarray(phi_u) + self.alpha * np.asarray(u) + self.beta)


def _gamma_value(var_out: np.ndarray, var_slope: np.ndarray, choice: str | None, what: str) -> np.ndarray:
    """gamma from <g^2>, <g'^2>; a zero variance is a ValueError naming ``what``."""
    if choice is None:
        return np.ones_like(var_out)
    bad = ~(var_out > 0)
    if choice == "geometric":
        bad |= ~(var_slope > 0)
    if np.any(bad):
        idx = np.flatnonzero(np.atleast_1d(bad)).tolist()
        raise ValueError(f"{what}: units {idx[:10]}{' ...' if len(idx) > 10 else ''} have zero output "
                         f"{'or slope ' if choice == 'geometric' else ''}variance after removing the mean "
                         f"and the linear part (phi is affine over their inputs), so gamma={choice!r} is "
                         "undefined; use gamma=None or other inputs")
    if choice == "variance":
        return 1.0 / np.sqrt(var_out)
    return (var_out * var_slope) ** -0.25


def _make(alpha, beta, Ephi2_c, cov_phi_u, q, Edphi2_c, choice, what) -> Transformation:
    """Assemble a Transformation from the centred moments.

    Ephi2_c = Var phi(u), cov_phi_u = Cov(phi(u), u), Edphi2_c = Var phi'(u); with g = phi + alpha u + beta
    (zero mean): <g^2> = Var phi + 2 alpha Cov(phi, u) + alpha^2 Var u and <g'^2> = Var phi'.
    """
    var_out = Ephi2_c + 2.0 * alpha * cov_phi_u + alpha * alpha * q
    scale = np.maximum(np.abs(Ephi2_c) + alpha * alpha * q, np.finfo(float).tiny)
    var_out = np.where(var_out > 64 * _EPS * scale, var_out, 0.0)
    var_slope = np.where(Edphi2_c > 64 * _EPS * np.maximum(Edphi2_c + alpha * alpha, np.finfo(float).tiny),
                         Edphi2_c, 0.0)
    gamma = _gamma_value(var_out, var_slope, choice, what)
    return Transformation(np.asarray(alpha, float), np.asarray(beta, float), np.asarray(gamma, float), choice,
                          np.asarray(var_out, float), np.asarray(var_slope, float))


def _quad_moments(act: hermite.Activation, q: float, m: float) -> np.ndarray:
    """(E phi, E phi', E phi^2, E phi'^2, E[phi (u - m)]) for u ~ N(m, q) by split composite quadrature
    (`hermite.quadrature.gaussian_expectation`, its tail checked on E phi^2)."""

    def moments(u):
        f = act.fn(u)
        d = act.derivative(u)
        return np.stack([f, d, f * f, d * d, f * (u - m)])

    return gaussian_expectation(moments, m, q, kinks=act.kinks, features=act.features, gain=act.gain,
                                tail_rows=2)


def gaussian(act="tanh", q: ArrayLike = 1.0, m: ArrayLike = 0.0, gamma: str | None = "variance") -> Transformation:
    """alpha, beta, gamma of Vatanen et al. (2013) for a Gaussian pre-activation u ~ N(m, q).

    .. math::
        \\alpha = -E\\,\\phi'(u), \\quad \\beta = -E\\,\\phi(u) - \\alpha m, \\quad
        \\gamma = E[g^2]^{-1/2}\\ (\\text{variance}) \\text{ or } (E[g^2]\\,E[g'^2])^{-1/4}\\ (\\text{geometric})

    with g = phi + alpha u + beta, E[g^2] = Var phi(u) + 2 alpha Cov(phi(u), u) + alpha^2 q and
    E[g'^2] = Var phi'(u). For m = 0 everything is exact through the Hermite expansion (orthonormal
    convention, c_k(q) = E[phi(sqrt(q) z) h_k(z)]): E phi = c_0(q), Cov(phi, u) = sqrt(q) c_1(q),
    E phi^2 = `hermite.second_moment`, E phi' and E phi'^2 from `hermite.kernel` (derivative=1); for a
    continuous phi, alpha = -c_1(q)/sqrt(q) and beta = -c_0(q) (Stein's lemma), so the transformed unit
    has no Hermite orders 0 and 1. For m != 0, kink-split composite Gauss-Legendre quadrature.

    Closed forms, e.g. ReLU at m = 0: alpha = -1/2, beta = -sqrt(q/(2 pi)),
    E g^2 = q (1/4 - 1/(2 pi)), E g'^2 = 1/4.

    Parameters
    ----------
    act : activation (name, formula, callable with a derivative, hermite.Activation or fisher.Phi)
    q : float or array > 0
        Variance of u (per unit for an array).
    m : float or array
        Mean of u; q and m broadcast together.
    gamma : "variance", "geometric" or None

    Returns
    -------
    Transformation with arrays of the broadcast shape of q and m (0-d for scalars).

    Raises
    ------
    ValueError
        Unknown gamma, q <= 0 or non-finite q, m; an activation without a derivative; phi affine at this
        input law (nothing left to scale).

    Examples
    --------
    >>> from meanfield import transformations as tr
    >>> t = tr.gaussian("relu", q=1.0)
    >>> round(float(t.alpha), 12), round(float(t.beta), 12)
    (-0.5, -0.398942280401)
    """
    choice = _check_gamma_choice(gamma)
    a = _hermite_activation(act)
    if not a.has_derivative:
        raise ValueError(f"act={a.name!r} has no derivative: alpha = -E phi'(u) needs one (pass derivative= "
                         "to hermite.activation)")
    qa = _finite_array(q, "q")
    if np.any(qa <= 0):
        raise ValueError(f"q={q!r} must be > 0 (the variance of the pre-activation)")
    ma = _finite_array(m, "m")
    qb, mb = np.broadcast_arrays(qa, ma)
    shape = qb.shape
    Q, M = qb.ravel().copy(), mb.ravel().copy()
    Ephi = np.empty(Q.size)
    Edphi = np.empty(Q.size)
    Ephi2 = np.empty(Q.size)
    Edphi2 = np.empty(Q.size)
    cov = np.empty(Q.size)
    zero = M == 0.0
    if np.any(zero):
        uq, inv = np.unique(Q[zero], return_inverse=True)
        c = hermite.coefficients(a, 1, q=uq)
        Ephi[zero] = c[inv, 0]
        cov[zero] = (np.sqrt(uq) * c[:, 1])[inv]
        Ephi2[zero] = np.asarray(hermite.second_moment(a, q=uq))[inv]
        Edphi[zero] = a.mean_at(uq, 1)[inv]
        Edphi2[zero] = np.asarray(hermite.kernel(a, 1.0, q1=uq, derivative=1)).reshape(-1)[inv]
    for i in np.flatnonzero(~zero):
        Ephi[i], Edphi[i], Ephi2[i], Edphi2[i], cov[i] = _quad_moments(a, float(Q[i]), float(M[i]))
    alpha = -Edphi
    beta = -Ephi - alpha * M
    t = _make(alpha, beta, Ephi2 - Ephi * Ephi, cov, Q, Edphi2 - Edphi * Edphi, choice, "gaussian")
    return Transformation(*(getattr(t, k).reshape(shape) for k in ("alpha", "beta", "gamma")), choice,
                          t.var_output.reshape(shape), t.var_slope.reshape(shape))


def _phi_pair(phi, dphi) -> tuple[Callable, Callable]:
    """Numpy callables (phi, phi') from the arguments of `empirical`."""
    if dphi is not None:
        if not callable(phi) or not callable(dphi):
            raise ValueError(f"phi and dphi must be callables when dphi is given, got {phi!r}, {dphi!r}")
        return phi, dphi
    if isinstance(phi, fisher.Phi):
        return phi.fn, phi.d1
    if isinstance(phi, str) and phi in fisher.PHIS:
        p = fisher.PHIS[phi]
        return p.fn, p.d1
    if isinstance(phi, (str, hermite.Activation)):
        a = hermite.activation(phi)
        if not a.has_derivative:
            raise ValueError(f"phi={phi!r} has no derivative; pass dphi")
        return a.fn, a.derivative
    raise ValueError(f"dphi=None needs phi to be a name, a fisher.Phi or a hermite.Activation, got {phi!r}")


def empirical(phi, dphi, U: ArrayLike, gamma: str | None = "variance") -> Transformation:
    """alpha, beta, gamma per unit as averages over a data set of pre-activations (Vatanen et al. 2013).

    With <.> the average over the N rows of U (unit i is column i):

    .. math::
        \\alpha_i = -\\langle \\phi'(u_i) \\rangle, \\quad
        \\beta_i = -\\langle \\phi(u_i) \\rangle - \\alpha_i \\langle u_i \\rangle, \\quad
        \\gamma_i = \\langle g_i^2 \\rangle^{-1/2} \\ (\\text{variance}) \\text{ or }
        (\\langle g_i^2 \\rangle \\langle g_i'^2 \\rangle)^{-1/4} \\ (\\text{geometric}),

    g_i = phi(u_i) + alpha_i u_i + beta_i. By construction <f_i> = 0 and <f_i'> = 0 exactly (to
    round-off), and <f_i^2> = 1 for "variance". For rows drawn from N(m, q) the estimates converge to
    `gaussian` at rate 1/sqrt(N).

    Parameters
    ----------
    phi : callable, name, fisher.Phi or hermite.Activation
        The activation core (numpy-vectorized).
    dphi : callable or None
        Its derivative (None: taken from a named / Phi / Activation phi).
    U : array_like, shape (N, units)
        Pre-activations, one row per data point (a 1-D array is one unit).
    gamma : "variance", "geometric" or None

    Raises
    ------
    ValueError
        Empty batch (N = 0), a constant unit (a column of U with no spread: its transformation is
        degenerate), non-finite entries, unknown gamma, or a unit on which phi is affine over the data
        (g = 0, gamma undefined).
    """
    choice = _check_gamma_choice(gamma)
    f, df = _phi_pair(phi, dphi)
    Ua = _finite_array(U, "U")
    if Ua.ndim == 1:
        Ua = Ua[:, None]
    if Ua.ndim != 2:
        raise ValueError(f"U must be an (N, units) array of pre-activations, got shape {Ua.shape}")
    if Ua.shape[0] == 0 or Ua.shape[1] == 0:
        raise ValueError(f"U is an empty batch (shape {Ua.shape}); it needs at least 2 rows (data points) and "
                         "1 column (unit)")
    spread = np.ptp(Ua, axis=0)
    const = spread <= 8 * _EPS * np.max(np.abs(Ua), axis=0)
    if np.any(const):
        idx = np.flatnonzero(const).tolist()
        raise ValueError(f"U has constant units (columns) {idx[:10]}{' ...' if len(idx) > 10 else ''}: a unit "
                         "whose pre-activation does not vary over the data has no slope or output variance to "
                         f"estimate (N = {Ua.shape[0]} rows)")
    P = np.asarray(f(Ua), dtype=np.float64)
    D = np.asarray(df(Ua), dtype=np.float64)
    if P.shape != Ua.shape or D.shape != Ua.shape:
        raise ValueError(f"phi and dphi must map an array of shape {Ua.shape} to the same shape, got {P.shape} "
                         f"and {D.shape}")
    mu = Ua.mean(axis=0)
    alpha = -D.mean(axis=0)
    beta = -P.mean(axis=0) - alpha * mu
    G = P + alpha * Ua + beta
    Gd = D + alpha
    var_out = np.mean(G * G, axis=0)
    var_slope = np.mean(Gd * Gd, axis=0)
    scale = np.mean(P * P, axis=0) + alpha * alpha * np.mean(Ua * Ua, axis=0)
    var_out = np.where(var_out > 64 * _EPS * np.maximum(scale, np.finfo(float).tiny), var_out, 0.0)
    var_slope = np.where(var_slope > 64 * _EPS * np.maximum(np.mean(D * D, axis=0), np.finfo(float).tiny),
                         var_slope, 0.0)
    g = _gamma_value(var_out, var_slope, choice, "empirical (U)")
    return Transformation(alpha, beta, g, choice, var_out, var_slope)


def to_activation(act, t: Transformation) -> hermite.Activation:
    """The hermite Activation f(x) = gamma (act(x) + alpha x + beta) for a scalar Transformation.

    The affine parts compose exactly with act's own, f = gamma gamma_0 (phi(g x) + (alpha_0 + alpha/gamma_0)
    x + beta_0 + beta/gamma_0), so every closed form of the core is kept (exact kernels in both engines).
    """
    a = _hermite_activation(act)
    if not isinstance(t, Transformation):
        raise ValueError(f"t must be a Transformation (from gaussian or empirical), got {type(t).__name__}")
    if np.ndim(t.alpha) != 0:
        raise ValueError(f"t must be a single-unit (scalar) Transformation, got shape {np.shape(t.alpha)}")
    if a.gamma == 0:
        raise ValueError(f"act={a.name!r} has gamma = 0 (identically zero)")
    al, be, ga = float(t.alpha), float(t.beta), float(t.gamma)
    label = f"{a.name}, transformed ({t.choice or 'no gamma'})"
    return replace(a, alpha=a.alpha + al / a.gamma, beta=a.beta + be / a.gamma, gamma=a.gamma * ga, label=label)


# ----------------------------------------------------------------------------------------------------
# shortcut networks as meanfield descriptions
# ----------------------------------------------------------------------------------------------------
def _check_mix(mix) -> float:
    v = float(_finite_array(mix, "mix"))
    if not 0.0 < v <= 1.0:
        raise ValueError(f"mix={mix!r} must be in (0, 1] (the branch's share of the block output variance)")
    return v


def _check_nonneg(x, name: str) -> float:
    v = float(_finite_array(x, name))
    if v < 0:
        raise ValueError(f"{name}={x!r} must be >= 0")
    return v


def _block_activation(act: hermite.Activation, q: float, transformed: bool, choice: str | None):
    """(f, E f(u)^2) for the block's unit at pre-activation variance q."""
    if transformed:
        t = gaussian(act, q, 0.0, choice)
        f = to_activation(act, t)
        ef2 = 1.0 if choice == "variance" else float(t.gamma) ** 2 * float(t.var_output)
        return f, ef2
    if choice is None:
        return act, float(hermite.second_moment(act, q))
    m2 = float(hermite.second_moment(act, q))
    if choice == "variance":
        ga = 1.0 / math.sqrt(m2)
    else:
        md = float(hermite.kernel(act, 1.0, q1=q, derivative=1))
        ga = (m2 * md) ** -0.25
    f = replace(act, gamma=act.gamma * ga, label=f"{act.name}, scaled ({choice})")
    return f, ga * ga * m2


def shortcut_block(act="tanh", q: float = 1.0, *, transformed: bool = True, gamma: str | None = "variance",
                   mix: float = 0.5, sigma_b: float = 0.0, sigma_d: float = 0.0, width: int | None = None) -> Block:
    """One block y = A f(B x + b) + C x + d as a `meanfield.Block` (a Residual with a Dense shortcut).

    Residual(branch=[Dense(1, sigma_b), Activation(f), Dense(sqrt(mix))], alpha=1,
    shortcut=[Dense(sqrt(1 - mix), sigma_d)]): B_ij ~ N(0, 1/fan_in), b_i ~ N(0, sigma_b^2),
    A_ij ~ N(0, mix/H), C_ij ~ N(0, (1 - mix)/fan_in), d_i ~ N(0, sigma_d^2). Mean field (the shortcut and
    the branch start with their own random weights, so they are independent given x):

        K_out = (1 - mix) K + mix E[f(u_a) f(u_b)] + sigma_d^2,   u ~ N(0, K + sigma_b^2).

    f is the Gaussian-estimated transformation of ``act`` at pre-activation variance ``q``
    (``transformed=True``), or ``act`` with only the scale of the same ``gamma`` rule
    (``transformed=False``: "variance" scales act to unit second moment, "geometric" to
    E f^2 E f'^2 = 1, None leaves it as is) -- the untransformed comparison network.
    ``width`` fixes the hidden width (None: the simulator's width); the output width is the simulator's.
    """
    choice = _check_gamma_choice(gamma)
    a = _hermite_activation(act)
    qv = float(_finite_array(q, "q"))
    if not qv > 0:
        raise ValueError(f"q={q!r} must be > 0")
    mx = _check_mix(mix)
    sb, sd = _check_nonneg(sigma_b, "sigma_b"), _check_nonneg(sigma_d, "sigma_d")
    f, _ = _block_activation(a, qv, bool(transformed), choice)
    res = Residual(branch=(Dense(1.0, sb, width=width), Activation(f), Dense(math.sqrt(mx))), alpha=1.0,
                   shortcut=(Dense(math.sqrt(1.0 - mx), sd),))
    return Block((res,), name="shortcut")


def shortcut_network(depth: int, act="tanh", *, transformed: bool = True, gamma: str | None = "variance",
                     mix: float = 0.5, sigma_b: float = 0.0, sigma_d: float = 0.0, input_variance: float = 1.0,
                     width: int | None = None) -> Network:
    """``depth`` stacked shortcut blocks (see `shortcut_block`), transformations fitted block by block.

    Block l's unit sees u ~ N(0, q_l) with q_l = v_{l-1} + sigma_b^2, where v_0 = ``input_variance`` is the
    inputs' (common) second moment K_aa and v_l = (1 - mix) v_{l-1} + mix E f_l(u)^2 + sigma_d^2; the
    transformation of block l is `gaussian` at q_l -- what the empirical estimator gives on data whose
    per-unit pre-activations are N(0, q_l) over the data set. With gamma="variance", sigma_b = sigma_d = 0
    and unit input variance every q_l = v_l = 1, and the correlation map of one block is
    rho -> (1 - mix) rho + mix sum_{k>=2} c_k^2 rho^k (`correlation_map`): only Hermite orders >= 2 of
    the transformed unit remain.
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth={depth!r} must be an integer >= 1")
    choice = _check_gamma_choice(gamma)
    a = _hermite_activation(act)
    mx = _check_mix(mix)
    sb, sd = _check_nonneg(sigma_b, "sigma_b"), _check_nonneg(sigma_d, "sigma_d")
    v = float(_finite_array(input_variance, "input_variance"))
    if not v > 0:
        raise ValueError(f"input_variance={input_variance!r} must be > 0")
    blocks = []
    for _ in range(int(depth)):
        q = v + sb * sb
        f, ef2 = _block_activation(a, q, bool(transformed), choice)
        res = Residual(branch=(Dense(1.0, sb, width=width), Activation(f), Dense(math.sqrt(mx))), alpha=1.0,
                       shortcut=(Dense(math.sqrt(1.0 - mx), sd),))
        blocks.append(Block((res,), name="shortcut"))
        v = (1.0 - mx) * v + mx * ef2 + sd * sd
    return Network(blocks)


def correlation_map(act, rho: ArrayLike, q: float = 1.0, *, transformed: bool = True,
                    gamma: str | None = "variance", mix: float = 0.5) -> np.ndarray:
    """One shortcut block's correlation map at infinite width (inputs with K_aa = K_bb = q, no biases).

    .. math:: \\rho' = \\frac{(1 - \\text{mix})\\, q \\rho + \\text{mix}\\, E[f(u) f(v)]}
              {(1 - \\text{mix})\\, q + \\text{mix}\\, E f(u)^2}
              = \\frac{(1 - \\text{mix})\\, q\\rho + \\text{mix} \\sum_k c_k(q)^2 \\rho^k}{\\dots}

    (Mehler). For the transformed unit c_0 = c_1 = 0, so only orders k >= 2 remain; since
    |rho|^k <= |rho|^2 for k >= 2 the branch's share of |rho'| is at most rho^2.
    """
    choice = _check_gamma_choice(gamma)
    a = _hermite_activation(act)
    qv = float(_finite_array(q, "q"))
    if not qv > 0:
        raise ValueError(f"q={q!r} must be > 0")
    mx = _check_mix(mix)
    r = _finite_array(rho, "rho")
    if np.any(np.abs(r) > 1):
        raise ValueError(f"rho={rho!r} must lie in [-1, 1]")
    f, ef2 = _block_activation(a, qv, bool(transformed), choice)
    kf = hermite.kernel(f, r, q1=qv)
    return ((1 - mx) * qv * r + mx * np.asarray(kf)) / ((1 - mx) * qv + mx * ef2)


def depth_curves(act="tanh", depth: int = 30, K0: ArrayLike | None = None, rho0: float = 0.9, **network) -> dict:
    """Mean-field depth curves of the transformed shortcut network next to the plain one.

    Runs `meanfield.propagate` on ``shortcut_network(depth, act, transformed=True, **network)`` and on the
    same network with ``transformed=False`` (same gamma rule, no removal of Hermite orders 0 and 1).

    Parameters
    ----------
    act : activation
    depth : int
    K0 : (n, n) Gram, optional
        Input Gram (default [[1, rho0], [rho0, 1]]).
    rho0 : float
        Input correlation of the default 2 x 2 Gram.
    **network
        Passed to `shortcut_network` (gamma, mix, sigma_b, sigma_d, input_variance).

    Returns
    -------
    dict with "depth" (L+1,), and for each of "transformed" and "plain": "<name>" the Trajectory,
    "rho_<name>" the mean off-diagonal correlation per depth, "abs_rho_<name>" the largest |rho_ab|,
    "gap_<name>" the isometry gap per depth.
    """
    if K0 is None:
        r0 = float(_finite_array(rho0, "rho0"))
        if not -1 <= r0 <= 1:
            raise ValueError(f"rho0={rho0!r} must lie in [-1, 1]")
        K0 = np.array([[1.0, r0], [r0, 1.0]])
    out: dict = {"depth": np.arange(depth + 1)}
    for name, tf in (("transformed", True), ("plain", False)):
        traj = propagate(shortcut_network(depth, act, transformed=tf, **network), K0)
        rho = traj.correlations()
        n = rho.shape[-1]
        off = ~np.eye(n, dtype=bool)
        out[name] = traj
        out[f"rho_{name}"] = traj.mean_correlation()
        out[f"abs_rho_{name}"] = np.max(np.abs(rho[:, off]), axis=-1) if n > 1 else np.zeros(depth + 1)
        out[f"gap_{name}"] = traj.isometry_gap()
    return out


# ----------------------------------------------------------------------------------------------------
# explicit parameters (fisher.ShortcutMLP): estimation from data and the function-preserving update
# ----------------------------------------------------------------------------------------------------
def _check_net(net) -> None:
    if not isinstance(net, fisher.ShortcutMLP):
        raise ValueError(f"net must be a meanfield.fisher.ShortcutMLP, got {type(net).__name__}")


def preactivations(net: fisher.ShortcutMLP, X: ArrayLike) -> list[np.ndarray]:
    """The hidden pre-activations u_k = B_k z_{k-1} + b_k of every block on the data X, each (N, H_k)."""
    _check_net(net)
    Xa = fisher._check_X(net, X)
    _, caches = fisher._forward(net, Xa)
    return [c.u for c in caches]


def _per_unit(x, n: int, name: str, default: np.ndarray) -> np.ndarray:
    if x is None:
        return default
    a = _finite_array(x, name)
    try:
        return np.array(np.broadcast_to(a, (n,)), dtype=np.float64)
    except ValueError:
        raise ValueError(f"{name} must be a scalar or have shape ({n},) (one value per hidden unit), got shape "
                         f"{a.shape}") from None


def reparameterize(net: fisher.ShortcutMLP, block: int, alpha: ArrayLike | None = None,
                   beta: ArrayLike | None = None, gamma: ArrayLike | None = None) -> fisher.ShortcutMLP:
    """Change block ``block``'s (alpha, beta, gamma) without changing the network's function.

    With old (a0, b0, g0) and new (a1, b1, g1) per hidden unit (see the module docstring for the
    derivation):

    .. math::
        A' = A\\,\\mathrm{diag}(g_0/g_1), \\quad
        C' = C + A\\,\\mathrm{diag}(g_0 (a_0 - a_1))\\, B, \\quad
        d' = d + A\\,[g_0 ((a_0 - a_1) b + b_0 - b_1)]

    so A' f_new(B z + b) + C' z + d' = A f_old(B z + b) + C z + d for every z (exactly in real
    arithmetic, to float64 round-off in practice). None keeps the old value.

    Raises
    ------
    ValueError
        Bad block index, a new gamma equal to 0, or a change of alpha in a block without a shortcut C
        (the linear part then has nowhere to go).
    """
    _check_net(net)
    K = len(net.blocks)
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or not 0 <= block < K:
        raise ValueError(f"block={block!r} must be an integer in [0, {K - 1}]")
    blk = net.blocks[block]
    H = blk.n_hidden
    a0, b0, g0 = blk.alpha, blk.beta, blk.gamma
    a1 = _per_unit(alpha, H, "alpha", a0)
    b1 = _per_unit(beta, H, "beta", b0)
    g1 = _per_unit(gamma, H, "gamma", g0)
    if np.any(g1 == 0):
        raise ValueError(f"gamma must be nonzero for every unit (units {np.flatnonzero(g1 == 0).tolist()} are 0): "
                         "a zero gamma cannot preserve the function")
    da = a0 - a1
    if not blk.shortcut and np.any(da != 0):
        raise ValueError(f"block {block} has no shortcut C, so a change of alpha (units "
                         f"{np.flatnonzero(da != 0).tolist()[:10]}) cannot be moved into the shortcut; build the "
                         "network with shortcut=True")
    P = {k: np.array(v) for k, v in net.unflatten().items()}
    nm = lambda s: net._name(s, block)
    A, B, b, d = P[nm("A")], P[nm("B")], P[nm("b")], P[nm("d")]
    P[nm("A")] = A * (g0 / g1)[None, :]
    if blk.shortcut:
        P[nm("C")] = P[nm("C")] + (A * (g0 * da)[None, :]) @ B
    P[nm("d")] = d + A @ (g0 * (da * b + b0 - b1))
    out = net.with_transform(block, alpha=a1, beta=b1, gamma=g1)
    return out.with_theta(out.flatten(P))


def update_transforms(net: fisher.ShortcutMLP, X: ArrayLike, gamma: str | None = "variance",
                      blocks: Sequence[int] | None = None, preserve: bool = True) -> fisher.ShortcutMLP:
    """Re-estimate every block's transformation on the data X (`empirical`) and apply it.

    One forward pass gives each block's pre-activations U_k (N, H_k); the new (alpha, beta, gamma) are
    `empirical`(phi_k, phi_k', U_k, gamma). With ``preserve=True`` (default) they are applied with
    `reparameterize`, so the network's outputs are unchanged (and, since each block's output is
    unchanged, so are the pre-activations of the blocks above: one forward pass suffices). With
    ``preserve=False`` only the transformations are replaced (the function changes).

    Parameters
    ----------
    net : fisher.ShortcutMLP
    X : (N, n_in) data
    gamma : "variance", "geometric" or None
    blocks : indices of the blocks to update (default all)
    preserve : bool
    """
    _check_net(net)
    choice = _check_gamma_choice(gamma)
    U = preactivations(net, X)
    K = len(net.blocks)
    idx = range(K) if blocks is None else list(blocks)
    for k in idx:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < K:
            raise ValueError(f"blocks={blocks!r} must hold block indices in [0, {K - 1}]")
    out = net
    for k in idx:
        phi = net.blocks[k].phi
        t = empirical(phi.fn, phi.d1, U[k], choice)
        if preserve:
            out = reparameterize(out, k, t.alpha, t.beta, t.gamma)
        else:
            out = out.with_transform(k, alpha=t.alpha, beta=t.beta, gamma=t.gamma)
    return out


def transformed_shortcut_mlp(widths: Sequence[int], phi="tanh", X: ArrayLike | None = None,
                             gamma: str | None = "variance", seed=0, sigma_w: float = 1.0, sigma_b: float = 0.0,
                             shortcut=True) -> fisher.ShortcutMLP:
    """A random `fisher.shortcut_mlp` with its transformations estimated on X (function-preserving).

    The returned network computes exactly the same function as ``fisher.shortcut_mlp(widths, phi, ...,
    seed)`` (the plain, untransformed initialization); only the parameterization differs -- which is the
    point of Vatanen et al.: same model, better-conditioned gradient. X is required.
    """
    if X is None:
        raise ValueError("X is required: the transformations are estimated on data")
    net = fisher.shortcut_mlp(widths, phi, shortcut, seed, sigma_w, sigma_b)
    return update_transforms(net, X, gamma)


def unit_stats(net: fisher.ShortcutMLP, X: ArrayLike) -> list[dict]:
    """Per block and hidden unit: the scale of the unit's input and of its contribution to the output.

    For unit i of block k on the data X: ``input_std`` = std over the data of u_i = B_i z + b_i,
    ``output_rms`` = ||A[:, i]|| sqrt(<f_i(u_i)^2>) (the rms size of the unit's term A[:, i] f_i in the
    block output), ``gamma`` = gamma_i. Vatanen et al. report that the gamma transformation can drive
    units to near-zero input and output; these are the numbers to look at.
    """
    _check_net(net)
    Xa = fisher._check_X(net, X)
    _, caches = fisher._forward(net, Xa)
    P = net.unflatten()
    out = []
    for k, (blk, c) in enumerate(zip(net.blocks, caches)):
        A = P[net._name("A", k)]
        out.append({"input_std": c.u.std(axis=0), "output_rms": np.linalg.norm(A, axis=0) *
                    np.sqrt(np.mean(c.a * c.a, axis=0)), "gamma": blk.gamma.copy()})
    return out


@dataclass
class TrainResult:
    """Output of `train`.

    Attributes
    ----------
    steps : (R,) int array
        The recorded steps (0, record_every, 2 record_every, ...).
    losses : (R,) float array
        Full-batch training loss at those steps (NaN after a divergence).
    net : fisher.ShortcutMLP
        The final network.
    history : list
        `unit_stats` at every recorded step (when ``track_units``; else only the last).
    diverged : bool
        True when the parameters or the loss became non-finite (training stopped there).
    """

    steps: np.ndarray
    losses: np.ndarray
    net: fisher.ShortcutMLP
    history: list = field(default_factory=list)
    diverged: bool = False


def train(net: fisher.ShortcutMLP, X: ArrayLike, Y: ArrayLike, *, steps: int = 1000, lr: float = 0.05,
          batch_size: int = 32, transform: bool = False, gamma: str | None = "variance", every: int = 50,
          seed: int = 0, record_every: int = 10, track_units: bool = False) -> TrainResult:
    """Minibatch SGD on the squared loss L = 1/(2N) sum ||y - y_n||^2, with or without transformations.

    Each step draws ``batch_size`` rows without replacement and moves theta by -lr * grad (the gradient of
    `fisher.gradient`; alpha, beta, gamma are not trained). With ``transform=True`` the transformations are
    re-estimated on all of X before the first step and then every ``every`` steps with `update_transforms`
    (function-preserving: the removed linear parts move into the shortcuts), as in Vatanen et al. (2013).
    The full-batch training loss is recorded every ``record_every`` steps (and `unit_stats` with
    ``track_units``); if the parameters or the loss become non-finite, training stops (``diverged``) and
    the rest of the curve is NaN. A unit whose transformation becomes undefined (phi affine over the data)
    raises the ValueError of `empirical`.
    """
    _check_net(net)
    choice = _check_gamma_choice(gamma)
    Xa = fisher._check_X(net, X)
    Ya = fisher._check_Y(net, Y, Xa.shape[0])
    for name, v in (("steps", steps), ("batch_size", batch_size), ("every", every), ("record_every", record_every)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}={v!r} must be an integer >= 1")
    if batch_size > Xa.shape[0]:
        raise ValueError(f"batch_size={batch_size} exceeds the number of samples N={Xa.shape[0]}")
    lr = float(_finite_array(lr, "lr"))
    if not lr > 0:
        raise ValueError(f"lr={lr!r} must be > 0")
    rng = np.random.default_rng(check_seed("train", seed, generator=True))
    N = Xa.shape[0]
    if transform:
        net = update_transforms(net, Xa, choice)
    rec_steps = np.arange(0, steps + 1, record_every)
    losses = np.full(rec_steps.size, np.nan)
    losses[0] = fisher.loss(net, Xa, Ya)
    history = [unit_stats(net, Xa)] if track_units else []
    diverged = False
    r = 1
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(1, steps + 1):
            if transform and step > 1 and (step - 1) % every == 0:
                net = update_transforms(net, Xa, choice)
            idx = rng.choice(N, batch_size, replace=False)
            theta = net.theta - lr * fisher.gradient(net, Xa[idx], Ya[idx])
            if not np.all(np.isfinite(theta)) or np.max(np.abs(theta)) > 1e100:
                diverged = True
                break
            net = net.with_theta(theta)
            if step % record_every == 0:
                val = fisher.loss(net, Xa, Ya)
                if not math.isfinite(val) or val > 1e100:
                    diverged = True
                    break
                losses[r] = val
                r += 1
                if track_units:
                    history.append(unit_stats(net, Xa))
    if not track_units and not diverged:
        history = [unit_stats(net, Xa)]
    return TrainResult(rec_steps, losses, net, history, diverged)
