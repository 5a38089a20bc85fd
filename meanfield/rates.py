"""Non-linearity strength, predicted convergence rates towards isometry, and rate fits.

Layer normalization after an activation ("post" placement: Dense -> f -> LayerNorm) drives the batch
Gram matrix towards a multiple of the identity at an exponential rate set by the Hermite coefficients of
f (A. Joudaki, H. Daneshmand and F. Bach, "On the impact of activation and normalization in obtaining
isometric embeddings at initialization", NeurIPS 2023). This module turns the coefficients into numbers.

Non-linearity strength
----------------------
With c_k = c_k(q) the orthonormal Hermite coefficients of f at input variance q (DESIGN.md),

    beta0      = c_1^2 / sum_{k>=1} c_k^2 = c_1^2 / (E f^2 - c_0^2)   in [0, 1]   (`beta0`)
    beta_sigma = 2 - beta0                                             in [1, 2]   (`beta_sigma`)

beta0 is the share of the centred activation's variance carried by its linear part: 1 for an affine f,
0 for an even f or a pure He_k (k >= 2). WARNING: the literature uses both symbols for different numbers
(beta_0 for the linear share, beta_sigma or "non-linearity strength" sometimes for 2 - beta_0 and
sometimes for 1 - beta_0 or for its inverse); this module uses exactly the two definitions above.

The map that LayerNorm(post) iterates
-------------------------------------
At infinite width, a Dense(sigma_w, 0) layer turns a unit-diagonal input Gram into pre-activations of
variance q = sigma_w^2 and correlations rho; by Mehler's formula the activation gives
E f(u) f(v) = sum_k c_k^2 rho^k, the centring of LayerNorm subtracts c_0^2 and its scaling divides by
sum_{k>=1} c_k^2. So after the first block (which equalizes the sample norms) every correlation is mapped
elementwise by the centred normalized kernel

    kappa(rho) = sum_{k>=1} c_k^2 rho^k / sum_{k>=1} c_k^2,     kappa(0) = 0, kappa(1) = 1    (`kappa`)

computed exactly from the dual kernel, kappa(rho) = hermite.kernel(f, rho, q, centered=True) /
(E f^2 - c_0^2) (closed forms or proven-accurate quadrature; never a truncated series near |rho| = 1).

Contraction of the potential (derivation)
-----------------------------------------
The potential of a Gram matrix is phi = max_{a != b} r_ab / (1 - r_ab), r_ab = |rho_ab|
(`meanfield.potential`). For |rho| <= 1, |sum_{k>=2} c_k^2 rho^k| <= rho^2 sum_{k>=2} c_k^2, hence

    |kappa(rho)| <= g(r) := beta0 r + (1 - beta0) r^2,   r = |rho|.

Now 1 - g(r) = (1 - r)(1 + (1 - beta0) r) and g(r) = r (beta0 + (1 - beta0) r), so, as r -> r/(1 - r) is
increasing, a pair with potential p = r/(1 - r) (r = p/(1 + p)) is mapped to a potential at most

    g(r) / (1 - g(r)) = p (beta0 + (1 - beta0) r) / (1 + (1 - beta0) r) = p (beta0 + p) / (1 + beta_sigma p).

The factor F(p) = (beta0 + p)/(1 + beta_sigma p) increases from beta0 (p -> 0) to 1/beta_sigma
(p -> inf), because dF/dp has the sign of 1 - beta0 beta_sigma = (1 - beta0)^2 >= 0. Taking the maximum
over pairs (F is increasing), one LayerNorm(post) block maps the potential phi of a Gram matrix with
equal sample norms to

    phi' <= phi (beta0 + phi) / (1 + beta_sigma phi) <= phi / beta_sigma             (`potential_bound`)

for every activation: the potential contracts by at least beta_sigma per block (a contraction iff
beta0 < 1). Two local rates refine the worst case:

* near isometry (phi -> 0) kappa(rho) = beta0 rho + O(rho^2): the potential shrinks by beta0 per block and
  the isometry gap, -log I = sum_{a<b} rho_ab^2 / n + O(rho^3) for a correlation matrix, by beta0^2;
* near collinearity (rho = 1 - eps) 1 - kappa(1 - eps) = kappa'(1) eps + o(eps), so the potential
  (about 1/eps) shrinks by 1/kappa'(1), with kappa'(1) = sum_k k c_k^2 / sum_{k>=1} c_k^2 = q E f'(u)^2 /
  Var f(u) >= beta_sigma (`kappa_derivative`). For a kinked f with a jump kappa'(1) = inf.

The potential does not bound the isometry gap linearly (three unit vectors x1 _|_ x2, x3 = (x1 + x2)/
sqrt 2 have potential 2.41 and a singular Gram), but for a correlation matrix with max |rho| = r and
(n - 1) r < 1 Gershgorin's theorem puts every eigenvalue in [1 - (n-1) r, 1 + (n-1) r], so

    isometry gap <= -log(1 - (n - 1) r),

which `layers_to_gap` uses for its guaranteed bound.

Batch normalization (public facade)
-----------------------------------
The batch-norm rates have their own modules, whose public names are re-exported here
(``meanfield.rates.bn_gradient_rate(...)`` keeps working):

* `meanfield.orthogonality`: `orthogonality_chain`, `orthogonality_rate`, `orthogonality_plateau`, the
  linear batch-norm chain of Daneshmand, Joudaki and Bach (NeurIPS 2021);
* `meanfield.bn_gradients`: `yang_gradient_rate` (the paper's Theorem 8), `bn_gradient_rate`,
  `bn_gradient_rate_limit`, `bn_gradient_network`, `measure_bn_gradient_rate`, `Estimate`, the gradient
  explosion of Yang et al. (ICLR 2019).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import hermite
from meanfield.bn_gradients import (
    Estimate,
    bn_gradient_network,
    bn_gradient_rate,
    bn_gradient_rate_limit,
    measure_bn_gradient_rate,
    yang_gradient_rate,
)
from meanfield.core.validate import check_choice, check_int, check_real, check_real_array
from meanfield.measures import check_gram, correlations, isometry_gap, potential
from meanfield.orthogonality import orthogonality_chain, orthogonality_plateau, orthogonality_rate
from meanfield.trajectory import Trajectory

__all__ = [
    "beta0",
    "beta_sigma",
    "kappa",
    "kappa_derivative",
    "RateSummary",
    "summary",
    "predicted_rate",
    "potential_bound",
    "gap_bound_from_potential",
    "ln_post_trajectory",
    "LayersPrediction",
    "layers_to_gap",
    "RateFit",
    "fit_rate",
    "finite_width_gap",
    # re-exported (public facade)
    "Estimate",
    "bn_gradient_rate",
    "bn_gradient_rate_limit",
    "bn_gradient_network",
    "measure_bn_gradient_rate",
    "yang_gradient_rate",
    "orthogonality_chain",
    "orthogonality_plateau",
    "orthogonality_rate",
]

MEASURES = ("potential", "isometry_gap")
_SNAP = 1e-13  # beta0 within this of 1 is an affine activation (coefficients are accurate to ~1e-12 relative)


def _moments(act: hermite.Activation, q: float) -> tuple[float, float, float]:
    """(c_0, c_1, Var f) at input variance q; ValueError for an activation with no centred part."""
    c = hermite.coefficients(act, 1, q)
    m2 = float(hermite.second_moment(act, q))
    var = m2 - float(c[0]) ** 2
    if not (var > 1e-13 * max(m2, 1e-300)):
        raise ValueError(
            f"activation {act.name!r} is constant at input variance q={q:g} (Var f = {var:.3g}): it has no "
            f"centred part, so beta0 and kappa are undefined; valid: a non-constant activation"
        )
    return float(c[0]), float(c[1]), var


# ---------------------------------------------------------------------------------------------------------
# non-linearity strength and the LayerNorm(post) map
# ---------------------------------------------------------------------------------------------------------


def beta0(act, q: float = 1.0) -> float:
    """Linear share of the centred activation: beta0 = c_1^2 / sum_{k>=1} c_k^2 = c_1^2 / (E f^2 - c_0^2).

    c_k = c_k(q) are the orthonormal Hermite coefficients of f at input variance q (DESIGN.md). beta0 is in
    [0, 1]: 1 iff f is affine, 0 for even activations and pure He_k, k >= 2. Joudaki, Daneshmand and
    Bach (NeurIPS 2023). ReLU: pi / (2 (pi - 1)) = 0.7335; exp: 1 / (e - 1) = 0.5820 (at q = 1). A value
    within 1e-13 of 1 (the round-off of the coefficients of an affine f) is returned as exactly 1.

    WARNING: the literature uses both beta_0 and beta_sigma for different numbers; here beta0 is the linear
    share and `beta_sigma` = 2 - beta0, exactly as in DESIGN.md.

    Parameters
    ----------
    act : activation (name, callable, formula or hermite.Activation)
    q : float > 0
        Input variance of the activation (sigma_w^2 after a LayerNorm and Dense(sigma_w, 0)).

    Raises
    ------
    ValueError
        Unknown activation, q not positive and finite, or a constant activation (Var f = 0).
    """
    a = hermite.activation(act)
    qv = check_real("beta0", "q", q, lo=0.0, lo_open=True)
    _, c1, var = _moments(a, qv)
    b = c1 * c1 / var
    if b > 1.0 - _SNAP:  # an affine activation, up to the round-off of its coefficients
        return 1.0
    return float(max(b, 0.0))


def beta_sigma(act, q: float = 1.0) -> float:
    """beta_sigma = 2 - beta0 = 1 + (share of the centred variance in orders k >= 2), in [1, 2].

    The guaranteed per-block contraction factor of the potential under LayerNorm(post) is 1/beta_sigma
    (see the module docstring and `potential_bound`). ReLU: 2 - pi/(2 (pi - 1)) = 1.2665.

    WARNING: the literature uses both beta_0 and beta_sigma for different numbers; here
    beta_sigma = 2 - `beta0` exactly (DESIGN.md). Parameters and errors as for `beta0`.
    """
    return 2.0 - beta0(act, q)


def kappa(act, rho, q: float = 1.0):
    """Centred normalized dual kernel kappa(rho) = sum_{k>=1} c_k^2 rho^k / sum_{k>=1} c_k^2.

    The map of correlations that one LayerNorm(post) block applies at infinite width once the sample norms
    are equal (Joudaki, Daneshmand and Bach 2023). Computed exactly as
    hermite.kernel(act, rho, q, centered=True) / (E f^2 - c_0^2) (closed forms or quadrature accurate to
    1e-12 of Var f for every rho in [-1, 1], never a truncated series), then clipped to [-1, 1].
    kappa(0) = 0, kappa(1) = 1, |kappa(rho)| <= beta0 |rho| + (1 - beta0) rho^2.

    Parameters
    ----------
    act : activation
    rho : float or array in [-1, 1]
    q : float > 0, input variance

    Returns
    -------
    float or ndarray of rho's shape.

    Raises
    ------
    ValueError
        rho outside [-1, 1] or not finite, bad q, unknown or constant activation.
    """
    a = hermite.activation(act)
    qv = check_real("kappa", "q", q, lo=0.0, lo_open=True)
    _, _, var = _moments(a, qv)
    k = np.asarray(hermite.kernel(a, rho, qv, centered=True), dtype=np.float64) / var
    k = np.clip(k, -1.0, 1.0)
    return float(k) if k.ndim == 0 else k


def kappa_derivative(act, rho=1.0, q: float = 1.0):
    """kappa'(rho) = q E[f'(u) f'(v)] / Var f(u) (Price's theorem), = sum_k k c_k^2 rho^(k-1) / sum_{k>=1} c_k^2.

    At rho = 1: kappa'(1) = q E f'(u)^2 / Var f(u) >= beta_sigma; its inverse is the local contraction
    factor of the potential near collinearity. For ``q = 1`` it is also the large-batch limit of the
    batch-norm gradient explosion rate (`bn_gradient_rate_limit`).

    Activations with a jump (step, sign) have kappa'(+-1) = inf (returned) and no finite derivative
    formula inside (-1, 1) here (ValueError).

    Parameters
    ----------
    act : activation
    rho : float or array in [-1, 1]
    q : float > 0

    Raises
    ------
    ValueError
        As for `kappa`; an activation without a derivative; an activation with a jump at |rho| < 1.
    """
    a = hermite.activation(act)
    qv = check_real("kappa_derivative", "q", q, lo=0.0, lo_open=True)
    _, _, var = _moments(a, qv)
    r = np.asarray(rho, dtype=np.float64)
    if a.jumps:
        if np.all(np.abs(r) == 1.0):
            out = np.full(r.shape, np.inf)
            return float(out) if out.ndim == 0 else out
        raise ValueError(f"kappa_derivative: activation {a.name!r} has jumps at {a.jumps}; its kernel derivative "
                         "is only given here at rho = +-1 (where it is +inf)")
    k = qv * np.asarray(hermite.kernel(a, r, qv, derivative=1), dtype=np.float64) / var
    return float(k) if k.ndim == 0 else k


@dataclass(frozen=True)
class RateSummary:
    """Rates of one activation under LayerNorm(post) at input variance q (see `summary`)."""

    activation: str
    q: float
    beta0: float
    beta_sigma: float
    kappa_prime_1: float
    potential_bound: float  # 1 / beta_sigma: guaranteed per-block factor of the potential
    potential_local: float  # beta0: factor of the potential near isometry
    gap_local: float  # beta0^2: factor of the isometry gap near isometry
    collinear: float  # 1 / kappa'(1): factor of the potential near collinearity


def summary(act, q: float = 1.0) -> RateSummary:
    """All rates of one activation: beta0, beta_sigma, kappa'(1), and the per-block factors of the potential
    (guaranteed 1/beta_sigma, local beta0 near isometry, 1/kappa'(1) near collinearity) and of the isometry
    gap (beta0^2 near isometry). Definitions and derivations in the module docstring."""
    a = hermite.activation(act)
    b0 = beta0(a, q)
    kp = float(kappa_derivative(a, 1.0, q))
    return RateSummary(activation=a.name, q=float(q), beta0=b0, beta_sigma=2.0 - b0, kappa_prime_1=kp,
                       potential_bound=1.0 / (2.0 - b0), potential_local=b0, gap_local=b0 * b0,
                       collinear=0.0 if math.isinf(kp) else 1.0 / kp)


def predicted_rate(act, measure: str = "potential", q: float = 1.0) -> float:
    """Asymptotic per-block factor of ``measure`` near isometry under LayerNorm(post).

    "potential": beta0; "isometry_gap": beta0^2 (the gap is quadratic in the correlations). A value 0
    means faster than exponential (c_1 = 0, e.g. even activations: kappa(rho) = O(rho^2)).
    """
    m = check_choice("predicted_rate", "measure", measure, MEASURES)
    b0 = beta0(act, q)
    return b0 if m == "potential" else b0 * b0


def potential_bound(act, potential, layers: int = 1, q: float = 1.0):
    """Guaranteed potential after ``layers`` LayerNorm(post) blocks at infinite width.

    One block maps a Gram matrix with equal sample norms and potential p to potential at most
    p (beta0 + p) / (1 + beta_sigma p) <= p / beta_sigma (derivation in the module docstring); this function
    iterates that bound. Requires sigma_b = 0 and q = sigma_w^2 (equal norms: every block after the first).

    Parameters
    ----------
    act : activation
    potential : float or array in [0, inf]
    layers : int >= 0
    q : float > 0

    Returns
    -------
    float or ndarray: the bound (inf stays inf).
    """
    a = hermite.activation(act)
    b0 = beta0(a, q)
    bs = 2.0 - b0
    L = check_int("potential_bound", "layers", layers, lo=0)
    p = check_real_array("potential_bound", "potential", potential, lo=0.0, allow_inf=True)
    for _ in range(L):
        fin = np.isfinite(p)
        p = np.where(fin, p * (b0 + np.where(fin, p, 0.0)) / (1.0 + bs * np.where(fin, p, 0.0)), np.inf)
    return float(p) if p.ndim == 0 else p


def gap_bound_from_potential(potential, n: int):
    """Upper bound on the isometry gap of an n x n correlation matrix (equal norms) with this potential.

    With r = p / (1 + p) the largest |rho|, Gershgorin gives eigenvalues >= 1 - (n - 1) r, so
    gap <= -log(1 - (n - 1) r); +inf when (n - 1) r >= 1 (no bound: the gap can be +inf there, e.g. the
    three-vector example of the module docstring).
    """
    nn = check_int("gap_bound_from_potential", "n", n, lo=1)
    p = check_real_array("gap_bound_from_potential", "potential", potential, lo=0.0, allow_inf=True)
    r = np.where(np.isfinite(p), p / (1.0 + np.where(np.isfinite(p), p, 0.0)), 1.0)
    x = (nn - 1) * r
    out = np.where(x < 1.0, -np.log1p(-np.where(x < 1.0, x, 0.0)), np.inf)
    return float(out) if out.ndim == 0 else out


# ---------------------------------------------------------------------------------------------------------
# the exact LayerNorm(post) recursion and the number of layers to isometry
# ---------------------------------------------------------------------------------------------------------


def _first_block(a: hermite.Activation, K: np.ndarray, sigma_w: float) -> np.ndarray:
    """Correlations after Dense(sigma_w, 0) -> f -> LayerNorm for an input Gram K with positive diagonal."""
    n = K.shape[0]
    d = np.diag(K) * sigma_w**2
    rho = correlations(K)
    iu, ju = np.triu_indices(n, 1)
    C = np.eye(n)
    if iu.size:
        cov = np.asarray(hermite.kernel(a, rho[iu, ju], d[iu], d[ju], centered=True), dtype=np.float64)
        c0 = hermite.coefficients(a, 0, d)[:, 0]
        var = np.asarray(hermite.second_moment(a, d), dtype=np.float64) - c0 * c0
        if np.any(var <= 0):
            raise ValueError(f"activation {a.name!r} is constant at an input variance of the first block")
        vals = np.clip(cov / np.sqrt(var[iu] * var[ju]), -1.0, 1.0)
        C[iu, ju] = vals
        C[ju, iu] = vals
    return C


def _kappa_matrix(a: hermite.Activation, C: np.ndarray, q: float, var: float) -> np.ndarray:
    n = C.shape[0]
    iu, ju = np.triu_indices(n, 1)
    out = np.eye(n)
    if iu.size:
        r = C[iu, ju]
        vals = np.zeros_like(r)
        nz = r != 0.0  # kappa(0) = 0 exactly; also skips underflowed correlations cheaply
        if np.any(nz):
            vals[nz] = np.asarray(hermite.kernel(a, r[nz], q, centered=True), dtype=np.float64) / var
        vals = np.clip(vals, -1.0, 1.0)
        out[iu, ju] = vals
        out[ju, iu] = vals
    return out


def ln_post_trajectory(act, K0, depth: int, sigma_w: float = 1.0) -> Trajectory:
    """Exact infinite-width Gram matrices of ``mlp(depth, act, norm="ln", placement="post", sigma_w)``.

    Block 1 maps the input Gram K0 (positive diagonal) through Dense(sigma_w, 0) -> f -> LayerNorm with each
    pair's own variances (hermite.kernel with q1 != q2, centred, divided by the centred variances); every
    later block applies `kappa` (at q = sigma_w^2) elementwise to the correlation matrix. The outputs have
    unit diagonal. Same numbers as `meanfield.propagate` on that network (to ~1e-12), without the generic
    machinery; used by `layers_to_gap`.

    Returns
    -------
    Trajectory with gram (depth + 1, n, n) (index 0 is K0) and engine "meanfield".
    """
    a = hermite.activation(act)
    sw = check_real("ln_post_trajectory", "sigma_w", sigma_w, lo=0.0, lo_open=True)
    L = check_int("ln_post_trajectory", "depth", depth, lo=0)
    K = check_gram(K0, name="K0", allow_stack=False)
    if np.any(np.diag(K) <= 0):
        raise ValueError(f"ln_post_trajectory: K0 must have a positive diagonal (every sample nonzero); got diag "
                         f"{np.diag(K)}")
    q = sw * sw
    _, _, var = _moments(a, q)
    grams = [K]
    if L >= 1:
        C = _first_block(a, K, sw)
        grams.append(C)
        for _ in range(L - 1):
            C = _kappa_matrix(a, C, q, var)
            grams.append(C)
    return Trajectory(gram=np.stack(grams), engine="meanfield", network=None,
                      info={"rule": "ln_post", "activation": a.name, "sigma_w": sw})


@dataclass(frozen=True)
class LayersPrediction:
    """Number of LayerNorm(post) blocks needed to bring ``measure`` to ``target`` (see `layers_to_gap`).

    Attributes
    ----------
    exact : int or None
        First block whose output reaches the target in the exact mean-field recursion (needs K0); None if
        not reached within max_layers or no K0 was given.
    bound : int or None
        Guaranteed upper bound from the potential contraction (module docstring); None when not available
        (no start potential, or for the gap no n).
    asymptotic : float or None
        log(start / target) / log(1 / rate) with the local rate near isometry (beta0 for the potential,
        beta0^2 for the gap); None when the rate is 0 (faster than exponential). Accurate near isometry.
    """

    measure: str
    target: float
    start: float
    rate: float
    exact: int | None
    bound: int | None
    asymptotic: float | None
    values: np.ndarray | None = None  # the measure per block of the exact recursion


def layers_to_gap(act, target: float, K0=None, *, start: float | None = None, start_potential: float | None = None,
                  n: int | None = None, measure: str = "isometry_gap", sigma_w: float = 1.0,
                  max_layers: int = 100_000) -> LayersPrediction:
    """Predict how many LayerNorm(post) blocks bring the isometry gap (or potential) down to ``target``.

    Three predictions, each when its inputs are available:

    * exact: iterate the exact mean-field recursion (`ln_post_trajectory`) from the input Gram ``K0`` and
      return the first block l >= 1 with measure(K_l) <= target;
    * bound: a guaranteed upper bound. The potential after l blocks is at most `potential_bound` (start, l)
      (equal norms: from K0's first block on, computed exactly, or from ``start_potential`` given for inputs
      of equal norms). For the gap, the potential target is the one whose Gershgorin bound
      `gap_bound_from_potential` (needs n) is <= target;
    * asymptotic: log(start / target) / log(1 / rate), rate = beta0 (potential) or beta0^2 (gap) -- the
      local rate near isometry; from the measure of K0 or ``start``.

    Parameters
    ----------
    act : activation
    target : float > 0
        Target value of the measure.
    K0 : (n, n) Gram matrix, optional
        Input batch Gram (positive diagonal).
    start : float, optional
        Start value of the measure (used when K0 is not given).
    start_potential : float, optional
        Start potential of an input with equal sample norms (for the bound without K0).
    n : int, optional
        Batch size (from K0 if given; needed for the gap bound without K0).
    measure : "isometry_gap" or "potential"
    sigma_w : float > 0
        Dense weight scale (input variance of the activation q = sigma_w^2); sigma_b = 0.
    max_layers : int
        Cap of the exact recursion and of the bound iteration. The recursion also stops (exact None) when
        the correlations stop changing (by more than 1e-14 per block), e.g. for an affine activation.

    Returns
    -------
    LayersPrediction
    """
    m = check_choice("layers_to_gap", "measure", measure, MEASURES)
    a = hermite.activation(act)
    tgt = check_real("layers_to_gap", "target", target, lo=0.0, lo_open=True)
    sw = check_real("layers_to_gap", "sigma_w", sigma_w, lo=0.0, lo_open=True)
    cap = check_int("layers_to_gap", "max_layers", max_layers, lo=1)
    q = sw * sw
    b0 = beta0(a, q)
    rate = b0 if m == "potential" else b0 * b0
    fn = potential if m == "potential" else isometry_gap
    exact = None
    values = None
    p_start = None
    p_offset = 0
    if K0 is not None:
        K = check_gram(K0, name="K0", allow_stack=False)
        n = K.shape[0]
        start = float(fn(K))
        if np.any(np.diag(K) <= 0):
            raise ValueError(f"layers_to_gap: K0 must have a positive diagonal; got diag {np.diag(K)}")
        _, _, var = _moments(a, q)
        vals = [start]
        C = _first_block(a, K, sw)
        p_start, p_offset = float(potential(C)), 1  # the bound starts after the first block (equal norms)
        if start <= tgt:
            exact = 0
        else:
            for layer in range(1, cap + 1):
                if layer > 1:
                    if b0 >= 1.0:  # affine: kappa is the identity, nothing changes after block 1
                        break
                    C_prev, C = C, _kappa_matrix(a, C, q, var)
                    if np.max(np.abs(C - C_prev)) <= 1e-14:  # stalled at a fixed point (e.g. collinear samples)
                        break
                v = float(fn(C))
                vals.append(v)
                if v <= tgt:
                    exact = layer
                    break
        values = np.asarray(vals)
    else:
        if start is None:
            raise ValueError("layers_to_gap: give K0 (the input Gram) or start (the start value of the measure)")
        start = check_real("layers_to_gap", "start", start, lo=0.0, allow_inf=True)
        if start_potential is not None:
            p_start = check_real("layers_to_gap", "start_potential", start_potential, lo=0.0, allow_inf=True)
        elif m == "potential":
            p_start = start
    if n is not None:
        n = check_int("layers_to_gap", "n", n, lo=1)

    # guaranteed bound
    bound = None
    p_tgt = None
    if m == "potential":
        p_tgt = tgt
    elif n is not None:
        # the largest potential whose Gershgorin gap bound is <= target: (n - 1) r = 1 - exp(-target)
        r_t = -math.expm1(-tgt) / max(n - 1, 1)
        p_tgt = r_t / (1.0 - r_t) if n > 1 else math.inf
    if start <= tgt:
        bound = 0
    elif p_start is not None and p_tgt is not None and b0 < 1.0:  # beta0 = 1: no contraction, no bound
        p, count, bs = p_start, 0, 2.0 - b0
        while p > p_tgt and count < cap and math.isfinite(p):
            p = p * (b0 + p) / (1.0 + bs * p)  # potential_bound, one block
            count += 1
        if p <= p_tgt:
            bound = count + p_offset

    # asymptotic estimate
    if start is not None and start <= tgt:
        asym = 0.0
    elif rate <= 0.0 or not math.isfinite(start):
        asym = None
    elif rate >= 1.0:
        asym = math.inf
    else:
        asym = math.log(start / tgt) / math.log(1.0 / rate)
    return LayersPrediction(measure=m, target=tgt, start=float(start), rate=rate, exact=exact, bound=bound,
                            asymptotic=asym, values=values)


# ---------------------------------------------------------------------------------------------------------
# fitting observed rates
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateFit:
    """Log-linear fit log m_l = intercept + l log(rate) of a measure over blocks l (see `fit_rate`).

    ``stderr`` is the standard error of ``rate`` (delta method from that of ``log_rate``): from the
    regression residuals for one series (NaN with only two points), across seeds for a simulation
    (per-seed fits in ``per_seed``; NaN with one seed).
    """

    rate: float
    stderr: float
    log_rate: float
    log_rate_stderr: float
    intercept: float
    layers: np.ndarray
    measure: str
    per_seed: np.ndarray | None = None


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Slope, its standard error and the intercept of a least-squares line (stderr NaN for 2 points)."""
    xm = x.mean()
    sxx = float(np.sum((x - xm) ** 2))
    slope = float(np.sum((x - xm) * (y - y.mean())) / sxx)
    icpt = float(y.mean() - slope * xm)
    dof = x.size - 2
    if dof > 0:
        res = y - (icpt + slope * x)
        se = float(math.sqrt(np.sum(res * res) / dof / sxx))
    else:
        se = math.nan
    return slope, se, icpt


_FLOORS = {"potential": 1e-10, "isometry_gap": 1e-12}


def fit_rate(traj, measure: str = "potential", *, start: int = 1, stop: int | None = None,
             floor: float | None = None) -> RateFit:
    """Fit the observed per-block rate of a measure: log m_l = a + l log(rate) for blocks start <= l <= stop.

    Parameters
    ----------
    traj : Trajectory, or an array of measure values (L+1,) or (seeds, L+1)
        A mean-field trajectory (one series) or a simulation (one fit per seed).
    measure : "potential" or "isometry_gap"
        Ignored when ``traj`` is an array.
    start, stop : int
        Block window (inclusive; stop defaults to the last block). Block 0 is the input; block 1 also
        equalizes the norms, so the default start is 1.
    floor : float, optional
        Values at or below it (and infinite ones) are left out: the mean-field engine's correlations carry
        ~1e-16 absolute error, so by default 1e-10 for the potential and 1e-12 for the gap. For a
        simulation pick ``stop`` before the finite-width plateau (`finite_width_gap`).

    Returns
    -------
    RateFit
        For a simulation: rate = exp(mean over seeds of the fitted log-rates), stderr across seeds.

    Raises
    ------
    ValueError
        Bad measure or window, or fewer than 2 usable points (in any seed).
    """
    m = check_choice("fit_rate", "measure", measure, MEASURES)
    if isinstance(traj, Trajectory):
        vals = np.asarray(getattr(traj, m)(), dtype=np.float64)
    else:
        try:
            vals = np.asarray(traj, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError("fit_rate: traj must be a Trajectory or an array of measure values") from None
        if vals.ndim not in (1, 2):
            raise ValueError(f"fit_rate: an array of values must be (L+1,) or (seeds, L+1); got shape {vals.shape}")
    seeded = vals.ndim == 2
    V = vals if seeded else vals[None, :]
    L = V.shape[1] - 1
    s0 = check_int("fit_rate", "start", start, lo=0)
    s1 = L if stop is None else check_int("fit_rate", "stop", stop, lo=0)
    if s1 > L or s0 >= s1:
        raise ValueError(f"fit_rate: need 0 <= start < stop <= {L} (the last block); got start={start}, stop={stop}")
    fl = _FLOORS[m] if floor is None else check_real("fit_rate", "floor", floor)
    layers = np.arange(s0, s1 + 1)
    slopes, ses, icpts = [], [], []
    for row in V:
        y = row[s0:s1 + 1]
        ok = np.isfinite(y) & (y > fl)
        if ok.sum() < 2:
            raise ValueError(
                f"fit_rate: fewer than 2 usable values of {m} in blocks {s0}..{s1} (values must be finite and "
                f"> floor = {fl:g}); got {y}"
            )
        sl, se, ic = _ols(layers[ok].astype(float), np.log(y[ok]))
        slopes.append(sl)
        ses.append(se)
        icpts.append(ic)
    slopes = np.asarray(slopes)
    if seeded:
        lr = float(slopes.mean())
        lse = float(slopes.std(ddof=1) / math.sqrt(slopes.size)) if slopes.size > 1 else math.nan
        per = np.exp(slopes)
    else:
        lr, lse, per = float(slopes[0]), float(ses[0]), None
    rate = math.exp(lr)
    return RateFit(rate=rate, stderr=rate * lse, log_rate=lr, log_rate_stderr=lse,
                   intercept=float(np.mean(icpts)), layers=layers, measure=m, per_seed=per)


def finite_width_gap(act, n: int, width: int, sigma_w: float = 1.0) -> float:
    """Leading-order plateau of the isometry gap of a LayerNorm(post) MLP at finite width.

    Each block adds to every correlation independent noise of variance about 1/width (the empirical mean
    of width products of uncorrelated unit-variance features) and contracts the old deviation by beta0; the
    stationary variance is 1 / (width (1 - beta0^2)), and the gap of a correlation matrix is
    sum_{a<b} rho_ab^2 / n to leading order:

        gap_inf ~ (n - 1) / (2 width (1 - beta0^2)).

    A heuristic (this project), accurate to leading order in 1/width near isometry; infinite for beta0 = 1
    (an affine activation does not contract the noise).
    """
    nn = check_int("finite_width_gap", "n", n, lo=1)
    w = check_int("finite_width_gap", "width", width, lo=1)
    b0 = beta0(act, check_real("finite_width_gap", "sigma_w", sigma_w, lo=0.0, lo_open=True) ** 2)
    if b0 >= 1.0:
        return math.inf
    return (nn - 1) / (2.0 * w * (1.0 - b0 * b0))
