"""Tests of meanfield.transformations: estimators, shortcut networks, the function-preserving update."""

import math

import numpy as np
import pytest
import scipy.integrate as si
from scipy.stats import norm

import hermite
import meanfield
from meanfield import fisher
from meanfield import transformations as tr


# ----------------------------------------------------------------------------------------------------
# Gaussian estimator against closed forms and an independent quadrature
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [1.0, 0.5])
def test_gaussian_relu_closed_forms(q):
    t = tr.gaussian("relu", q)
    var_out = q * (0.25 - 1 / (2 * np.pi))  # E (|u|/2 - sqrt(q/2pi))^2
    assert abs(t.alpha + 0.5) < 1e-13
    assert abs(t.beta + math.sqrt(q / (2 * np.pi))) < 1e-13
    assert abs(t.var_output - var_out) < 1e-13
    assert abs(t.var_slope - 0.25) < 1e-13
    assert abs(t.gamma - var_out**-0.5) < 1e-11
    tg = tr.gaussian("relu", q, gamma="geometric")
    assert abs(tg.gamma - (var_out * 0.25) ** -0.25) < 1e-11
    assert float(tr.gaussian("relu", q, gamma=None).gamma) == 1.0


@pytest.mark.parametrize("q, m", [(1.0, 0.3), (0.5, -0.7), (2.0, 1.5)])
def test_gaussian_relu_shifted_closed_forms(q, m):
    s = math.sqrt(q)
    P, p = norm.cdf(m / s), norm.pdf(m / s)
    E1 = m * P + s * p  # E relu(u), u ~ N(m, q)
    E2 = (m * m + q) * P + m * s * p  # E relu(u)^2
    alpha = -P
    cov = q * P  # Cov(relu(u), u) = q E relu'(u) (Stein)
    var_out = E2 - E1 * E1 + 2 * alpha * cov + alpha * alpha * q
    t = tr.gaussian("relu", q, m)
    assert abs(t.alpha - alpha) < 1e-13
    assert abs(t.beta - (-E1 - alpha * m)) < 1e-13
    assert abs(t.var_output - var_out) < 1e-13
    assert abs(t.var_slope - P * (1 - P)) < 1e-13
    assert abs(t.gamma - var_out**-0.5) < 1e-10 * t.gamma


def _quad_tanh(q, m):
    """E phi, E phi', Var-type moments of tanh(u), u ~ N(m, q), by scipy's adaptive quadrature."""
    s = math.sqrt(q)

    def E(h):
        return si.quad(lambda z: h(m + s * z) * norm.pdf(z), -np.inf, np.inf, epsabs=1e-14, epsrel=1e-13)[0]

    d1 = lambda u: 1 - np.tanh(u) ** 2
    alpha = -E(d1)
    beta = -E(np.tanh) - alpha * m
    var_out = E(lambda u: (np.tanh(u) + alpha * u + beta) ** 2)
    var_slope = E(lambda u: (d1(u) + alpha) ** 2)
    return alpha, beta, var_out, var_slope


@pytest.mark.parametrize("q, m", [(1.0, 0.0), (0.5, 0.0), (1.0, 0.4), (0.5, -1.2)])
def test_gaussian_tanh_against_quadrature(q, m):
    alpha, beta, var_out, var_slope = _quad_tanh(q, m)
    t = tr.gaussian("tanh", q, m)
    tg = tr.gaussian("tanh", q, m, gamma="geometric")
    assert abs(t.alpha - alpha) < 1e-12
    assert abs(t.beta - beta) < 1e-12
    assert abs(t.var_output - var_out) < 1e-11 * var_out + 1e-14
    assert abs(t.var_slope - var_slope) < 1e-11 * var_slope + 1e-14
    np.testing.assert_allclose(t.gamma, var_out**-0.5, rtol=1e-9)
    np.testing.assert_allclose(tg.gamma, (var_out * var_slope) ** -0.25, rtol=1e-9)
    if m == 0:
        assert t.beta == 0.0 or abs(t.beta) < 1e-15  # tanh is odd


