"""Initial guessing bias: how an untrained classifier favours some classes, predicted and simulated.

Sources: Francazi, Lucchi and Baity-Jesi (ICML 2024), "Initial Guessing Bias: How Untrained Networks Favor
Some Classes"; Francazi, Pinto, Lucchi and Baity-Jesi (AISTATS 2026; arXiv 2505.11312), "Where You Place the
Norm Matters: From Prejudiced to Neutral Initializations".

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
so gamma = 1/(pi - 1) as for ReLU (`maxpool_gamma`: one layer, any k, exact; the MaxPool layer's mean-field
rule is exact on a Gaussian input for k <= 4).

Regimes: the paper's and the toolkit's
--------------------------------------
`regime` is Francazi et al.'s definition: "neutral" gamma < 1 (G_0 unimodal at 1/2), "prejudiced"
1 < gamma < inf (U-shaped), "deep prejudice" gamma = inf or growing without bound with depth, and
"boundary" at gamma = 1 within a tolerance for simulated values. `zero_bias_regime` is the toolkit's
extension, with its own labels: does gamma vanish ("zero", the exact neutrality of the infinite-width
theory, e.g. a norm after the activation), stay finite ("finite") or diverge ("divergent")?

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
    "regime", "REGIMES", "BOUNDARY", "INFINITE_GAMMA", "zero_bias_regime", "ZERO_BIAS_REGIMES", "maxpool_gamma",
    "phase_diagram", "PhaseDiagram", "simulate", "BiasSimulation",
    # re-exported (public facade)
    "class_fraction_law", "ClassFractionLaw", "sample_fractions",
]

REGIMES = ("neutral", "prejudiced", "deep prejudice")  # Francazi et al.'s names (`regime`)
BOUNDARY = "boundary"  # gamma = 1 within the tolerance: the uniform law between neutral and prejudiced
ZERO_BIAS_REGIMES = ("zero", "finite", "divergent")  # the toolkit's `zero_bias_regime`
INFINITE_GAMMA = 1e12  # gamma above this is infinite up to the accuracy of the mean-field maps (1 - c < 1e-12)


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
def _curve(owner: str, gamma) -> np.ndarray:
    g = np.asarray(gamma, dtype=np.float64)
    if g.ndim > 1 or g.size == 0:
        raise ValueError(f"{owner}: gamma must be a number or a non-empty 1-D sequence over depth, got shape "
                         f"{g.shape}")
    if np.any(np.isnan(g)):
        raise ValueError(f"{owner}: gamma={gamma!r} contains NaN; allowed: real numbers in [-inf, inf]")
    return g


def _grows_without_bound(g: np.ndarray, rtol: float) -> bool | float:
    """The trend of the last two increments d1, d2 of a curve (>= 3 entries): True if gamma grows at least
    linearly (d2 > rtol g_L and d2 >= d1), else the Aitken limit g_L + d2 p / (1 - p), p = d2 / d1, of a
    geometric convergence (0 < d2 < d1), else g_L (flat or decreasing)."""
    last = float(g[-1])
    d1, d2 = float(g[-2] - g[-3]), float(g[-1] - g[-2])
    if d2 <= rtol * abs(last):
        return last
    if d2 < d1:
        p = d2 / d1
        return last + d2 * p / (1.0 - p)
    return True


def regime(gamma, *, stderr=0.0, k: float = 3.0, rtol: float = 1e-3) -> str:
    """Francazi et al.'s initial state of a bias value, or of a bias-versus-depth curve: "neutral",
    "prejudiced", "deep prejudice", or "boundary".

    The paper's definitions (Francazi, Pinto, Lucchi and Baity-Jesi 2025, Fig. 1: "three distinct predictive
    behaviors at initialization, ranging from neutral to deeply prejudiced"; Bassi et al. 2025, the ICLR 2026
    poster and ``compute_neutrality.py`` of github.com/abassi98/igb_and_trainability, where the neutrality
    boundary is the correlation c = 1/2, i.e. gamma = 1), read through the class-fraction law
    G_0 = Phi(sqrt(gamma) Z):

    - "neutral": gamma < 1, the law of G_0 is unimodal at 1/2 (gamma = 0: every initialization splits the
      data evenly);
    - "prejudiced": 1 < gamma < inf, U-shaped: most initializations favour one class;
    - "deep prejudice": gamma = inf, G_0 in {0, 1}: every initialization sends (almost) all the data to one
      class; for a curve over depth, gamma growing without bound with depth. A value above
      ``INFINITE_GAMMA`` = 1e12 counts as infinite: 1 - c < 1e-12 is the correlation 1 up to the accuracy of
      the mean-field maps (an ordered network reaches it within a few dozen layers and then stalls at
      round-off);
    - "boundary": gamma = 1 within the tolerance, the uniform law between neutral and prejudiced.

    ``gamma`` is a number or a 1-D sequence over depth (e.g. `gamma_trajectory`); its last entry g_L is the
    network's output. A curve of at least 3 entries is "deep prejudice" when its last increments do not
    shrink (d2 >= d1 and d2 > rtol g_L: at least linear growth, as c -> 1 in a ReLU network or
    exponentially in an ordered tanh network); a curve that converges geometrically, or is flat, is
    classified by g_L. A number is "deep prejudice" only if it is infinite (above ``INFINITE_GAMMA``).

    Tolerance for simulated values (finite width, finite data): with ``stderr`` s (the standard error of g_L,
    e.g. `BiasSimulation.gamma_stderr`), "neutral" needs g_L + k s < 1, "prejudiced" g_L - k s > 1, and
    |g_L - 1| <= k s is "boundary". The default s = 0 suits the mean-field values (exact to ~1e-12), for
    which only gamma = 1 exactly is "boundary". A neutral network simulated at finite width, e.g. LayerNorm
    after the activation at width 512 with gamma = 0.0009 +- 0.0001, is "neutral"; the toolkit's
    `zero_bias_regime` asks the different question whether gamma vanishes.

    Examples
    --------
    >>> from meanfield import bias
    >>> bias.regime(0.0), bias.regime(0.47), bias.regime(1.5), bias.regime(float("inf"))
    ('neutral', 'neutral', 'prejudiced', 'deep prejudice')
    >>> bias.regime([0.47, 0.98, 1.53]), bias.regime(0.97, stderr=0.02), bias.regime(0.0009, stderr=0.0001)
    ('deep prejudice', 'boundary', 'neutral')
    """
    g = _curve("regime", gamma)
    k = check_real("regime", "k", k, lo=0.0)
    rtol = check_real("regime", "rtol", rtol, lo=0.0)
    se = float(check_real_array("regime", "stderr", stderr, lo=0.0, ndim=(0, 1)).reshape(-1)[-1])
    last = float(g.reshape(-1)[-1])
    if last > INFINITE_GAMMA:
        return "deep prejudice"
    if g.ndim == 1 and g.size >= 3 and _grows_without_bound(g, rtol) is True:
        return "deep prejudice"
    if last + k * se < 1.0:
        return "neutral"
    if last - k * se > 1.0:
        return "prejudiced"
    return "boundary"


def zero_bias_regime(gamma, *, eps: float = 1e-6, large: float = 100.0, rtol: float = 1e-3) -> str:
    """The toolkit's classification (not the paper's; see `regime`): does the bias vanish ("zero"), stay
    finite ("finite") or diverge with depth ("divergent")?

    ``gamma`` is a number or a 1-D sequence of gamma per depth; its last entry g_L is the network's output.
    The rules, applied in this order:

    1. "zero" if g_L < eps (default 1e-6; negative values, which simulated estimates can take, count as
       zero). Mean-field values are exact to ~1e-12, so the default separates 0 from bias; for a simulated
       estimate pass e.g. ``eps=3 * sim.gamma_stderr`` (`BiasSimulation.zero_bias_regime` does).
    2. "divergent" if g_L > large (default 100: c > 0.99, an expected majority fraction above 0.968).
    3. For a sequence of at least 3 entries, the trend of the last two increments d1 = g_{L-1} - g_{L-2},
       d2 = g_L - g_{L-1}:

       - d2 <= rtol * g_L (flat or decreasing; default rtol 1e-3): "finite";
       - 0 < d2 < d1 (increments shrinking: geometric convergence with ratio p = d2 / d1): the Aitken
         limit g_inf = g_L + d2 p / (1 - p) decides: "divergent" if g_inf > large, else "finite";
       - otherwise (increments not shrinking: gamma grows at least linearly with depth, as c -> 1):
         "divergent".

    4. "finite" otherwise (a single value with eps <= g_L <= large, or a curve of 2 entries).

    The trend is read from the depths given; a growth slower than geometric convergence and slower than
    linear (e.g. logarithmic) would be extrapolated to a finite limit.

    Examples
    --------
    >>> from meanfield import bias
    >>> bias.zero_bias_regime(0.0), bias.zero_bias_regime(0.5), bias.zero_bias_regime(1e3)
    ('zero', 'finite', 'divergent')
    >>> bias.zero_bias_regime([0.47, 0.98, 1.53]), bias.zero_bias_regime([0.1, 0.3, 0.4])
    ('divergent', 'finite')
    """
    eps = check_real("zero_bias_regime", "eps", eps)
    large = check_real("zero_bias_regime", "large", large, lo=eps)
    rtol = check_real("zero_bias_regime", "rtol", rtol, lo=0.0)
    g = _curve("zero_bias_regime", gamma)
    last = float(g.reshape(-1)[-1])
    if last < eps:
        return "zero"
    if last > large:
        return "divergent"
    if g.ndim == 1 and g.size >= 3:
        trend = _grows_without_bound(g, rtol)
        return "divergent" if trend is True or trend > large else "finite"
    return "finite"


@dataclass(frozen=True)
class PhaseDiagram:
    """gamma over a (sigma_w^2, sigma_b^2) grid at a given depth (see `phase_diagram`).

    Attributes: ``sigma_b2`` (nb,), ``sigma_w2`` (nw,), ``gamma`` (nb, nw) at the output, ``gamma_depth``
    (nb, nw, depth + 1) the whole curves, ``regime`` (nb, nw) Francazi et al.'s labels (`regime` of the curve
    over blocks 1..depth), ``zero_bias`` (nb, nw) the toolkit's labels (`zero_bias_regime`), "undefined"
    where gamma is NaN (the output is identically zero), and the settings.
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
    zero_bias: np.ndarray
    thresholds: dict = field(default_factory=dict)

    def codes(self) -> np.ndarray:
        """Integer codes of ``regime`` for plotting: neutral 0, prejudiced 1, deep prejudice 2, boundary 3,
        undefined -1."""
        table = {name: i for i, name in enumerate((*REGIMES, BOUNDARY))}
        return np.vectorize(lambda s: table.get(s, -1), otypes=[int])(self.regime)

    def zero_bias_codes(self) -> np.ndarray:
        """Integer codes of ``zero_bias``: zero 0, finite 1, divergent 2, undefined -1."""
        table = {name: i for i, name in enumerate(ZERO_BIAS_REGIMES)}
        return np.vectorize(lambda s: table.get(s, -1), otypes=[int])(self.zero_bias)


