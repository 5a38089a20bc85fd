"""The mean-field engine: the batch Gram matrix through every layer at infinite width.

At infinite width the features of a layer are, unit by unit, i.i.d. copies of a random n-vector x (one entry
per input of the batch). The engine carries the law of x (`meanfield.core.law`): its second-moment Gram
K_ab = E[x_a x_b] (what `Trajectory.gram` holds), its per-sample mean m_a = E[x_a], and what later rules
need to stay exact. This module is a driver: each layer type holds its own rule (`Layer.infinite`, its
population rule `Layer.population` for ``exchangeable=True``, its action on explicit features
`Layer.on_features`), documented with the layer in `meanfield.layers`. Exact rules are used wherever they
exist; the others (an activation of a non-Gaussian input, exact BatchNorm after an activation, fixed-size
group norm after an activation, MaxPool(k > 2)) are Monte Carlo over the exact law, with the standard error
reported in ``traj.mc_error``: never a silently wrong number.
"""

from __future__ import annotations

import math

import numpy as np

from meanfield.core import blas
from meanfield.core.law import Features, Law, Unknown
from meanfield.core.progress import check_progress, tracking
from meanfield.core.scale import materialize, renormalize, true_scale_problem, with_log_scale
from meanfield.core.validate import check_data, check_gram, check_int, check_seed
from meanfield.layers.base import Layer
from meanfield.network import Network
from meanfield.trajectory import Trajectory

__all__ = ["propagate", "Propagation"]

_RAW_INPUT = ("propagate: the law of the raw input features across units is unknown; a layer that needs it "
              "(activation, batch norm, pooling) must follow a Dense layer")
_FIXED_PREFIX = ("propagate: the features of a fixed (Linear) prefix have no infinite-width law; a Dense layer "
                 "must come before a rule that needs one")


class Propagation:
    """The context of one mean-field run, handed to the layer rules.

    ``rng`` and ``M`` (samples) serve Monte Carlo rules; ``exchangeable`` selects the population rules;
    ``run(layers, law)`` applies a sequence of layers (structure layers call it for their branches).
    """

    def __init__(self, rng: np.random.Generator, M: int, exchangeable: bool, detail: list | None):
        self.rng = rng
        self.M = M
        self.exchangeable = exchangeable
        self.detail = detail
        self.where = "the input"  # the block being run, for error messages

    def apply(self, layer: Layer, law: Law) -> Law:
        """One layer: exactly on explicit features when the layer is deterministic, else its rule, at the
        law's scale (`meanfield.core.scale`: a scale-equivariant rule on the normalized law, a layer's limit at
        an extreme scale, else the rule on the true law)."""
        out = None
        if isinstance(law, Features) and not self.exchangeable:
            with blas.restored():  # explicit features: large products, the caller's BLAS threads
                F = layer.on_features(law.F)
            if F is not None:
                out = Features(F, _FIXED_PREFIX, law.mc_error)
        if out is None:
            L = law.log_scale
            degree = layer.scale_degree if L != 0.0 else None
            if L != 0.0 and degree is None:
                out = layer.scaled_rule(law, self)
                if out is None:
                    law = materialize(law, f"{self.where}, layer {layer!r}")
            if out is None:
                out = layer.population(law, self) if self.exchangeable else layer.infinite(law, self)
                out = with_log_scale(out, degree * L if degree is not None else 0.0)
        if self.detail is not None:
            self.detail.append((repr(layer), out.K.copy(), out.log_scale))
        return out

    def run(self, layers, law: Law) -> Law:
        for layer in layers:
            law = self.apply(layer, law)
        return law


def _input_law(K0, X) -> Law:
    if X is not None and K0 is not None:
        raise ValueError("propagate: give K0 or X, not both")
    if K0 is None and X is None:
        raise ValueError("propagate: give the input Gram K0 (n x n) or a data matrix X (n x d)")
    if X is not None:
        # K0 = X X^T / d as given, with the caller's BLAS threads (the same bits); an overflow is refused below
        with blas.restored(), np.errstate(over="ignore"):
            law = Features(check_data("propagate", X), _RAW_INPUT, symmetrize=False)
        _check_input_scale(law.K, "the input Gram X X^T / d")
        return law
    arr = np.asarray(K0)
    if arr.ndim == 2 and arr.shape[0] != arr.shape[1]:
        raise ValueError(f"propagate: K0 must be a square n x n Gram matrix, got shape {arr.shape}; pass a data "
                         "matrix as propagate(net, X=X)")
    try:
        K = check_gram(K0, name="K0", allow_stack=False)
    except ValueError as exc:
        raise ValueError(f"{exc} (a data matrix must be passed as propagate(net, X=X))") from None
    _check_input_scale(K, "K0")
    return Unknown(K, np.zeros(K.shape[0]), _RAW_INPUT)