def test_gaussian_vectorized_per_unit():
    q = np.array([1.0, 0.5, 2.0, 1.0])
    m = np.array([0.0, 0.0, 0.3, -0.3])
    t = tr.gaussian("tanh", q, m, gamma="geometric")
    assert t.alpha.shape == (4,)
    for i in range(4):
        ti = tr.gaussian("tanh", q[i], m[i], gamma="geometric")
        for k in ("alpha", "beta", "gamma"):
            assert abs(getattr(t, k)[i] - getattr(ti, k)) < 1e-12 * max(1.0, abs(getattr(ti, k)))
    # tanh is odd: the mean -m gives the same alpha and beta(-m) = -beta(m)
    t3 = tr.gaussian("tanh", 1.0, 0.3)
    assert abs(t.alpha[3] - t3.alpha) < 1e-13 and abs(t.beta[3] + t3.beta) < 1e-13


# ----------------------------------------------------------------------------------------------------
# transformed activations: no Hermite orders 0 and 1
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("act", ["tanh", "relu", "gelu", "softplus"])
@pytest.mark.parametrize("q", [1.0, 0.5])
def test_transformed_activation_has_zero_orders_0_and_1(act, q):
    f = tr.to_activation(act, tr.gaussian(act, q))
    c = hermite.coefficients(f, 4, q)
    assert abs(c[0]) < 1e-13 and abs(c[1]) < 1e-13
    assert abs(hermite.second_moment(f, q) - 1.0) < 1e-12  # gamma = "variance"
    # identical to hermite.transform with remove=(0, 1), unit_variance=True
    np.testing.assert_allclose(c, hermite.coefficients(hermite.transform(act, q=q), 4, q), atol=1e-13)
    # geometric: std(f) * rms(f') = 1
    g = tr.to_activation(act, tr.gaussian(act, q, gamma="geometric"))
    cg = hermite.coefficients(g, 1, q)
    assert abs(cg[0]) < 1e-13 and abs(cg[1]) < 1e-13
    prod = hermite.second_moment(g, q) * hermite.kernel(g, 1.0, q1=q, derivative=1)
    assert abs(prod - 1.0) < 1e-11


# ----------------------------------------------------------------------------------------------------
# empirical estimator
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("q", [1.0, 0.5])
@pytest.mark.parametrize("choice", ["variance", "geometric"])
def test_empirical_converges_to_gaussian(act, q, choice):
    """Every column of U is an independent replicate: the spread over columns is the estimator's error."""
    N, units = 4000, 200
    rng = np.random.default_rng([len(act), int(4 * q), len(choice)])
    U = math.sqrt(q) * rng.standard_normal((N, units))
    phi = fisher.PHIS[act]
    est = tr.empirical(phi.fn, phi.d1, U, gamma=choice)
    exact = tr.gaussian(act, q, gamma=choice)
    for k in ("alpha", "beta", "gamma"):
        e, x = getattr(est, k), float(getattr(exact, k))
        scale = max(1.0, abs(x))
        sd = e.std(ddof=1)
        # the error of one estimate is a few / sqrt(N) (relative to the quantity's scale) ...
        assert sd < 4.0 * scale / math.sqrt(N), (k, sd)
        # ... and the estimates are centred on the Gaussian value (bias O(1/N))
        assert abs(e.mean() - x) < 5 * sd / math.sqrt(units) + 5 * scale / N, (k, e.mean(), x)


def test_empirical_exact_constraints_on_its_data():
    rng = np.random.default_rng(3)
    U = rng.standard_normal((300, 5)) * [0.3, 1.0, 2.0, 1.0, 0.7] + [0.0, 0.5, -1.0, 2.0, 0.1]
    phi = fisher.PHIS["tanh"]
    for choice in ("variance", "geometric", None):
        t = tr.empirical("tanh", None, U, gamma=choice)
        F = t.apply(phi.fn(U), U)
        dF = t.gamma * (phi.d1(U) + t.alpha)
        assert np.max(np.abs(F.mean(axis=0))) < 1e-13
        assert np.max(np.abs(dF.mean(axis=0))) < 1e-13
        if choice == "variance":
            np.testing.assert_allclose(np.mean(F * F, axis=0), 1.0, rtol=1e-12)
        if choice == "geometric":
            np.testing.assert_allclose(np.mean(F * F, axis=0) * np.mean(dF * dF, axis=0), 1.0, rtol=1e-12)


