"""Batch normalization's gradient explosion: the per-block growth factor lambda(B) of the squared gradient norm.

G. Yang, J. Pennington, V. Rao, J. Sohl-Dickstein and S. S. Schoenholz, "A mean field theory of batch
normalization" (ICLR 2019): in x_{l+1} = f(BN(W_l x_l)) (`mlp(..., norm="bn", placement="pre")`) the squared
gradient norm grows by a factor lambda(B) per block backwards, (B - 2)/(B - 3) for a linear f and
pi/(pi - 1) for ReLU as B -> inf.

- `yang_gradient_rate`: the paper's closed form, Theorem 8 (ReLU) and the linear rate (Theorem 9), any B;
- `bn_gradient_rate`: the toolkit's derivation for any activation (closed form for an affine f, Monte Carlo
  over the sphere otherwise; it agrees with Theorem 8 for ReLU within its standard error);
- `bn_gradient_rate_limit`: the large-batch limit E f'(z)^2 / Var f(z);
- `measure_bn_gradient_rate`: measured with `meanfield.simulate`.

Re-exported by `meanfield.rates`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

import hermite
from meanfield.core.validate import check_data, check_int, check_seed
from meanfield.finite import simulate
from meanfield.layers import Activation, Block, Dense
from meanfield.network import Network, mlp

__all__ = ["Estimate", "yang_gradient_rate", "bn_gradient_rate", "bn_gradient_rate_limit", "bn_gradient_network",
           "measure_bn_gradient_rate"]


@dataclass(frozen=True)
class Estimate:
    """A number with its standard error (0 for a closed form) and how it was obtained."""

    value: float
    stderr: float
    method: str
    per_seed: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def _relu_scale(a: hermite.Activation) -> float | None:
    """s > 0 if f(x) = s max(x, 0) (checked on a grid), else None."""
    if a.homogeneous_degree != 1:
        return None
    x = np.linspace(-3.0, 3.0, 61)
    y = np.asarray(a.fn(x), dtype=np.float64)
    s = float(y[-1] / x[-1])
    return s if s > 0 and np.allclose(y, s * np.maximum(x, 0.0), rtol=1e-12, atol=1e-14) else None


def yang_gradient_rate(act="relu", batch_size: int = 8) -> float:
    """Yang et al. (ICLR 2019)'s closed-form gradient explosion rate of a batch-normalized network
    x_{l+1} = f(BN(W_l x_l)): the per-block growth factor lambda(B) of the squared gradient norm.

    Theorem 8 (alpha-ReLU f(x) = max(x, 0)^alpha, here alpha = 1, ReLU), with c = -1/(B - 1) and the
    normalized arc-cosine kernel J(c) = (sqrt(1 - c^2) + (pi - arccos c) c)/pi, J'(c) = (pi - arccos c)/pi,
    J(1) = 1::

        lambda = (B - 3 + 2 alpha) [(2 alpha - 1) J'(c) + alpha^2 (B - 1) J(1)]
                 / [(2 alpha - 1)(B - 3)(B - 1)(J(1) - J(c))] - alpha^2 / (B - 3)
               = (J'(c) + B - 1) / ((B - 3)(1 - J(c))) - 1 / (B - 3)                     (alpha = 1),

    decreasing to pi/(pi - 1) as B -> inf. Linear (affine) f: lambda = (B - 2)/(B - 3), the minimum over
    all activations (Theorem 9). The theorems assume B >= 4; at B = 2 both formulas give 0 (the batch norm of
    two samples is constant) and at B = 3 they diverge (+inf), as `bn_gradient_rate` does.

    Parameters
    ----------
    act : "relu" (or a positive multiple of it) or an affine activation ("identity", ...)
    batch_size : int >= 2

    Raises ValueError for another activation: use the toolkit's `bn_gradient_rate` (Monte Carlo).

    Examples
    --------
    >>> from meanfield import rates
    >>> round(rates.yang_gradient_rate("relu", 8), 6), rates.yang_gradient_rate("identity", 8)
    (1.78819, 1.2)
    """
    from meanfield.rates import beta0  # rates re-exports this module: imported at call time

    a = hermite.activation(act)
    B = check_int("yang_gradient_rate", "batch_size", batch_size, lo=2)
    linear = beta0(a, 1.0) >= 1.0 - 1e-12
    if not linear and _relu_scale(a) is None:
        raise ValueError(f"yang_gradient_rate: act={a.name!r} must be ReLU (Theorem 8) or affine (Theorem 9); "
                         "use meanfield.rates.bn_gradient_rate (Monte Carlo) for other activations")
    if B == 3:
        return math.inf
    if linear:
        return (B - 2) / (B - 3)
    c = -1.0 / (B - 1)
    J = (math.sqrt(1.0 - c * c) + (math.pi - math.acos(c)) * c) / math.pi
    Jp = (math.pi - math.acos(c)) / math.pi
    return (Jp + B - 1) / ((B - 3) * (1.0 - J)) - 1.0 / (B - 3)


def bn_gradient_rate_limit(act) -> float:
    """Large-batch limit of the batch-norm gradient explosion rate: E f'(z)^2 / Var f(z), z ~ N(0, 1).

    = sum_k k c_k^2 / sum_{k>=1} c_k^2 = kappa'(1) at q = 1 (`kappa_derivative`). Linear: 1; ReLU:
    (1/2) / (1/2 - 1/(2 pi)) = pi / (pi - 1) (Yang et al., ICLR 2019). As B -> inf batch norm becomes a
    per-feature standardization by the population statistics, so the backward factor is
    sigma_w^2 E f'^2 / (sigma_w^2 Var f).
    """
    from meanfield.rates import kappa_derivative  # rates re-exports this module: imported at call time

    return float(kappa_derivative(act, 1.0, 1.0))


def bn_gradient_rate(act="identity", batch_size: int = 8, *, samples: int = 2**17, seed: int = 0) -> Estimate:
    """Per-block growth factor lambda(B) of the squared gradient norm in x_{l+1} = f(BN(W_l x_l)).

    The toolkit's derivation, for any activation with a derivative (the paper's closed form for ReLU and
    linear activations is `yang_gradient_rate`, Theorem 8; the two agree within this estimate's standard
    error). Yang, Pennington, Rao, Sohl-Dickstein and Schoenholz, "A mean field theory of batch
    normalization" (ICLR 2019); the network is ``mlp(L, act, norm="bn", placement="pre")``, the gradient flows from the
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
    from meanfield.rates import beta0  # rates re-exports this module: imported at call time

    a = hermite.activation(act)
    B = check_int("bn_gradient_rate", "batch_size", batch_size, lo=2)
    M = check_int("bn_gradient_rate", "samples", samples, lo=1000)
    seed = check_seed("bn_gradient_rate", seed)
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
    net = mlp(check_int("bn_gradient_network", "depth", depth, lo=1), act, norm="bn", placement="pre")
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
    from meanfield.rates import _ols  # rates re-exports this module: imported at call time

    owner = "measure_bn_gradient_rate"
    B = check_int(owner, "batch_size", batch_size, lo=4)
    L = check_int(owner, "depth", depth, lo=3)
    sk = check_int(owner, "skip", skip, lo=0)
    seed = check_seed(owner, seed)
    if L - 2 * sk < 2:
        raise ValueError(f"measure_bn_gradient_rate: depth={L} leaves fewer than 2 blocks after skip={sk} at each end")
    if X is None:
        X = np.random.default_rng(seed).standard_normal((B, 2 * B))
    X = check_data(owner, X)
    if X.shape[0] != B:
        raise ValueError(f"{owner}: X must have shape (batch_size={B}, d0); got {X.shape}")
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
