"""The closed bivariate kernel of piecewise-linear functions (`hermite.bivariate`): the orthant probability
against Plackett's integral, the kernels against the independent two-dimensional quadrature, exact values,
the rounding estimate against a 30-digit evaluation, and the routing in `pair_kernel`."""

from __future__ import annotations

import math
import warnings

import mpmath as mp
import numpy as np
import pytest
from scipy import integrate
from scipy.special import ndtr

import hermite
from hermite import bivariate, quadrature
from hermite.cores import PiecewisePolynomialCore
from hermite.pairs import pair_kernel


def plackett(h: float, k: float, r: float) -> float:
    """P(X > h, Y > k) = Phi-bar(h) Phi-bar(k) + int_0^r phi_2(h, k; t) dt (Plackett 1954)."""
    def dens(t):
        return math.exp(-(h * h - 2 * t * h * k + k * k) / (2 * (1 - t * t))) / (2 * math.pi * math.sqrt(1 - t * t))

    with warnings.catch_warnings():  # quad asks for more than double precision allows; it reaches ~1e-16
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        v, _ = integrate.quad(dens, 0, r, epsabs=1e-17, epsrel=1e-14, limit=200)
    return float(ndtr(-h) * ndtr(-k)) + v


@pytest.mark.parametrize("h", [-2.0, -0.5, 0.0, 0.3, 1.7, -math.inf])
@pytest.mark.parametrize("k", [-1.0, 0.0, 0.3, 2.5, -math.inf])
def test_orthant_probability_against_plackett(h, k):
    for r in (-0.99, -0.5, 0.0, 0.4, 0.9, 0.999):
        L = float(bivariate.orthant_moments(h, k, r)[0])
        if math.isinf(h) or math.isinf(k):
            ref = float(ndtr(-k)) if math.isinf(h) and not math.isinf(k) else (
                float(ndtr(-h)) if math.isinf(k) and not math.isinf(h) else 1.0)
        else:
            ref = plackett(h, k, r)
        assert abs(L - ref) <= 1e-15, (h, k, r)


def custom_core():
    """A piecewise-linear function with a jump, a flat piece and two slopes, the bulk not at a break."""
    pieces = ((-math.inf, -1.0, (-0.5,)), (-1.0, 2.0, (0.3, 1.0)), (2.0, math.inf, (4.0, -0.25)))

    def fn(x):
        x = np.asarray(x, dtype=np.float64)
        return np.where(x < -1, -0.5, np.where(x < 2, 0.3 + x, 4.0 - 0.25 * x))

    return PiecewisePolynomialCore.build("custom_pl", fn=fn, kinks=(-1.0, 2.0), jumps=(-1.0, 2.0), pieces=pieces)