# ----------------------------------------------------------------------------------------------------
# the function-preserving update
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("phi", ["tanh", "relu", "sigmoid"])
def test_update_transforms_preserves_outputs(phi):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((150, 4))
    Xnew = 2 * rng.standard_normal((40, 4))  # points not used for the estimate
    net = fisher.shortcut_mlp((4, 7, 3, 6, 3, 5, 2), phi, seed=3, sigma_b=0.2)
    # start from arbitrary transformations (seed chosen so that no relu unit is one-sided over the data,
    # where phi would be affine and gamma undefined)
    for k, blk in enumerate(net.blocks):
        net = net.with_transform(k, alpha=rng.uniform(-1, 1, blk.n_hidden), beta=rng.uniform(-.3, .3, blk.n_hidden),
                                 gamma=rng.uniform(0.3, 3, blk.n_hidden))
    y0, y0new = fisher.forward(net, X), fisher.forward(net, Xnew)
    scale = max(1.0, np.max(np.abs(y0)), np.max(np.abs(y0new)))
    cur = net
    for choice in ("variance", "geometric", None, "variance"):
        cur = tr.update_transforms(cur, X[: 100 if choice else 150], gamma=choice)
        assert np.max(np.abs(fisher.forward(cur, X) - y0)) < 1e-12 * scale
        assert np.max(np.abs(fisher.forward(cur, Xnew) - y0new)) < 1e-12 * scale
    # the new transformations are the empirical ones on the data
    U = tr.preactivations(cur, X[:100])
    for blk, u in zip(cur.blocks, U):
        assert np.max(np.abs(blk.f(u).mean(axis=0))) < 1e-12
        assert np.max(np.abs(blk.df(u).mean(axis=0))) < 1e-12


def test_reparameterize_formula_and_errors():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3))
    net = fisher.shortcut_mlp((3, 5, 2), "tanh", seed=1, sigma_b=0.3)
    new = tr.reparameterize(net, 0, alpha=rng.normal(size=5), beta=rng.normal(size=5), gamma=rng.uniform(.5, 2, 5))
    assert np.max(np.abs(fisher.forward(new, X) - fisher.forward(net, X))) < 1e-12
    P0, P1 = net.unflatten(), new.unflatten()
    g1, a1 = new.blocks[0].gamma, new.blocks[0].alpha
    np.testing.assert_allclose(P1["A"], P0["A"] / g1, rtol=1e-14)  # old gamma = 1, A' = A g0/g1
    np.testing.assert_allclose(P1["C"], P0["C"] - (P0["A"] * a1) @ P0["B"], rtol=1e-12, atol=1e-14)
    # no shortcut: alpha cannot change, beta and gamma can
    plain = fisher.shortcut_mlp((3, 5, 2), "tanh", shortcut=False, seed=1)
    with pytest.raises(ValueError, match="shortcut"):
        tr.reparameterize(plain, 0, alpha=0.1)
    ok = tr.reparameterize(plain, 0, beta=0.2, gamma=2.0)
    assert np.max(np.abs(fisher.forward(ok, X) - fisher.forward(plain, X))) < 1e-12
    with pytest.raises(ValueError, match="gamma"):
        tr.reparameterize(net, 0, gamma=0.0)
    with pytest.raises(ValueError, match="block"):
        tr.reparameterize(net, 3, gamma=1.0)
    with pytest.raises(ValueError, match="alpha"):
        tr.reparameterize(net, 0, alpha=np.ones(4))


def test_transformed_shortcut_mlp_is_the_same_function():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((80, 4))
    plain = fisher.shortcut_mlp((4, 6, 2), "tanh", seed=7)
    net = tr.transformed_shortcut_mlp((4, 6, 2), "tanh", X, gamma="geometric", seed=7)
    assert np.max(np.abs(fisher.forward(net, X) - fisher.forward(plain, X))) < 1e-12
    assert not np.allclose(net.theta, plain.theta)


