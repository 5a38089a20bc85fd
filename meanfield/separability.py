"""Separability of two labelled sets: the sum-of-squares ratio SSR, its affine lower bound LSSR, and an XOR
data set on which one affine map followed by LayerNorm goes below the LSSR of its input.

Subject: Y. Ni, Y. Guo, J. Jia and L. Huang, "On the Nonlinearity of Layer Normalization", ICML 2024
(arXiv:2406.01255). Samples are rows, X (n, p); a 1-D array is n samples of one feature. Re-exported by
`meanfield.layernorm`.

Whose definitions: SSR and LSSR are named after the paper's "Sum of Squares Ratio" and its linear lower
bound; the formula of `ssr` (within-class over total sum of squares) is the one third-party summaries of
the paper give (its text could not be read for this package). Any within/between variant is a monotone
function of it (W / B = r / (1 - r)), so "an LN-Net goes below LSSR" means the same for either. The
closed form of `lssr` (a generalized eigenvalue) and `xor_example` are the toolkit's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meanfield.core.validate import check_int, check_real, check_samples, check_seed
from meanfield.ln_net import _E

__all__ = ["ssr", "lssr", "XorExample", "xor_example"]


def _scatters(owner: str, X1, X2):
    A = check_samples(owner, X1, "X1")
    B = check_samples(owner, X2, "X2")
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"{owner}: X1 and X2 must have the same number of features; got {A.shape[1]} and "
                         f"{B.shape[1]}")
    allx = np.concatenate([A, B])
    ca, cb, ct = A - A.mean(0), B - B.mean(0), allx - allx.mean(0)
    sw = ca.T @ ca + cb.T @ cb
    st = ct.T @ ct
    tr = np.trace(st)
    if not tr > 1e-300 or tr <= (64 * np.finfo(float).eps) ** 2 * np.sum(allx**2):
        raise ValueError(f"{owner}: X1 and X2 have zero total scatter (all samples equal): SSR is undefined")
    return sw, st


def ssr(X1, X2) -> float:
    """Sum-of-squares ratio of two labelled sets: within-class scatter over total scatter.

        SSR = sum_c sum_{x in X_c} ||x - mu_c||^2 / sum_x ||x - mu||^2 = tr(S_W) / tr(S_T),

    in [0, 1]; small means well separated. X1 (n1, p), X2 (n2, p); a 1-D array is n samples of one
    feature. Invariant under translations, rotations and uniform scaling. The paper's SSR (Ni et al.
    2024) as third-party summaries state it: SSR = (SS(X1) + SS(X2)) / SS([X1; X2]), SS(X) = sum_i
    ||x_i - mean(X)||^2.
    """
    sw, st = _scatters("ssr", X1, X2)
    return float(np.clip(np.trace(sw) / np.trace(st), 0.0, 1.0))


def lssr(X1, X2) -> float:
    """Linear lower bound of SSR: the smallest SSR any affine map of the data can reach.

        LSSR = min_{w : w^T S_T w > 0} (w^T S_W w) / (w^T S_T w),

    the smallest generalized eigenvalue of (S_W, S_T) on the range of S_T (S_W = within-class scatter
    matrix, S_T = total scatter matrix, both p x p). For any affine map x -> A x + b (any output
    dimension), SSR(A X1 + b, A X2 + b) = tr(A S_W A^T) / tr(A S_T A^T) >= LSSR, a ratio of sums of
    per-direction ratios, and the 1-D projection on the minimizing w attains it; in one dimension
    LSSR = SSR. With two classes S_T = S_W + (n1 n2 / n) dm dm^T, so LSSR = 1 - (n1 n2/n) dm^T S_T^+ dm
    (dm the difference of the class means). This is the paper's LSSR, "the linear-invariant lower bound
    of SSR" that no linear network can go below (Ni et al. 2024, as third-party summaries state it); the
    generalized-eigenvalue closed form is the toolkit's derivation.
    """
    sw, st = _scatters("lssr", X1, X2)
    vals, vecs = np.linalg.eigh(st)
    keep = vals > vals.max() * 1e-12
    half = vecs[:, keep] / np.sqrt(vals[keep])
    m = half.T @ sw @ half
    lo = np.linalg.eigvalsh(0.5 * (m + m.T))[0]
    return float(np.clip(lo, 0.0, 1.0))


@dataclass
class XorExample:
    """Result of `xor_example`: the data, the affine map R^2 -> R^3, and the separability numbers."""

    X1: np.ndarray        # class "x1 x2 > 0", shape (n1, 2)
    X2: np.ndarray        # class "x1 x2 < 0", shape (n2, 2)
    W: np.ndarray         # (3, 2)
    b: np.ndarray         # (3,)
    Y1: np.ndarray        # layer_norm(X1 @ W.T + b), shape (n1, 3)
    Y2: np.ndarray
    ssr_input: float      # SSR of the inputs
    lssr_input: float     # LSSR of the inputs: the best any affine map can do
    ssr_output: float     # SSR after the affine map and LN (below lssr_input)


def xor_example(seed: int = 0, n_per_cluster: int = 50, noise: float = 0.1) -> XorExample:
    """The toolkit's XOR data set on which one affine map followed by LN (d = 3) beats every affine map.

    Four Gaussian clusters (standard deviation ``noise``) at (+-1, +-1); class 1 where x1 x2 > 0,
    class 2 where x1 x2 < 0. The class means coincide, so LSSR of the input is (nearly) 1: no affine
    map separates the classes at all. The fixed affine map z = W x + b writes, in the orthonormal
    basis (e1, e2) of the plane sum(z) = 0 that LN maps onto the circle ||y||^2 = 3,

        v = (1 + 1.75 x1 + 1.25 x2,  0.5 (x1 + x2)),   z = v_1 e1 + v_2 e2,

    which sends both class-2 clusters (x1 + x2 = 0) to v = (1 +- 0.5, 0), the same direction, so LN
    collapses class 2 to (nearly) one point, while the class-1 clusters go to the directions of (4, 1)
    and (-2, -1). The SSR after LN is 0.68 without noise and about 0.7 with noise 0.1, far below the
    LSSR of the input (about 1); a numerical search over all affine maps found nothing below 1/2 for
    the noiseless clusters.
    """
    from meanfield.layernorm import layer_norm  # the facade re-exports this module

    seed = check_seed("xor_example", seed)
    n = check_int("xor_example", "n_per_cluster", n_per_cluster, lo=1, strict=True)
    noise = check_real("xor_example", "noise", noise, 0.0, 0.3)  # the clusters must stay apart
    rng = np.random.default_rng(seed)

    def cluster(cx, cy):
        return np.array([cx, cy]) + noise * rng.standard_normal((n, 2))

    X1 = np.concatenate([cluster(1, 1), cluster(-1, -1)])
    X2 = np.concatenate([cluster(1, -1), cluster(-1, 1)])
    B = np.array([[1.75, 1.25], [0.5, 0.5]])
    c = np.array([1.0, 0.0])
    W = _E @ B
    b = _E @ c
    Y1 = layer_norm(X1 @ W.T + b)
    Y2 = layer_norm(X2 @ W.T + b)
    return XorExample(X1=X1, X2=X2, W=W, b=b, Y1=Y1, Y2=Y2, ssr_input=ssr(X1, X2),
                      lssr_input=lssr(X1, X2), ssr_output=ssr(Y1, Y2))
