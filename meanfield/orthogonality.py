"""Batch normalization orthogonalizes: the orthogonality gap of the linear batch-norm chain.

H. Daneshmand, A. Joudaki and F. Bach, "Batch normalization orthogonalizes representations in deep random
networks" (NeurIPS 2021): in the linear chain H_{l+1} = BN(W_l H_l)/sqrt(d), BN(M) = diag(M M^T)^(-1/2) M
(rows = features scaled to unit norm over the n samples, no centring), W_l with i.i.d. N(0, 1) entries, the
orthogonality gap V(H) falls (near orthogonality by n/(n+2) per layer, `orthogonality_rate`) to a plateau
of order d^(-1/2) (`orthogonality_plateau`); `orthogonality_chain` samples it. Re-exported by
`meanfield.rates`.
"""

from __future__ import annotations

import math

import numpy as np

from meanfield.core.validate import check_int, check_real, check_seed
from meanfield.measures import check_gram, orthogonality_gap_gram

__all__ = ["orthogonality_chain", "orthogonality_plateau", "orthogonality_rate"]


def orthogonality_rate(n: int) -> float:
    """Per-layer contraction n / (n + 2) of a small deviation of H^T H from I/n in the linear BN chain.

    For m ~ N(0, I/n + Delta) (Delta symmetric, traceless, small) a first-order expansion of
    E[m m^T / ||m||^2] with E[(u^T E u) u u^T] = (2 E + tr(E) I) / (n (n + 2)) for u uniform on the sphere
    gives I/n + n Delta / (n + 2) (this project); so near orthogonality the mean-field part of the
    orthogonality gap shrinks by n / (n + 2) per layer (2/3 for n = 4).
    """
    nn = check_int("orthogonality_rate", "n", n, lo=2)
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
    dd = check_int("orthogonality_plateau", "d", d, lo=1)
    nn = check_int("orthogonality_plateau", "n", n, lo=2)
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
    dd = check_int("orthogonality_chain", "d", d, lo=1)
    nn = check_int("orthogonality_chain", "n", n, lo=2)
    L = check_int("orthogonality_chain", "depth", depth, lo=0)
    S = check_int("orthogonality_chain", "seeds", seeds, lo=1)
    if K0 is None:
        r0 = check_real("orthogonality_chain", "rho0", rho0, 0.0, 1.0, hi_open=True)
        K = (1.0 - r0) * np.eye(nn) + r0 * np.ones((nn, nn))
    else:
        K = check_gram(K0, name="K0", allow_stack=False)
        if K.shape[0] != nn:
            raise ValueError(f"orthogonality_chain: K0 must be {nn} x {nn} (n = {nn}); got {K.shape}")
    rng = np.random.default_rng(check_seed("orthogonality_chain", seed))
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