# ----------------------------------------------------------------------------------------------------
# Fisher blocks that the theory says vanish
# ----------------------------------------------------------------------------------------------------
def test_fisher_offdiagonal_blocks_vanish_for_gaussian_inputs():
    """y = A f(Bx + b) + Cx + d, x ~ N(0, I): G[A_j, C_k] = <f_j(u_j) x_k> and G[A_j, d] = <f_j(u_j)>.

    With the Gaussian transformation (u_j ~ N(b_j, |B_j|^2)) E f_j = 0 and, by Stein's lemma,
    E f_j(u_j) x_k = B_jk E f_j'(u_j) = 0. Each entry is a sample mean over N inputs; its z-score against
    the sample standard error is ~N(0, 1), so all of them stay within a few units (and are huge without
    the transformation).
    """
    N, n_in, H = 20000, 4, 8
    rng = np.random.default_rng(11)
    X = rng.standard_normal((N, n_in))
    net = fisher.shortcut_mlp((n_in, H, 1), "tanh", seed=3, sigma_b=0.5)
    P = net.unflatten()
    t = tr.gaussian("tanh", np.sum(P["B"] ** 2, axis=1), P["b"], gamma="variance")
    zs = {}
    for name, nn in (("plain", net), ("transformed", net.with_transform(0, t.alpha, t.beta, t.gamma))):
        G = fisher.gauss_newton(nn, X)
        L = nn.layout
        F = nn.blocks[0].f(tr.preactivations(nn, X)[0])  # (N, H)
        W = F[:, :, None] * X[:, None, :]
        zAC = G[L["A"], L["C"]] / (W.std(axis=0) / math.sqrt(N))
        zAd = G[L["A"], L["d"]][:, 0] / (F.std(axis=0) / math.sqrt(N))
        zs[name] = (np.max(np.abs(zAC)), np.max(np.abs(zAd)))
        bn = fisher.block_norms(G, L)
        zs[name + "_norm"] = (bn[("A", "C")], bn[("A", "d")])
    assert zs["transformed"][0] < 5 and zs["transformed"][1] < 5, zs
    assert zs["plain"][0] > 20 and zs["plain"][1] > 20, zs
    assert zs["transformed_norm"][0] < 0.1 * zs["plain_norm"][0]
    assert zs["transformed_norm"][1] < 0.1 * zs["plain_norm"][1]


def test_fisher_activation_bias_block_exactly_zero_with_empirical_transform():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((400, 3))
    net = tr.transformed_shortcut_mlp((3, 6, 2), "tanh", X, seed=4, sigma_b=0.5)
    G = fisher.gauss_newton(net, X)
    scale = np.max(np.abs(G))
    assert np.max(np.abs(G[net.layout["A"], net.layout["d"]])) < 1e-13 * scale


# ----------------------------------------------------------------------------------------------------
# mean field: the shortcut network in both engines, faster contraction
# ----------------------------------------------------------------------------------------------------
def test_correlation_map_matches_propagate_and_mehler():
    rho = np.array([-0.8, -0.2, 0.3, 0.9, 1.0])
    net = tr.shortcut_network(1, "tanh", mix=0.6)
    for r in rho:
        K0 = np.array([[1.0, r], [r, 1.0]])
        g = meanfield.propagate(net, K0).gram[-1]
        assert abs(g[0, 0] - 1.0) < 1e-12
        assert abs(g[0, 1] - tr.correlation_map("tanh", r, mix=0.6)) < 1e-12
    # only orders >= 2 remain: rho' = 0.4 rho + 0.6 sum_{k>=2} c_k^2 rho^k
    c = hermite.coefficients(hermite.transform("tanh"), 80)
    series = 0.4 * rho + 0.6 * np.polynomial.polynomial.polyval(rho, c**2)
    assert abs(c[0]) < 1e-13 and abs(c[1]) < 1e-13
    np.testing.assert_allclose(tr.correlation_map("tanh", rho, mix=0.6), series, atol=1e-12)


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_transformed_network_correlations_contract_faster(act):
    d = tr.depth_curves(act, depth=12, rho0=0.9)
    rt, rp = d["rho_transformed"], d["rho_plain"]
    assert rt[0] == rp[0] == pytest.approx(0.9)
    assert np.all(np.abs(rt[1:]) < np.abs(rp[1:]))
    assert np.all(np.diff(rt) < 0) and rt[-1] < 0.05  # towards orthogonality
    assert np.all(d["gap_transformed"][1:] < d["gap_plain"][1:])
    # a larger batch: the isometry gap of the transformed network falls below the plain one's
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 3)) + 1.0
    X /= np.linalg.norm(X, axis=1, keepdims=True) / math.sqrt(3)  # unit second moment per sample
    K0 = X @ X.T / 3
    d2 = tr.depth_curves(act, depth=8, K0=K0, gamma="geometric")
    assert np.all(d2["gap_transformed"][1:] < d2["gap_plain"][1:])


