"""Tests of meanfield.fisher: Jacobian, Gauss-Newton, exact Hessian and diagnostics on networks of fixed layers."""

import dataclasses
import json

import numpy as np
import pytest

import hermite
import meanfield
from meanfield import Activation, Block, Concat, Dense, Linear, Network, fisher, shortcuts


def _data(n_in=3, n_out=2, n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_in)), rng.standard_normal((n, n_out))


def _fd(fun, theta, h):
    """Central differences of fun along every coordinate, stacked on the last axis."""
    cols = []
    for e in np.eye(theta.size):
        cols.append((fun(theta + h * e) - fun(theta - h * e)) / (2 * h))
    return np.stack(cols, axis=-1)


def _rel(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def _act(name, n, rng, transformed=True):
    """A per-unit activation with nontrivial alpha, beta, gamma (every term of f is exercised)."""
    a = hermite.activation(name)
    if not transformed:
        return Activation(a)
    return Activation(dataclasses.replace(a, alpha=rng.uniform(-0.5, 0.5, n), beta=rng.uniform(-0.3, 0.3, n),
                                          gamma=rng.uniform(0.5, 1.5, n)))


def _lin(rng, out, inp, sigma_b=0.5):
    return Linear(rng.standard_normal((out, inp)) / np.sqrt(inp), sigma_b * rng.standard_normal(out))


def _net(kind, seed=1, transformed=True):
    """Networks of the supported layers: the paper's shortcut structure (Concat) and plain chains."""
    rng = np.random.default_rng(seed)
    if kind == "tanh-shortcut":  # y = W32 f(W21 x + b2) + W31 x + b3
        return Network([Concat([_lin(rng, 4, 3), _act("tanh", 4, rng, transformed)]), _lin(rng, 2, 7)])
    if kind == "tanh-plain":  # y = A f(B x + b) + d
        return Network([Block([_lin(rng, 4, 3), _act("tanh", 4, rng, transformed), _lin(rng, 2, 4)])])
    if kind == "sigmoid-deep":  # two nonlinear layers, all-to-all shortcuts
        return Network([Concat([_lin(rng, 4, 3), _act("sigmoid", 4, rng, transformed)]),
                        Concat([_lin(rng, 3, 7), _act("tanh", 3, rng, transformed)]), _lin(rng, 2, 10)])
    if kind == "softplus-mixed":  # a chain inside a Concat branch, then a plain nonlinear layer
        return Network([Concat([Block([_lin(rng, 3, 3), _act("softplus", 3, rng, transformed), _lin(rng, 3, 3),
                                       _act("tanh", 3, rng, transformed)])]),
                        _lin(rng, 4, 6), _act("softplus", 4, rng, transformed), _lin(rng, 2, 4)])
    raise KeyError(kind)


NETS = ["tanh-shortcut", "tanh-plain", "sigmoid-deep", "softplus-mixed"]


@pytest.mark.parametrize("name", NETS)
def test_jacobian_gradient_against_finite_differences(name):
    net = _net(name)
    X, Y = _data()
    th = fisher.parameters(net).theta
    n_params = th.size
    J = fisher.jacobian(net, X)
    assert J.shape == (20, 2, n_params)
    J_fd = _fd(lambda t: fisher.forward(fisher.with_theta(net, t), X), th, 1e-5)
    assert _rel(J, J_fd) < 1e-7
    g = fisher.gradient(net, X, Y)
    g_fd = _fd(lambda t: np.array(fisher.loss(fisher.with_theta(net, t), X, Y)), th, 1e-5)
    assert _rel(g, g_fd) < 1e-7
    # the gradient is J^T r / N
    r = fisher.forward(net, X) - Y
    np.testing.assert_allclose(g, np.einsum("nop,no->p", J, r) / 20, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fisher.jacobian(net, X, chunk=3), J, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", NETS)
def test_hessian_against_finite_differences(name):
    net = _net(name)
    X, Y = _data()
    th = fisher.parameters(net).theta
    H_raw = fisher.hessian(net, X, Y, symmetrize=False)
    # the analytic forward-over-reverse result is symmetric without being forced to be
    assert np.max(np.abs(H_raw - H_raw.T)) < 1e-13 * np.max(np.abs(H_raw))
    H = fisher.hessian(net, X, Y, chunk=7)  # several chunks, one ragged
    np.testing.assert_allclose(H, 0.5 * (H_raw + H_raw.T), rtol=1e-12, atol=1e-14)
    H_fd = _fd(lambda t: fisher.gradient(fisher.with_theta(net, t), X, Y), th, 1e-5)
    assert _rel(H, H_fd) < 1e-7
    # and directly from the loss, a few entries by second differences
    L = lambda t: fisher.loss(fisher.with_theta(net, t), X, Y)
    h = 1e-4
    rng = np.random.default_rng(3)
    for i, j in rng.integers(0, th.size, size=(5, 2)):
        ei, ej = np.eye(th.size)[[i, j]]
        fd = (L(th + h * ei + h * ej) - L(th + h * ei - h * ej) - L(th - h * ei + h * ej)
              + L(th - h * ei - h * ej)) / (4 * h * h)
        assert abs(H[i, j] - fd) < 1e-6 * np.max(np.abs(H))


@pytest.mark.parametrize("name", NETS)
def test_gauss_newton(name):
    net = _net(name)
    X, _ = _data()
    th = fisher.parameters(net).theta
    G = fisher.gauss_newton(net, X)
    J_fd = _fd(lambda t: fisher.forward(fisher.with_theta(net, t), X), th, 1e-5).reshape(-1, th.size)
    assert _rel(G, J_fd.T @ J_fd / 20) < 1e-7
    np.testing.assert_array_equal(G, G.T)
    assert np.linalg.eigvalsh(G).min() > -1e-12 * np.linalg.eigvalsh(G).max()
    np.testing.assert_allclose(fisher.gauss_newton(net, X, chunk=3), G, rtol=1e-12, atol=1e-15)
    # with zero residuals the Hessian is exactly the Gauss-Newton matrix
    H0 = fisher.hessian(net, X, fisher.forward(net, X))
    np.testing.assert_allclose(H0, G, rtol=1e-10, atol=1e-13)


def test_relu_hessian_almost_everywhere():
    rng = np.random.default_rng(4)
    net = Network([Concat([_lin(rng, 4, 3), Activation("relu")]), _lin(rng, 2, 7)])
    X, Y = _data(seed=5)
    u = X @ net.layers[0].branch[0].W.T + net.layers[0].branch[0].b
    keep = np.min(np.abs(u), axis=1) > 1e-3  # no kink within reach of the finite-difference step
    X, Y = X[keep], Y[keep]
    assert len(X) >= 15
    H = fisher.hessian(net, X, Y)
    H_fd = _fd(lambda t: fisher.gradient(fisher.with_theta(net, t), X, Y), fisher.parameters(net).theta, 1e-6)
    assert _rel(H, H_fd) < 1e-7


def test_hessian_matches_the_authors_finite_difference_hessian():
    """ltmlp_hessian.m re-derived: rows of H by central differences (h = 1e-3) of the gradient with respect to each
    weight (biases excluded), then symmetrized; ours is exact, so the two agree to O(h^2)."""
    net = shortcuts.network((3, 5, 4, 2), seed=2)
    X, Y = _data(seed=6, n=40)
    net = shortcuts.update_transforms(net, X)  # nonzero shortcuts and transformations
    P = fisher.parameters(net)
    w = P.indices("W")
    h = 1e-3
    rows = []
    for i in w:
        e = np.zeros(P.n_params)
        e[i] = h
        gp = fisher.gradient(fisher.with_theta(net, P.theta + e), X, Y)[w]
        gm = fisher.gradient(fisher.with_theta(net, P.theta - e), X, Y)[w]
        rows.append((gp - gm) / (2 * h))
    H_auth = np.array(rows)
    H_auth = 0.5 * (H_auth + H_auth.T)
    H = fisher.hessian(net, X, Y)[np.ix_(w, w)]
    assert _rel(H, H_auth) < 1e-5
    assert P.indices("b").size + w.size == P.n_params


def test_layout_and_flatten_roundtrip():
    rng = np.random.default_rng(0)
    net = Network([Concat([_lin(rng, 4, 3, 1.0), Activation("tanh")]), _lin(rng, 2, 7, 1.0)])
    P = fisher.parameters(net)
    assert list(P.layout) == ["W2,1", "b2", "W3,1", "W3,2", "b3"]
    assert P.n_params == 12 + 4 + 6 + 8 + 2
    assert P.sources["W3,1"] == (3, 1) and P.sources["b2"] == (2, None)
    D = P.unflatten()
    assert D["W3,2"].shape == (2, 4) and D["W3,1"].shape == (2, 3) and D["b2"].shape == (4,)
    np.testing.assert_array_equal(P.flatten(D), P.theta)
    # documented order: W2,1 row-major first; the output layer's columns split by source layer
    np.testing.assert_array_equal(P.theta[:12], net.layers[0].branch[0].W.ravel())
    W3 = net.layers[1].W
    np.testing.assert_array_equal(D["W3,1"], W3[:, :3])
    np.testing.assert_array_equal(D["W3,2"], W3[:, 3:])
    x = np.ones((1, 3))
    f = np.tanh(D["W2,1"] @ x[0] + D["b2"])
    np.testing.assert_allclose(fisher.forward(net, x)[0], D["W3,2"] @ f + D["W3,1"] @ x[0] + D["b3"], rtol=1e-14)
    assert list(P.indices("W")) == list(range(12)) + list(range(16, 30))
    # with_theta builds the same description, and the JSON round trip keeps it
    back = fisher.with_theta(net, P.theta)
    assert back == net
    assert Network.from_dict(json.loads(json.dumps(back.to_dict()))) == net
    deep = Network([_lin(rng, 4, 3), Activation("tanh"), Block([_lin(rng, 5, 4), Activation("tanh"), _lin(rng, 2, 5)])])
    assert list(fisher.parameters(deep).layout) == ["W2,1", "b2", "W3,2", "b3", "W4,3", "b4"]


def test_fisher_agrees_with_both_engines():
    """The deterministic network is the same function in fisher, the simulator and the mean-field engine."""
    X, _ = _data(n=6)
    net = _net("sigmoid-deep")
    y = fisher.forward(net, X)
    out = meanfield.simulate_outputs(net, X, width=8, seeds=2)
    np.testing.assert_allclose(out[0], y, rtol=1e-13, atol=1e-14)
    np.testing.assert_array_equal(out[0], out[1])  # fixed weights: every seed is the same network
    mf = meanfield.propagate(net, X=X)
    sim = meanfield.simulate(net, X, width=8, seeds=2)
    np.testing.assert_allclose(mf.gram[-1], y @ y.T / y.shape[1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sim.gram[0], mf.gram, rtol=1e-12, atol=1e-14)


def test_spectrum_and_block_norms():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    M = Q @ np.diag([4.0, 2.0, 1.0, -0.5, 0.25]) @ Q.T
    s = fisher.spectrum(M)
    np.testing.assert_allclose(s.eigenvalues, [-0.5, 0.25, 1.0, 2.0, 4.0], atol=1e-13)
    assert s.condition == pytest.approx(16.0, rel=1e-12)
    assert fisher.spectrum(np.zeros((2, 2))).condition == np.inf
    B = np.zeros((5, 5))
    B[:2, :2] = 2 * np.eye(2)
    B[2:, 2:] = np.eye(3)
    B[0, 3] = B[3, 0] = 0.5
    layout = {"x": slice(0, 2), "y": slice(2, 5)}
    norms = fisher.block_norms(B, layout)
    assert list(norms) == [("x", "y")]
    assert norms[("x", "y")] == pytest.approx(0.5 / np.sqrt(np.sqrt(8.0) * np.sqrt(3.0)), rel=1e-12)
    assert fisher.block_norms(B, layout, normalize=False)[("x", "y")] == pytest.approx(0.5)
    assert fisher.block_norms(B, {"x": [0, 1], "y": np.arange(2, 5)})[("x", "y")] == norms[("x", "y")]


def test_gradient_newton_angle():
    rng = np.random.default_rng(1)
    g = rng.standard_normal(6)
    mus = np.array([0.0, 0.1, 1.0, 10.0])
    np.testing.assert_allclose(fisher.gradient_newton_angle(3.0 * np.eye(6), g, mus), 0.0, atol=1e-6)
    for H in (rng.standard_normal((6, 6)), None):
        if H is None:  # PSD
            A = rng.standard_normal((6, 3))
            H = A @ A.T + 1e-3 * np.eye(6)
        else:  # indefinite
            H = H + H.T
        norm = np.linalg.norm(H, 2)
        big = norm * np.logspace(0.5, 6, 12)
        ang = fisher.gradient_newton_angle(H, g, big)
        assert ang.shape == big.shape
        assert np.all(np.diff(ang) < 0)
        assert ang[-1] < 1e-3
        # the small-mu end: compare with a direct solve
        d = np.linalg.solve(H + 0.01 * np.eye(6), g)
        expected = np.degrees(np.arccos(g @ d / np.linalg.norm(g) / np.linalg.norm(d)))
        assert fisher.gradient_newton_angle(H, g, 0.01) == pytest.approx(expected, abs=1e-8)
    # angle of the asymptotic expansion: theta ~ |P_perp H g| / (|g| mu)
    mu = 1e4
    Hg = H @ g
    perp = Hg - (Hg @ g) / (g @ g) * g
    assert np.radians(fisher.gradient_newton_angle(H, g, mu)) == pytest.approx(
        np.linalg.norm(perp) / np.linalg.norm(g) / mu, rel=1e-3)


def test_gradient_newton_angle_with_the_authors_rule():
    """ltmlp_gradComparison.m: mu in logspace(-4, -0.3, 20); NaN where the smallest eigenvalue of H + mu I is <= 1e-5;
    otherwise the angle of a direct solve."""
    np.testing.assert_allclose(fisher.AUTHORS_MUS, np.logspace(-4, -0.3, 20), rtol=0)
    rng = np.random.default_rng(2)
    Q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    H = Q @ np.diag([-0.05, 0.01, 0.3, 1.0, 2.0]) @ Q.T
    g = rng.standard_normal(5)
    ang = fisher.gradient_newton_angle(H, g, min_eigenvalue=1e-5)
    for mu, a in zip(fisher.AUTHORS_MUS, ang):
        if np.linalg.eigvalsh(H + mu * np.eye(5))[0] > 1e-5:
            d = np.linalg.solve(H + mu * np.eye(5), g)
            assert a == pytest.approx(np.degrees(np.arccos(g @ d / np.linalg.norm(g) / np.linalg.norm(d))), abs=1e-9)
        else:
            assert np.isnan(a)
    assert np.isnan(ang).sum() == np.sum(fisher.AUTHORS_MUS <= 0.05 + 1e-5)


def _gaussian_alpha_beta(mean, std, deg=120):
    """alpha = -E tanh'(u), beta = -E tanh(u) - alpha E u for u ~ N(mean, std^2) per unit."""
    z, w = np.polynomial.hermite_e.hermegauss(deg)
    w = w / w.sum()
    u = mean[:, None] + std[:, None] * z[None, :]
    alpha = -((1 - np.tanh(u) ** 2) @ w)
    beta = -(np.tanh(u) @ w) - alpha * mean
    return alpha, beta


def test_transformation_removes_activation_shortcut_coupling():
    """Vatanen et al.: with alpha = -E phi'(u), beta = -E phi(u) - alpha E u, the Fisher blocks between the hidden
    layer's outgoing weights A = W3,2 and the shortcut C = W3,1 (and the output bias d = b3) vanish in expectation
    for Gaussian inputs; without the transformation they are of order E tanh'(u) |B|."""
    n_in, H, n_out, N = 5, 8, 2, 40000
    rng = np.random.default_rng(7)
    B, b = rng.standard_normal((H, n_in)) / np.sqrt(n_in), 0.3 * rng.standard_normal(H)
    out = Linear(rng.standard_normal((n_out, n_in + H)) / np.sqrt(n_in + H))
    net = Network([Concat([Linear(B, b), Activation("tanh")]), out])
    X = np.random.default_rng(8).standard_normal((N, n_in))
    alpha, beta = _gaussian_alpha_beta(b, np.linalg.norm(B, axis=1))
    f = dataclasses.replace(hermite.activation("tanh"), alpha=alpha, beta=beta, gamma=np.full(H, 2.0))
    tnet = Network([Concat([Linear(B, b), Activation(f)]), out])

    G0 = fisher.gauss_newton(net, X)
    G1 = fisher.gauss_newton(tnet, X)
    lay = fisher.parameters(net).layout
    A, C, d = lay["W3,2"], lay["W3,1"], lay["b3"]
    # honest noise level of the transformed cross block if its expectation is 0: entry (i,j),(i,k) is the
    # sample mean of a_j x_k, so E ||G_AC||_F^2 = n_out sum_jk Var(a_j x_k) / N
    a = 2.0 * (np.tanh(X @ B.T + b) + alpha * (X @ B.T + b) + beta)
    var_ac = np.var(a[:, :, None] * X[:, None, :], axis=0).sum() * n_out / N
    var_ad = np.var(a, axis=0).sum() * n_out / N
    ac1 = np.linalg.norm(G1[A, C]) ** 2
    ad1 = np.linalg.norm(G1[A, d]) ** 2
    # consistent with zero expectation: the ratios are roughly chi^2_dof / dof, with 40 degrees of freedom
    # for A-C (P(> 3) ~ 1e-9) and 8 for A-d (P(> 4) ~ 1e-4); the untransformed A-C ratio is ~1e4
    assert ac1 < 3.0 * var_ac
    assert ad1 < 4.0 * var_ad
    # the untransformed cross block is far above that noise level
    ac0 = np.linalg.norm(G0[A, C]) ** 2
    assert ac0 > 100 * var_ac
    # scale-free comparison with the normalized block norms
    n0 = fisher.block_norms(G0, lay)
    n1 = fisher.block_norms(G1, lay)
    assert n1[("W3,1", "W3,2")] < 0.1 * n0[("W3,1", "W3,2")]
    assert n1[("W3,2", "b3")] < 0.1 * n0[("W3,2", "b3")]


def test_bad_inputs():
    net = _net("tanh-shortcut")
    X, Y = _data()
    with pytest.raises(ValueError, match="X has 2 features"):
        fisher.gauss_newton(net, X[:, :2])
    with pytest.raises(ValueError, match="empty batch"):
        fisher.hessian(net, X[:0], Y[:0])
    with pytest.raises(ValueError, match="Y must have shape"):
        fisher.hessian(net, X, Y[:, :1])
    with pytest.raises(ValueError, match="finite"):
        fisher.jacobian(net, np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="theta must have length"):
        fisher.with_theta(net, np.zeros(3))
    with pytest.raises(ValueError, match="not supported"):
        fisher.gauss_newton(Network([Dense(), Activation("tanh"), Linear(np.ones((1, 3)))]), X)
    with pytest.raises(ValueError, match="no Linear layer"):
        fisher.parameters(Network([Activation("tanh")]))
    with pytest.raises(ValueError, match="per-unit parameters for 4 units but receives 3"):
        fisher.parameters(Network([_act("tanh", 4, np.random.default_rng(0)), Linear(np.ones((1, 3)))]))
    with pytest.raises(ValueError, match="expects 5 input features but receives 7"):
        fisher.parameters(Network([Concat([Linear(np.ones((4, 3))), Activation("tanh")]), Linear(np.ones((1, 5)))]))
    shared = Linear(np.ones((3, 3)))
    with pytest.raises(ValueError, match="appears twice"):
        fisher.parameters(Network([shared, Activation("tanh"), shared]))
    with pytest.raises(ValueError, match="symmetric"):
        fisher.spectrum(np.array([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="square"):
        fisher.spectrum(np.ones((2, 3)))
    with pytest.raises(ValueError, match="zero vector"):
        fisher.gradient_newton_angle(np.eye(2), np.zeros(2), [1.0])
    with pytest.raises(ValueError, match="mus must be >= 0"):
        fisher.gradient_newton_angle(np.eye(2), np.ones(2), [-1.0])
    with pytest.raises(ValueError, match="singular"):
        fisher.gradient_newton_angle(np.diag([0.0, 1.0]), np.ones(2), [0.0])
    with pytest.raises(ValueError, match="min_eigenvalue"):
        fisher.gradient_newton_angle(np.eye(2), np.ones(2), [1.0], min_eigenvalue=float("nan"))
    with pytest.raises(ValueError, match="layout"):
        fisher.block_norms(np.eye(3), {"x": slice(0, 3)})
    with pytest.raises(ValueError, match="chunk"):
        fisher.gauss_newton(net, X, chunk=0)
    with pytest.raises(ValueError, match="kind"):
        fisher.parameters(net).indices("C")
    nosecond = hermite.activation(np.tanh, derivative=lambda x: 1 - np.tanh(x) ** 2)
    with pytest.raises(ValueError, match="second derivative"):
        fisher.hessian(Network([Concat([Linear(np.ones((2, 3))), Activation(nosecond)]), Linear(np.ones((1, 5)))]),
                       X, Y[:, :1])