def entries(rng, n, qlo=0.01, qhi=100.0):
    r = np.concatenate([rng.uniform(-1, 1, n // 2), 1 - 10.0 ** -rng.uniform(1, 15, n // 4),
                        -1 + 10.0 ** -rng.uniform(1, 15, n - n // 2 - n // 4)])
    Q1 = np.exp(rng.uniform(math.log(qlo), math.log(qhi), n))
    Q2 = np.exp(rng.uniform(math.log(qlo), math.log(qhi), n))
    Q2[: n // 8] = Q1[: n // 8]  # equal variances
    return r, Q1, Q2


@pytest.mark.parametrize("name", ["hardtanh", "relu6", "custom"])
@pytest.mark.parametrize("derivative", [0, 1])
def test_closed_kernel_against_two_dimensional_quadrature(name, derivative):
    core = custom_core() if name == "custom" else hermite.activation(name).core
    lin = core.linear_pieces(derivative)
    if derivative and core.jumps:
        assert lin is None  # phi' has delta masses: no such kernel
        return
    r, Q1, Q2 = entries(np.random.default_rng(1), 120)
    v, est = bivariate.piecewise_linear_pair(lin, lin, r, Q1, Q2)
    f = core.function(derivative)
    ref = quadrature.pair_expectation(f, f, core, core, r, Q1, Q2, None)
    m = (lambda Q: core.second_moment(Q)) if derivative == 0 else (lambda Q: core.derivative_moment(Q))
    scale = np.sqrt(m(Q1) * m(Q2))
    np.testing.assert_array_less(np.abs(v - ref), 1e-12 * scale)
    assert np.all(est <= 1e-12 * scale)  # the estimate accepts all of these (q <= 100)


def test_closed_kernel_exact_values():
    """relu6' = 1{0 < x < 6} at small q is 1{x > 0} up to < 1e-100: P(X > 0, Y > 0) = 1/4 + asin(r)/(2 pi) exactly,
    where the two-dimensional quadrature errs by ~3e-14; and hardtanh at r = 0 is E f(u) E f(v) = 0 (odd)."""
    core = hermite.activation("relu6").core
    lin = core.linear_pieces(1)
    r = np.array([0.9999999928261135, 0.5, -0.3, 1 - 1e-15, -1 + 1e-12])
    v, _ = bivariate.piecewise_linear_pair(lin, lin, r, 0.0707, 0.162)
    mp.mp.dps = 30
    exact = [float(mp.mpf(1) / 4 + mp.asin(mp.mpf(x)) / (2 * mp.pi)) for x in r]
    np.testing.assert_allclose(v, exact, rtol=0, atol=2e-16)
    ht = hermite.activation("hardtanh").core.linear_pieces(0)
    v, _ = bivariate.piecewise_linear_pair(ht, ht, np.zeros(3), np.array([0.1, 1.0, 10.0]), np.array([2.0, 1.0, 0.5]))
    np.testing.assert_allclose(v, 0.0, atol=1e-16)


def _orthant_mp(h, k, r):
    """(L, L_X, L_Y, L_XY) to 30 digits; L by Plackett's integral."""
    r = mp.mpf(r)
    tail = lambda x: 1 - mp.ncdf(x)  # noqa: E731
    phi = mp.npdf
    if h is None and k is None:
        return mp.mpf(1), mp.mpf(0), mp.mpf(0), r
    if h is None:
        return tail(k), r * phi(k), phi(k), r * (tail(k) + k * phi(k))
    if k is None:
        return tail(h), phi(h), r * phi(h), r * (tail(h) + h * phi(h))
    s = mp.sqrt(1 - r * r)
    def dens(t):
        return mp.exp(-(h * h - 2 * t * h * k + k * k) / (2 * (1 - t * t))) / (2 * mp.pi * mp.sqrt(1 - t * t))

    L = tail(h) * tail(k) + mp.quad(dens, [0, r])
    A1, A2 = tail((k - r * h) / s), tail((h - r * k) / s)
    return (L, phi(h) * A1 + r * phi(k) * A2, phi(k) * A2 + r * phi(h) * A1,
            r * L + r * (h * phi(h) * A1 + k * phi(k) * A2) + s * phi(h) * phi((k - r * h) / s))


def _pair_mp(pieces, r, q1, q2):
    """The plain break expansion f = sum over breaks of the coefficient jumps times 1{X > t}, in 30 digits."""
    def jumps(sq):
        pts: dict = {}
        for a, b, p0, p1 in pieces:
            for t, sg in ((a, 1), (b, -1)):
                if t != math.inf:
                    A, B = pts.get(t, (0, 0))
                    pts[t] = (A + sg * mp.mpf(p0), B + sg * mp.mpf(p1))
        return [(None if t == -math.inf else mp.mpf(t) / sq, A, B * sq) for t, (A, B) in sorted(pts.items())]

    tot = mp.mpf(0)
    for h, A, B in jumps(mp.sqrt(mp.mpf(q1))):
        for k, C, D in jumps(mp.sqrt(mp.mpf(q2))):
            L, LX, LY, LXY = _orthant_mp(h, k, r)
            tot += A * C * L + A * D * LY + B * C * LX + B * D * LXY
    return tot


@pytest.mark.parametrize("name", ["hardtanh", "relu6"])
@pytest.mark.parametrize("derivative", [0, 1])
def test_rounding_estimate_bounds_the_true_error(name, derivative):
    """Against 30 digits, over q in [1e-3, 1e4] and |rho| up to 1 - 1e-15: the error is below the estimate."""
    mp.mp.dps = 30
    core = hermite.activation(name).core
    lin = core.linear_pieces(derivative)
    r, Q1, Q2 = entries(np.random.default_rng(5), 16, 1e-3, 1e4)
    v, est = bivariate.piecewise_linear_pair(lin, lin, r, Q1, Q2)
    for i in range(r.size):
        err = abs(float(mp.mpf(v[i]) - _pair_mp(lin, mp.mpf(r[i]), Q1[i], Q2[i])))
        assert err <= est[i], (r[i], Q1[i], Q2[i], err, est[i])


def test_pair_kernel_takes_the_closed_form_and_leaves_rho_one_to_the_others(monkeypatch):
    core = hermite.activation("hardtanh").core
    r, Q1, Q2 = entries(np.random.default_rng(2), 64)
    r[:3] = [1.0, -1.0, 1.0]
    seen = []
    real = quadrature.pair_expectation

    def spy(f, g, fa, fb, rr, q1, q2, smoothing):
        seen.append(np.asarray(rr).copy())
        return real(f, g, fa, fb, rr, q1, q2, smoothing)

    monkeypatch.setattr(quadrature, "pair_expectation", spy)
    got = pair_kernel(core, core, r, Q1, Q2, 0)
    left = np.concatenate(seen) if seen else np.empty(0)
    assert np.all(np.abs(left) == 1.0)  # only |rho| = 1 went to the quadrature
    lin = core.linear_pieces(0)
    v, _ = bivariate.piecewise_linear_pair(lin, lin, r[3:], Q1[3:], Q2[3:])
    scale = np.sqrt(core.second_moment(Q1[3:]) * core.second_moment(Q2[3:]))
    np.testing.assert_array_less(np.abs(got[3:] - v), 1e-12 * scale)  # the series took the small |rho|
    # equal variances (entries() makes the first ones equal): rho = 1 is E f^2, rho = -1 is -E f^2 (f odd)
    m = core.second_moment(Q1[:2])
    np.testing.assert_allclose(got[:2], [m[0], -m[1]], rtol=1e-13)


def test_tiny_and_overflowed_corners():
    """A product h k that underflows must not flip Owen's branch (review finding); a +inf corner is empty."""
    quadrant = 0.25 + math.asin(0.5) / (2 * math.pi)
    assert abs(float(bivariate.orthant_moments(1e-162, 1e-162, 0.5)[0]) - quadrant) < 1e-15
    assert abs(float(bivariate.orthant_moments(1e-300, -1e-300, 0.5)[0]) - quadrant) < 1e-15
    assert all(float(x) == 0.0 for x in bivariate.orthant_moments(math.inf, 0.0, 0.5)[:4])


def test_half_plane_corners_agree_with_the_general_path_at_a_nan_corner():
    """A zero variance puts a break at 0/0 = NaN: the half-plane shortcut takes it as the general path does
    (the whole plane), whatever else is in the batch; E[sign(u) sign(v)] stays in [-1, 1] (found in review:
    the shortcut took a NaN corner as empty, and sign's kernel at a zero variance came out 2.0)."""
    from hermite.bivariate import orthant_moments

    with np.errstate(all="ignore"):
        alone = orthant_moments(np.array([-np.inf]), np.array([np.nan]), 0.3)
        batch = orthant_moments(np.array([-np.inf, 0.5]), np.array([np.nan, np.nan]), 0.3)
        core = hermite.activation("sign").core
        v = pair_kernel(core, core, np.array([0.3]), np.array([1.0]), np.array([0.0]))
    for a, b in zip(alone, batch):
        np.testing.assert_array_equal(a[0], b[0])
    assert abs(v[0]) <= 1.0