def test_shortcut_network_simulate_matches_propagate():
    from meanfield.finite import simulate

    rng = np.random.default_rng(4)
    X = rng.standard_normal((4, 32))
    net = tr.shortcut_network(3, "tanh", sigma_b=0.2, sigma_d=0.1)
    mf = meanfield.propagate(net, X=X)
    sim = simulate(net, X, width=512, seeds=12, seed=1)
    err = np.abs(sim.gram.mean(axis=0) - mf.gram)
    assert np.all(err <= 5 * sim.stderr() + 2e-3)
    assert meanfield.Network.from_dict(net.to_dict()) == net


# ----------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------
def test_train_with_transformations_decreases_loss():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 3))
    Y = np.tanh(X @ [1.0, -2.0, 0.5])[:, None]
    net = fisher.shortcut_mlp((3, 6, 1), "tanh", seed=0)
    res = tr.train(net, X, Y, steps=200, lr=0.05, batch_size=16, transform=True, every=50, record_every=50,
                   track_units=True)
    assert not res.diverged
    assert res.losses.shape == (5,) and res.losses[-1] < 0.5 * res.losses[0]
    assert len(res.history) == 5 and res.history[-1][0]["input_std"].shape == (6,)
    base = tr.train(net, X, Y, steps=200, lr=0.05, batch_size=16, record_every=50)
    assert np.all(base.net.blocks[0].gamma == 1.0) and base.losses[-1] < base.losses[0]


# ----------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_value_errors_naming_the_argument():
    phi = fisher.PHIS["tanh"]
    with pytest.raises(ValueError, match="U is an empty batch"):
        tr.empirical(phi.fn, phi.d1, np.zeros((0, 3)))
    U = np.random.default_rng(0).standard_normal((10, 3))
    U[:, 1] = 0.7
    with pytest.raises(ValueError, match=r"U has constant units.*\[1\]"):
        tr.empirical(phi.fn, phi.d1, U)
    with pytest.raises(ValueError, match="gamma='unit'"):
        tr.empirical(phi.fn, phi.d1, np.eye(3), gamma="unit")
    with pytest.raises(ValueError, match="gamma="):
        tr.gaussian("tanh", 1.0, gamma="std")
    with pytest.raises(ValueError, match="q="):
        tr.gaussian("tanh", 0.0)
    with pytest.raises(ValueError, match="m must be finite"):
        tr.gaussian("tanh", 1.0, np.nan)
    with pytest.raises(ValueError, match="U"):  # relu with all inputs positive is linear: no gamma
        tr.empirical("relu", None, np.abs(U) + 1.0)
    with pytest.raises(ValueError, match="X is an empty batch"):
        tr.update_transforms(fisher.shortcut_mlp((3, 4, 1)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="gamma="):
        tr.shortcut_network(2, "tanh", gamma="bogus")
    with pytest.raises(ValueError, match="mix="):
        tr.shortcut_network(2, "tanh", mix=0.0)
    with pytest.raises(ValueError, match="net must be"):
        tr.update_transforms("net", np.eye(3))


def test_example_script_runs(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "transformations_demo.py"
    spec = importlib.util.spec_from_file_location("transformations_demo", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main()
    out = capsys.readouterr().out
    assert "max |y_new - y_old|" in out and "transformed" in out
