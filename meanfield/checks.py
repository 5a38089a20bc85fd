"""Numerical checks of the statements behind isometry and normalization, returning reports.

Each ``check_*`` function tests one statement on given inputs or on random ones and returns a
`CheckReport`: whether it holds, the worst case found, the margin (positive when it holds, in the units
stated in ``details["margin_units"]``), a counterexample (or None) and details. Reports are truthy when the
statement holds, so ``assert check_rescaling()`` works in tests and notebooks.

Statements (sources in each docstring):

* `check_rescaling`: rescaling every sample to the same norm multiplies the isometry by exactly the AM/GM
  ratio of the diagonal, so it never decreases it (Joudaki, Daneshmand and Bach, NeurIPS 2023);
* `check_potential_contraction`: at infinite width one LayerNorm(post) block maps the potential phi to at
  most phi (beta0 + phi)/(1 + beta_sigma phi) <= phi / beta_sigma, for any activation (derivation in
  `meanfield.rates`); the potential, not the isometry gap, obeys such a bound;
* `check_rank_collapse`: without centring (RMSNorm after the activation) the correlations tend to 1 (a rank
  one Gram); for ReLU 1 - rho_l ~ 9 pi^2 / (2 l^2). This holds iff kappa_u'(1) = q E f'^2 / E f^2 <= 1 for
  the uncentred normalized kernel; the check reports which case occurs;
* `check_affine_isometry`: an activation whose centred part is linear (beta0 = 1) leaves the isometry
  unchanged after the first LayerNorm(post) block;
* `check_hermite_power`: with f = He_k, sigma_w = 1 and unit-norm inputs, rho_l = rho_0^(k^l);
* `check_orthogonality_plateau`: the orthogonality gap of the linear batch-norm chain of Daneshmand et al.
  (NeurIPS 2021) settles at order d^(-1/2);
* `check_bn_gradient_rate`: the gradient explosion rate of a batch-norm network predicted by
  `meanfield.rates.bn_gradient_rate` (Yang et al., ICLR 2019) agrees with the finite-width simulator.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.optimize as so

import hermite
from meanfield import rates
from meanfield.core.validate import check_int, check_real, check_seed
from meanfield.infinite import propagate
from meanfield.measures import am_gm_ratio, check_gram, correlations, isometry, potential
from meanfield.network import mlp

__all__ = [
    "CheckReport",
    "random_grams",
    "random_correlations",
    "check_rescaling",
    "check_potential_contraction",
    "check_rank_collapse",
    "collapse_constant",
    "check_affine_isometry",
    "check_hermite_power",
    "check_orthogonality_plateau",
    "check_bn_gradient_rate",
    "DEFAULT_ACTIVATIONS",
    "RELU_COLLAPSE_CONSTANT",
]

#: the activations of the isometry notebook, plus even and polynomial ones (He_2, He_3, abs)
DEFAULT_ACTIVATIONS = ("relu", "tanh", "sigmoid", "silu", "elu", "selu", "gelu", "sin", "exp", "abs",
                       "identity", ("hermite", {"k": 2}), ("hermite", {"k": 3}))

#: 9 pi^2 / 2: 1 - rho_l ~ RELU_COLLAPSE_CONSTANT / l^2 for ReLU with RMSNorm (no centring)
RELU_COLLAPSE_CONSTANT = 4.5 * math.pi**2


@dataclass(frozen=True)
class CheckReport:
    """Outcome of a numerical check.

    Attributes
    ----------
    statement : str
        What was tested.
    holds : bool
        True when every case satisfied the statement (within the stated tolerance).
    worst : float
        The worst value of the checked quantity over all cases (see ``details["worst_meaning"]``).
    margin : float
        Distance from failing: > 0 (or >= 0 for equalities within tolerance) when it holds.
    counterexample : object or None
        The input of the worst failing case (None when it holds).
    cases : int
        Number of cases tested.
    details : dict
        Check-specific numbers (fitted constants, predictions, tolerances).
    """

    statement: str
    holds: bool
    worst: float
    margin: float
    counterexample: Any = None
    cases: int = 0
    details: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.holds)

    def __str__(self) -> str:
        verdict = "holds" if self.holds else "FAILS"
        return (f"{verdict}: {self.statement} ({self.cases} cases; worst {self.worst:.6g}, margin "
                f"{self.margin:.3g})")


# ---------------------------------------------------------------------------------------------------------
# random inputs
# ---------------------------------------------------------------------------------------------------------


def _rng(seed, owner: str = "checks") -> np.random.Generator:
    return np.random.default_rng(check_seed(owner, seed))


def random_grams(trials: int, n: int | None = None, *, seed=0, spread: float = 1.5,
                 singular: bool = True) -> list[np.ndarray]:
    """Random Gram matrices X X^T / d with log-normal sample norms (``spread`` = std of log norm).

    n is drawn from 2..8 when None; about one in ten is singular (d < n) when ``singular``; others mix a
    shared direction into the samples so that correlations cover (-1, 1).
    """
    rng = _rng(seed, "random_grams")
    out = []
    for t in range(check_int("random_grams", "trials", trials, lo=1)):
        nn = int(rng.integers(2, 9)) if n is None else check_int("random_grams", "n", n, lo=1)
        if singular and t % 10 == 9 and nn > 1:
            d = int(rng.integers(1, nn))
        else:
            d = int(rng.integers(nn, 3 * nn + 1))
        X = rng.standard_normal((nn, d))
        X += rng.uniform(0, 2) * rng.standard_normal((1, d)) * rng.choice([-1.0, 1.0], size=(nn, 1))
        X *= np.exp(spread * rng.standard_normal((nn, 1)))
        out.append(X @ X.T / d)
    return out


def random_correlations(trials: int, n: int = 4, *, seed=0, near_collinear: bool = True) -> list[np.ndarray]:
    """Random n x n correlation matrices (unit diagonal, full rank), some with a nearly collinear pair
    (|rho| up to 1 - 1e-4) when ``near_collinear``."""
    rng = _rng(seed, "random_correlations")
    nn = check_int("random_correlations", "n", n, lo=2)
    out = []
    for t in range(check_int("random_correlations", "trials", trials, lo=1)):
        d = nn + int(rng.integers(0, 2 * nn + 1))
        X = rng.standard_normal((nn, d))
        X += rng.uniform(0, 3) * rng.standard_normal((1, d)) * rng.choice([-1.0, 1.0], size=(nn, 1))
        if near_collinear and t % 3 == 2:
            X[1] = X[0] * rng.choice([-1.0, 1.0]) + 10.0 ** rng.uniform(-2, -0.5) * rng.standard_normal(d)
        K = X @ X.T / d
        C = correlations(K)
        if np.linalg.eigvalsh(C)[0] <= 1e-10:
            C = 0.99 * C + 0.01 * np.eye(nn)
        out.append(C)
    return out


def _acts(acts) -> list[hermite.Activation]:
    if acts is None:
        acts = DEFAULT_ACTIVATIONS
    if isinstance(acts, (str, hermite.Activation)) or callable(acts) and not isinstance(acts, Iterable):
        acts = [acts]
    out = []
    for a in acts:
        if isinstance(a, tuple) and len(a) == 2 and isinstance(a[1], dict):
            out.append(hermite.activation(a[0], **a[1]))
        else:
            out.append(hermite.activation(a))
    if not out:
        raise ValueError("acts must name at least one activation")
    return out


def _grams_arg(K, name: str = "K") -> list[np.ndarray]:
    arr = check_gram(K, name=name)
    return [arr] if arr.ndim == 2 else list(arr.reshape(-1, *arr.shape[-2:]))


# ---------------------------------------------------------------------------------------------------------
# isometry under rescaling of the samples
# ---------------------------------------------------------------------------------------------------------


def check_rescaling(K=None, *, trials: int = 200, n: int | None = None, seed=0, rtol: float = 1e-9) -> CheckReport:
    """Rescaling every sample to the same norm multiplies the isometry by exactly AM/GM of the diagonal.

    Statement (Joudaki, Daneshmand and Bach, NeurIPS 2023): for D = diag K,
    isometry(D^(-1/2) K D^(-1/2)) = am_gm_ratio(K) isometry(K) >= isometry(K).
    Checked on the log scale: |log lhs - log rhs| <= rtol (both 0 for a singular K counts as equal), and
    lhs >= isometry(K) (1 - rtol).

    Parameters
    ----------
    K : Gram matrix or stack (..., n, n), optional
        Inputs to test (positive diagonal); default `random_grams` (trials, n, seed).
    trials, n, seed : random inputs
    rtol : tolerance on the log scale

    Returns
    -------
    CheckReport with worst = max |log lhs - log rhs|, margin = rtol - worst.
    """
    grams = random_grams(trials, n, seed=seed) if K is None else _grams_arg(K)
    worst, bad, worst_mono = 0.0, None, 0.0
    for G in grams:
        if np.any(np.diag(G) <= 0):
            raise ValueError("check_rescaling: every sample needs a positive norm (K_aa > 0)")
        i0 = float(isometry(G))
        lhs = float(isometry(correlations(G)))
        rhs = float(am_gm_ratio(G)) * i0
        if lhs == 0.0 and rhs == 0.0:
            err = 0.0
        elif lhs == 0.0 or rhs == 0.0:
            err = math.inf
        else:
            err = abs(math.log(lhs) - math.log(rhs))
        mono = (i0 - lhs) / i0 if i0 > 0 else 0.0  # > 0 would be a decrease
        worst, worst_mono = max(worst, err), max(worst_mono, mono)
        if bad is None and (err > rtol or mono > rtol):
            bad = G
    holds = worst <= rtol and worst_mono <= rtol
    return CheckReport(
        statement="isometry(D^-1/2 K D^-1/2) = am_gm_ratio(K) * isometry(K) >= isometry(K)",
        holds=holds, worst=worst, margin=rtol - max(worst, worst_mono), counterexample=None if holds else bad,
        cases=len(grams), details={"rtol": rtol, "worst_relative_decrease": worst_mono,
                                   "worst_meaning": "max |log lhs - log rhs|", "margin_units": "log scale"})


# ---------------------------------------------------------------------------------------------------------
# LayerNorm(post): contraction of the potential
# ---------------------------------------------------------------------------------------------------------


def check_potential_contraction(acts=None, K0=None, *, depth: int = 6, sigma_w: float = 1.0, trials: int = 4,
                                n: int = 4, seed=0, rtol: float = 1e-7, floor: float = 1e-8) -> CheckReport:
    """At infinite width the potential contracts by at least beta_sigma per LayerNorm(post) block.

    Statement (module docstring of `meanfield.rates`): for every activation f and every block whose input
    has equal sample norms (all blocks after the first, and the first when K0 has a constant diagonal),

        phi_out <= phi_in (beta0 + phi_in) / (1 + beta_sigma phi_in) <= phi_in / beta_sigma,

    with beta0 = beta0(f, sigma_w^2). The Gram matrices come from `meanfield.propagate` on
    ``mlp(depth, f, norm="ln", placement="post", sigma_w=sigma_w)``. Blocks with phi_in <= ``floor`` are
    skipped (the engine's correlations carry ~1e-16 absolute error, too much relative to a tinier
    potential), and so are collinear inputs (phi = inf stays inf).

    Parameters
    ----------
    acts : activation or list, optional
        Default `DEFAULT_ACTIVATIONS`.
    K0 : Gram matrix or stack, optional
        Inputs; default `random_correlations` (trials, n, seed), some with nearly collinear pairs.
    depth : int >= 1
    sigma_w : float > 0
    rtol : relative tolerance of the comparison
    floor : smallest input potential checked

    Returns
    -------
    CheckReport with worst = max over cases of beta_sigma phi_out / phi_in (<= 1 when the statement holds),
    margin = min over cases of 1 - phi_out / (sharp bound); details per activation (beta0, beta_sigma,
    worst ratio).
    """
    activations = _acts(acts)
    inputs = random_correlations(trials, n, seed=seed) if K0 is None else _grams_arg(K0, "K0")
    L = check_int("check_potential_contraction", "depth", depth, lo=1)
    sw = float(sigma_w)
    q = sw * sw
    worst, margin, cases, bad = 0.0, math.inf, 0, None
    per_act = {}
    for a in activations:
        b0 = rates.beta0(a, q)
        bs = 2.0 - b0
        net = mlp(L, a, norm="ln", placement="post", sigma_w=sw)
        aw = 0.0
        for K in inputs:
            traj = propagate(net, K)
            phi = np.asarray(potential(traj.gram))
            diag = np.diagonal(traj.gram, axis1=-2, axis2=-1)
            for layer in range(1, L + 1):
                d_in = diag[layer - 1]
                if np.ptp(d_in) > 1e-12 * np.max(d_in):
                    continue  # unequal norms at this block's input: outside the statement
                p_in, p_out = float(phi[layer - 1]), float(phi[layer])
                if not (math.isfinite(p_in) and p_in > floor):
                    continue
                cases += 1
                sharp = p_in * (b0 + p_in) / (1.0 + bs * p_in)
                ratio = bs * p_out / p_in
                aw = max(aw, ratio)
                mg = 1.0 - p_out / sharp
                if ratio > worst:
                    worst = ratio
                if mg < margin:
                    margin = mg
                    if mg < -rtol and bad is None:
                        bad = {"activation": a.name, "K0": K, "block": layer, "phi_in": p_in, "phi_out": p_out,
                               "bound": sharp}
        per_act[a.name] = {"beta0": b0, "beta_sigma": bs, "worst_ratio": aw}
    if cases == 0:
        raise ValueError("check_potential_contraction: no block could be checked (every input potential was 0, "
                         "infinite or below floor, or the sample norms never became equal)")
    holds = margin >= -rtol
    return CheckReport(
        statement="phi_out <= phi_in (beta0 + phi_in)/(1 + beta_sigma phi_in) <= phi_in / beta_sigma per "
                  "LayerNorm(post) block (infinite width)",
        holds=holds, worst=worst, margin=margin, counterexample=None if holds else bad, cases=cases,
        details={"per_activation": per_act, "rtol": rtol, "floor": floor, "sigma_w": sw,
                 "worst_meaning": "max beta_sigma phi_out / phi_in (<= 1)",
                 "margin_units": "1 - phi_out / sharp bound"})


# ---------------------------------------------------------------------------------------------------------
# no centring: collapse to rank one
# ---------------------------------------------------------------------------------------------------------


def _uncentred_kernel(a: hermite.Activation, rho, q: float):
    m2 = float(hermite.second_moment(a, q))
    return np.asarray(hermite.kernel(a, rho, q), dtype=np.float64) / m2


def _uncentred_slope(a: hermite.Activation, q: float) -> float:
    """k_u'(1) = q E f'(u)^2 / E f(u)^2 for the uncentred normalized kernel (inf with jumps)."""
    if a.jumps:
        return math.inf
    return q * float(hermite.kernel(a, 1.0, q, derivative=1)) / float(hermite.second_moment(a, q))


def _uncentred_fixed_point(a: hermite.Activation, q: float) -> float:
    """The attracting correlation of rho -> k_u(rho) in [0, 1]: 1 when k_u'(1) <= 1, else the root in (0, 1)."""
    if _uncentred_slope(a, q) <= 1.0 + 1e-12:
        return 1.0
    g = lambda r: float(_uncentred_kernel(a, r, q)) - r
    hi = 1.0 - 1e-9
    while g(hi) >= 0 and hi > 0.5:  # k_u(rho) < rho just below 1 when the slope exceeds 1
        hi = 1.0 - 10 * (1.0 - hi)
    lo = 0.0
    if g(lo) <= 0:
        return 0.0
    return float(so.brentq(g, lo, hi, xtol=1e-14))


