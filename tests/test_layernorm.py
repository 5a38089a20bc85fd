"""Tests of meanfield.layernorm: LN / LN-G / RMSNorm, their derivatives, the Hessian nonlinearity,
SSR / LSSR, the XOR example and the width-3 LN-Net construction (a meanfield.Network)."""

import itertools
import math

import numpy as np
import pytest
import scipy.linalg

import meanfield
from meanfield import layernorm as L
from meanfield import ln_net


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------------
# the maps
# ---------------------------------------------------------------------------------------------------
def test_layer_norm_matches_definition_on_stacks():
    x = rng().standard_normal((4, 5, 7)) * 3 + 1
    y = L.layer_norm(x)
    mu = x.mean(-1, keepdims=True)
    sd = np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True))
    np.testing.assert_allclose(y, (x - mu) / sd, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-13)
    np.testing.assert_allclose((y**2).mean(-1), 1, rtol=1e-13)
    ye = L.layer_norm(x, eps=0.5)
    np.testing.assert_allclose(ye, (x - mu) / np.sqrt(sd**2 + 0.5), rtol=1e-13)


def test_ln_d3_lies_on_circle_and_d2_is_plus_minus_one():
    y = L.layer_norm(rng(1).standard_normal((200, 3)))
    np.testing.assert_allclose(y.sum(-1), 0, atol=1e-13)
    np.testing.assert_allclose((y**2).sum(-1), 3, rtol=1e-13)
    y2 = L.layer_norm(rng(2).standard_normal((100, 2)))
    ok = np.all(np.isclose(y2, [1, -1]), axis=-1) | np.all(np.isclose(y2, [-1, 1]), axis=-1)
    assert ok.all()


def test_group_ln_one_group_is_ln_and_groups_are_independent():
    x = rng(3).standard_normal((6, 12))
    np.testing.assert_array_equal(L.layer_norm(x, groups=1), L.layer_norm(x))
    y = L.layer_norm(x, groups=3)
    for k in range(3):
        np.testing.assert_allclose(y[:, 4 * k:4 * k + 4], L.layer_norm(x[:, 4 * k:4 * k + 4]), rtol=1e-13)
    yr = L.rms_norm(x, groups=4)
    for k in range(4):
        np.testing.assert_allclose(yr[:, 3 * k:3 * k + 3], L.rms_norm(x[:, 3 * k:3 * k + 3]), rtol=1e-13)


