"""The class-fraction law of an untrained classifier: G_0 = Phi(sqrt(gamma) Z), Z ~ N(0, 1).

Sources: Francazi, Lucchi and Baity-Jesi (ICML 2024), "Initial Guessing Bias: How Untrained Networks Favor
Some Classes". With two classes the fraction of an infinite data set assigned to class 0 by one
initialization is G_0 = Phi(sqrt(gamma) Z) for the initial guessing bias gamma (`meanfield.bias.gamma`):
`class_fraction_law` gives its density, CDF, variance arcsin(c) / (2 pi) with c = gamma / (1 + gamma),
expected majority fraction 1/2 + arctan(sqrt(gamma)) / pi and tail probabilities, all in closed form. For C
classes, `sample_fractions` samples the model of Francazi et al.: output k on input x is
sqrt(gamma) m_k + e_k(x), with m_k ~ N(0, 1) i.i.d. per initialization and e_k(x) ~ N(0, 1) i.i.d. across
classes and inputs, and the class of x is the argmax. Re-exported by `meanfield.bias`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.special as sc

from meanfield.core.validate import check_int, check_real, check_seed

__all__ = ["class_fraction_law", "ClassFractionLaw", "sample_fractions"]


def _rng(owner: str, rng) -> np.random.Generator:
    """A numpy Generator from None, a Generator, a SeedSequence or a seed (`check_seed`)."""
    if rng is None or isinstance(rng, np.random.Generator):
        return np.random.default_rng(rng)
    return np.random.default_rng(check_seed(owner, rng, "rng"))


@dataclass(frozen=True)
class ClassFractionLaw:
    """Law of the fraction G_0 of an infinite data set that one initialization assigns to class 0 (two
    classes): G_0 = Phi(sqrt(gamma) Z), Z ~ N(0, 1) (Francazi et al. 2024).

    With s = sqrt(gamma), y = Phi^-1(x) and c = gamma / (1 + gamma):

    - cdf(x) = Phi(y / s), sf(x) = Phi(-y / s), ppf(p) = Phi(s Phi^-1(p));
    - pdf(x) = exp(-(1/gamma - 1) y^2 / 2) / s on (0, 1): unimodal at 1/2 for gamma < 1, uniform at
      gamma = 1, U-shaped (mass at the extremes: prejudice) for gamma > 1;
    - mean 1/2 and var() = arcsin(c) / (2 pi): E G_0^2 = P(U1 <= sZ, U2 <= sZ) is a bivariate normal
      orthant probability with correlation s^2 / (1 + s^2) = c, equal to 1/4 + arcsin(c) / (2 pi);
    - expected_majority() = E max(G_0, 1 - G_0) = E Phi(s |Z|) = 1/2 + arctan(s) / pi (the same orthant
      identity with correlation s / sqrt(1 + s^2));
    - majority_cdf / majority_sf / majority_pdf: the law of M = max(G_0, 1 - G_0) on [1/2, 1],
      P(M > t) = 2 Phi(-Phi^-1(t) / s); ``prob_extreme(delta) = P(G_0 <= delta or G_0 >= 1 - delta)``.

    Limits: gamma = 0 is the point mass at 1/2 (pdf 0 off 1/2 and +inf at it); gamma = inf puts mass 1/2
    at 0 and at 1 (pdf 0 on (0, 1)). ``sample(size, rng)`` draws G_0.
    """

    gamma: float

    def __post_init__(self):
        object.__setattr__(self, "gamma", check_real("class_fraction_law", "gamma", self.gamma, lo=0.0, allow_inf=True))

    @property
    def c(self) -> float:
        """Output correlation c = gamma / (1 + gamma)."""
        return 1.0 if math.isinf(self.gamma) else self.gamma / (1.0 + self.gamma)

    # ---------------------------------------------------------------------------------------
    def _phi(self, x, sign: float):
        """Phi(sign Phi^-1(x) / sqrt(gamma)) with its limits: cdf (sign 1) and sf (sign -1)."""
        x = np.asarray(x, dtype=np.float64)
        below, above = (0.0, 1.0) if sign > 0 else (1.0, 0.0)  # the value for x < 0 and for x >= 1
        g = self.gamma
        if g == 0:
            out = np.where(x >= 0.5, above, below)
        elif math.isinf(g):
            out = np.where(x >= 1.0, above, np.where(x >= 0.0, 0.5, below))
        else:
            xc = np.clip(x, 0.0, 1.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                out = sc.ndtr(sign * sc.ndtri(xc) / math.sqrt(g))
            out = np.where(x < 0, below, np.where(x >= 1, above, out))
        return np.where(np.isnan(x), np.nan, out)[()]

    def cdf(self, x):
        """P(G_0 <= x)."""
        return self._phi(x, 1.0)

    def sf(self, x):
        """P(G_0 > x) = 1 - cdf(x), accurate in the upper tail."""
        return self._phi(x, -1.0)

    def pdf(self, x):
        """Density exp(-(1/gamma - 1) Phi^-1(x)^2 / 2) / sqrt(gamma) on (0, 1), 0 outside."""
        x = np.asarray(x, dtype=np.float64)
        g = self.gamma
        inside = (x > 0) & (x < 1)
        if g == 0:
            out = np.where(x == 0.5, np.inf, 0.0)
        elif math.isinf(g):
            out = np.where((x == 0) | (x == 1), np.inf, 0.0)
        else:
            y = sc.ndtri(np.where(inside, x, 0.5))
            a = 1.0 / g - 1.0
            out = np.where(inside, np.exp(-0.5 * a * y * y) / math.sqrt(g), 0.0)
            edge = (x == 0) | (x == 1)
            if np.any(edge):  # the limit at the end points
                out = np.where(edge, 0.0 if a > 0 else (1.0 if a == 0 else np.inf), out)
        return np.where(np.isnan(x), np.nan, out)[()]

    def ppf(self, p):
        """Quantile function Phi(sqrt(gamma) Phi^-1(p)), p in [0, 1]."""
        p = np.asarray(p, dtype=np.float64)
        if np.any((p < 0) | (p > 1)):
            raise ValueError(f"ClassFractionLaw.ppf: p={p!r} must lie in [0, 1]")
        g = self.gamma
        if g == 0:
            out = np.full(p.shape, 0.5)
        elif math.isinf(g):
            out = np.where(p > 0.5, 1.0, 0.0)
        else:
            out = sc.ndtr(math.sqrt(g) * sc.ndtri(p))
        return out[()]

    def mean(self) -> float:
        """E G_0 = 1/2 (the two classes are exchangeable)."""
        return 0.5

    def var(self) -> float:
        """Var G_0 = arcsin(c) / (2 pi), c = gamma / (1 + gamma)."""
        return math.asin(self.c) / (2.0 * math.pi)

    def std(self) -> float:
        return math.sqrt(self.var())

    def expected_majority(self) -> float:
        """E max(G_0, 1 - G_0) = 1/2 + arctan(sqrt(gamma)) / pi."""
        return 0.5 + math.atan(math.sqrt(self.gamma)) / math.pi

    def majority_sf(self, t):
        """P(max(G_0, 1 - G_0) > t) = 2 Phi(-Phi^-1(t) / sqrt(gamma)) for t in [1/2, 1]; 1 below 1/2."""
        t = np.asarray(t, dtype=np.float64)
        out = np.where(t < 0.5, 1.0, 2.0 * self.sf(np.maximum(t, 0.5)))
        if self.gamma == 0:
            out = np.where(t < 0.5, 1.0, 0.0)
        return np.where(np.isnan(t), np.nan, out)[()]

    def majority_cdf(self, t):
        """P(max(G_0, 1 - G_0) <= t) = 2 Phi(Phi^-1(t) / sqrt(gamma)) - 1 on [1/2, 1]."""
        t = np.asarray(t, dtype=np.float64)
        return np.where(np.isnan(t), np.nan, 1.0 - self.majority_sf(t))[()]

    def majority_pdf(self, t):
        """Density of max(G_0, 1 - G_0): 2 pdf(t) on (1/2, 1), 0 outside."""
        t = np.asarray(t, dtype=np.float64)
        return np.where(np.isnan(t), np.nan, np.where((t > 0.5) & (t <= 1), 2.0 * self.pdf(t), 0.0))[()]

    def prob_extreme(self, delta):
        """P(G_0 <= delta or G_0 >= 1 - delta) = 2 cdf(delta) for delta in [0, 1/2]: the probability that
        an initialization sends all but a fraction delta of the data to one class."""
        d = np.asarray(delta, dtype=np.float64)
        if np.any(np.isnan(d)) or np.any((d < 0) | (d > 0.5)):
            raise ValueError(f"ClassFractionLaw.prob_extreme: delta={delta!r} must lie in [0, 0.5]")
        out = np.minimum(2.0 * self.cdf(d), 1.0)
        if self.gamma == 0:
            out = np.where(d >= 0.5, 1.0, 0.0)
        return np.asarray(out)[()]

    def sample(self, size=None, rng=None):
        """Draws of G_0 = Phi(sqrt(gamma) Z); ``rng`` a Generator, a seed or None."""
        z = _rng("ClassFractionLaw.sample", rng).standard_normal(size)
        g = self.gamma
        if math.isinf(g):
            return np.where(z > 0, 1.0, 0.0)[()]
        return sc.ndtr(math.sqrt(g) * z)


def class_fraction_law(gamma) -> ClassFractionLaw:
    """The law of the class-0 fraction for two classes, G_0 = Phi(sqrt(gamma) Z) (see `ClassFractionLaw`).

    ``gamma`` must be a real number in [0, inf] (ValueError for negative or NaN values).

    Examples
    --------
    >>> from meanfield import bias
    >>> law = bias.class_fraction_law(1.0)      # gamma = 1: G_0 is uniform on [0, 1]
    >>> round(law.var(), 12), round(law.expected_majority(), 12)
    (0.083333333333, 0.75)
    """
    return ClassFractionLaw(gamma)


def _fractions_given_means(m: np.ndarray, g: float, nodes: int = 96) -> np.ndarray:
    """Infinite-data class fractions given the initialization parts m (size, C) of the outputs:
    f_k = P(s m_k + e_k > s m_j + e_j for all j != k) = E_t prod_{j != k} Phi(t + s (m_k - m_j)), t ~ N(0, 1),
    by Gauss-Hermite quadrature in t (log-space products); C = 2 in closed form."""
    size, C = m.shape
    s = math.sqrt(g)
    if C == 2:
        f0 = sc.ndtr(s * (m[:, 0] - m[:, 1]) / math.sqrt(2.0))
        return np.stack([f0, 1.0 - f0], axis=1)
    t, w = sc.roots_hermitenorm(nodes)
    logw = np.log(w / w.sum())
    out = np.empty((size, C))
    chunk = max(1, int(2**22 // (C * C * nodes)))
    for lo in range(0, size, chunk):
        mm = m[lo:lo + chunk]
        d = s * (mm[:, :, None] - mm[:, None, :])  # (b, k, j)
        lp = sc.log_ndtr(t[None, None, None, :] + d[..., None])  # (b, k, j, nodes)
        tot = lp.sum(axis=2) - sc.log_ndtr(t)[None, None, :]  # remove j = k
        out[lo:lo + chunk] = np.exp(sc.logsumexp(tot + logw, axis=-1))
    return out / out.sum(axis=1, keepdims=True)


def sample_fractions(gamma, classes: int = 2, size: int = 1, rng=None, n_points: int | None = None) -> np.ndarray:
    """Class fractions of ``size`` random initializations, array (size, classes), rows summing to 1.

    Model (Francazi et al. 2024): output k on input x is sqrt(gamma) m_k + e_k(x), with m_k ~ N(0, 1)
    i.i.d. per initialization (the part that does not depend on the input, variance gamma after
    scaling) and e_k(x) ~ N(0, 1) i.i.d. across classes and inputs (the data-fluctuation part, variance
    1); x goes to the class of the largest output. With ``n_points=None`` the data set is infinite and
    the fractions are the exact conditional probabilities P(class k | m), by 1-D Gauss-Hermite quadrature
    (closed form Phi(sqrt(gamma) (m_0 - m_1) / sqrt 2) = Phi(sqrt(gamma) Z) for two classes, which is
    `class_fraction_law`); with an integer ``n_points`` the fractions are counts over that many sampled
    inputs. Independent Gaussian readout columns make the e_k independent across classes at infinite
    width; their Gaussian law over the data is the model's assumption (exact for a linear network on
    Gaussian data).
    """
    owner = "sample_fractions"
    g = check_real(owner, "gamma", gamma, lo=0.0, allow_inf=True)
    C = check_int(owner, "classes", classes, lo=2)
    size = check_int(owner, "size", size, lo=1)
    gen = _rng(owner, rng)
    if math.isinf(g):  # all the data go to the class with the largest m_k
        k = gen.integers(0, C, size)
        out = np.zeros((size, C))
        out[np.arange(size), k] = 1.0
        return out
    m = gen.standard_normal((size, C))
    if n_points is None:
        return _fractions_given_means(m, g)
    n = check_int(owner, "n_points", n_points, lo=1)
    out = np.empty((size, C))
    chunk = max(1, int(2**22 // (n * C)))
    s = math.sqrt(g)
    for lo in range(0, size, chunk):
        mm = m[lo:lo + chunk]
        o = s * mm[:, None, :] + gen.standard_normal((mm.shape[0], n, C))
        lab = np.argmax(o, axis=-1)
        out[lo:lo + chunk] = (lab[..., None] == np.arange(C)).mean(axis=1)
    return out