def collapse_constant(traj_or_rho) -> dict:
    """Fit 1 - rho_l ~ C / l^2 (the marginal collapse of ReLU without centring) from correlations rho_l.

    With u_l = (1 - rho_l)^(-1/2), the recursion 1 - k(1 - e) = e - a e^(3/2) + O(e^(5/2)) (a = 2 sqrt 2 /
    (3 pi) for ReLU's normalized arc-cosine kernel) gives u_l = (a/2) l + (3a/4) log l + c + O(1/l), so a
    least-squares fit of u on (l, log l, 1, 1/l) over the last 7/8 of the blocks gives the slope s and
    C = 1/s^2 (for ReLU 4/a^2 = 9 pi^2 / 2). Also returned: the naive l^2 (1 - rho_l) at the last block.

    Parameters
    ----------
    traj_or_rho : Trajectory (the correlation of samples 0 and 1 is used) or array rho_l (l = 0..L), L >= 16
    """
    from meanfield.trajectory import Trajectory

    if isinstance(traj_or_rho, Trajectory):
        rho = correlations(traj_or_rho.gram)[..., 0, 1]
    else:
        rho = np.asarray(traj_or_rho, dtype=np.float64)
    if rho.ndim != 1 or rho.size < 17:
        raise ValueError(f"collapse_constant needs a 1-D series of at least 17 correlations; got shape {rho.shape}")
    L = rho.size - 1
    layers = np.arange(L + 1, dtype=float)
    sel = (layers >= max(L / 8, 2)) & (rho < 1.0)
    if sel.sum() < 5:
        raise ValueError("collapse_constant: too few correlations below 1 to fit")
    ll = layers[sel]
    u = (1.0 - rho[sel]) ** -0.5
    A = np.stack([ll, np.log(ll), np.ones_like(ll), 1.0 / ll], axis=1)
    coef = np.linalg.lstsq(A, u, rcond=None)[0]
    return {"C": float(1.0 / coef[0] ** 2), "slope": float(coef[0]), "log_coefficient": float(coef[1]),
            "naive": float(L * L * (1.0 - rho[-1])), "depth": L}


