"""Transformations in nonlinearities (Vatanen et al. 2013): per-unit estimates, the gamma forms, the Hermite view.

Sources
-------
T. Raiko, H. Valpola and Y. LeCun (2012), "Deep learning made easier by linear transformations in
perceptrons" (AISTATS 2012): the transformations alpha, beta with linear shortcut connections.
T. Vatanen, T. Raiko, H. Valpola and Y. LeCun (2013), "Pushing stochastic gradient towards second-order
methods - backpropagation learning with transformations in nonlinearities" (ICONIP 2013, arXiv:1301.3476):
the third transformation gamma. The definitions below follow the authors' code, ``tvatanen/ltmlp-neuralnet``
(ltmlp_transform.m, nonlin.m), line by line where they are the paper's.

The transformation (the paper's)
--------------------------------
Every hidden unit i of a nonlinear layer applies (nonlin.m line 12, type "tanh")

    f_i(x) = gamma_i (phi(x) + alpha_i x + beta_i),

with, ``<.>`` the average over the data set (the whole training input, "updating transformations with full
batch"), and f~_i = phi + alpha_i x + beta_i (the unit with gamma = 1),

    alpha_i = -<phi'(x)>                     (ltmlp_transform.m line 34: zero average slope)
    beta_i  = -<phi(x) + alpha_i x>          (line 36: zero average output)

and gamma_i by one of the authors' two forms, each with its regularizing constant::

    "vatanen_geometric" (gammatype 1, their default, lines 70-74):
        gamma_i = (<f~_i^2> <f~_i'^2> + 1e-4)^(-1/4)
    "vatanen_variance"  (gammatype 2, lines 76-78):
        gamma_i = (<f~_i^2> + 1e-2)^(-1/2)

The constants cap gamma at 1e-4^(-1/4) = 1e-2^(-1/2) = 10 for a unit whose transformed output vanishes.
``gamma=None`` leaves gamma out (the code's default ``num_transf = 2``, ltmlp_opt.m line 16).

The toolkit's extensions (not the paper's)
------------------------------------------
- The unregularized forms "unit_geometric", gamma = (<f~^2> <f~'^2>)^(-1/4) (so std(f) rms(f') = 1 exactly),
  and "unit_variance", gamma = <f~^2>^(-1/2) (<f^2> = 1 exactly; for a Gaussian input this is
  ``hermite.transform(phi, remove=(0, 1), q=q)``). They are undefined (ValueError) for a unit on which phi is
  affine over the data.
- The Gaussian estimator `gaussian(act, q, m)`: the same averages as expectations over x ~ N(m, q), exact.
  Since <f~> = 0 and <f~'> = 0, <f~^2> and <f~'^2> are the variances of the output and the slope; for m = 0,
  Stein's lemma gives alpha = -c_1(q)/sqrt(q) and beta = -c_0(q) in the orthonormal Hermite convention, so the
  transformation removes the Hermite orders 0 and 1 of the unit at its input variance.
- The mean-field picture: one shortcut block y = A f(B x + b) + C x + d (the paper's one-hidden-layer network,
  with random Gaussian weights) as a `meanfield.Network` that both engines run (`shortcut_block`), stacks of
  such blocks (`shortcut_network`; not the paper's deep model, which is `meanfield.shortcuts.network`), their
  correlation map (`correlation_map`) and depth curves (`depth_curves`).

Estimates
---------
`empirical(act, U, gamma)` averages over the rows of pre-activations U (N, units), as the paper does;
`gaussian(act, q, m, gamma)` takes x ~ N(m, q) (per unit when q, m are arrays): for m = 0 through the Hermite
coefficients c_0, c_1 (`hermite.coefficients`), the second moment (`hermite.second_moment`) and E phi'^2
(`hermite.kernel` with derivative=1 at rho = 1), i.e. exactly; for m != 0 by composite Gauss-Legendre
quadrature in z (x = m + sqrt(q) z) split at phi's kinks, accurate to ~1e-14. Both return a `TransformEstimate`,
whose ``activation(base)`` is the transformed unit as a `hermite.Activation` (per-unit for several units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike

import hermite
from hermite.quadrature import gaussian_expectation
from meanfield.core.validate import check_array, check_choice, check_int, check_real
from meanfield.infinite import propagate
from meanfield.layers import Activation, Block, Dense, Residual
from meanfield.network import Network

__all__ = [
    "GAMMA_FORMS",
    "REGULARIZERS",
    "gamma_value",
    "TransformEstimate",
    "gaussian",
    "empirical",
    "correlation_map",
    "shortcut_block",
    "shortcut_network",
    "depth_curves",
]

#: the gamma forms: the paper's two (with the authors' regularizers) and the toolkit's two, and None
GAMMA_FORMS = ("vatanen_geometric", "vatanen_variance", "unit_geometric", "unit_variance", None)
#: the authors' additive constants (ltmlp_transform.m lines 74 and 78)
REGULARIZERS = {"vatanen_geometric": 1e-4, "vatanen_variance": 1e-2}
_EPS = np.finfo(np.float64).eps


def _form(owner: str, gamma) -> str | None:
    return check_choice(owner, "gamma", gamma, GAMMA_FORMS)


def gamma_value(mean_square: ArrayLike, slope_mean_square: ArrayLike, gamma: str | None = "vatanen_geometric",
                owner: str = "transformations.gamma_value") -> np.ndarray:
    """gamma from <f~^2> and <f~'^2> (f~ = phi + alpha x + beta, the unit with gamma = 1).

    .. math::
        \\text{vatanen\\_geometric (the paper's default, gammatype 1)}: \\gamma = (\\langle \\tilde f^2\\rangle
        \\langle \\tilde f'^2\\rangle + 10^{-4})^{-1/4};\\quad
        \\text{vatanen\\_variance (gammatype 2)}: \\gamma = (\\langle \\tilde f^2\\rangle + 10^{-2})^{-1/2};

        \\text{unit\\_geometric (toolkit)}: (\\langle \\tilde f^2\\rangle\\langle \\tilde f'^2\\rangle)^{-1/4};\\quad
        \\text{unit\\_variance (toolkit)}: \\langle \\tilde f^2\\rangle^{-1/2};\\quad \\text{None}: 1.

    The first two follow ltmlp_transform.m lines 70-74 and 76-78 of the authors' code. The unregularized forms
    raise ValueError where their moments vanish (phi affine over the data: nothing left to scale).

    Parameters
    ----------
    mean_square, slope_mean_square : array_like >= 0
        <f~^2> and <f~'^2> per unit (broadcast together).
    gamma : one of `GAMMA_FORMS`

    Returns
    -------
    ndarray of the broadcast shape
    """
    form = _form(owner, gamma)
    v = np.asarray(check_array(owner, "mean_square", mean_square))
    s = np.asarray(check_array(owner, "slope_mean_square", slope_mean_square))
    v, s = np.broadcast_arrays(v, s)
    if np.any(v < 0) or np.any(s < 0):
        raise ValueError(f"{owner}: mean_square and slope_mean_square must be >= 0, got minima {v.min()!r}, "
                         f"{s.min()!r}")
    if form is None:
        return np.ones(v.shape)
    if form == "vatanen_geometric":
        return (v * s + REGULARIZERS[form]) ** -0.25
    if form == "vatanen_variance":
        return (v + REGULARIZERS[form]) ** -0.5
    bad = ~(v > 0) if form == "unit_variance" else ~((v > 0) & (s > 0))
    if np.any(bad):
        idx = np.flatnonzero(bad.ravel()).tolist()
        raise ValueError(f"{owner}: units {idx[:10]}{' ...' if len(idx) > 10 else ''} have zero output "
                         f"{'or slope ' if form == 'unit_geometric' else ''}variance after removing the mean and the "
                         f"linear part (phi is affine over their inputs), so gamma={form!r} (the toolkit's "
                         "unregularized form) is undefined; use gamma='vatanen_geometric' or 'vatanen_variance' (the "
                         "paper's, regularized) or None")
    return v ** -0.5 if form == "unit_variance" else (v * s) ** -0.25


@dataclass(frozen=True)
class TransformEstimate:
    """The estimated transformation of one or several units, with its diagnostic moments (a result record).

    Attributes
    ----------
    alpha, beta, gamma : ndarray
        One value per unit (0-d for a single Gaussian unit).
    gamma_form : str or None
        Which gamma (`GAMMA_FORMS`; "vatanen_*" are the paper's, "unit_*" the toolkit's).
    mean_square, slope_mean_square : ndarray
        <f~^2> and <f~'^2> for f~ = phi + alpha x + beta (zero mean output and slope by construction, so
        these are the variances of the unit's output and slope before gamma).
    """

    alpha: np.ndarray
    beta: np.ndarray
    gamma: np.ndarray
    gamma_form: str | None
    mean_square: np.ndarray
    slope_mean_square: np.ndarray

    @property
    def units(self) -> int | None:
        """The number of units (None for a single 0-d estimate)."""
        return None if np.ndim(self.alpha) == 0 else int(np.size(self.alpha))

    def activation(self, base="tanh") -> hermite.Activation:
        """The transformed unit f(x) = gamma (base(x) + alpha x + beta) as a `hermite.Activation`.

        A 0-d estimate gives a scalar activation (every closed form of ``base`` is kept: the affine parts
        compose, f = gamma gamma_0 (phi(g x) + (alpha_0 + alpha/gamma_0) x + beta_0 + beta/gamma_0)); a 1-D
        estimate gives a per-unit activation (alpha, beta, gamma one value per unit), which the simulator runs
        and which has no infinite-width rule.
        """
        a = hermite.activation(base)
        if a.per_unit:
            raise ValueError(f"TransformEstimate.activation: base={a.name!r} has per-unit parameters; give the plain "
                             "nonlinearity phi")
        if a.gamma == 0:
            raise ValueError(f"TransformEstimate.activation: base={a.name!r} has gamma = 0 (identically zero)")
        al, be, ga = (np.asarray(getattr(self, k), dtype=float) for k in ("alpha", "beta", "gamma"))
        if al.ndim == 0:
            al, be, ga = float(al), float(be), float(ga)
            label = f"{a.name}, transformed (gamma {self.gamma_form})"
        else:
            label = f"{a.name}, transformed per unit ({al.size} units, gamma {self.gamma_form})"
        return replace(a, alpha=a.alpha + al / a.gamma, beta=a.beta + be / a.gamma, gamma=a.gamma * ga, label=label)


def _activation(owner: str, act) -> hermite.Activation:
    a = hermite.activation(act)
    if a.per_unit:
        raise ValueError(f"{owner}: act={a.name!r} has per-unit parameters; give the plain nonlinearity phi")
    if not a.has_derivative:
        raise ValueError(f"{owner}: act={a.name!r} has no derivative: alpha = -<phi'(x)> needs one (pass "
                         "derivative= to hermite.activation)")
    return a


def _estimate(owner, alpha, beta, var_out, var_slope, form, shape=None) -> TransformEstimate:
    g = gamma_value(var_out, var_slope, form, owner)
    arrs = [np.asarray(x, dtype=float) for x in (alpha, beta, g, var_out, var_slope)]
    if shape is not None:
        arrs = [x.reshape(shape) for x in arrs]
    return TransformEstimate(arrs[0], arrs[1], arrs[2], form, arrs[3], arrs[4])


# ----------------------------------------------------------------------------------------------------
# the two estimators
# ----------------------------------------------------------------------------------------------------
def _quad_moments(act: hermite.Activation, q: float, m: float) -> np.ndarray:
    """(E phi, E phi', E phi^2, E phi'^2, E[phi (x - m)]) for x ~ N(m, q) by split composite quadrature
    (`hermite.quadrature.gaussian_expectation`, its tail checked on E phi^2)."""

    def moments(u):
        f = act.fn(u)
        d = act.derivative(u)
        return np.stack([f, d, f * f, d * d, f * (u - m)])

    return gaussian_expectation(moments, m, q, kinks=act.kinks, features=act.features, gain=act.gain, tail_rows=2)


def gaussian(act="tanh", q: ArrayLike = 1.0, m: ArrayLike = 0.0,
             gamma: str | None = "vatanen_geometric") -> TransformEstimate:
    """alpha, beta, gamma of Vatanen et al. (2013) for a Gaussian pre-activation x ~ N(m, q) (toolkit estimator).

    The paper's averages over the data (`empirical`) taken as expectations over x ~ N(m, q):

    .. math::
        \\alpha = -E\\,\\phi'(x), \\quad \\beta = -E\\,\\phi(x) - \\alpha m, \\quad
        E \\tilde f^2 = \\mathrm{Var}\\,\\phi + 2\\alpha\\,\\mathrm{Cov}(\\phi, x) + \\alpha^2 q, \\quad
        E \\tilde f'^2 = \\mathrm{Var}\\,\\phi',

    and gamma from them by `gamma_value` (the paper's "vatanen_geometric" by default). For m = 0 everything is
    exact through the Hermite expansion (c_k(q) = E[phi(sqrt(q) z) h_k(z)]): E phi = c_0(q),
    Cov(phi, x) = sqrt(q) c_1(q), E phi^2 = `hermite.second_moment`, E phi' and E phi'^2 from `hermite.kernel`
    (derivative=1); for a continuous phi, alpha = -c_1(q)/sqrt(q) and beta = -c_0(q) (Stein's lemma), so the
    transformed unit has no Hermite orders 0 and 1. For m != 0, kink-split composite Gauss-Legendre quadrature.
    Closed forms, e.g. ReLU at m = 0: alpha = -1/2, beta = -sqrt(q/(2 pi)), E f~^2 = q (1/4 - 1/(2 pi)),
    E f~'^2 = 1/4.

    Parameters
    ----------
    act : activation (name, formula, callable with a derivative, or hermite.Activation)
    q : float or array > 0
        Variance of x (per unit for an array).
    m : float or array
        Mean of x; q and m broadcast together.
    gamma : one of `GAMMA_FORMS`

    Returns
    -------
    TransformEstimate with arrays of the broadcast shape of q and m (0-d for scalars).

    Examples
    --------
    >>> from meanfield import transformations as tr
    >>> t = tr.gaussian("relu", q=1.0)
    >>> round(float(t.alpha), 12), round(float(t.beta), 12)
    (-0.5, -0.398942280401)
    """
    owner = "transformations.gaussian"
    form = _form(owner, gamma)
    a = _activation(owner, act)
    qa = check_array(owner, "q", q)
    if np.any(qa <= 0):
        raise ValueError(f"{owner}: q={q!r} must be > 0 (the variance of the pre-activation)")
    ma = check_array(owner, "m", m)
    qb, mb = np.broadcast_arrays(qa, ma)
    shape = qb.shape
    Q, M = qb.ravel().copy(), mb.ravel().copy()
    Ephi, Edphi, Ephi2, Edphi2, cov = (np.empty(Q.size) for _ in range(5))
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
    var_phi, var_dphi = Ephi2 - Ephi * Ephi, Edphi2 - Edphi * Edphi
    var_out = var_phi + 2.0 * alpha * cov + alpha * alpha * Q
    # round-off level differences are zero (phi affine at this input law)
    var_out = np.where(var_out > 64 * _EPS * np.maximum(np.abs(var_phi) + alpha * alpha * Q, 1e-300), var_out, 0.0)
    var_slope = np.where(var_dphi > 64 * _EPS * np.maximum(Edphi2, 1e-300), var_dphi, 0.0)
    return _estimate(owner, alpha, beta, var_out, var_slope, form, shape)


def empirical(act, U: ArrayLike, gamma: str | None = "vatanen_geometric") -> TransformEstimate:
    """alpha, beta, gamma per unit as averages over a data set of pre-activations: the paper's estimator.

    With <.> the average over the N rows of U (unit i is column i), as in ltmlp_transform.m lines 34-36 and
    70-78 (the authors average over the whole training input):

    .. math::
        \\alpha_i = -\\langle \\phi'(u_i) \\rangle, \\quad
        \\beta_i = -\\langle \\phi(u_i) + \\alpha_i u_i \\rangle, \\quad
        \\gamma_i = (\\langle \\tilde f_i^2 \\rangle \\langle \\tilde f_i'^2 \\rangle + 10^{-4})^{-1/4}
        \\ \\text{(vatanen\\_geometric, the default; other forms: `gamma_value`)},

    f~_i = phi(u_i) + alpha_i u_i + beta_i. By construction <f_i> = 0 and <f_i'> = 0 exactly (to round-off).
    For rows drawn from N(m, q) the estimates converge to `gaussian` at rate 1/sqrt(N).

    Parameters
    ----------
    act : activation phi (name, formula, callable with a derivative, or hermite.Activation)
    U : array_like, shape (N, units)
        Pre-activations, one row per data point (a 1-D array is one unit).
    gamma : one of `GAMMA_FORMS`

    Raises
    ------
    ValueError
        An empty batch, a constant unit (a column of U with no spread), non-finite entries, an unknown gamma,
        or, for the toolkit's unregularized forms, a unit on which phi is affine over the data.
    """
    owner = "transformations.empirical"
    form = _form(owner, gamma)
    a = _activation(owner, act)
    Ua = check_array(owner, "U", U, ndim=(1, 2))
    if Ua.ndim == 1:
        Ua = Ua[:, None]
    if Ua.shape[0] == 0 or Ua.shape[1] == 0:
        raise ValueError(f"{owner}: U is an empty batch (shape {Ua.shape}); it needs at least 2 rows (data points) "
                         "and 1 column (unit)")
    const = np.ptp(Ua, axis=0) <= 8 * _EPS * np.max(np.abs(Ua), axis=0)
    if np.any(const):
        idx = np.flatnonzero(const).tolist()
        raise ValueError(f"{owner}: U has constant units (columns) {idx[:10]}{' ...' if len(idx) > 10 else ''}: a "
                         "unit whose pre-activation does not vary over the data has no slope or output variance to "
                         f"estimate (N = {Ua.shape[0]} rows)")
    P, D = a.fn(Ua), a.derivative(Ua)
    alpha = -D.mean(axis=0)
    beta = -(P + alpha * Ua).mean(axis=0)
    G, Gd = P + alpha * Ua + beta, D + alpha
    var_out, var_slope = np.mean(G * G, axis=0), np.mean(Gd * Gd, axis=0)
    scale = np.mean(P * P, axis=0) + alpha * alpha * np.mean(Ua * Ua, axis=0)
    var_out = np.where(var_out > 64 * _EPS * np.maximum(scale, 1e-300), var_out, 0.0)
    var_slope = np.where(var_slope > 64 * _EPS * np.maximum(np.mean(D * D, axis=0), 1e-300), var_slope, 0.0)
    return _estimate(owner + " (U)", alpha, beta, var_out, var_slope, form)


# ----------------------------------------------------------------------------------------------------
# the toolkit's mean-field picture: shortcut blocks y = A f(B x + b) + C x + d with random weights
# ----------------------------------------------------------------------------------------------------
def _check_mix(owner: str, mix) -> float:
    return check_real(owner, "mix", mix, 0.0, 1.0, lo_open=True)


def _block_activation(act: hermite.Activation, q: float, transformed: bool, form: str | None):
    """(f, E f(x)^2) for the block's unit at pre-activation variance q."""
    if transformed:
        t = gaussian(act, q, 0.0, form)
        return t.activation(act), float(t.gamma) ** 2 * float(t.mean_square)
    m2 = float(hermite.second_moment(act, q))
    md = float(hermite.kernel(act, 1.0, q1=q, derivative=1))
    ga = float(gamma_value(m2, md, form, "transformations.shortcut_block"))
    if ga == 1.0:
        return act, m2
    return replace(act, gamma=act.gamma * ga, label=f"{act.name}, scaled (gamma {form})"), ga * ga * m2


def shortcut_block(act="tanh", q: float = 1.0, *, transformed: bool = True, gamma: str | None = "unit_variance",
                   mix: float = 0.5, sigma_b: float = 0.0, sigma_d: float = 0.0, width: int | None = None) -> Block:
    """The paper's one-hidden-layer network y = A f(B x + b) + C x + d with random weights, as a `meanfield.Block`
    (a toolkit construction: the mean-field view of one shortcut block).

    Residual(branch=[Dense(1, sigma_b), Activation(f), Dense(sqrt(mix))], alpha=1,
    shortcut=[Dense(sqrt(1 - mix), sigma_d)]): B_ij ~ N(0, 1/fan_in), b_i ~ N(0, sigma_b^2), A_ij ~ N(0, mix/H),
    C_ij ~ N(0, (1 - mix)/fan_in), d_i ~ N(0, sigma_d^2). Mean field (the shortcut and the branch start with their
    own random weights, so they are independent given x):

        K_out = (1 - mix) K + mix E[f(u_a) f(u_b)] + sigma_d^2,   u ~ N(0, K + sigma_b^2).

    f is the Gaussian-estimated transformation of ``act`` at pre-activation variance ``q`` (``transformed=True``),
    or ``act`` scaled by the same gamma rule applied to phi itself (``transformed=False``: the untransformed
    comparison). The default gamma is the toolkit's "unit_variance" (E f^2 = 1 at q, so a block keeps unit
    variance); the paper's forms are "vatanen_geometric" and "vatanen_variance". ``width`` fixes the hidden width
    (None: the simulator's width).
    """
    owner = "transformations.shortcut_block"
    form = _form(owner, gamma)
    a = _activation(owner, act)
    qv = check_real(owner, "q", q, 0.0, lo_open=True)
    mx = _check_mix(owner, mix)
    sb, sd = check_real(owner, "sigma_b", sigma_b, 0.0), check_real(owner, "sigma_d", sigma_d, 0.0)
    f, _ = _block_activation(a, qv, bool(transformed), form)
    res = Residual(branch=(Dense(1.0, sb, width=width), Activation(f), Dense(math.sqrt(mx))), alpha=1.0,
                   shortcut=(Dense(math.sqrt(1.0 - mx), sd),))
    return Block((res,), name="shortcut")


def shortcut_network(depth: int, act="tanh", *, transformed: bool = True, gamma: str | None = "unit_variance",
                     mix: float = 0.5, sigma_b: float = 0.0, sigma_d: float = 0.0, input_variance: float = 1.0,
                     width: int | None = None) -> Network:
    """``depth`` stacked blocks of `shortcut_block`, transformations fitted block by block (a toolkit construction).

    Not the paper's deep model (which stacks nonlinear layers directly with all-to-all shortcuts,
    `meanfield.shortcuts.network`): here each block's linear shortcut skips one hidden layer, which has an exact
    infinite-width rule. Block l's unit sees u ~ N(0, q_l) with q_l = v_{l-1} + sigma_b^2, where
    v_0 = ``input_variance`` and v_l = (1 - mix) v_{l-1} + mix E f_l(u)^2 + sigma_d^2; the transformation of
    block l is `gaussian` at q_l. With gamma="unit_variance", sigma_b = sigma_d = 0 and unit input variance every
    q_l = v_l = 1, and one block's correlation map is rho -> (1 - mix) rho + mix sum_{k>=2} c_k^2 rho^k.
    """
    owner = "transformations.shortcut_network"
    depth = check_int(owner, "depth", depth, lo=1)
    form = _form(owner, gamma)
    a = _activation(owner, act)
    mx = _check_mix(owner, mix)
    sb, sd = check_real(owner, "sigma_b", sigma_b, 0.0), check_real(owner, "sigma_d", sigma_d, 0.0)
    v = check_real(owner, "input_variance", input_variance, 0.0, lo_open=True)
    blocks = []
    for _ in range(depth):
        f, ef2 = _block_activation(a, v + sb * sb, bool(transformed), form)
        res = Residual(branch=(Dense(1.0, sb, width=width), Activation(f), Dense(math.sqrt(mx))), alpha=1.0,
                       shortcut=(Dense(math.sqrt(1.0 - mx), sd),))
        blocks.append(Block((res,), name="shortcut"))
        v = (1.0 - mx) * v + mx * ef2 + sd * sd
    return Network(blocks)


def correlation_map(act, rho: ArrayLike, q: float = 1.0, *, transformed: bool = True,
                    gamma: str | None = "unit_variance", mix: float = 0.5) -> np.ndarray:
    """One shortcut block's correlation map at infinite width (inputs with K_aa = K_bb = q, no biases).

    .. math:: \\rho' = \\frac{(1 - \\text{mix})\\, q \\rho + \\text{mix}\\, E[f(u) f(v)]}
              {(1 - \\text{mix})\\, q + \\text{mix}\\, E f(u)^2}
              = \\frac{(1 - \\text{mix})\\, q\\rho + \\text{mix} \\sum_k c_k(q)^2 \\rho^k}{\\dots}

    (Mehler; a toolkit result). For the transformed unit c_0 = c_1 = 0, so only orders k >= 2 remain; since
    |rho|^k <= |rho|^2 for k >= 2 the branch's share of |rho'| is at most rho^2.
    """
    owner = "transformations.correlation_map"
    form = _form(owner, gamma)
    a = _activation(owner, act)
    qv = check_real(owner, "q", q, 0.0, lo_open=True)
    mx = _check_mix(owner, mix)
    r = check_array(owner, "rho", rho)
    if np.any(np.abs(r) > 1):
        raise ValueError(f"{owner}: rho={rho!r} must lie in [-1, 1]")
    f, ef2 = _block_activation(a, qv, bool(transformed), form)
    kf = hermite.kernel(f, r, q1=qv)
    return ((1 - mx) * qv * r + mx * np.asarray(kf)) / ((1 - mx) * qv + mx * ef2)


def depth_curves(act="tanh", depth: int = 30, K0: ArrayLike | None = None, rho0: float = 0.9, **network) -> dict:
    """Mean-field depth curves of the transformed shortcut network next to the plain one (a toolkit result).

    Runs `meanfield.propagate` on ``shortcut_network(depth, act, transformed=True, **network)`` and on the same
    network with ``transformed=False`` (same gamma rule, no removal of Hermite orders 0 and 1).

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
    owner = "transformations.depth_curves"
    depth = check_int(owner, "depth", depth, lo=1)
    if K0 is None:
        r0 = check_real(owner, "rho0", rho0, -1.0, 1.0)
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