def test_center_scale_rms():
    x = rng(4).standard_normal((5, 9)) + 2
    np.testing.assert_allclose(L.center(x), x - x.mean(-1, keepdims=True), atol=1e-14)
    np.testing.assert_allclose(L.scale(L.center(x)), L.layer_norm(x), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(L.rms_norm(x), x / np.sqrt((x**2).mean(-1, keepdims=True)), rtol=1e-13)
    np.testing.assert_array_equal(L.scale(x), L.rms_norm(x))
    np.testing.assert_allclose(L.rms_norm(np.array([[-2.0], [3.0]])), [[-1.0], [1.0]])


# ---------------------------------------------------------------------------------------------------
# derivatives against finite differences
# ---------------------------------------------------------------------------------------------------
def fd_jacobian(f, x, h):
    d = x.size
    cols = [(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(d)]
    return np.stack(cols, axis=-1)


@pytest.mark.parametrize("d,groups", [(3, 1), (6, 1), (8, 2), (9, 3)])
def test_layer_norm_jacobian_and_hessian_vs_fd(d, groups):
    x = rng(d).standard_normal(d) * 2 + 0.5
    f = lambda v: L.layer_norm(v, groups=groups)
    J = L.layer_norm_jacobian(x, groups=groups)
    np.testing.assert_allclose(J, fd_jacobian(f, x, 1e-6), rtol=1e-6, atol=1e-7)
    H = L.layer_norm_hessian(x, groups=groups)
    Hfd = fd_jacobian(lambda v: L.layer_norm_jacobian(v, groups=groups), x, 1e-6)
    np.testing.assert_allclose(H, Hfd, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(H, np.swapaxes(H, -1, -2), atol=1e-14)   # symmetric in (j, k)


@pytest.mark.parametrize("d,groups", [(1, 1), (4, 1), (6, 2)])
def test_rms_norm_jacobian_and_hessian_vs_fd(d, groups):
    x = rng(10 + d).standard_normal(d) + 0.3
    f = lambda v: L.rms_norm(v, groups=groups)
    np.testing.assert_allclose(L.rms_norm_jacobian(x, groups=groups), fd_jacobian(f, x, 1e-6),
                               rtol=1e-6, atol=1e-7)
    Hfd = fd_jacobian(lambda v: L.rms_norm_jacobian(v, groups=groups), x, 1e-6)
    np.testing.assert_allclose(L.rms_norm_hessian(x, groups=groups), Hfd, rtol=1e-6, atol=1e-7)


def test_derivatives_on_stacks():
    x = rng(5).standard_normal((2, 3, 6))
    J = L.layer_norm_jacobian(x, groups=2)
    H = L.layer_norm_hessian(x)
    assert J.shape == (2, 3, 6, 6) and H.shape == (2, 3, 6, 6, 6)
    np.testing.assert_allclose(H[1, 2], L.layer_norm_hessian(x[1, 2]), rtol=1e-14)


@pytest.mark.parametrize("d", [3, 5, 10])
def test_ln_jacobian_singular_values(d):
    x = rng(d).standard_normal(d) * 1.7 - 3
    sigma = x.std()
    sv = np.sort(np.linalg.svd(L.layer_norm_jacobian(x), compute_uv=False))
    np.testing.assert_allclose(sv[:2], 0, atol=1e-12)
    np.testing.assert_allclose(sv[2:], 1 / sigma, rtol=1e-12)
    svr = np.sort(np.linalg.svd(L.rms_norm_jacobian(x), compute_uv=False))
    np.testing.assert_allclose(svr[0], 0, atol=1e-12)
    np.testing.assert_allclose(svr[1:], 1 / np.sqrt(np.mean(x**2)), rtol=1e-12)


def test_ln_hessian_vanishes_for_d2():
    np.testing.assert_allclose(L.layer_norm_hessian(np.array([0.3, -1.2])), 0, atol=1e-14)
    assert L.nonlinearity(np.array([0.3, -1.2])) == 0.0


# ---------------------------------------------------------------------------------------------------
# the nonlinearity measure
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d,groups,kind", [(3, 1, "ln"), (7, 1, "ln"), (12, 3, "ln"), (12, 1, "rms"),
                                           (8, 4, "rms"), (5, 5, "rms")])
def test_nonlinearity_closed_form_equals_hessian_norm(d, groups, kind):
    x = rng(d + groups).standard_normal((3, d)) * 2 + 1
    hess = L.layer_norm_hessian(x, groups=groups) if kind == "ln" else L.rms_norm_hessian(x, groups=groups)
    np.testing.assert_allclose(L.nonlinearity(x, groups=groups, kind=kind), (hess**2).sum((-3, -2, -1)),
                               rtol=1e-12)


def test_nonlinearity_ln_formula():
    x = rng(6).standard_normal(9) * 0.7
    d, s = 9, x.std()
    assert L.nonlinearity(x) == pytest.approx(3 * (d - 2) / (d * s**4), rel=1e-13)
    assert isinstance(L.nonlinearity(x), float)
    # scale invariance of LN: H(x c) = H(x) / c^4, and shift invariance
    assert L.nonlinearity(3 * x + 5) == pytest.approx(L.nonlinearity(x) / 81, rel=1e-12)


@pytest.mark.parametrize("groups,kind", [(1, "ln"), (2, "ln"), (1, "rms")])
def test_nonlinearity_vs_finite_differences(groups, kind):
    x = rng(7).standard_normal(8) + 0.2
    f = (lambda v: L.layer_norm(v, groups=groups)) if kind == "ln" else (lambda v: L.rms_norm(v, groups=groups))
    exact = L.nonlinearity(x, groups=groups, kind=kind)
    assert L.nonlinearity_fd(f, x) == pytest.approx(exact, rel=1e-5)
    assert L.nonlinearity_fd(f, x, vectorized=True) == pytest.approx(exact, rel=1e-5)


def test_nonlinearity_fd_elementwise_activation_and_affine():
    x = rng(8).standard_normal(6)
    t = np.tanh(x)
    tanh2 = -2 * t * (1 - t**2)
    assert L.nonlinearity_fd(np.tanh, x, vectorized=True) == pytest.approx(np.sum(tanh2**2), rel=1e-5)
    A = rng(9).standard_normal((4, 6))
    assert L.nonlinearity_fd(lambda v: A @ v + 1, x) < 1e-6
    # scalar-valued function: f = sum x^2 has Hessian 2 I, H = 4 d
    assert L.nonlinearity_fd(lambda v: np.sum(v**2), x, h=1e-3) == pytest.approx(24, rel=1e-6)


def test_expected_nonlinearity_values_and_divergence():
    assert L.expected_nonlinearity(16) == pytest.approx(3 * 16 * 14 / (13 * 11))
    assert L.expected_nonlinearity(24, groups=2) == pytest.approx(2 * 3 * 12 * 10 / (9 * 7))
    assert L.expected_nonlinearity(16, kind="rms") == pytest.approx(3 * 16 * 15 / (14 * 12))
    for d in (3, 4, 5):
        assert L.expected_nonlinearity(d) == math.inf
        assert L.expected_nonlinearity(4 * d, groups=4) == math.inf
    assert L.expected_nonlinearity(2) == 0.0 and L.expected_nonlinearity(8, groups=4) == 0.0
    for d in (2, 3, 4):
        assert L.expected_nonlinearity(d, kind="rms") == math.inf
    assert L.expected_nonlinearity(1, kind="rms") == 0.0
    assert L.expected_nonlinearity(6) < math.inf


@pytest.mark.parametrize("d,groups,kind", [(16, 1, "ln"), (24, 2, "ln"), (16, 1, "rms")])
def test_expected_nonlinearity_monte_carlo(d, groups, kind):
    x = rng(11).standard_normal((40000, d))
    h = L.nonlinearity(x, groups=groups, kind=kind)
    mean, se = h.mean(), h.std() / np.sqrt(h.size)
    assert abs(mean - L.expected_nonlinearity(d, groups, kind)) < 5 * se


@pytest.mark.parametrize("m,kind", [(3, "ln"), (4, "ln"), (7, "ln"), (3, "rms"), (6, "rms")])
def test_nonlinearity_sf_against_monte_carlo(m, kind):
    # exact law P(H > t) = F_chi2(sqrt(c / t)) against the closed-form H on Gaussian samples
    x = rng(50 + m).standard_normal((100000, m))
    h = L.nonlinearity(x, kind=kind)
    for t in np.quantile(h, [0.1, 0.5, 0.9, 0.99]):
        p = L.nonlinearity_sf(t, m, kind)
        assert abs(p - np.mean(h > t)) < 5 * math.sqrt(p * (1 - p) / h.size) + 1e-12
    np.testing.assert_allclose(L.nonlinearity_sf([0.0, np.inf], m, kind), [1.0, 0.0])


@pytest.mark.parametrize("m,kind", [(3, "ln"), (4, "ln"), (5, "ln"), (8, "ln"), (4, "rms")])
def test_nonlinearity_tail_index_is_the_decay_of_the_exact_tail(m, kind):
    alpha = L.nonlinearity_tail_index(m, kind)
    assert alpha == ((m - 1) / 4 if kind == "ln" else m / 4)
    t = np.array([1e8, 1e10])
    slope = np.diff(np.log(L.nonlinearity_sf(t, m, kind))) / np.diff(np.log(t))
    assert slope[0] == pytest.approx(-alpha, rel=1e-3)
    # E H is finite iff alpha > 1, as in expected_nonlinearity (one group)
    assert (alpha > 1) == (L.expected_nonlinearity(m, kind=kind) < math.inf)


def test_best_group_size_has_infinite_expected_measure():
    # the "best" groups by the equal-variance ratio are groups of 3 to 5 features, whose E H is infinite
    for d in (12, 16, 20, 24, 32, 48, 64):
        g = L.best_groups(d)
        assert d // g in (3, 4, 5)
        assert L.expected_nonlinearity(d, groups=g) == math.inf
        assert L.expected_nonlinearity(d) < math.inf


def test_group_amplification_matches_hessians():
    for d, g in [(12, 1), (12, 2), (12, 3), (12, 6), (16, 4), (24, 3), (30, 5)]:
        x = rng(d * g).standard_normal((d // g, g)).T.ravel()
        x = L.layer_norm(x, groups=g)           # equal group means (0) and variances (1)
        ratio = L.nonlinearity(x, groups=g) / L.nonlinearity(x)
        assert ratio == pytest.approx(L.group_amplification(d, g), rel=1e-12)
        assert ratio == pytest.approx(g * (d - 2 * g) / (d - 2), rel=1e-12)
    assert L.group_amplification(10, 1) == 1.0
    # amplification > 1 iff d > 2 g + 2 (g > 1); = 1 at d = 2 g + 2
    assert L.group_amplification(8, 2) > 1 and L.group_amplification(6, 2) == pytest.approx(1.0)
    assert L.group_amplification(8, 4) == 0.0


def test_best_groups():
    assert L.best_groups(12) == 3
    assert L.best_groups(64) == 16
    assert L.best_groups(7) == 1                # prime: only g = 1 has group size >= 2
    for d in (12, 18, 32, 40):
        gs = [g for g in range(1, d // 2 + 1) if d % g == 0]
        assert L.group_amplification(d, L.best_groups(d)) == max(L.group_amplification(d, g) for g in gs)


# ---------------------------------------------------------------------------------------------------
# SSR / LSSR
# ---------------------------------------------------------------------------------------------------
def two_classes(seed=0, p=4):
    r = rng(seed)
    X1 = r.standard_normal((30, p)) + 0.7
    X2 = r.standard_normal((40, p)) @ r.standard_normal((p, p)) * 0.5
    return X1, X2


def test_ssr_definition_and_range():
    X1, X2 = two_classes()
    allx = np.concatenate([X1, X2])
    within = ((X1 - X1.mean(0)) ** 2).sum() + ((X2 - X2.mean(0)) ** 2).sum()
    total = ((allx - allx.mean(0)) ** 2).sum()
    assert L.ssr(X1, X2) == pytest.approx(within / total, rel=1e-13)
    assert 0 <= L.lssr(X1, X2) <= L.ssr(X1, X2) <= 1


def test_lssr_is_a_lower_bound_for_linear_maps_and_attained():
    X1, X2 = two_classes(1)
    lo = L.lssr(X1, X2)
    r = rng(2)
    for _ in range(200):
        w = r.standard_normal(4)
        assert L.ssr(X1 @ w, X2 @ w) >= lo - 1e-12
        A, b = r.standard_normal((r.integers(1, 6), 4)), r.standard_normal(1)
        assert L.ssr(X1 @ A.T + b, X2 @ A.T + b) >= lo - 1e-12
    # attained by the generalized eigenvector; equals 1 - (n1 n2 / n) dm^T S_T^-1 dm
    allx = np.concatenate([X1, X2])
    st = (allx - allx.mean(0)).T @ (allx - allx.mean(0))
    sw = (X1 - X1.mean(0)).T @ (X1 - X1.mean(0)) + (X2 - X2.mean(0)).T @ (X2 - X2.mean(0))
    _, vecs = scipy.linalg.eigh(sw, st)
    assert L.ssr(X1 @ vecs[:, 0], X2 @ vecs[:, 0]) == pytest.approx(lo, rel=1e-10)
    dm = X1.mean(0) - X2.mean(0)
    assert lo == pytest.approx(1 - 30 * 40 / 70 * dm @ np.linalg.solve(st, dm), rel=1e-10)
    # invariant under invertible affine maps
    M = r.standard_normal((4, 4)) + 3 * np.eye(4)
    assert L.lssr(X1 @ M.T + 1, X2 @ M.T + 1) == pytest.approx(lo, rel=1e-9)


def test_lssr_equals_ssr_in_one_dimension_and_rank_deficient():
    r = rng(3)
    a, b = r.standard_normal(20), r.standard_normal(15) + 1
    assert L.lssr(a, b) == pytest.approx(L.ssr(a, b), rel=1e-13)
    # data in a 2-D subspace of R^5: LSSR computed on the range of S_T
    B = r.standard_normal((2, 5))
    X1, X2 = r.standard_normal((10, 2)) @ B, (r.standard_normal((12, 2)) + 1) @ B
    assert L.lssr(X1, X2) == pytest.approx(L.lssr(X1 @ np.linalg.pinv(B), X2 @ np.linalg.pinv(B)), rel=1e-8)


def test_ssr_of_a_hand_computed_xor_map():
    # X1 = {(1,1), (-1,-1)}, X2 = {(1,-1), (-1,1)}: S_W = S_T, so SSR = LSSR = 1; the affine map
    # A = [[1,1],[0,0],[-1,-1]], b = (0,1,0) then LN sends X1 to (5,2,-7)/sqrt(26), (-7,2,5)/sqrt(26) (times
    # sqrt(3)) and both points of X2 to (-1,2,-1)/sqrt(2); SSR after = 0.779501768 (computed by hand in the notes)
    X1 = np.array([[1.0, 1.0], [-1.0, -1.0]])
    X2 = np.array([[1.0, -1.0], [-1.0, 1.0]])
    assert L.ssr(X1, X2) == pytest.approx(1.0) and L.lssr(X1, X2) == pytest.approx(1.0)
    A, b = np.array([[1.0, 1.0], [0.0, 0.0], [-1.0, -1.0]]), np.array([0.0, 1.0, 0.0])
    Y1, Y2 = L.layer_norm(X1 @ A.T + b), L.layer_norm(X2 @ A.T + b)
    np.testing.assert_allclose(Y1, math.sqrt(3) * np.array([[5, 2, -7], [-7, 2, 5]]) / math.sqrt(78), atol=1e-14)
    np.testing.assert_allclose(Y2, np.tile([-1, 2, -1], (2, 1)) / math.sqrt(2), atol=1e-14)
    assert L.ssr(Y1, Y2) == pytest.approx(0.779501768, abs=1e-9)


def test_xor_example_ln_beats_every_affine_map():
    for seed in (0, 1, 2):
        ex = L.xor_example(seed)
        assert ex.W.shape == (3, 2) and ex.b.shape == (3,)
        assert ex.lssr_input > 0.99
        assert ex.ssr_output < ex.lssr_input - 0.2
        np.testing.assert_allclose(ex.Y1, L.layer_norm(ex.X1 @ ex.W.T + ex.b))
        np.testing.assert_allclose(ex.Y1.sum(-1), 0, atol=1e-12)
        # no affine map of the inputs reaches it
        r = rng(seed)
        for _ in range(20):
            A = r.standard_normal((3, 2))
            assert L.ssr(ex.X1 @ A.T, ex.X2 @ A.T) >= ex.lssr_input - 1e-12 > ex.ssr_output
    np.testing.assert_array_equal(L.xor_example(5).X1, L.xor_example(5).X1)
    assert L.xor_example(0, noise=0.0).ssr_output == pytest.approx(0.6785, abs=1e-3)


# ---------------------------------------------------------------------------------------------------
# LN-Net
# ---------------------------------------------------------------------------------------------------
def check_net(net, X, y):
    # the LN-Net is a Network: blocks Linear(W, b) -> LayerNorm, then the readout block Linear(r) (or Linear(r, c))
    np.testing.assert_array_equal(L.predict(net, X), y)
    assert all(w == 3 for w in net.widths[:-1])
    m = len(np.unique(X, axis=0))
    readout = net.meta["info"]["readout"]
    assert net.depth - 1 <= L.construction_depth(m, readout) + net.meta["info"]["extra_warps"]
    assert L.construction_depth(m, readout) == max(1, m - (1 if readout == "linear" else 2))
    if readout == "linear":
        np.testing.assert_array_equal(net.blocks[-1].layers[0].b, 0)
    for block in net.blocks[:-1]:
        W, b = block.layers[0].W, block.layers[0].b
        assert W.shape[0] == 3 and b.shape == (3,)


@pytest.mark.parametrize("readout", ["linear", "affine"])
def test_ln_net_fits_every_labelling_small_m(readout):
    for m in range(1, 7):
        X = rng(20 + m).standard_normal((m, 2))
        for bits in itertools.product([0, 1], repeat=m):
            y = np.array(bits)
            check_net(L.ln_net_classifier(X, y, readout=readout), X, y)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ln_net_fits_random_labellings_up_to_20(seed):
    r = rng(100 + seed)
    for m in (8, 12, 16, 20):
        X = r.standard_normal((m, 3))
        for _ in range(3):
            y = r.integers(0, 2, m)
            check_net(L.ln_net_classifier(X, y), X, y)
        y = np.arange(m) % 2                     # alternating along the projection is not special
        check_net(L.ln_net_classifier(X, y), X, y)
        check_net(L.ln_net_classifier(X, y, readout="affine"), X, y)


def test_ln_net_hidden_states_on_circle_and_labels_kept():
    X = rng(30).standard_normal((10, 4))
    y = np.array(list("abbabaabba"))
    net = L.ln_net_classifier(X, y)
    np.testing.assert_array_equal(L.predict(net, X), y)
    assert net.meta["classes"] == ["a", "b"]
    h = meanfield.propagate(meanfield.Network(net.blocks[:-1]), X=X).info["features"]   # the hidden state
    np.testing.assert_allclose(h.sum(-1), 0, atol=1e-12)
    np.testing.assert_allclose((h**2).sum(-1), 3, rtol=1e-12)
    # new inputs (e.g. a grid for decision regions) never hit a zero-variance layer
    grid = rng(31).standard_normal((500, 4)) * 5
    assert set(L.predict(net, grid)) <= {"a", "b"}


def test_ln_net_special_cases():
    X = rng(32).standard_normal((5, 2))
    net = L.ln_net_classifier(X, np.full(5, -1))
    np.testing.assert_array_equal(L.predict(net, X), -1)
    Xd = np.concatenate([X, X[:2]])
    yd = np.array([1, -1, 1, 1, -1, 1, -1])
    check_net(L.ln_net_classifier(Xd, yd), Xd, yd)
    x1 = np.linspace(0, 1, 9)[:, None]           # one input feature
    y1 = np.array([0, 1, 1, 0, 1, 0, 0, 1, 0])
    check_net(L.ln_net_classifier(x1, y1), x1, y1)


def test_ln_net_truncated_depth():
    X = rng(33).standard_normal((12, 2))
    y = np.arange(12) % 2
    full = L.ln_net_classifier(X, y)
    short = L.ln_net_classifier(X, y, max_layers=3)
    assert short.depth - 1 == 3 and not short.meta["info"]["complete"]
    assert short.meta["info"]["depth_needed"] == full.depth - 1 > 3
    assert np.mean(L.predict(short, X) == y) < 1


# The combinatorics of the construction, independently of its geometry: the labels of the groups along the
# arc, as a string. A fold decides the first undecided point (it joins the decided group of its label), and
# the two decided groups swap places: (l0, l1, l2, rest) -> (l1, l0, rest); before a second label exists,
# the first two groups merge: (l0, l0, rest) -> (l0, rest). The readout finishes once the string changes
# label at most once (linear) or twice (affine). Depth = 1 (projection) + folds.
def string_model_depth(labels, max_switches):
    lab = list(labels)

    def switches(v):
        return sum(a != b for a, b in zip(v, v[1:]))

    folds = 0
    while switches(lab) > max_switches:
        lab = lab[:1] + lab[2:] if lab[0] == lab[1] else [lab[1], lab[0]] + lab[3:]
        folds += 1
    return 1 + folds


def failing_set(m, depth, max_switches, reverse=False):
    """Labellings (along the rows) that need more than ``depth`` layers in the string model."""
    return {b for b in itertools.product((0, 1), repeat=m)
            if string_model_depth(b[::-1] if reverse else b, max_switches) > depth}


@pytest.mark.parametrize("readout,max_switches", [("linear", 1), ("affine", 2)])
def test_shattering_matches_the_string_model_and_fails_2_to_the_L(readout, max_switches):
    r = rng(40)
    for depth in (1, 2, 3):
        bound = L.construction_vc_bound(depth, readout)
        assert bound == depth + max_switches
        for m in (bound, bound + 1):
            line = np.linspace(-1, 2, m)
            sets = {"1-D": line[:, None],                          # projected on e_1: ascending order
                    "line in R^2": line[:, None] * [1.0, -0.5],    # a random projection: either order
                    "random": r.standard_normal((m, 2))}           # general position
            for kind, X in sets.items():
                res = L.shattering(X, depth, readout)
                assert res.m == m and res.n_labellings == 2**m
                if m == bound:
                    assert res.shattered and res.n_failed == 0
                    continue
                # one point more: exactly 2^depth labellings fail (2^(m-2) linear, 2^(m-3) affine)
                assert res.n_failed == 2**depth and not res.shattered
                fwd, rev = failing_set(m, depth, max_switches), failing_set(m, depth, max_switches, True)
                if kind == "1-D":
                    assert set(res.failed) == fwd
                elif kind == "line in R^2":
                    assert set(res.failed) in (fwd, rev)


def test_string_model_counts_of_the_worst_labellings():
    # the construction's depth is at most m - 1 (linear) / m - 2 (affine), attained by 2^(m-2) / 2^(m-3) labellings
    for m in range(4, 11):
        for readout, s in (("linear", 1), ("affine", 2)):
            depths = [string_model_depth(b, s) for b in itertools.product((0, 1), repeat=m)]
            assert max(depths) == L.construction_depth(m, readout)
            assert depths.count(max(depths)) == 2 ** (m - 1 - s)


def test_ln_net_depth_equals_the_string_model_on_random_labellings():
    r = rng(41)
    for m in (6, 9, 13):
        X = np.sort(r.standard_normal(m))[:, None]
        for readout, s in (("linear", 1), ("affine", 2)):
            for _ in range(4):
                y = r.integers(0, 2, m)
                net = L.ln_net_classifier(X, y, readout=readout)
                depth = net.meta["info"]["depth_needed"] - net.meta["info"]["extra_warps"]
                assert depth in (string_model_depth(tuple(y), s), string_model_depth(tuple(y[::-1]), s))


def test_identity_padding_keeps_ln_outputs():
    # a block Linear(I, 0) -> LayerNorm is the identity on LN outputs: a shallower LN-Net pads to any depth
    y = L.layer_norm(rng(42).standard_normal((6, 3)))
    pad = meanfield.Network([meanfield.Block((meanfield.Linear(np.eye(3)), meanfield.LayerNorm()))])
    np.testing.assert_allclose(meanfield.propagate(pad, X=y).info["features"], y, atol=1e-14)


def test_random_fit_rate_is_a_rate_not_a_vc_bound():
    res = L.random_fit_rate(depth=3, m_values=[2, 4, 5, 10], trials=40, seed=0)
    assert res.fraction_fitted[:2] == [1.0, 1.0]          # m <= depth + 1: always fitted
    # m = depth + 2: a random labelling fails with probability 2^depth / 2^m = 1/4
    assert abs(res.fraction_fitted[2] - 0.75) <= 3 * math.sqrt(0.75 * 0.25 / 40) + 1e-12
    assert res.fraction_fitted[3] < 0.5
    assert res.stderr[0] == 0.0 and len(res.stderr) == 4
    aff = L.random_fit_rate(depth=3, m_values=[5, 6], trials=40, seed=1, readout="affine")
    assert aff.fraction_fitted[0] == 1.0
    assert abs(aff.fraction_fitted[1] - 0.875) <= 3 * math.sqrt(0.875 * 0.125 / 40) + 1e-12
    assert not hasattr(L, "vc_probe")


# ---------------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call,match", [
    (lambda: L.layer_norm(np.ones((2, 6)) + np.arange(6), groups=4), "groups"),
    (lambda: L.layer_norm(np.arange(6.0), groups=6), "groups"),
    (lambda: L.layer_norm(np.arange(6.0), groups=0), "groups"),
    (lambda: L.layer_norm(np.arange(6.0), groups=2.0), "groups"),
    (lambda: L.layer_norm(np.array([[1.0]])), "d"),
    (lambda: L.layer_norm(np.ones(4)), "zero variance"),
    (lambda: L.layer_norm(np.full(3, 0.1)), "zero variance"),
    (lambda: L.layer_norm(np.array([1.0, 1.0, 2.0, 3.0]), groups=2), "zero variance"),
    (lambda: L.layer_norm(np.array([1.0, np.nan])), "x"),
    (lambda: L.layer_norm(np.array([1.0, 2.0]), eps=-1), "eps"),
    (lambda: L.layer_norm(3.0), "x"),
    (lambda: L.rms_norm(np.zeros(3)), "zero mean square"),
    (lambda: L.layer_norm_jacobian(np.ones(3)), "zero variance"),
    (lambda: L.layer_norm_hessian(np.arange(5.0), groups=2), "groups"),
    (lambda: L.nonlinearity(np.arange(4.0), kind="bn"), "kind"),
    (lambda: L.expected_nonlinearity(1), "d"),
    (lambda: L.expected_nonlinearity(10, groups=3), "groups"),
    (lambda: L.nonlinearity_fd(np.tanh, np.ones(3), h=-1), "h"),
    (lambda: L.nonlinearity_fd(np.tanh, np.ones((2, 3))), "x"),
    (lambda: L.group_amplification(2, 1), "d"),
    (lambda: L.group_amplification(12, 5), "groups"),
    (lambda: L.best_groups(2), "d"),
    (lambda: L.ssr(np.zeros((0, 2)), np.ones((3, 2))), "X1"),
    (lambda: L.lssr(np.ones((3, 2)), np.zeros((0, 2))), "X2"),
    (lambda: L.ssr(np.ones((3, 2)), np.ones((3, 3))), "features"),
    (lambda: L.ssr(np.ones((3, 2)), np.ones((2, 2))), "total scatter"),
    (lambda: L.ln_net_classifier(np.eye(3), [0, 1, 2]), "binary"),
    (lambda: L.ln_net_classifier(np.eye(3), [0, 1]), "y"),
    (lambda: L.ln_net_classifier(np.array([[0.0], [0.0]]), [0, 1]), "repeated"),
    (lambda: L.ln_net_classifier(np.eye(3), [0, 1, 0], max_layers=0), "max_layers"),
    (lambda: L.random_fit_rate(0, [3]), "depth"),
    (lambda: L.random_fit_rate(3, []), "m_values"),
    (lambda: L.random_fit_rate(3, [3], readout="chord"), "readout"),
    (lambda: L.ln_net_classifier(np.eye(3), [0, 1, 0], readout="relu"), "readout"),
    (lambda: L.shattering(np.eye(3), 0), "depth"),
    (lambda: L.shattering(np.zeros((15, 1)) + np.arange(15)[:, None], 3), "m=15"),
    (lambda: L.shattering(np.array([[0.0], [1.0], [0.0]]), 2), "distinct"),
    (lambda: L.construction_depth(0), "m"),
    (lambda: L.construction_vc_bound(2, readout="x"), "readout"),
    (lambda: L.nonlinearity_sf(1.0, 2), "group_size"),
    (lambda: L.nonlinearity_sf(-1.0, 4), "t"),
    (lambda: L.nonlinearity_sf(1.0, 4, kind="bn"), "kind"),
    (lambda: L.nonlinearity_tail_index(1, kind="rms"), "group_size"),
    (lambda: L.xor_example(0, noise=1.0), "noise"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_ln_net_tight_clusters_use_extra_warp_layers():
    for seed in (0, 1):
        r = rng(seed)
        X = np.repeat(r.standard_normal((4, 2)) * 5, 5, axis=0) + 1e-3 * r.standard_normal((20, 2))
        y = r.integers(0, 2, 20)
        net = L.ln_net_classifier(X, y)
        check_net(net, X, y)
        assert net.meta["info"]["extra_warps"] >= 1 and net.meta["info"]["complete"]


def test_existence_warp_of_the_proof():
    # decided gap |F - N| = 0.5 much larger than the gap 0.01 between the first two undecided points
    s = np.array([0.0, 0.5, 0.6, 0.61, 0.9])
    mu, lam, sg = ln_net._existence_warp(s, 2)
    p = ln_net._warp(s, mu, lam, sg)
    assert abs(p[1] - p[0]) <= 0.25 * abs(p[3] - p[2])
    assert np.all(np.diff(p) > 0)                # still a monotone warp


def test_ln_net_classifier_is_a_network_both_ways():
    import json

    rng = np.random.default_rng(3)
    for m in (5, 12, 20):
        X = rng.standard_normal((m, 2))
        y = rng.integers(0, 2, m)
        net = L.ln_net_classifier(X, y)
        assert isinstance(net, meanfield.Network)
        assert all(w == 3 for w in net.widths[:-1]) and net.widths[-1] == 1
        assert np.array_equal(L.predict(net, X), y)
        back = meanfield.Network.from_dict(json.loads(json.dumps(net.to_dict())))
        assert back == net and np.array_equal(L.predict(back, X), y)
        traj = meanfield.propagate(net, X=X)
        assert traj.gram.shape == (net.depth + 1, m, m)


def test_predict_rejects_a_random_network():
    with pytest.raises(ValueError, match="net"):
        L.predict(meanfield.mlp(2, "relu"), np.eye(3))