def check_rank_collapse(act="relu", *, depth: int = 500, sigma_w: float = 1.0, rho0: float = 0.0,
                        tol: float = 1e-2, constant_rtol: float = 1e-3) -> CheckReport:
    """Without centring the mean-field Gram collapses to rank one (correlations -> 1).

    Statement (issue 5, after Joudaki, Daneshmand and Bach 2023): with RMSNorm after the activation
    (``mlp(depth, f, norm="rms", placement="post")``: scaling, no centring) and c_0 != 0 the correlation
    of two inputs tends to 1; for ReLU 1 - rho_l ~ 9 pi^2 / (2 l^2). Tested with `meanfield.propagate` from
    two inputs of correlation ``rho0``: holds when 1 - rho_L <= tol and 1 - rho_l does not increase over the
    last half of the blocks; for ReLU the constant fitted by `collapse_constant` must also be within
    ``constant_rtol`` of 9 pi^2/2.

    The statement is not true for every activation with c_0 != 0. The uncentred normalized kernel
    k_u(rho) = sum_k c_k^2 rho^k / sum_k c_k^2 is convex on [0, 1] with k_u(0) = c_0^2/E f^2 > 0 and
    k_u(1) = 1, so rho -> 1 iff k_u'(1) = q E f'^2 / E f^2 <= 1; otherwise the correlations settle at the
    fixed point rho* < 1 of k_u (at q = 1: GELU 0.760, SiLU 0.659, ELU 0.598). ``details`` holds k_u'(1),
    the predicted limit and whether the observation matches that prediction ("criterion_holds").

    Returns
    -------
    CheckReport with worst = 1 - rho_L, margin = tol - (1 - rho_L) (and the ReLU constant in details).
    """
    a = hermite.activation(act)
    L = check_int("check_rank_collapse", "depth", depth, lo=17)
    sw = float(sigma_w)
    q = sw * sw
    r0 = check_real("check_rank_collapse", "rho0", rho0, -1.0, 1.0, lo_open=True, hi_open=True)
    K0 = np.array([[1.0, r0], [r0, 1.0]])
    traj = propagate(mlp(L, a, norm="rms", placement="post", sigma_w=sw), K0)
    rho = correlations(traj.gram)[:, 0, 1]
    eps = 1.0 - rho
    tail = eps[L // 2:]
    monotone = bool(np.all(np.diff(tail) <= 1e-15))
    collapsed = bool(eps[-1] <= tol and monotone)
    c0 = float(hermite.coefficients(a, 0, q)[0])
    slope = _uncentred_slope(a, q)
    limit = _uncentred_fixed_point(a, q)
    predicted_collapse = limit == 1.0
    details = {"c0": c0, "kappa_u_prime_1": slope, "predicted_limit": limit, "observed_limit": float(rho[-1]),
               "predicted_collapse": predicted_collapse,
               "criterion_holds": bool(collapsed == predicted_collapse and
                                       (predicted_collapse or abs(rho[-1] - limit) <= 1e-6)),
               "worst_meaning": "1 - rho_L", "margin_units": "correlation"}
    holds = collapsed
    margin = tol - float(eps[-1])
    if a == hermite.activation("relu"):
        fit = collapse_constant(rho)
        rel = float(fit["C"] / RELU_COLLAPSE_CONSTANT - 1.0)
        details.update({"fitted_constant": float(fit["C"]), "expected_constant": RELU_COLLAPSE_CONSTANT,
                        "constant_relative_error": rel, "naive_constant": fit["naive"]})
        holds = holds and abs(rel) <= constant_rtol
    if abs(c0) < 1e-12:
        details["note"] = "c0 = 0: the statement's hypothesis (c_0 != 0) does not hold for this activation"
    return CheckReport(
        statement=f"without centring, rho_l -> 1 (rank-one Gram) for {a.name}",
        holds=holds, worst=float(eps[-1]), margin=margin,
        counterexample=None if holds else {"activation": a.name, "rho": rho, "sigma_w": sw}, cases=1,
        details=details)


# ---------------------------------------------------------------------------------------------------------
# beta0 = 1: isometry unchanged; He_k: rho -> rho^k
# ---------------------------------------------------------------------------------------------------------


def check_affine_isometry(acts=("identity", "x + 0.5", "2*x - 1"), K0=None, *, depth: int = 8,
                          sigma_w: float = 1.0, trials: int = 10, n: int | None = None, seed=0,
                          rtol: float = 1e-9) -> CheckReport:
    """An activation whose centred part is linear (beta0 = 1) leaves the isometry unchanged after block 1.

    Statement (Joudaki, Daneshmand and Bach 2023): for f(x) = a + b x (b != 0) and LayerNorm(post), the
    centring removes a and the scaling removes b and the norms, so isometry(K_l) = isometry(K_1) =
    am_gm_ratio(K0) isometry(K0) for every l >= 1 (`meanfield.propagate`). Checked on the log scale.
    Singular inputs are skipped (counted in ``details["skipped_singular"]``): their isometry is 0 in exact
    arithmetic, but after normalization round-off leaves a tiny positive eigenvalue.

    Raises
    ------
    ValueError
        For an activation with beta0 < 1 (the statement does not apply).
    """
    activations = _acts(acts)
    for a in activations:
        if rates.beta0(a, float(sigma_w) ** 2) < 1.0 - 1e-12:
            raise ValueError(f"check_affine_isometry: activation {a.name!r} has beta0 = "
                             f"{rates.beta0(a, float(sigma_w) ** 2):.6g} < 1; the statement needs an affine activation")
    grams = random_grams(trials, n, seed=seed, singular=False) if K0 is None else _grams_arg(K0, "K0")
    L = check_int("check_affine_isometry", "depth", depth, lo=1)
    worst, bad, cases, skipped = 0.0, None, 0, 0
    for a in activations:
        net = mlp(L, a, norm="ln", placement="post", sigma_w=float(sigma_w))
        for K in grams:
            ref = float(am_gm_ratio(K)) * float(isometry(K))
            if ref == 0.0:
                skipped += 1  # singular input: round-off, not the statement, decides the output's tiny isometry
                continue
            iso = np.asarray(isometry(propagate(net, K).gram))
            for layer in range(1, L + 1):
                cases += 1
                v = float(iso[layer])
                err = math.inf if v == 0.0 else abs(math.log(v) - math.log(ref))
                if err > worst:
                    worst = err
                    if err > rtol:
                        bad = {"activation": a.name, "K0": K, "block": layer, "isometry": v, "expected": ref}
    if cases == 0:
        raise ValueError("check_affine_isometry: every input was singular (isometry 0); give a non-singular K0")
    holds = worst <= rtol
    return CheckReport(
        statement="beta0 = 1: isometry(K_l) = am_gm_ratio(K0) isometry(K0) for every LayerNorm(post) block l >= 1",
        holds=holds, worst=worst, margin=rtol - worst, counterexample=None if holds else bad, cases=cases,
        details={"rtol": rtol, "skipped_singular": skipped, "worst_meaning": "max |log isometry_l - log expected|",
                 "margin_units": "log scale"})


def check_hermite_power(k: int = 2, K0=None, *, depth: int = 4, trials: int = 10, n: int = 4, seed=0,
                        atol: float = 1e-11) -> CheckReport:
    """Pure He_k as activation (k >= 2): rho_l = rho_0^(k^l) under LayerNorm(post), sigma_w = 1.

    Statement (Joudaki, Daneshmand and Bach 2023): He_k has the single orthonormal coefficient c_k = sqrt(k!)
    at q = 1, so kappa(rho) = rho^k and l blocks give rho_0^(k^l). Needs unit sample norms (the first
    block's input variance must be 1). Compared with `meanfield.propagate`, absolute tolerance ``atol``.

    Raises
    ------
    ValueError
        k < 2, or an input with a non-unit diagonal.
    """
    kk = check_int("check_hermite_power", "k", k, lo=2)
    grams = random_correlations(trials, n, seed=seed) if K0 is None else _grams_arg(K0, "K0")
    for K in grams:
        if np.max(np.abs(np.diag(K) - 1.0)) > 1e-12:
            raise ValueError("check_hermite_power: K0 must have a unit diagonal (a correlation matrix); got "
                             f"diag {np.diag(K)}")
    L = check_int("check_hermite_power", "depth", depth, lo=1)
    net = mlp(L, hermite.activation("hermite", k=kk), norm="ln", placement="post", sigma_w=1.0)
    worst, bad, cases = 0.0, None, 0
    for K in grams:
        C = correlations(propagate(net, K).gram)
        r0 = correlations(K)
        for layer in range(1, L + 1):
            cases += 1
            expected = r0 ** (kk**layer)
            err = float(np.max(np.abs(C[layer] - expected)))
            if err > worst:
                worst = err
                if err > atol:
                    bad = {"K0": K, "block": layer, "observed": C[layer], "expected": expected}
    holds = worst <= atol
    return CheckReport(
        statement=f"He_{kk} with LayerNorm(post): rho_l = rho_0^({kk}^l)",
        holds=holds, worst=worst, margin=atol - worst, counterexample=None if holds else bad, cases=cases,
        details={"atol": atol, "worst_meaning": "max |rho_l - rho_0^(k^l)|", "margin_units": "correlation"})


# ---------------------------------------------------------------------------------------------------------
# batch normalization
# ---------------------------------------------------------------------------------------------------------


def check_orthogonality_plateau(ds=(16, 64, 256), n: int = 4, *, depth: int = 40, seeds: int = 16, seed=0,
                                exponent_tol: float = 0.1, rtol: float = 0.15) -> CheckReport:
    """The orthogonality gap of the linear BN chain settles at order d^(-1/2) (Daneshmand et al. 2021).

    Runs `meanfield.rates.orthogonality_chain` for each width d (from equicorrelated inputs, rho0 = 0.9),
    takes the root mean square of V over seeds and the second half of the layers, fits log V_rms against
    log d (slope expected -1/2 within ``exponent_tol``) and compares each plateau with
    `meanfield.rates.orthogonality_plateau` (relative tolerance ``rtol``).

    Returns
    -------
    CheckReport with worst = the largest relative deviation from the predicted plateau, details with the
    fitted exponent and the plateaus.
    """
    dlist = [check_int("check_orthogonality_plateau", "d", d, lo=1) for d in ds]
    if len(dlist) < 2:
        raise ValueError(f"check_orthogonality_plateau: ds={ds!r} must hold at least two widths")
    L = check_int("check_orthogonality_plateau", "depth", depth, lo=4)
    seed0 = check_int("check_orthogonality_plateau", "seed", seed, lo=0)
    plateaus, preds = [], []
    for i, d in enumerate(dlist):
        V = rates.orthogonality_chain(d, n, L, seeds=seeds, seed=[seed0, i])
        plateaus.append(float(np.sqrt(np.mean(V[:, L // 2:] ** 2))))
        preds.append(rates.orthogonality_plateau(d, n))
    plateaus, preds = np.asarray(plateaus), np.asarray(preds)
    slope = float(np.polyfit(np.log(dlist), np.log(plateaus), 1)[0])
    rel = np.abs(plateaus / preds - 1.0)
    worst = float(rel.max())
    holds = abs(slope + 0.5) <= exponent_tol and worst <= rtol
    return CheckReport(
        statement="linear BN chain: orthogonality gap plateau ~ d^(-1/2), = orthogonality_plateau(d, n)",
        holds=holds, worst=worst, margin=min(rtol - worst, exponent_tol - abs(slope + 0.5)),
        counterexample=None if holds else {"ds": dlist, "plateaus": plateaus, "predicted": preds}, cases=len(dlist),
        details={"exponent": slope, "plateaus": plateaus, "predicted": preds, "ds": dlist, "n": n,
                 "worst_meaning": "max relative deviation from the predicted plateau",
                 "margin_units": "relative"})


def check_bn_gradient_rate(act="identity", batch_size: int = 8, *, width: int = 256, depth: int = 16,
                           seeds: int = 8, seed=0, skip: int = 4, z: float = 3.0, rtol: float = 0.03,
                           samples: int = 2**17) -> CheckReport:
    """The predicted batch-norm gradient explosion rate matches the finite-width simulator.

    Predicted: Yang et al. (ICLR 2019)'s closed form `meanfield.rates.yang_gradient_rate` for ReLU
    (Theorem 8) and affine activations ((B - 2)/(B - 3)); for other activations the toolkit's
    `meanfield.rates.bn_gradient_rate` (Monte Carlo, ``samples``). Measured:
    `meanfield.rates.measure_bn_gradient_rate` (simulate with gradients). Holds when |measured - predicted|
    <= z sqrt(se_m^2 + se_p^2) + rtol predicted; ``rtol`` allows for the O(B / width) finite-width bias.
    """
    try:
        pred = rates.Estimate(rates.yang_gradient_rate(act, batch_size), 0.0, "closed form (Yang et al. 2019)")
    except ValueError:
        pred = rates.bn_gradient_rate(act, batch_size, samples=samples, seed=0)
    meas = rates.measure_bn_gradient_rate(act, batch_size, width=width, depth=depth, seeds=seeds, seed=seed,
                                          skip=skip)
    se = math.sqrt(pred.stderr**2 + (meas.stderr if math.isfinite(meas.stderr) else 0.0) ** 2)
    diff = abs(meas.value - pred.value)
    allowed = z * se + rtol * pred.value
    holds = diff <= allowed
    return CheckReport(
        statement=f"BN gradient growth per block, {hermite.activation(act).name}, B = {batch_size}: simulation = "
                  "mean-field prediction",
        holds=holds, worst=diff, margin=allowed - diff,
        counterexample=None if holds else {"predicted": pred, "measured": meas}, cases=1,
        details={"predicted": pred.value, "predicted_stderr": pred.stderr, "measured": meas.value,
                 "measured_stderr": meas.stderr, "large_batch_limit": rates.bn_gradient_rate_limit(act),
                 "allowed": allowed, "worst_meaning": "|measured - predicted|", "margin_units": "rate"})
