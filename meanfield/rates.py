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

Batch normalization
-------------------
* `orthogonality_chain`: the linear chain of H. Daneshmand, A. Joudaki and F. Bach, "Batch normalization
  orthogonalizes representations in deep random networks" (NeurIPS 2021), H_{l+1} = BN(W_l H_l)/sqrt(d),
  BN(M) = diag(M M^T)^(-1/2) M (rows = features scaled to unit norm over the n samples, no centring),
  W_l with i.i.d. N(0, 1) entries; its orthogonality gap V(H) falls (near orthogonality by n/(n+2) per
  layer, `orthogonality_rate`) to a plateau of order d^(-1/2) (`orthogonality_plateau`).
* `bn_gradient_rate`: the gradient explosion of G. Yang, J. Pennington, V. Rao, J. Sohl-Dickstein and
  S. S. Schoenholz, "A mean field theory of batch normalization" (ICLR 2019): in x_{l+1} = f(BN(W_l x_l))
  (`mlp(..., norm="bn", placement="pre")`) the squared gradient norm grows by a factor lambda(B) per block
  backwards, (B - 2)/(B - 3) for a linear f and pi/(pi - 1) for ReLU as B -> inf;
  `measure_bn_gradient_rate` measures it with `meanfield.simulate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

import hermite
from meanfield.measures import check_gram, correlations, isometry_gap, orthogonality_gap_gram, potential
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
    "Estimate",
    "bn_gradient_rate",
    "bn_gradient_rate_limit",
    "bn_gradient_network",
    "measure_bn_gradient_rate",
    "orthogonality_chain",
    "orthogonality_plateau",
    "orthogonality_rate",
]

MEASURES = ("potential", "isometry_gap")
_SNAP = 1e-13  # beta0 within this of 1 is an affine activation (coefficients are accurate to ~1e-12 relative)


# ---------------------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------------------


def _act(act) -> hermite.Activation:
    return hermite.activation(act)  # ValueError for unknown names, with the list of built-ins


def _positive(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be a positive finite number") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}={value!r} must be a positive finite number (> 0)")
    return v


def _int_at_least(value, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise ValueError(f"{name}={value!r} must be an integer >= {lo}")
    if not float(value).is_integer() or int(value) < lo:
        raise ValueError(f"{name}={value!r} must be an integer >= {lo}")
    return int(value)


def _measure(measure: str) -> str:
    if measure not in MEASURES:
        raise ValueError(f"measure={measure!r} must be one of {MEASURES}")
    return measure


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
    a = _act(act)
    qv = _positive(q, "q")
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
    a = _act(act)
    qv = _positive(q, "q")
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
    a = _act(act)
    qv = _positive(q, "q")
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
    a = _act(act)
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
    m = _measure(measure)
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
    a = _act(act)
    b0 = beta0(a, q)
    bs = 2.0 - b0
    L = _int_at_least(layers, "layers", 0)
    p = np.asarray(potential, dtype=np.float64)
    if np.any(np.isnan(p)) or np.any(p < 0):
        raise ValueError(f"potential must be in [0, inf]; got {potential!r}")
    p = p.copy()
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
    nn = _int_at_least(n, "n", 1)
    p = np.asarray(potential, dtype=np.float64)
    if np.any(np.isnan(p)) or np.any(p < 0):
        raise ValueError(f"potential must be in [0, inf]; got {potential!r}")
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
    a = _act(act)
    sw = _positive(sigma_w, "sigma_w")
    L = _int_at_least(depth, "depth", 0)
    K = check_gram(K0, name="K0", allow_stack=False)
    if np.any(np.diag(K) <= 0):
        raise ValueError(f"K0 must have a positive diagonal (every sample nonzero); got diag {np.diag(K)}")
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
    m = _measure(measure)
    a = _act(act)
    tgt = _positive(target, "target")
    sw = _positive(sigma_w, "sigma_w")
    cap = _int_at_least(max_layers, "max_layers", 1)
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
            raise ValueError(f"K0 must have a positive diagonal; got diag {np.diag(K)}")
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
        start = float(start)
        if not (start >= 0):
            raise ValueError(f"start={start!r} must be >= 0")
        if start_potential is not None:
            p_start = float(start_potential)
            if not (p_start >= 0):
                raise ValueError(f"start_potential={start_potential!r} must be >= 0")
        elif m == "potential":
            p_start = start
    if n is not None:
        n = _int_at_least(n, "n", 1)

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
    m = _measure(measure)
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
    s0 = _int_at_least(start, "start", 0)
    s1 = L if stop is None else _int_at_least(stop, "stop", 0)
    if s1 > L or s0 >= s1:
        raise ValueError(f"fit_rate: need 0 <= start < stop <= {L} (the last block); got start={start}, stop={stop}")
    fl = _FLOORS[m] if floor is None else float(floor)
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
    nn = _int_at_least(n, "n", 1)
    w = _int_at_least(width, "width", 1)
    b0 = beta0(act, _positive(sigma_w, "sigma_w") ** 2)
    if b0 >= 1.0:
        return math.inf
    return (nn - 1) / (2.0 * w * (1.0 - b0 * b0))


# ---------------------------------------------------------------------------------------------------------
# batch normalization: gradient explosion (Yang et al. 2019)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A number with its standard error (0 for a closed form) and how it was obtained."""

    value: float
    stderr: float
    method: str
    per_seed: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def bn_gradient_rate_limit(act) -> float:
    """Large-batch limit of the batch-norm gradient explosion rate: E f'(z)^2 / Var f(z), z ~ N(0, 1).

    = sum_k k c_k^2 / sum_{k>=1} c_k^2 = kappa'(1) at q = 1 (`kappa_derivative`). Linear: 1; ReLU:
    (1/2) / (1/2 - 1/(2 pi)) = pi / (pi - 1) (Yang et al., ICLR 2019). As B -> inf batch norm becomes a
    per-feature standardization by the population statistics, so the backward factor is
    sigma_w^2 E f'^2 / (sigma_w^2 Var f).
    """
    return float(kappa_derivative(act, 1.0, 1.0))


def _check_batch(batch_size) -> int:
    return _int_at_least(batch_size, "batch_size", 2)


def bn_gradient_rate(act="identity", batch_size: int = 8, *, samples: int = 2**17, seed: int = 0) -> Estimate:
    """Per-block growth factor lambda(B) of the squared gradient norm in x_{l+1} = f(BN(W_l x_l)).

    Yang, Pennington, Rao, Sohl-Dickstein and Schoenholz, "A mean field theory of batch normalization"
    (ICLR 2019); the network is ``mlp(L, act, norm="bn", placement="pre")``, the gradient flows from the
    output towards the input and grows by lambda per block (gradient independence assumption, infinite
    width). sigma_w and sigma_b do not matter (batch norm removes both).

    Derivation (this module). At the forward fixed point the Gram of x is permutation symmetric
    (K = a I + b 11^T), so P h (P = I - 11^T/B) is isotropic in the (B-1)-dimensional space orthogonal to
    1: its norm^2 is sigma_w^2 a chi^2_{B-1} and its direction independent, z = BN(h) = sqrt(B) u with u
    uniform on the unit sphere of that space, and a = E ||P f(z)||^2 / (B - 1). The Jacobian of BN is
    J = sqrt(B)/||P h|| Q, Q = P - z z^T / B. The backward covariance Pi maps to
    sigma_w^2 E[J D Pi D J] (D = diag f'(z)), a positive map commuting with permutations of the batch, whose
    leading eigenvector is therefore P (Krein-Rutman: a PSD leading eigenvector exists, its permutation
    average is one too, and the range lies in 1-perp). With E[B / ||P h||^2] = B / (sigma_w^2 a (B - 3)):

        lambda(B) = B / (B - 3) * E ||Q D P||_F^2 / E ||P f(z)||^2.

    For an affine f, D = c I, ||Q P||_F^2 = B - 2 and ||P z||^2 = B, so lambda = (B - 2)/(B - 3) exactly
    (returned in closed form). Otherwise the two expectations over u are estimated with ``samples``
    Monte Carlo draws (a ratio estimator, standard error by the delta method). lambda(2) = 0 (Q = 0: the
    batch-norm output of two samples is constant) and lambda(3) = +inf (E 1/chi^2_2 diverges). As B grows,
    lambda -> `bn_gradient_rate_limit` (pi/(pi - 1) for ReLU).

    Parameters
    ----------
    act : activation with a derivative (default identity)
    batch_size : int >= 2
    samples : int >= 1000
    seed : int

    Returns
    -------
    Estimate (value, stderr, method "closed form" or "monte carlo").
    """
    a = _act(act)
    B = _check_batch(batch_size)
    M = _int_at_least(samples, "samples", 1000)
    if B == 2:
        return Estimate(0.0, 0.0, "closed form", info={"batch_size": B})
    if B == 3:
        return Estimate(math.inf, 0.0, "closed form", info={"batch_size": B})
    if beta0(a, 1.0) >= 1.0 - 1e-12:
        return Estimate((B - 2) / (B - 3), 0.0, "closed form", info={"batch_size": B})
    if a.jumps:
        raise ValueError(f"bn_gradient_rate: activation {a.name!r} has jumps at {a.jumps}; its derivative is a "
                         "delta and the rate is not finite")
    return _bn_rate_mc(a, B, M, seed)


def _bn_rate_mc(a: hermite.Activation, B: int, M: int, seed) -> Estimate:
    """Monte Carlo of lambda(B) = B/(B-3) E||Q D P||_F^2 / E||P f(z)||^2 over z = sqrt(B) u (see bn_gradient_rate)."""
    rng = np.random.default_rng(seed)
    num = np.empty(M)
    den = np.empty(M)
    chunk = max(1, min(M, 2**22 // B))
    done = 0
    while done < M:
        c = min(chunk, M - done)
        g = rng.standard_normal((c, B))
        g -= g.mean(axis=1, keepdims=True)
        z = math.sqrt(B) * g / np.linalg.norm(g, axis=1, keepdims=True)
        d = a.derivative(z)
        f = a.fn(z)
        s1 = d.sum(axis=1)
        s2 = (d * d).sum(axis=1)
        dz = d * z
        # ||Q D P||_F^2 = tr(P D P D) - ||P (d z)||^2 / B, tr(P D P D) = (1 - 2/B) sum d^2 + (sum d)^2 / B^2
        pdz = (dz * dz).sum(axis=1) - dz.sum(axis=1) ** 2 / B  # ||P (d z)||^2
        num[done:done + c] = (1.0 - 2.0 / B) * s2 + s1 * s1 / B**2 - pdz / B
        den[done:done + c] = (f * f).sum(axis=1) - f.sum(axis=1) ** 2 / B  # ||P f(z)||^2
        done += c
    xm, ym = num.mean(), den.mean()
    r = xm / ym
    cov = np.cov(num, den)
    var_r = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (M * ym * ym)
    fac = B / (B - 3)
    return Estimate(float(fac * r), float(fac * math.sqrt(max(var_r, 0.0))), "monte carlo",
                    info={"batch_size": B, "samples": M, "seed": seed})


def bn_gradient_network(act, depth: int, *, head: bool = True):
    """``mlp(depth, act, norm="bn", placement="pre")`` plus, with ``head``, a last block Dense -> tanh.

    The simulator's readout is L = sum_a r . x_a with one Gaussian r for the whole batch (see
    `meanfield.simulate`), so dL/dx_a = r is the same for every sample; batch norm's Jacobian annihilates
    vectors constant over the batch, so without a non-linear last layer (e.g. a linear activation after
    the last BatchNorm) every gradient is exactly 0. The tanh head makes the output gradient differ across
    the batch; the rate is measured away from it.
    """
    from meanfield.layers import Activation, Block, Dense
    from meanfield.network import Network, mlp

    net = mlp(_int_at_least(depth, "depth", 1), act, norm="bn", placement="pre")
    if not head:
        return net
    return Network([*net.blocks, Block((Dense(1.0), Activation("tanh")), name="head")])


def measure_bn_gradient_rate(act="identity", batch_size: int = 8, *, width: int = 256, depth: int = 20,
                             seeds: int = 8, seed: int = 0, skip: int = 4, X=None) -> Estimate:
    """Measure the per-block growth factor of the squared gradient norm of a BN network with `meanfield.simulate`.

    Network: `bn_gradient_network` (act, depth) (Yang et al.'s f(BN(W x)) blocks plus a Dense -> tanh head).
    For each seed, fit log grad_norms[l]^2 = c - l log(lambda) over blocks skip <= l <= depth - skip (the
    forward and backward statistics settle within a few blocks of either end); report
    exp(mean over seeds of log lambda) with the standard error across seeds (delta method).

    Finite width biases the measured factor by O(B / width) (the fluctuations of the forward Gram around its
    symmetric fixed point; e.g. linear, B = 8: 1.173, 1.189, 1.192 at widths 128, 256, 512 against 1.2).

    Parameters
    ----------
    act : activation
    batch_size : int >= 4
    width, depth, seeds, seed : simulation sizes
    skip : int >= 0, blocks left out at either end (2 skip < depth - 1)
    X : (batch_size, d0) array, optional input batch (default: i.i.d. N(0, 1), d0 = 2 batch_size)
    """
    from meanfield.finite import simulate

    B = _int_at_least(batch_size, "batch_size", 4)
    L = _int_at_least(depth, "depth", 3)
    sk = _int_at_least(skip, "skip", 0)
    if L - 2 * sk < 2:
        raise ValueError(f"measure_bn_gradient_rate: depth={L} leaves fewer than 2 blocks after skip={sk} at each end")
    if X is None:
        X = np.random.default_rng(seed).standard_normal((B, 2 * B))
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] != B:
        raise ValueError(f"X must have shape (batch_size={B}, d0); got {X.shape}")
    net = bn_gradient_network(act, L)
    sim = simulate(net, X, width=width, seeds=seeds, seed=seed, gradients=True)
    g2 = np.asarray(sim.grad_norms, dtype=np.float64) ** 2
    layers = np.arange(sk, L - sk + 1)
    if not np.all(g2[:, layers] > 0):
        raise ValueError("measure_bn_gradient_rate: a gradient norm vanished; the network's output gradient is "
                         "constant over the batch")
    logs = np.log(g2[:, layers])
    slopes = np.array([_ols(layers.astype(float), row)[0] for row in logs])
    lam = -slopes
    mean = float(lam.mean())
    se = float(lam.std(ddof=1) / math.sqrt(lam.size)) if lam.size > 1 else math.nan
    return Estimate(math.exp(mean), math.exp(mean) * se, "simulation", per_seed=np.exp(lam),
                    info={"batch_size": B, "width": width, "depth": L, "seeds": seeds, "skip": sk})


# ---------------------------------------------------------------------------------------------------------
# batch normalization: orthogonality gap (Daneshmand et al. 2021)
# ---------------------------------------------------------------------------------------------------------


def orthogonality_rate(n: int) -> float:
    """Per-layer contraction n / (n + 2) of a small deviation of H^T H from I/n in the linear BN chain.

    For m ~ N(0, I/n + Delta) (Delta symmetric, traceless, small) a first-order expansion of
    E[m m^T / ||m||^2] with E[(u^T E u) u u^T] = (2 E + tr(E) I) / (n (n + 2)) for u uniform on the sphere
    gives I/n + n Delta / (n + 2) (this project); so near orthogonality the mean-field part of the
    orthogonality gap shrinks by n / (n + 2) per layer (2/3 for n = 4).
    """
    nn = _int_at_least(n, "n", 2)
    return nn / (nn + 2.0)


def orthogonality_plateau(d: int, n: int) -> float:
    """Leading-order plateau (root mean square) of the orthogonality gap in the linear BN chain.

    At the orthogonal fixed point the d normalized rows u_i of BN(W H) are uniform unit vectors in R^n and
    H^T H = (1/d) sum_i u_i u_i^T, so each layer adds fresh noise with E ||.||_F^2 = (1 - 1/n)/d, while the
    previous deviation is contracted by `orthogonality_rate` n/(n + 2). The stationary mean square is

        E V^2 ~ (1 - 1/n) / (d (1 - (n/(n+2))^2)) = (n - 1)(n + 2)^2 / (4 n (n + 1) d),

    so V ~ d^(-1/2), the order of Daneshmand, Joudaki and Bach (NeurIPS 2021). A first-order heuristic
    (this project), to leading order in 1/d; E V is slightly below sqrt(E V^2).
    `checks.check_orthogonality_plateau` compares it with `orthogonality_chain`.
    """
    dd = _int_at_least(d, "d", 1)
    nn = _int_at_least(n, "n", 2)
    return math.sqrt((nn - 1) * (nn + 2) ** 2 / (4.0 * nn * (nn + 1) * dd))


def orthogonality_chain(d: int, n: int, depth: int, *, seeds: int = 8, seed: int = 0, K0=None,
                        rho0: float = 0.9, explicit: bool = False) -> np.ndarray:
    """Orthogonality gaps of the linear batch-norm chain H_{l+1} = BN(W_l H_l) / sqrt(d) of Daneshmand et al.

    H_l is d x n (features x samples), W_l has i.i.d. N(0, 1) entries, BN(M) = diag(M M^T)^(-1/2) M scales
    every feature (row) to unit norm over the batch (no centring), and V(H) = ||H^T H/||H||_F^2 - I/n||_F
    (`meanfield.measures.orthogonality_gap`). Daneshmand, Joudaki and Bach, "Batch normalization
    orthogonalizes representations in deep random networks" (NeurIPS 2021).

    Only G_l = H_l^T H_l matters, and given H_l the rows m_i of W_l H_l are i.i.d. N(0, G_l); so by default
    the chain samples d Gaussian n-vectors per layer from an n x n square root of G_l (exact in law, O(d n^2)
    per layer): G_{l+1} = (1/d) sum_i m_i m_i^T / ||m_i||^2. ``explicit=True`` multiplies explicit d x d
    weight matrices instead (O(d^2 n), for cross-checks). A row with m_i = 0 (only if G_l = 0) maps to 0.

    Parameters
    ----------
    d : int >= 1, width
    n : int >= 2, batch size
    depth : int >= 0
    seeds : int >= 1
    seed : int
    K0 : (n, n) Gram matrix of the input, optional; default the equicorrelated (1 - rho0) I + rho0 11^T
    rho0 : float in [0, 1)
    explicit : bool

    Returns
    -------
    ndarray (seeds, depth + 1): V(H_l), index 0 the input.
    """
    dd = _int_at_least(d, "d", 1)
    nn = _int_at_least(n, "n", 2)
    L = _int_at_least(depth, "depth", 0)
    S = _int_at_least(seeds, "seeds", 1)
    if K0 is None:
        r0 = float(rho0)
        if not (0.0 <= r0 < 1.0):
            raise ValueError(f"rho0={rho0!r} must be in [0, 1)")
        K = (1.0 - r0) * np.eye(nn) + r0 * np.ones((nn, nn))
    else:
        K = check_gram(K0, name="K0", allow_stack=False)
        if K.shape[0] != nn:
            raise ValueError(f"K0 must be {nn} x {nn} (n = {nn}); got {K.shape}")
    rng = np.random.default_rng(seed)
    G = np.broadcast_to(K / np.trace(K), (S, nn, nn)).copy()
    out = np.empty((S, L + 1))
    out[:, 0] = orthogonality_gap_gram(G)
    if explicit:
        w, V = np.linalg.eigh(K / np.trace(K))
        F = (V * np.sqrt(np.clip(w, 0.0, None))).T  # n x n, F^T F = K / tr K: an input with n features
        H = np.broadcast_to(F, (S, nn, nn))
    for layer in range(1, L + 1):
        if explicit:
            Wt = rng.standard_normal((S, dd, H.shape[1]))
            Mm = Wt @ H  # (S, d, n): rows are features
        else:
            w, V = np.linalg.eigh(G)
            R = V * np.sqrt(np.clip(w, 0.0, None))[:, None, :]  # R R^T = G
            Z = rng.standard_normal((S, dd, nn))
            Mm = Z @ np.swapaxes(R, 1, 2)  # rows ~ N(0, G)
        nr = np.sqrt(np.sum(Mm * Mm, axis=2, keepdims=True))
        U = np.divide(Mm, nr, out=np.zeros_like(Mm), where=nr > 0)
        if explicit:
            H = U / math.sqrt(dd)
            G = np.swapaxes(H, 1, 2) @ H
        else:
            G = np.swapaxes(U, 1, 2) @ U / dd
        G = 0.5 * (G + np.swapaxes(G, 1, 2))
        out[:, layer] = orthogonality_gap_gram(G)
    return out

