"""Weight normalization (Salimans and Kingma 2016) as plain numpy functions.

Source: T. Salimans and D. P. Kingma, "Weight Normalization: A Simple Reparameterization to Accelerate
Training of Deep Neural Networks", NeurIPS 2016 (arXiv:1602.07868); the authors' code is ``openai/weightnorm``
(the Lasagne version ran the paper's CIFAR-10 experiments; line references below are to lasagne/nn.py).

Each unit i of a dense layer has its weight vector reparameterized as

    w_i = g_i v_i / ||v_i||                           (lasagne/nn.py line 247)

so that the norm ||w_i|| = |g_i| is decoupled from the direction v_i / ||v_i||. The functions here work on a
weight matrix v of shape (out, in) (row i is unit i's vector) and a gain vector g of shape (out,); inputs are
batches X of shape (batch, in) and pre-activations t of shape (batch, out).

Functions::

    weight                          w = g v / ||v|| row-wise
    grads                           (grad_g, grad_v) from grad_w, in the projection form of the paper
    data_dependent_init             (g, b) standardizing each pre-activation over a batch (lines 252-257), or with
                                    mean-only batch norm only g (lines 202-205)
    mean_only_batchnorm             t - mean_batch(t) (lines 199-200)
    mean_only_batchnorm_backward    grad_t = grad_out - mean_batch(grad_out)
    weightnorm_dense                X w^T + b with w = g v / ||v||, optionally followed by mean-only batch norm

The gradient identities are the paper's (section 2; the code differentiates automatically); the rest follows the
code lines cited. Everything is numpy float64; bad input raises ValueError naming the argument, its value and the
valid range. The layer types of both engines are `meanfield.WeightNormDense` and `meanfield.MeanOnlyBatchNorm`
(``meanfield.mlp(norm="wn+mobn")``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from meanfield.core.validate import check_array, check_bool, check_real

__all__ = [
    "weight",
    "grads",
    "data_dependent_init",
    "mean_only_batchnorm",
    "mean_only_batchnorm_backward",
    "weightnorm_dense",
]


def _array(x: ArrayLike, name: str, ndim: tuple[int, ...]) -> np.ndarray:
    """x as a finite float64 array with one of the allowed numbers of dimensions (`check_array`)."""
    return check_array("weightnorm", name, x, ndim=ndim)


def _row_norms(v: np.ndarray) -> np.ndarray:
    """||v_i|| along the last axis; a zero row is a ValueError."""
    norms = np.linalg.norm(v, axis=-1)
    if np.any(norms == 0.0):
        bad = np.argwhere(np.atleast_1d(norms) == 0.0)[:, 0].tolist()
        raise ValueError(f"v has zero rows {bad}: weight normalization w = g v/||v|| needs ||v_i|| > 0 for "
                         "every unit")
    return norms


def _gain(g: ArrayLike, v: np.ndarray, name: str = "g") -> np.ndarray:
    """g broadcast to one value per unit, shape v.shape[:-1]."""
    ga = _array(g, name, (0, 1))
    try:
        return np.broadcast_to(ga, v.shape[:-1]).astype(np.float64)
    except ValueError as exc:
        raise ValueError(f"{name} must have shape {v.shape[:-1]} (one value per row of v) or be a scalar, "
                         f"got shape {ga.shape}") from exc


def weight(v: ArrayLike, g: ArrayLike) -> np.ndarray:
    """The weight-normalized weights w = g v / ||v||, row by row.

    .. math:: w_i = g_i \\, v_i / \\lVert v_i \\rVert, \\qquad \\lVert w_i \\rVert = |g_i|

    (Salimans and Kingma 2016, section 2; lasagne/nn.py line 247).

    Parameters
    ----------
    v : array_like, shape (out, in) or (in,)
        Direction parameters, one row per unit. No row may be zero.
    g : array_like, shape (out,) or scalar
        Gains, one per unit (a scalar is used for every unit).

    Returns
    -------
    w : ndarray, shape of v
        The effective weights.

    Raises
    ------
    ValueError
        If v has a zero row, shapes do not match, or an entry is not finite.
    """
    va = _array(v, "v", (1, 2))
    if va.shape[-1] == 0:
        raise ValueError(f"v must have at least one input column, got shape {va.shape}")
    norms = _row_norms(va)
    ga = _gain(g, va)
    return (ga / norms)[..., None] * va


def grads(v: ArrayLike, g: ArrayLike, grad_w: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Gradients with respect to g and v given the gradient with respect to w = g v/||v||.

    With w_i = g_i v_i / ||v_i|| and the gradient grad_w of a loss with respect to w (Salimans and
    Kingma 2016, section 2; the code leaves them to automatic differentiation):

    .. math::
        \\nabla_{g_i} L = \\frac{\\nabla_{w_i} L \\cdot v_i}{\\lVert v_i \\rVert}, \\qquad
        \\nabla_{v_i} L = \\frac{g_i}{\\lVert v_i \\rVert} M_i \\nabla_{w_i} L, \\qquad
        M_i = I - \\frac{w_i w_i^T}{\\lVert w_i \\rVert^2}.

    M_i is the projection onto the complement of w_i, so grad_v is orthogonal to v row by row. Since
    w_i w_i^T / ||w_i||^2 = v_i v_i^T / ||v_i||^2 whenever g_i != 0, the projection is evaluated with v,
    which also covers g_i = 0 (where grad_v = 0).

    Parameters
    ----------
    v : array_like, shape (out, in) or (in,)
        Direction parameters (no zero row).
    g : array_like, shape (out,) or scalar
        Gains.
    grad_w : array_like, shape of v
        Gradient of the loss with respect to the effective weights w.

    Returns
    -------
    grad_g : ndarray, shape (out,) (a 0-d array for a single vector v)
    grad_v : ndarray, shape of v

    Raises
    ------
    ValueError
        If v has a zero row, shapes do not match, or an entry is not finite.
    """
    va = _array(v, "v", (1, 2))
    norms = _row_norms(va)
    ga = _gain(g, va)
    gw = _array(grad_w, "grad_w", (va.ndim,))
    if gw.shape != va.shape:
        raise ValueError(f"grad_w must have the shape of v {va.shape}, got {gw.shape}")
    grad_g = np.sum(gw * va, axis=-1) / norms
    u = va / norms[..., None]  # unit directions
    projected = gw - np.sum(gw * u, axis=-1)[..., None] * u  # M grad_w
    grad_v = (ga / norms)[..., None] * projected
    return grad_g, grad_v


