"""Initial guessing bias: how an untrained classifier favours some classes, predicted and simulated.

Sources: Francazi, Lucchi and Baity-Jesi (ICML 2024), "Initial Guessing Bias: How Untrained Networks Favor
Some Classes"; Francazi, Pinto, Lucchi and Baity-Jesi (2025), "Where You Place the Norm Matters: From
Prejudiced to Neutral Initializations".

The order parameter
-------------------
Put a random Gaussian linear readout on a network's last features h(x) and look at one output
o(x) = r . h(x) / sqrt(width) over a data set. Its mean over the data moves from one initialization to
the next, its spread over the data is what separates the inputs. The initial guessing bias is

    gamma = Var_init( E_data o ) / E_init( Var_data o ).

At infinite width the second moments of the output over the readout are the Gram of the features,
E_init[o(x) o(x')] = K(x, x'), so for an infinite i.i.d. data set

    gamma = K_ab / (K_aa - K_ab) = c / (1 - c),     c = K_ab / K_aa,

where a, b are two *independent* inputs of the data set and K is the second-moment Gram of the last
features (feature means included: a non-zero mean feature vector shared by all inputs is exactly what
makes the outputs of different inputs correlated). `gamma` computes c with the mean-field engine
(`meanfield.propagate`) on the 2 x 2 input Gram [[1, r], [r, 1]] with ``exchangeable=True``: the two inputs
stand for the whole data set, so BatchNorm uses population statistics. r = ``input_correlation`` is the
correlation of two independent inputs, i.e. a shift of the input mean: x = sqrt(r) mu + sqrt(1 - r) z
with |mu|^2 / d = 1 has pairwise correlation r, and gamma = r / (1 - r) already at the input.

Known values (ReLU, sigma_w^2 = 2, sigma_b = 0, Francazi et al. 2025): no norm gamma_1 = 1/(pi - 1) after
one block and gamma -> infinity with depth (deep prejudice); LayerNorm before the activation: the same;
BatchNorm before the activation: 1/(pi - 1) at every depth; LayerNorm or BatchNorm after the activation:
0 (neutral). Odd activations with zero bias (tanh, sin, erf) give 0; sigmoid a large gamma. Max pooling
over k units creates bias even in a linear network: for k = 2, c = (E max(z1, z2))^2 / E max^2 = 1/pi,
so gamma = 1/(pi - 1) as for ReLU.

The class-fraction law (public facade)
--------------------------------------
With two classes the fraction of an infinite data set assigned to class 0 by one initialization is
G_0 = Phi(sqrt(gamma) Z), Z ~ N(0, 1). This law has its own module, `meanfield.class_fractions`
(`class_fraction_law`, `ClassFractionLaw`, `sample_fractions` for C classes), whose public names are
re-exported here (``bias.class_fraction_law(gamma)`` keeps working).

Simulation and the BatchNorm pitfall
------------------------------------
`simulate` samples finite networks (`meanfield.simulate`'s layer rules), puts a random Gaussian readout
with ``classes`` outputs on the last block, and measures the class fractions and gamma per
initialization. BatchNorm uses *batch statistics over the whole evaluated set*: a BatchNorm layer in
inference mode uses its running statistics, which at initialization are mean 0 and variance 1, so it is
the identity and a network "with BatchNorm after the activation" evaluated that way is exactly as
prejudiced as the network without it. Only batch statistics centre the features over the data, which is
what removes the bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import hermite
from meanfield.class_fractions import ClassFractionLaw, class_fraction_law, sample_fractions
from meanfield.core.validate import check_int, check_real, check_real_array, check_samples, check_seed, check_widths
from meanfield.finite import simulate_outputs
from meanfield.infinite import propagate
from meanfield.layers import Block, Dense
from meanfield.measures import gamma_from_gram
from meanfield.network import Network, mlp

__all__ = [
    "gamma", "gamma_trajectory", "gamma_from_gram", "output_correlation", "gamma_from_correlation",
    "correlation_from_gamma",
    "regime", "REGIMES", "phase_diagram", "PhaseDiagram", "simulate", "BiasSimulation",
    # re-exported (public facade)
    "class_fraction_law", "ClassFractionLaw", "sample_fractions",
]

REGIMES = ("neutral", "prejudiced", "deep prejudice")


# ================================================================================================
# mean-field gamma
def gamma_from_correlation(c):
    """gamma = c / (1 - c) for the output correlation c of two independent inputs (arrays broadcast).

    c = 1 gives +inf; c must lie in [-1, 1] (ValueError otherwise, NaN included).
    """
    c = np.asarray(c, dtype=np.float64)
    if np.any(np.isnan(c)) or np.any(np.abs(c) > 1.0):
        raise ValueError(f"gamma_from_correlation: c={c!r} must lie in [-1, 1]")
    with np.errstate(divide="ignore"):
        out = np.where(c >= 1.0, np.inf, c / np.where(c >= 1.0, 1.0, 1.0 - c))
    return out + 0.0 if out.ndim else float(out) + 0.0


def correlation_from_gamma(g):
    """c = gamma / (1 + gamma), the inverse of `gamma_from_correlation` (gamma = inf gives 1)."""
    g = np.asarray(g, dtype=np.float64)
    if np.any(np.isnan(g)) or np.any(g < -0.5):
        raise ValueError(f"correlation_from_gamma: gamma={g!r} must be a real number in [-0.5, inf]")
    out = np.where(np.isinf(g), 1.0, g / np.where(np.isinf(g), 1.0, 1.0 + g))
    return out if out.ndim else float(out)


def _input_gram(owner: str, input_correlation) -> np.ndarray:
    r = check_real(owner, "input_correlation", input_correlation, lo=-1.0, hi=1.0)
    return np.array([[1.0, r], [r, 1.0]])


def _exchangeable_trajectory(owner, net, input_correlation, mc_samples, seed):
    if not isinstance(net, Network):
        raise ValueError(f"{owner}: net must be a meanfield.Network (e.g. meanfield.mlp(...)), got "
                         f"{type(net).__name__}")
    K0 = _input_gram(owner, input_correlation)
    seed = check_seed(owner, seed)
    return propagate(net, K0, exchangeable=True, mc_samples=mc_samples, seed=seed)


def gamma_trajectory(net: Network, input_correlation: float = 0.0, *, mc_samples: int = 2**18,
                     seed: int = 0) -> np.ndarray:
    """Mean-field gamma after every block: array (L+1,), index 0 the input (r / (1 - r)).

    gamma_l = K_ab / (K_aa - K_ab) for the Gram K of block l's output on two independent inputs of
    correlation r = ``input_correlation`` (infinite width, infinite i.i.d. data; Francazi et al. 2024,
    2025). Computed with ``meanfield.propagate(net, [[1, r], [r, 1]], exchangeable=True)``, so every layer
    type, norm and placement is covered; blocks with a Monte Carlo rule (MaxPool, an activation after a
    non-Gaussian input) carry an error of order ``mc_samples ** -0.5`` (see ``propagate(...).mc_error``).
    +inf where the two outputs are identical (c = 1), NaN where the output is identically zero
    (K_aa = 0: gamma is 0/0). For r >= 0 (an i.i.d. data set) K_ab = |E_x h(x)|^2 >= 0, so round-off or
    Monte Carlo values below 0 are set to 0. Negative r is allowed by the formula but is not the
    correlation of an infinite exchangeable data set (de Finetti), so gamma may then be negative.

    Examples
    --------
    >>> import meanfield
    >>> from meanfield import bias
    >>> g = bias.gamma_trajectory(meanfield.mlp(3, "relu", norm="bn", placement="pre", sigma_w=2**0.5))
    >>> [round(float(x), 6) for x in g]
    [0.0, 0.466942, 0.466942, 0.466942]
    """
    t = _exchangeable_trajectory("gamma_trajectory", net, input_correlation, mc_samples, seed)
    g = gamma_from_gram(t.gram)
    if float(input_correlation) >= 0:  # an i.i.d. data set: K_ab = |E_x h(x)|^2 >= 0, so gamma >= 0 exactly
        g = np.where(g < 0, 0.0, g)
    return g


def gamma(net: Network, input_correlation: float = 0.0, *, mc_samples: int = 2**18, seed: int = 0) -> float:
    """Initial guessing bias of ``net``'s output at infinite width and data: gamma = c / (1 - c).

    gamma = Var_init(E_data o) / E_init(Var_data o) for a Gaussian linear readout o of the last block,
    which at infinite width equals K_ab / (K_aa - K_ab), K the second-moment Gram (means included) of the
    last features on two independent inputs a, b of correlation ``input_correlation`` in [-1, 1]
    (Francazi et al. 2024, eq. for gamma; 2025 for the norm placements). See `gamma_trajectory` for the
    edge cases (inf, NaN, Monte Carlo blocks).

    Examples
    --------
    >>> import math, meanfield
    >>> from meanfield import bias
    >>> g = bias.gamma(meanfield.mlp(1, "relu", sigma_w=2**0.5))
    >>> abs(g - 1 / (math.pi - 1)) < 1e-12
    True
    """
    return float(gamma_trajectory(net, input_correlation, mc_samples=mc_samples, seed=seed)[-1])


def output_correlation(net: Network, input_correlation: float = 0.0, *, mc_samples: int = 2**18,
                       seed: int = 0) -> float:
    """c = K_ab / K_aa at the output of ``net`` for two independent inputs (mean field); gamma = c/(1-c)."""
    t = _exchangeable_trajectory("output_correlation", net, input_correlation, mc_samples, seed)
    G = t.gram[-1]
    d = 0.5 * (G[0, 0] + G[1, 1])
    return float(G[0, 1] / d) if d > 0 else float("nan")


# ================================================================================================
# regimes
def regime(gamma, *, eps: float = 1e-6, large: float = 100.0, rtol: float = 1e-3) -> str:
    """Classify a bias value, or a bias-versus-depth curve, as "neutral", "prejudiced" or "deep prejudice".

    ``gamma`` is a number or a 1-D sequence of gamma per depth (e.g. `gamma_trajectory`); its last entry
    g_L is the network's output. The rules, applied in this order:

    1. "neutral" if g_L < eps (default 1e-6; negative values, which simulated estimates can take, count
       as neutral). Mean-field values are exact to ~1e-12, so the default separates 0 from bias; for a
       simulated estimate pass e.g. ``eps=3 * sim.gamma_stderr`` (`BiasSimulation.regime` does).
    2. "deep prejudice" if g_L > large (default 100: c > 0.99, an expected majority fraction above 0.968).
    3. For a sequence of at least 3 entries, the trend of the last two increments d1 = g_{L-1} - g_{L-2},
       d2 = g_L - g_{L-1}:
       - d2 <= rtol * g_L (flat or decreasing; default rtol 1e-3): "prejudiced";
       - 0 < d2 < d1 (increments shrinking: geometric convergence with ratio p = d2 / d1): the Aitken
         limit g_inf = g_L + d2 p / (1 - p) decides: "deep prejudice" if g_inf > large, else "prejudiced";
       - otherwise (increments not shrinking: gamma grows at least linearly with depth, as c -> 1):
         "deep prejudice".
    4. "prejudiced" otherwise (a single value with eps <= g_L <= large, or a curve of 2 entries).

    (Francazi et al. 2025: neutral gamma = 0, prejudiced 0 < gamma < inf, deep prejudice gamma -> inf
    with depth.) The trend is read from the depths given; a growth slower than geometric convergence and
    slower than linear (e.g. logarithmic) would be extrapolated to a finite limit.

    Examples
    --------
    >>> from meanfield import bias
    >>> bias.regime(0.0), bias.regime(0.5), bias.regime(1e3)
    ('neutral', 'prejudiced', 'deep prejudice')
    >>> bias.regime([0.47, 0.98, 1.53]), bias.regime([0.47, 0.47, 0.47]), bias.regime([0.1, 0.3, 0.4])
    ('deep prejudice', 'prejudiced', 'prejudiced')
    """
    eps = check_real("regime", "eps", eps)
    large = check_real("regime", "large", large, lo=eps)
    rtol = check_real("regime", "rtol", rtol, lo=0.0)
    g = np.asarray(gamma, dtype=np.float64)
    if g.ndim > 1 or g.size == 0:
        raise ValueError(f"regime: gamma must be a number or a non-empty 1-D sequence over depth, got shape "
                         f"{g.shape}")
    if np.any(np.isnan(g)):
        raise ValueError(f"regime: gamma={gamma!r} contains NaN; allowed: real numbers in [-inf, inf]")
    last = float(g.reshape(-1)[-1])
    if last < eps:
        return "neutral"
    if last > large:
        return "deep prejudice"
    if g.ndim == 1 and g.size >= 3:
        d1, d2 = float(g[-2] - g[-3]), float(g[-1] - g[-2])
        if d2 <= rtol * last:
            return "prejudiced"
        if d2 < d1:
            p = d2 / d1
            return "deep prejudice" if last + d2 * p / (1.0 - p) > large else "prejudiced"
        return "deep prejudice"
    return "prejudiced"


@dataclass(frozen=True)
class PhaseDiagram:
    """gamma over a (sigma_w^2, sigma_b^2) grid at a given depth (see `phase_diagram`).

    Attributes: ``sigma_b2`` (nb,), ``sigma_w2`` (nw,), ``gamma`` (nb, nw) at the output, ``gamma_depth``
    (nb, nw, depth + 1) the whole curves, ``regime`` (nb, nw) labels (`regime` of the curve over blocks
    1..depth; "undefined" where gamma is NaN, i.e. the output is identically zero), and the settings.
    """

    activation: str
    depth: int
    norm: str | None
    placement: str
    input_correlation: float
    sigma_w2: np.ndarray
    sigma_b2: np.ndarray
    gamma: np.ndarray
    gamma_depth: np.ndarray
    regime: np.ndarray
    thresholds: dict = field(default_factory=dict)

    def codes(self) -> np.ndarray:
        """Integer regime codes for plotting: neutral 0, prejudiced 1, deep prejudice 2, undefined -1."""
        table = {name: i for i, name in enumerate(REGIMES)}
        return np.vectorize(lambda s: table.get(s, -1), otypes=[int])(self.regime)


def phase_diagram(act, depth: int, sigma_b2_grid, sigma_w2_grid, norm: str | None = None,
                  placement: str = "post", *, input_correlation: float = 0.0, eps: float = 1e-6,
                  large: float = 100.0, rtol: float = 1e-3, mc_samples: int = 2**18) -> PhaseDiagram:
    """Mean-field gamma and its regime over a grid of (sigma_b^2, sigma_w^2) for ``mlp(depth, act, norm,
    placement, sigma_w, sigma_b)``.

    Each grid point runs `gamma_trajectory`; the regime is `regime` applied to the curve over blocks
    1..depth with the given thresholds. Arrays are indexed [i_b, i_w] (rows sigma_b^2, columns sigma_w^2),
    the layout of `meanfield.plot.phase_diagram(values, sigma_b2_grid, sigma_w2_grid)`. Variances must be
    >= 0 and finite.
    """
    depth = check_int("phase_diagram", "depth", depth, lo=1)
    a = hermite.activation(act)
    sb2, sw2 = (np.atleast_1d(check_real_array("phase_diagram", name, grid, lo=0.0, ndim=(0, 1), nonempty=True))
                for name, grid in (("sigma_b2_grid", sigma_b2_grid), ("sigma_w2_grid", sigma_w2_grid)))
    _input_gram("phase_diagram", input_correlation)
    curves = np.empty((sb2.size, sw2.size, depth + 1))
    labels = np.empty((sb2.size, sw2.size), dtype=object)
    for i, b2 in enumerate(sb2):
        for j, w2 in enumerate(sw2):
            net = mlp(depth, a, norm=norm, placement=placement, sigma_w=math.sqrt(w2), sigma_b=math.sqrt(b2))
            g = gamma_trajectory(net, input_correlation, mc_samples=mc_samples)
            curves[i, j] = g
            labels[i, j] = ("undefined" if np.any(np.isnan(g))
                            else regime(g[1:], eps=eps, large=large, rtol=rtol))
    return PhaseDiagram(activation=a.name, depth=depth, norm=norm, placement=placement,
                        input_correlation=float(input_correlation), sigma_w2=sw2, sigma_b2=sb2,
                        gamma=curves[..., -1].copy(), gamma_depth=curves, regime=labels.astype(str),
                        thresholds={"eps": eps, "large": large, "rtol": rtol})


# ================================================================================================
# simulation
@dataclass(frozen=True)
class BiasSimulation:
    """Result of `simulate`.

    Attributes
    ----------
    gamma : float
        Empirical initial guessing bias, corrected for the finite data set (see `simulate`).
    gamma_stderr : float
        Its standard error (delta method over the independent initializations).
    gamma_raw : float
        mean_s,k(mean_x o)^2 / mean_s,k(var_x o), without the finite-data correction (-1/n).
    fractions : ndarray (seeds, classes)
        Fraction of the data set assigned to each class (argmax of the readout), per initialization.
    output_mean, output_var : ndarray (seeds, classes)
        Mean over the data and variance over the data (ddof=1) of each output, per initialization.
    n_points, classes, seeds, width, input_dim : the sizes; ``network`` the description (without the
    readout); ``info`` backend, dtype, seed, input_correlation.
    """

    gamma: float
    gamma_stderr: float
    gamma_raw: float
    fractions: np.ndarray
    output_mean: np.ndarray
    output_var: np.ndarray
    n_points: int
    classes: int
    seeds: int
    width: Any
    input_dim: int
    network: Any = None
    info: dict = field(default_factory=dict)

    def law(self) -> ClassFractionLaw:
        """`class_fraction_law` at the estimated gamma (clipped at 0)."""
        return ClassFractionLaw(max(self.gamma, 0.0))

    def majority(self) -> np.ndarray:
        """Largest class fraction per initialization, (seeds,)."""
        return self.fractions.max(axis=1)

    def regime(self, *, k: float = 3.0, large: float = 100.0) -> str:
        """`regime` of the estimate, neutral when gamma < k standard errors (at least 1e-6)."""
        return regime(self.gamma, eps=max(k * self.gamma_stderr, 1e-6), large=large)

    def __repr__(self) -> str:
        return (f"BiasSimulation(gamma={self.gamma:.4g} +- {self.gamma_stderr:.2g}, n_points={self.n_points}, "
                f"seeds={self.seeds}, classes={self.classes}, width={self.width})")


def _data(owner, n_points, input_dim, width: int, data, input_correlation, gen) -> np.ndarray:
    if data is not None:
        X = check_samples(owner, data, "data")
        if X.shape[0] < 2:
            raise ValueError(f"{owner}: data has {X.shape[0]} row(s); the variance over the data needs "
                             "n_points >= 2")
        return X
    n = check_int(owner, "n_points", n_points, lo=2)
    d = check_int(owner, "input_dim", width if input_dim is None else input_dim, lo=1)
    r = check_real(owner, "input_correlation", input_correlation, lo=0.0, hi=1.0)
    X = gen.standard_normal((n, d))
    if r > 0:
        mu = gen.standard_normal(d)
        mu *= math.sqrt(d) / np.linalg.norm(mu)  # |mu|^2 / d = 1 exactly
        X = math.sqrt(r) * mu + math.sqrt(1.0 - r) * X
    return X


def simulate(net: Network, n_points: int = 2000, seeds: int = 200, width=512, input_dim: int | None = None,
             seed: int = 0, data=None, backend: Any = "numpy", *, classes: int = 2,
             input_correlation: float = 0.0, dtype: str = "float64",
             max_memory: float = 512 * 2**20) -> BiasSimulation:
    """Initial guessing bias of ``seeds`` random finite networks on one data set.

    Data: ``data`` (n, d) if given, else ``n_points`` Gaussian-blob inputs N(0, I_input_dim) (``input_dim``
    defaulting to the width), drawn once from ``seed`` and shared by all initializations; with
    ``input_correlation`` r in [0, 1] the blob is shifted, x = sqrt(r) mu + sqrt(1 - r) z with a fixed
    mu of |mu|^2 / d = 1 (pairwise input correlation r, mean-field gamma r / (1 - r) at the input).

    Networks: the finite-width engine's layer rules (`meanfield.simulate`: width, backend, dtype, random
    streams), with one more block appended, a Gaussian readout Dense(1, 0, width=classes) on the last
    block's features (if ``net`` already ends in a readout, its outputs are the features). Class of an
    input: the argmax of the outputs; ``fractions[s, k]`` is the share of the data in class k for
    network s. BatchNorm uses batch statistics over the whole evaluated set (the n points form one
    batch). Running-statistics BatchNorm at initialization (inference mode) is the identity and would
    show the bias of the network without BatchNorm.

    Estimator: for each network s and output k, the data mean m_sk and the data variance v_sk (ddof=1).
    The readout is symmetric, so E_init m = 0 and Var_init m = E m^2, and with A_s = mean_k m_sk^2,
    B_s = mean_k v_sk,

        gamma = sum_s A_s / sum_s B_s - 1/n,

    the ratio estimator of c/(q - c), c and q the expected mean off-diagonal and diagonal of the
    outputs' Gram over the evaluated points: E m^2 = c + (q - c)/n and E v = q - c exactly, so -1/n
    removes the sampling noise of a finite data mean (``gamma_raw`` keeps it). Standard error: delta
    method over the independent networks, sqrt(sum_s (A_s - R B_s)^2 / (S (S - 1))) / mean_s B_s with
    R = sum A / sum B. With batch-statistics BatchNorm as the last non-linear layer every output has
    data mean exactly 0, i.e. c = -q/(n - 1) over the evaluated set, and the estimate is exactly -1/n
    (standard error 0): the infinite-data value 0 up to the finite data set.

    Bad input (ValueError naming it): n_points < 2, an empty or non-finite data set, classes < 2,
    seeds < 2, input_correlation outside [0, 1], a non-positive width.
    """
    owner = "bias.simulate"
    if not isinstance(net, Network):
        raise ValueError(f"{owner}: net must be a meanfield.Network (e.g. meanfield.mlp(...)), got "
                         f"{type(net).__name__}")
    C = check_int(owner, "classes", classes, lo=2)
    S = check_int(owner, "seeds", seeds, lo=2)
    seed_i = check_int(owner, "seed", seed, lo=0)
    mm = check_real(owner, "max_memory", max_memory, lo=1.0)
    ws = check_widths(owner, width, net.depth)
    widths = width if isinstance(width, (str, bytes)) or not np.iterable(width) else ws + [C]
    data_ss, net_ss = np.random.SeedSequence(seed_i).spawn(2)
    X = _data(owner, n_points, input_dim, ws[0], data, input_correlation, np.random.default_rng(data_ss))
    n = X.shape[0]
    full = Network([*net.blocks, Block((Dense(sigma_w=1.0, sigma_b=0.0, width=C),), name="bias readout")])
    out = simulate_outputs(full, X, widths, S, backend, dtype, net_ss, mm)  # (S, n, C)
    m = out.mean(axis=1)
    v = out.var(axis=1, ddof=1)
    lab = np.argmax(out, axis=2)
    fractions = (lab[..., None] == np.arange(C)).mean(axis=1)
    A = (m * m).mean(axis=1)
    B = v.mean(axis=1)
    sa, sb = A.sum(), B.sum()
    if sb > 0:
        R = sa / sb
        se = math.sqrt(np.sum((A - R * B) ** 2) / (S * (S - 1))) / B.mean()
    else:  # every output constant over the data
        R, se = float("nan"), float("nan")
    return BiasSimulation(gamma=float(R - 1.0 / n), gamma_stderr=float(se), gamma_raw=float(R),
                          fractions=fractions, output_mean=m, output_var=v, n_points=n, classes=C, seeds=S,
                          width=width, input_dim=X.shape[1], network=net,
                          info={"backend": str(backend), "dtype": dtype, "seed": seed_i,
                                "input_correlation": None if data is not None else float(input_correlation),
                                "data": "given" if data is not None else "gaussian blob"})
