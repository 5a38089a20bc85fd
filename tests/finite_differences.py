"""Central finite differences of the simulator's readout loss with respect to the input batch (shared by the
VJP tests)."""

from __future__ import annotations

import numpy as np

from meanfield.finite import _input_gradient


def input_gradient_fd(net, X: np.ndarray, width: int, seed: int, h: float) -> np.ndarray:
    """dL/dX by central differences of ``_input_gradient``'s loss, entry by entry."""
    fd = np.zeros_like(X)
    for idx in np.ndindex(*X.shape):
        Xp, Xm = X.copy(), X.copy()
        Xp[idx] += h
        Xm[idx] -= h
        fd[idx] = (_input_gradient(net, Xp, width=width, seed=seed)[0]
                   - _input_gradient(net, Xm, width=width, seed=seed)[0]) / (2 * h)
    return fd
