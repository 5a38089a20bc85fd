"""Dual kernels E[f(u) f(v)] for jointly Gaussian (u, v): closed forms, Mehler series, quadrature.

For Var u = q1, Var v = q2, corr(u, v) = rho, Mehler's formula gives

    E[f(u) f(v)] = sum_k c_k(q1) c_k(q2) rho^k,      E[f'(u) f'(v)] = sum_k d_k(q1) d_k(q2) rho^k,

with d_k(q) = sqrt((k+1)/q) c_{k+1}(q) the coefficients of f' (Stein's lemma). Four methods, chosen per
entry (method 4: per group of entries) so that every value is within 1e-12 sqrt(E f(u)^2 E f(v)^2) of the truth:

1. Closed forms (exact): the arc-cosine family (Cho and Saul 2009) for a relu(x) + b relu(-x) (relu,
   leaky_relu, abs, identity) and a 1{x>0} + b 1{x<0} (step, sign); erf (Williams 1997); exp; sin; cos;
   the gaussian exp(-x^2/2); gelu x Phi(x) (derived with Stein's lemma, see `hermite.cores.GeluCore`).
2. The Mehler series, truncated at K, wherever its remainder is proven small: by Cauchy-Schwarz
   |sum_{k>K} c_k(q1) c_k(q2) rho^k| <= |rho|^(K+1) sqrt(T_K(q1) T_K(q2)), T_K the tail mass. A truncated
   series is never used near |rho| = 1 without this bound.
3. Direct two-dimensional quadrature where the bound fails (kinked activations near |rho| = 1, large
   variances): E[f(u) g(v)] = int phi(z1) f(sqrt(q1) z1) G(z1) dz1 with
   G(z1) = E[g(sqrt(q2) (rho z1 + sqrt(1 - rho^2) z2))], each a composite Gauss-Legendre rule split at
   the kinks; the outer panels are graded geometrically towards the points where G varies on the scale
   sqrt(1 - rho^2) (the shadows of g's kinks), so rho = 1 - 1e-12 is as accurate as rho = 0. Where G is
   known in closed form (`hermite.smoothing`: hardtanh, relu6, elu, selu) it replaces the inner rule.
4. Kernel tables for many entries at one variance pair (every entry of a Gram after a LayerNorm): the
   values of methods 2 and 3 at a few hundred angles, as a verified piecewise Chebyshev interpolant in
   y = sqrt(1 - |rho|) (mirrored for rho < 0; `hermite.tables`), used for every group of at least
   `hermite.tables.TABLE_MIN` entries that share (q1, q2); checked to 4e-13 sqrt(E f(u)^2 E f(v)^2) against
   methods 2 and 3.

The closed forms are the families of `hermite.cores` (each class overrides ``closed_kernel``), methods 2
and 3 the generic `Core` path. An Activation f = gamma (phi(g x) + alpha x + beta) reduces exactly to its
core phi: e.g. E[f(u) f(v)] = gamma^2 [K_phi + alpha rho (sqrt(q2) c_1(Q1) + sqrt(q1) c_1(Q2))
+ alpha^2 rho sqrt(q1 q2) + beta (c_0(Q1) + c_0(Q2)) + beta^2], Q = g^2 q, since
E[phi(g u) v] = rho sqrt(q2) c_1^phi(Q1) (`Activation.kernel_at`).
"""

from __future__ import annotations

import numpy as np

from hermite.activations import activation
from hermite.integrability import divergence
from hermite.validate import check_correlation, check_derivative_order, check_flag, check_variance

__all__ = ["kernel"]


def kernel(act, rho, q1=1.0, q2=None, derivative: int = 0, centered: bool = False):
    """Dual kernel E[f(u) f(v)] for (u, v) jointly Gaussian with Var u = q1, Var v = q2, corr rho.

    Parameters
    ----------
    act : activation (name, callable, formula or Activation)
    rho : float or array in [-1, 1]
    q1, q2 : float or array > 0 (q2 defaults to q1); rho, q1, q2 broadcast together
    derivative : 0 or 1
        1 gives E[f'(u) f'(v)] (the weak derivative; used for chi_1 and gradients), not d/drho.
    centered : bool
        Return the covariance E[f(u) f(v)] - E f(u) E f(v) (with f' for derivative=1).

    Returns
    -------
    float or ndarray of the broadcast shape (float64).

    Accuracy: absolute error below 1e-12 sqrt(E f(u)^2 E f(v)^2) for every rho in [-1, 1], q1 != q2 and
    every built-in (see the module docstring for the methods).

    Divergence: where f (f' for derivative=1) is not square-integrable under N(0, q1) or N(0, q2)
    (`hermite.integrability`: growth of f^2 against the Gaussian weight, non-integrable singularities),
    the Mehler expansion does not exist. An entry with rho = 1 and q1 = q2 is then the second moment,
    +inf; any other such entry raises ValueError (its integral may be finite, infinite or undefined
    depending on rho, and is not computed).

    Examples
    --------
    >>> import hermite, numpy as np
    >>> k = hermite.kernel("relu", 0.0)                 # E relu(u) relu(v) = 1/(2 pi)
    >>> bool(abs(k - 1 / (2 * np.pi)) < 1e-15)
    True
    >>> float(hermite.kernel("relu", 1.0, q1=2.0))      # E relu(u)^2 = q/2
    1.0
    """
    act = activation(act)
    derivative = check_derivative_order(derivative)
    check_flag(centered, "centered")
    r = check_correlation(rho)
    a1 = check_variance(q1, "q1")
    a2 = a1 if q2 is None else check_variance(q2, "q2")
    r, a1, a2 = np.broadcast_arrays(r, a1, a2)
    shape = r.shape
    r, a1, a2 = r.ravel(), a1.ravel(), a2.ravel()
    bad = np.zeros(r.shape, dtype=bool)
    if not act.per_unit and r.size:
        b12, why = divergence(act, np.concatenate([a1, a2]), derivative)
        bad = b12[: r.size] | b12[r.size:]
        infinite = bad & (r == 1.0) & (a1 == a2)
        if np.any(bad & ~infinite):
            i = int(np.argmax(bad & ~infinite))
            f = "f'" if derivative else "f"
            raise ValueError(f"kernel: q1={a1[i]:g}, q2={a2[i]:g} must be variances at which {f} of activation "
                             f"{act.name!r} is square-integrable (rho={r[i]:g}); it diverges: {why}. Only "
                             "rho = 1 with q1 = q2 (the second moment, +inf) is defined there")
    out = np.full(r.shape, np.inf)
    ok = ~bad
    if ok.any():
        out[ok] = act.kernel_at(r[ok], a1[ok], a2[ok], derivative)
        if centered:
            out[ok] -= act.mean_at(a1[ok], derivative) * act.mean_at(a2[ok], derivative)
    out = out.reshape(shape)
    return float(out) if out.ndim == 0 else out