def phase_diagram(act, depth: int, sigma_b2_grid, sigma_w2_grid, norm: str | None = None,
                  placement: str = "post", *, input_correlation: float = 0.0, eps: float = 1e-6,
                  large: float = 100.0, rtol: float = 1e-3, mc_samples: int = 2**18) -> PhaseDiagram:
    """Mean-field gamma and its regimes over a grid of (sigma_b^2, sigma_w^2) for ``mlp(depth, act, norm,
    placement, sigma_w, sigma_b)``.

    Each grid point runs `gamma_trajectory`; ``regime`` is Francazi et al.'s `regime` of the curve over
    blocks 1..depth (``rtol``), ``zero_bias`` the toolkit's `zero_bias_regime` (``eps``, ``large``,
    ``rtol``). Arrays are indexed [i_b, i_w] (rows sigma_b^2, columns sigma_w^2), the layout of
    `meanfield.plot.phase_diagram(values, sigma_b2_grid, sigma_w2_grid)`. Variances must be >= 0 and finite.
    """
    depth = check_int("phase_diagram", "depth", depth, lo=1)
    a = hermite.activation(act)
    sb2, sw2 = (np.atleast_1d(check_real_array("phase_diagram", name, grid, lo=0.0, ndim=(0, 1), nonempty=True))
                for name, grid in (("sigma_b2_grid", sigma_b2_grid), ("sigma_w2_grid", sigma_w2_grid)))
    _input_gram("phase_diagram", input_correlation)
    curves = np.empty((sb2.size, sw2.size, depth + 1))
    labels = np.empty((sb2.size, sw2.size), dtype=object)
    zero = np.empty((sb2.size, sw2.size), dtype=object)
    for i, b2 in enumerate(sb2):
        for j, w2 in enumerate(sw2):
            net = mlp(depth, a, norm=norm, placement=placement, sigma_w=math.sqrt(w2), sigma_b=math.sqrt(b2))
            g = gamma_trajectory(net, input_correlation, mc_samples=mc_samples)
            curves[i, j] = g
            undefined = bool(np.any(np.isnan(g)))
            labels[i, j] = "undefined" if undefined else regime(g[1:], rtol=rtol)
            zero[i, j] = "undefined" if undefined else zero_bias_regime(g[1:], eps=eps, large=large, rtol=rtol)
    return PhaseDiagram(activation=a.name, depth=depth, norm=norm, placement=placement,
                        input_correlation=float(input_correlation), sigma_w2=sw2, sigma_b2=sb2,
                        gamma=curves[..., -1].copy(), gamma_depth=curves, regime=labels.astype(str),
                        zero_bias=zero.astype(str), thresholds={"eps": eps, "large": large, "rtol": rtol})


