"""Tests of meanfield.checks: each theorem check holds on random inputs; the finite-width simulator agrees
with the mean-field isometry curve; the batch-norm gradient rate; bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import hermite
import meanfield
from meanfield import checks, rates
from meanfield.finite import simulate

FAST_ACTS = ["relu", "tanh", "sigmoid", "silu", "gelu", "sin", "exp", "abs", "identity",
             ("hermite", {"k": 2}), ("hermite", {"k": 3}), "0.3*x + 1.2*(x**2 - 1) - 0.4*x**3",
             "x + 0.2*sin(3*x)"]


def test_report_protocol():
    r = checks.check_rescaling(trials=5)
    assert isinstance(r, checks.CheckReport)
    assert bool(r) is r.holds is True
    assert r.counterexample is None
    assert "holds" in str(r)
    assert r.cases == 5


def test_rescaling_random_and_given():
    r = checks.check_rescaling(trials=300, seed=1)
    assert r.holds and r.worst < 1e-9 and r.margin > 0
    # a stack given explicitly, including an exactly singular matrix and equal norms
    X = np.random.default_rng(0).standard_normal((3, 2))
    stack = np.stack([X @ X.T, np.eye(3) * 2.0, np.diag([1.0, 4.0, 9.0])])
    r = checks.check_rescaling(stack)
    assert r.holds and r.cases == 3
    with pytest.raises(ValueError, match="positive norm"):
        checks.check_rescaling(np.diag([1.0, 0.0]))
    with pytest.raises(ValueError, match="symmetric"):
        checks.check_rescaling(np.array([[1.0, 0.5], [0.1, 1.0]]))


def test_potential_contraction_any_activation():
    r = checks.check_potential_contraction(FAST_ACTS, trials=4, depth=5, seed=3)
    assert r.holds, r
    assert r.worst <= 1.0 + 1e-7  # beta_sigma phi_out / phi_in <= 1; the identity attains it
    per = r.details["per_activation"]
    assert per["identity"]["worst_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert per["relu"]["worst_ratio"] < 1.0


def test_potential_contraction_other_sigma_w_and_unequal_norms():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((4, 6)) * np.array([[0.3], [1.0], [3.0], [1.0]])
    r = checks.check_potential_contraction(["relu", "tanh", "gelu"], X @ X.T / 6, sigma_w=1.6, depth=6)
    assert r.holds, r
    assert r.cases == 3 * 5  # block 1 has unequal norms at its input and is left out


def test_rank_collapse_relu_constant():
    r = checks.check_rank_collapse("relu", depth=500)
    assert r.holds, r
    assert r.details["fitted_constant"] == pytest.approx(9 * math.pi**2 / 2, rel=1e-3)
    assert r.details["kappa_u_prime_1"] == pytest.approx(1.0, abs=1e-12)
    # the naive l^2 (1 - rho_l) is still far from the limit at l = 500 (log l / l corrections)
    assert r.details["naive_constant"] < 0.96 * checks.RELU_COLLAPSE_CONSTANT


def test_rank_collapse_is_not_universal():
    assert checks.check_rank_collapse("sigmoid", depth=200)  # k_u'(1) < 1: exponential collapse
    r = checks.check_rank_collapse("gelu", depth=200)
    assert not r.holds  # GELU without centring settles at rho* = 0.76 < 1
    assert r.counterexample is not None
    assert r.details["criterion_holds"]
    assert r.details["predicted_limit"] == pytest.approx(r.details["observed_limit"], abs=1e-6)
    assert 0.75 < r.details["predicted_limit"] < 0.77


def test_affine_isometry():
    r = checks.check_affine_isometry(trials=8, depth=5)
    assert r.holds, r
    assert checks.check_affine_isometry(["2*x + 3"], sigma_w=0.4, trials=4, depth=3)
    with pytest.raises(ValueError, match="beta0"):
        checks.check_affine_isometry(["relu"])


@pytest.mark.parametrize("k", [2, 3, 4])
def test_hermite_power(k):
    r = checks.check_hermite_power(k, depth=4, trials=6, seed=k)
    assert r.holds, r
    assert r.worst < 1e-11


def test_hermite_power_bad_inputs():
    with pytest.raises(ValueError, match="k="):
        checks.check_hermite_power(1)
    with pytest.raises(ValueError, match="unit diagonal"):
        checks.check_hermite_power(2, np.diag([1.0, 2.0]))


def test_orthogonality_plateau():
    r = checks.check_orthogonality_plateau((16, 64, 256), n=4, depth=30, seeds=12)
    assert r.holds, r
    assert r.details["exponent"] == pytest.approx(-0.5, abs=0.1)


def test_bn_gradient_rate_linear_simulation():
    r = checks.check_bn_gradient_rate("identity", 8, width=256, depth=16, seeds=8)
    assert r.holds, r
    assert r.details["predicted"] == pytest.approx(1.2)
    assert r.details["measured"] == pytest.approx(1.2, abs=0.04)


def test_bn_gradient_rate_relu_simulation():
    r = checks.check_bn_gradient_rate("relu", 8, width=256, depth=16, seeds=8, samples=2**15)
    assert r.holds, r
    assert r.details["predicted"] > r.details["large_batch_limit"]


def test_simulation_agrees_with_meanfield_isometry_curve():
    """Seed-mean isometry gap of the simulator = mean-field gap + the accumulated finite-width noise floor
    (rates.finite_width_gap, summed over blocks), within 4 standard errors; correlations within 4 too."""
    rng = np.random.default_rng(0)
    n, width, seeds, depth = 4, 1024, 32, 6
    X = rng.standard_normal((n, 16))
    X[1] = X[0] + 0.3 * X[1]
    for act in ("relu", "tanh"):
        net = meanfield.mlp(depth, act, norm="ln")
        mf = meanfield.propagate(net, X=X)
        sim = simulate(net, X, width=width, seeds=seeds, seed=1)
        g = sim.isometry_gap()
        se = g.std(axis=0, ddof=1) / math.sqrt(seeds)
        b0 = rates.beta0(act)
        layers = np.arange(depth + 1)
        floor = (n - 1) / (2 * width) * (1 - b0 ** (2 * layers)) / (1 - b0**2)
        z = (g.mean(axis=0) - mf.isometry_gap() - floor)[1:] / se[1:]
        assert np.all(np.abs(z) < 4), (act, z)
        c = sim.correlations()
        cz = (c.mean(axis=0) - mf.correlations())[1:] / (c.std(axis=0, ddof=1)[1:] / math.sqrt(seeds) + 1e-15)
        off = ~np.eye(n, dtype=bool)
        assert np.all(np.abs(cz[:, off]) < 4), (act, cz)


def test_random_inputs_helpers():
    grams = checks.random_grams(20, 5, seed=1)
    assert len(grams) == 20 and all(g.shape == (5, 5) for g in grams)
    assert any(np.linalg.matrix_rank(g) < 5 for g in grams)  # some singular ones
    cs = checks.random_correlations(9, 3, seed=2)
    assert all(np.allclose(np.diag(c), 1.0) for c in cs)
    assert max(abs(c[0, 1]) for c in cs) > 0.9  # nearly collinear pairs included
    with pytest.raises(ValueError, match="trials"):
        checks.random_grams(0)
    with pytest.raises(ValueError, match="unknown activation"):
        checks.check_potential_contraction(["nope"])
    assert hermite.activation("relu") in [hermite.activation(a) for a in ("relu",)]
