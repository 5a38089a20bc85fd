"""Tests of meanfield.fisher: Jacobian, Gauss-Newton, exact Hessian, diagnostics."""

import numpy as np
import pytest

from meanfield import fisher


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


NETS = {
    "tanh-shortcut": dict(widths=(3, 4, 2), phi="tanh", shortcut=True),
    "tanh-plain": dict(widths=(3, 4, 2), phi="tanh", shortcut=False),
    "sigmoid-deep": dict(widths=(3, 4, 3, 5, 2), phi=["sigmoid", "tanh"], shortcut=[True, False]),
    "softplus-deep-shortcuts": dict(widths=(3, 4, 3, 3, 2), phi="softplus", shortcut=True),
}


def _net(spec, seed=1, transformed=True):
    net = fisher.shortcut_mlp(**spec, seed=seed, sigma_b=0.5)
    if transformed:  # nontrivial alpha, beta, gamma exercise every term of f
        rng = np.random.default_rng(seed + 100)
        for k, blk in enumerate(net.blocks):
            net = net.with_transform(k, alpha=rng.uniform(-0.5, 0.5, blk.n_hidden),
                                     beta=rng.uniform(-0.3, 0.3, blk.n_hidden),
                                     gamma=rng.uniform(0.5, 1.5, blk.n_hidden))
    return net


@pytest.mark.parametrize("name", list(NETS))
def test_jacobian_gradient_against_finite_differences(name):
    net = _net(NETS[name])
    X, Y = _data()
    th = net.theta
    J = fisher.jacobian(net, X)
    assert J.shape == (20, 2, net.n_params)
    J_fd = _fd(lambda t: fisher.forward(net.with_theta(t), X), th, 1e-5)
    assert _rel(J, J_fd) < 1e-7
    g = fisher.gradient(net, X, Y)
    g_fd = _fd(lambda t: np.array(fisher.loss(net.with_theta(t), X, Y)), th, 1e-5)
    assert _rel(g, g_fd) < 1e-7
    # the gradient is J^T r / N
    r = fisher.forward(net, X) - Y
    np.testing.assert_allclose(g, np.einsum("nop,no->p", J, r) / 20, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(NETS))
def test_hessian_against_finite_differences(name):
    net = _net(NETS[name])
    X, Y = _data()
    H_raw = fisher.hessian(net, X, Y, symmetrize=False)
    # the analytic forward-over-reverse result is symmetric without being forced to be
    assert np.max(np.abs(H_raw - H_raw.T)) < 1e-13 * np.max(np.abs(H_raw))
    H = fisher.hessian(net, X, Y, chunk=7)  # several chunks, one ragged
    np.testing.assert_allclose(H, 0.5 * (H_raw + H_raw.T), rtol=1e-12, atol=1e-14)
    H_fd = _fd(lambda t: fisher.gradient(net.with_theta(t), X, Y), net.theta, 1e-5)
    assert _rel(H, H_fd) < 1e-7
    # and directly from the loss, a few entries by second differences
    L = lambda t: fisher.loss(net.with_theta(t), X, Y)
    h = 1e-4
    rng = np.random.default_rng(3)
    for i, j in rng.integers(0, net.n_params, size=(5, 2)):
        ei, ej = np.eye(net.n_params)[[i, j]]
        th = net.theta
        fd = (L(th + h * ei + h * ej) - L(th + h * ei - h * ej) - L(th - h * ei + h * ej)
              + L(th - h * ei - h * ej)) / (4 * h * h)
        assert abs(H[i, j] - fd) < 1e-6 * np.max(np.abs(H))


@pytest.mark.parametrize("name", list(NETS))
def test_gauss_newton(name):
    net = _net(NETS[name])
    X, _ = _data()
    G = fisher.gauss_newton(net, X)
    J_fd = _fd(lambda t: fisher.forward(net.with_theta(t), X), net.theta, 1e-5).reshape(-1, net.n_params)
    assert _rel(G, J_fd.T @ J_fd / 20) < 1e-7
    np.testing.assert_array_equal(G, G.T)
    assert np.linalg.eigvalsh(G).min() > -1e-12 * np.linalg.eigvalsh(G).max()
    np.testing.assert_allclose(fisher.gauss_newton(net, X, chunk=3), G, rtol=1e-12, atol=1e-15)
    # with zero residuals the Hessian is exactly the Gauss-Newton matrix
    H0 = fisher.hessian(net, X, fisher.forward(net, X))
    np.testing.assert_allclose(H0, G, rtol=1e-10, atol=1e-13)


def test_relu_hessian_almost_everywhere():
    net = fisher.shortcut_mlp((3, 4, 2), phi="relu", seed=4, sigma_b=0.5)
    X, Y = _data(seed=5)
    u = X @ net.unflatten()["B"].T + net.unflatten()["b"]
    keep = np.min(np.abs(u), axis=1) > 1e-3  # no kink within reach of the finite-difference step
    X, Y = X[keep], Y[keep]
    assert len(X) >= 15
    H = fisher.hessian(net, X, Y)
    H_fd = _fd(lambda t: fisher.gradient(net.with_theta(t), X, Y), net.theta, 1e-6)
    assert _rel(H, H_fd) < 1e-7