def data_dependent_init(v: ArrayLike, X: ArrayLike, scale: float = 1.0, rtol: float = 1e-10,
                        mean_only_bn: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Data-dependent initialization of the gains and biases of a weight-normalized dense layer.

    For the normalized pre-activations t_ni = v_i . x_n / ||v_i|| over the batch, with batch mean mu_i
    and (population, ddof = 0) standard deviation sigma_i (Salimans and Kingma 2016, section 3; the code,
    lasagne/nn.py lines 252-257, starts from g = 1 and sets g <- g / sigma, b <- -mu / sigma):

    .. math:: g_i = \\frac{s}{\\sigma_i}, \\qquad b_i = -\\frac{s\\,\\mu_i}{\\sigma_i},

    so that y_ni = g_i t_ni + b_i = s (t_ni - mu_i) / sigma_i has batch mean 0 and standard deviation s
    (s = ``scale``, 1 by default; the TensorFlow version calls it ``init_scale``) for every unit. With
    ``mean_only_bn`` (weight norm followed by mean-only batch norm, lines 202-205) only g is set, g_i = s/sigma_i,
    and b stays 0: the layer subtracts the batch mean itself.

    Parameters
    ----------
    v : array_like, shape (out, in)
        Direction parameters (no zero row).
    X : array_like, shape (batch, in)
        The initialization batch, one sample per row; at least two samples.
    scale : float, optional
        Target standard deviation s > 0 of every pre-activation (1 by default).
    mean_only_bn : bool, optional
        The initialization of weight norm with mean-only batch norm (b = 0).
    rtol : float, optional
        A unit is constant over the batch when sigma_i <= rtol * sqrt(mean_n t_ni^2) (round-off makes
        the computed sigma of a constant unit tiny rather than exactly 0); such a unit cannot be
        standardized and raises. 0 <= rtol < 1.

    Returns
    -------
    g : ndarray, shape (out,)
    b : ndarray, shape (out,)

    Raises
    ------
    ValueError
        For an empty batch, a zero row of v, mismatched shapes, non-finite entries, a non-positive scale,
        or a unit that is constant over the batch (sigma_i = 0).
    """
    va = _array(v, "v", (2,))
    Xa = _array(X, "X", (2,))
    if Xa.shape[0] == 0:
        raise ValueError(f"X is an empty batch (shape {Xa.shape}); data-dependent initialization needs at "
                         "least 2 samples")
    if Xa.shape[1] != va.shape[1]:
        raise ValueError(f"X has {Xa.shape[1]} features but v has {va.shape[1]} input columns; they must "
                         "match")
    owner = "weightnorm.data_dependent_init"
    scale = check_real(owner, "scale", scale, 0.0, lo_open=True)
    rtol = check_real(owner, "rtol", rtol, 0.0, 1.0, hi_open=True)
    mean_only_bn = check_bool(owner, "mean_only_bn", mean_only_bn)
    norms = _row_norms(va)
    t = (Xa @ va.T) / norms
    mu = t.mean(axis=0)
    sigma = t.std(axis=0)
    rms = np.sqrt(np.mean(t * t, axis=0))
    constant = sigma <= rtol * rms
    if np.any(constant):
        bad = np.flatnonzero(constant).tolist()
        raise ValueError(f"units {bad} are constant over the batch of {Xa.shape[0]} samples (standard "
                         "deviation 0): they cannot be scaled to standard deviation 1; use a batch with "
                         "varied inputs (at least 2 distinct samples)")
    g = scale / sigma
    b = np.zeros_like(g) if mean_only_bn else -mu * g
    return g, b


def mean_only_batchnorm(t: ArrayLike) -> np.ndarray:
    """Mean-only batch normalization: subtract the batch mean of every unit, without scaling.

    .. math:: \\hat t_{ni} = t_{ni} - \\frac{1}{B} \\sum_{m=1}^{B} t_{mi}

    (Salimans and Kingma 2016, mean-only batch normalization; lasagne/nn.py lines 199-200, which also keep a
    running mean 0.9 m + 0.1 mean_batch for evaluation, line 201; the learned bias is added separately).

    Parameters
    ----------
    t : array_like, shape (batch, ...)
        Pre-activations; axis 0 is the batch.

    Returns
    -------
    ndarray, shape of t

    Raises
    ------
    ValueError
        For an empty batch, a 0-d input or non-finite entries.
    """
    ta = _array(t, "t", (1, 2, 3, 4))
    if ta.shape[0] == 0:
        raise ValueError(f"t is an empty batch (shape {ta.shape}); mean-only batch norm needs >= 1 sample")
    return ta - ta.mean(axis=0, keepdims=True)


def mean_only_batchnorm_backward(grad_out: ArrayLike) -> np.ndarray:
    """Backward pass of mean-only batch normalization.

    The Jacobian of t -> t - mean_batch(t) is, per unit, the symmetric centering matrix I - 1 1^T / B,
    so the gradient with respect to t is the centred output gradient:

    .. math:: \\frac{\\partial L}{\\partial t_{ni}} = \\frac{\\partial L}{\\partial \\hat t_{ni}}
              - \\frac{1}{B} \\sum_{m=1}^{B} \\frac{\\partial L}{\\partial \\hat t_{mi}}

    Parameters
    ----------
    grad_out : array_like, shape (batch, ...)
        Gradient of the loss with respect to the output of `mean_only_batchnorm`.

    Returns
    -------
    ndarray, shape of grad_out
        Gradient with respect to the input t.

    Raises
    ------
    ValueError
        For an empty batch, a 0-d input or non-finite entries.
    """
    ga = _array(grad_out, "grad_out", (1, 2, 3, 4))
    if ga.shape[0] == 0:
        raise ValueError(f"grad_out is an empty batch (shape {ga.shape}); it needs >= 1 sample")
    return ga - ga.mean(axis=0, keepdims=True)


def weightnorm_dense(X: ArrayLike, v: ArrayLike, g: ArrayLike, b: ArrayLike | None = None,
                     mean_only_bn: bool = False) -> np.ndarray:
    """Forward pass of a weight-normalized dense layer, optionally with mean-only batch normalization.

    .. math:: y_{ni} = g_i \\frac{v_i \\cdot x_n}{\\lVert v_i \\rVert} + b_i = (X w^T)_{ni} + b_i

    and with ``mean_only_bn`` (lasagne/nn.py lines 199-207, the bias added after the centering)
    y_ni = t_ni - mean_m t_mi + b_i, t = X w^T.

    Parameters
    ----------
    X : array_like, shape (batch, in)
    v : array_like, shape (out, in)
        Direction parameters (no zero row).
    g : array_like, shape (out,) or scalar
        Gains.
    b : array_like, shape (out,) or scalar, optional
        Biases (0 if omitted).
    mean_only_bn : bool, optional
        Subtract the batch mean of every unit before adding b.

    Returns
    -------
    ndarray, shape (batch, out)

    Raises
    ------
    ValueError
        For a zero row of v, mismatched shapes or non-finite entries.
    """
    Xa = _array(X, "X", (2,))
    va = _array(v, "v", (2,))
    if Xa.shape[1] != va.shape[1]:
        raise ValueError(f"X has {Xa.shape[1]} features but v has {va.shape[1]} input columns; they must "
                         "match")
    w = weight(va, g)
    out = Xa @ w.T
    if check_bool("weightnorm.weightnorm_dense", "mean_only_bn", mean_only_bn):
        out = out - out.mean(axis=0, keepdims=True)
    if b is not None:
        out = out + _gain(b, va, "b")
    return out