def _check_input_scale(K: np.ndarray, what: str) -> None:
    """ValueError where the input Gram overflows float64 or has a nonzero variance below its normal range
    (subnormal: its relative precision is lost), instead of a misleading overflow at block 1."""
    if not np.all(np.isfinite(K)):
        raise ValueError(f"propagate: {what} overflows float64 (entries beyond 1.8e308); rescale the inputs (the "
                         "correlations do not depend on the scale)")
    d = np.abs(np.diag(K))
    low = (d > 0) & (d < np.finfo(np.float64).tiny)
    if np.any(low):
        a = int(np.argmin(np.where(low, d, np.inf)))
        raise ValueError(f"propagate: {what} has variance {float(d[a]):.3g} at input {a}, "
                         f"below float64's normal range (2.2e-308), where its relative precision is lost; rescale "
                         "the inputs (the correlations do not depend on the scale)")


def propagate(net: Network, K0=None, *, X=None, exchangeable: bool = False, detail: bool = False,
              mc_samples: int = 2**17, seed: int = 0, progress: bool | None = None,
              width=None, scale_free: bool = False) -> Trajectory:
    """Carry the batch Gram matrix through every block of ``net`` at infinite width.

    Parameters
    ----------
    net : Network
        The description (`meanfield.mlp` or `meanfield.Network`); a single layer or list of layers is
        wrapped in a Network.
    K0 : (n, n) array, optional
        The input Gram matrix (symmetric PSD, checked). A positional array is always K0: a non-square one
        raises, and a data matrix must be passed as ``X=``.
    X : (n, d) array, optional
        Data matrix; K0 = X X^T / d. Deterministic layers at the start of the network (Linear, norms,
        activations) act on X itself, exactly.
    exchangeable : bool
        Treat the n inputs as representatives of an infinite i.i.d. data set: batch-coupled layers use their
        population rule (`Layer.population`; BatchNorm then uses population statistics), and a batch-coupled
        layer without one raises. Used by `meanfield.bias`.
    detail : bool
        Also record the Gram after every layer (``traj.layers``: list of (layer repr, K)).
    mc_samples, seed : int
        Samples and seed of the Monte Carlo expectations needed only for non-Gaussian inputs to an
        activation, exact BatchNorm after an activation, fixed-size group norm after an activation and
        MaxPool; their standard error is in ``traj.mc_error`` (0 for exact blocks).
    progress : None, True or False
        A tqdm bar over blocks for runs with Monte Carlo rules: None shows it when their estimated work is
        large (`meanfield.core.progress`) and stderr is a terminal or this runs in a notebook; exact runs
        never show one.

    scale_free : bool
        Return the Grams divided by their scale: ``gram[l]`` is K_l / exp(L_l) with the natural log L_l of the
        scale in ``traj.info["log_scale"]`` (L_l = 0 unless the mean variance left [1e-64, 1e64]). The engine
        always carries the scale this way (`meanfield.core.scale`), so correlations and every scale-invariant
        measure are exact at any depth; without ``scale_free`` a block whose true variance is not a normal
        float64 number raises a ValueError naming the block. An input Gram that overflows float64 or has a
        subnormal variance is refused (rescale the inputs: the correlations do not depend on the scale).
    width : int or sequence of ints, optional
        Finite width W: ``gram`` becomes the mean of the empirical Gram to first order in 1/W and ``gram_cov``
        the covariance of its entries, to first order plus the second-order terms that compound with depth
        (`meanfield.fluctuations.propagate_finite`, which takes further options, ``order=1`` among them; a
        sequence of widths gives a dict {width: Trajectory} from one computation).

    Returns
    -------
    Trajectory with gram (L+1, n, n) and means (L+1, n).

    Examples
    --------
    >>> import numpy as np, meanfield
    >>> net = meanfield.mlp(2, "relu", sigma_w=2**0.5)
    >>> t = meanfield.propagate(net, np.eye(2))
    >>> np.round(t.gram[1], 6).tolist()    # arc-cosine kernel: 2 * 1/(2 pi) off the diagonal
    [[1.0, 0.31831], [0.31831, 1.0]]
    """
    if width is not None:
        if exchangeable or detail or scale_free:
            raise ValueError("propagate: width= (the finite-width theory) takes neither exchangeable=True, "
                             "detail=True nor scale_free=True")
        from meanfield.fluctuations import propagate_finite

        return propagate_finite(net, K0, X=X, width=width, seed=seed)
    if isinstance(net, (list, tuple, Layer)):  # a bare layer or list of layers, as simulate accepts
        net = Network(net)
    if not isinstance(net, Network):
        raise ValueError(f"propagate: net must be a meanfield.Network (or a list of layers), got "
                         f"{type(net).__name__}")
    data = X if X is not None else K0
    with blas.serial_for(np.shape(data)[0] if np.ndim(data) else 0):  # small batches: one BLAS thread
        return _propagate(net, K0, X, exchangeable, detail, mc_samples, seed, progress, scale_free)