def test_layout_and_flatten_roundtrip():
    net = fisher.shortcut_mlp((3, 4, 2), seed=0, sigma_b=1.0)
    assert list(net.layout) == ["A", "B", "b", "C", "d"]
    assert net.n_params == 8 + 12 + 4 + 6 + 2
    P = net.unflatten()
    assert P["A"].shape == (2, 4) and P["C"].shape == (2, 3) and P["b"].shape == (4,)
    np.testing.assert_array_equal(net.flatten(P), net.theta)
    # documented order: A row-major first
    np.testing.assert_array_equal(net.theta[:8], P["A"].ravel())
    y = fisher.forward(net, np.ones((1, 3)))
    f = np.tanh(P["B"] @ np.ones(3) + P["b"])
    np.testing.assert_allclose(y[0], P["A"] @ f + P["C"] @ np.ones(3) + P["d"], rtol=1e-14)
    deep = fisher.shortcut_mlp((3, 4, 3, 5, 2), shortcut=[True, False])
    assert list(deep.layout) == ["A1", "B1", "b1", "C1", "d1", "A2", "B2", "b2", "d2"]


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


def _gaussian_alpha_beta(mean, std, deg=120):
    """alpha = -E tanh'(u), beta = -E tanh(u) - alpha E u for u ~ N(mean, std^2) per unit."""
    z, w = np.polynomial.hermite_e.hermegauss(deg)
    w = w / w.sum()
    u = mean[:, None] + std[:, None] * z[None, :]
    alpha = -((1 - np.tanh(u) ** 2) @ w)
    beta = -(np.tanh(u) @ w) - alpha * mean
    return alpha, beta


def test_transformation_removes_activation_shortcut_coupling():
    """Vatanen et al.: with alpha = -E phi'(u), beta = -E phi(u) - alpha E u, the Fisher blocks between the
    activations' weights A and the shortcut C (and the output bias d) vanish in expectation for Gaussian
    inputs; without the transformation they are of order E tanh'(u) |B|."""
    n_in, H, n_out, N = 5, 8, 2, 40000
    net = fisher.shortcut_mlp((n_in, H, n_out), phi="tanh", seed=7, sigma_b=0.3)
    X = np.random.default_rng(8).standard_normal((N, n_in))
    P = net.unflatten()
    alpha, beta = _gaussian_alpha_beta(P["b"], np.linalg.norm(P["B"], axis=1))
    tnet = net.with_transform(0, alpha=alpha, beta=beta, gamma=2.0)

    G0 = fisher.gauss_newton(net, X)
    G1 = fisher.gauss_newton(tnet, X)
    lay = net.layout
    # honest noise level of the transformed cross block if its expectation is 0: entry (i,j),(i,k) is the
    # sample mean of a_j x_k, so E ||G_AC||_F^2 = n_out sum_jk Var(a_j x_k) / N
    a = 2.0 * (np.tanh(X @ P["B"].T + P["b"]) + alpha * (X @ P["B"].T + P["b"]) + beta)
    var_ac = np.var(a[:, :, None] * X[:, None, :], axis=0).sum() * n_out / N
    var_ad = np.var(a, axis=0).sum() * n_out / N
    ac1 = np.linalg.norm(G1[lay["A"], lay["C"]]) ** 2
    ad1 = np.linalg.norm(G1[lay["A"], lay["d"]]) ** 2
    # consistent with zero expectation: the ratios are roughly chi^2_dof / dof, with 40 degrees of freedom
    # for A-C (P(> 3) ~ 1e-9) and 8 for A-d (P(> 4) ~ 1e-4); the untransformed A-C ratio is ~1.6e4
    assert ac1 < 3.0 * var_ac
    assert ad1 < 4.0 * var_ad
    # the untransformed cross block is far above that noise level
    ac0 = np.linalg.norm(G0[lay["A"], lay["C"]]) ** 2
    assert ac0 > 100 * var_ac
    # scale-free comparison with the normalized block norms
    n0 = fisher.block_norms(G0, lay)
    n1 = fisher.block_norms(G1, lay)
    assert n1[("A", "C")] < 0.1 * n0[("A", "C")]
    assert n1[("A", "d")] < 0.1 * n0[("A", "d")]


def test_bad_inputs():
    net = fisher.shortcut_mlp((3, 4, 2))
    X, Y = _data()
    with pytest.raises(ValueError, match="X has 2 features"):
        fisher.gauss_newton(net, X[:, :2])
    with pytest.raises(ValueError, match="empty batch"):
        fisher.hessian(net, X[:0], Y[:0])
    with pytest.raises(ValueError, match="Y must have shape"):
        fisher.hessian(net, X, Y[:, :1])
    with pytest.raises(ValueError, match="finite"):
        fisher.jacobian(net, np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="not a built-in"):
        fisher.shortcut_mlp((3, 4, 2), phi="nope")
    with pytest.raises(ValueError, match="odd length"):
        fisher.shortcut_mlp((3, 4))
    with pytest.raises(ValueError, match="widths"):
        fisher.shortcut_mlp((3, 0, 2))
    with pytest.raises(ValueError, match="theta must have length"):
        net.with_theta(np.zeros(3))
    with pytest.raises(ValueError, match="alpha"):
        net.with_transform(0, alpha=np.zeros(3))
    with pytest.raises(ValueError, match="block="):
        net.with_transform(1)
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
    with pytest.raises(ValueError, match="layout"):
        fisher.block_norms(np.eye(3), {"x": slice(0, 3)})
    with pytest.raises(ValueError, match="chunk"):
        fisher.gauss_newton(net, X, chunk=0)