def maxpool_gamma(k: int, act="identity") -> float:
    """Francazi et al. (2024)'s initial guessing bias of one hidden layer followed by max pooling over k units:
    gamma = (E M)^2 / Var M, M = max_j f(z_j), z_j i.i.d. N(0, 1) (zero bias, independent standardized
    inputs; the pooled units are i.i.d. at infinite width).

    For a non-decreasing f, max_j f(z_j) = f(max_j z_j) has the density k phi(x) Phi(x)^(k-1) in x, so
    E M^p = int f(x)^p k phi(x) Phi(x)^(k-1) dx (adaptive quadrature split at f's kinks, relative error
    ~1e-13). Linear: k = 2 gives 1/(pi - 1) (E M = 1/sqrt(pi), E M^2 = 1), as one ReLU layer. Any k >= 1;
    ``act`` must be non-decreasing (checked on a grid; ValueError otherwise).
    """
    import scipy.integrate as si
    import scipy.special as sc

    k = check_int("maxpool_gamma", "k", k, lo=1)
    a = hermite.activation(act)
    x = np.linspace(-8.0, 8.0, 4001)
    fx = np.asarray(a.fn(x), dtype=np.float64)
    if np.any(np.diff(fx) < -1e-12 * max(1.0, float(np.max(np.abs(fx))))):
        raise ValueError(f"maxpool_gamma: act={a.name!r} must be non-decreasing (max_j f(z_j) = f(max_j z_j)); "
                         "use meanfield.propagate with MaxPool for other activations")
    cuts = sorted({-40.0, 40.0, *(float(c) for c in a.kinks if -40.0 < c < 40.0)})

    def moment(p):
        def h(t):
            return float(a.fn(np.array([t]))[0]) ** p * k * math.exp(-0.5 * t * t + (k - 1) * sc.log_ndtr(t)) \
                / math.sqrt(2.0 * math.pi)
        return sum(si.quad(h, lo, hi, epsabs=0.0, epsrel=1e-13, limit=400)[0] for lo, hi in zip(cuts, cuts[1:]))

    m1, m2 = moment(1), moment(2)
    var = m2 - m1 * m1
    return math.inf if var <= 0 else m1 * m1 / var


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

    def regime(self, *, k: float = 3.0) -> str:
        """Francazi et al.'s `regime` of the estimate, with its finite-width, finite-data tolerance: gamma is
        compared with 1 within k standard errors (``stderr=gamma_stderr``); "deep prejudice" when every
        initialization sends all the data to one class (the finite-data signature of G_0 in {0, 1})."""
        if np.all(self.fractions.max(axis=1) == 1.0):
            return "deep prejudice"
        se = self.gamma_stderr if math.isfinite(self.gamma_stderr) else 0.0
        return regime(self.gamma, stderr=se, k=k)

    def zero_bias_regime(self, *, k: float = 3.0, large: float = 100.0) -> str:
        """The toolkit's `zero_bias_regime` of the estimate: "zero" when gamma < k standard errors (at least
        1e-6, at most ``large``)."""
        return zero_bias_regime(self.gamma, eps=min(max(k * self.gamma_stderr, 1e-6), large), large=large)

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