def _propagate(net, K0, X, exchangeable, detail, mc_samples, seed, progress, scale_free) -> Trajectory:
    law = _input_law(K0, X)
    M = check_int("propagate", "mc_samples", mc_samples, lo=64)
    check_progress("propagate", progress)
    rng = np.random.default_rng(check_seed("propagate", seed))
    ctx = Propagation(rng, M, bool(exchangeable), [] if detail else None)
    n = law.n
    L = net.depth
    grams = np.empty((L + 1, n, n))
    means = np.empty((L + 1, n))
    errs = np.zeros(L + 1)
    grams[0], means[0] = law.K, law.m
    log_scale = np.zeros(L + 1)
    with tracking(progress, L) as bar:
        for i, block in enumerate(net.blocks, start=1):
            ctx.where = f"block {i}"
            law = renormalize(ctx.run(block.layers, law))
            if not math.isfinite(float(np.sum(law.K))) and not np.all(np.isfinite(law.K)):
                q = float(np.max(np.diag(grams[i - 1]))) * math.exp(log_scale[i - 1])
                raise ValueError(f"propagate: the Gram after block {i} overflows float64 (the largest variance "
                                 f"entering the block was {q:g}): the network diverges at this depth")
            grams[i], means[i], errs[i], log_scale[i] = law.K, law.m, law.mc_error, law.log_scale
            bar.block_done()
    info = {"exchangeable": exchangeable}
    if isinstance(law, Features):  # a fully deterministic network: its output features are known exactly
        info["features"] = law.F
    layers = None if ctx.detail is None else [(rep, K) for rep, K, _ in ctx.detail]
    if scale_free:
        info["log_scale"] = log_scale
        if ctx.detail is not None:
            info["layer_log_scale"] = np.array([ls for _, _, ls in ctx.detail])
    elif np.any(log_scale != 0.0):
        _to_true_scale(grams, means, errs, log_scale)
        for k, (rep, K, ls) in enumerate(ctx.detail or ()):
            layers[k] = (rep, K * math.exp(ls) if ls != 0.0 else K)
    return Trajectory(gram=grams, engine="meanfield", network=net, means=means, mc_error=errs,
                      layers=layers, info=info)


def _to_true_scale(grams, means, errs, log_scale) -> None:
    """exp(L) K per block in place, or a ValueError naming the first block whose true variance is not a
    normal float64 number."""
    for i, ls in enumerate(log_scale):
        if ls == 0.0:
            continue
        problem = true_scale_problem(grams[i], ls)
        if problem is not None:
            raise ValueError(f"propagate: at block {i} {problem}; the correlations are still exact: pass "
                             "scale_free=True for the Grams divided by their scale, with the natural log of the "
                             "scale in traj.info['log_scale']")
        grams[i] *= math.exp(ls)
        means[i] *= math.exp(0.5 * ls)
        errs[i] *= math.exp(ls)
