"""Tests of meanfield.weightnorm (Salimans and Kingma 2016)."""

import numpy as np
import pytest

from meanfield import weightnorm


def _fd_grad(fun, x, h=1e-6):
    """Central-difference gradient of a scalar function of an array."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        g[idx] = (fun(x + e) - fun(x - e)) / (2 * h)
    return g


def test_weight_norm_equals_g():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((4, 6))
    g = np.array([0.5, 1.0, 2.0, -3.0])
    w = weightnorm.weight(v, g)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), np.abs(g), rtol=1e-14)
    # same direction as v (up to the sign of g)
    cos = np.sum(w * v, axis=1) / np.linalg.norm(w, axis=1) / np.linalg.norm(v, axis=1)
    np.testing.assert_allclose(cos, np.sign(g), rtol=1e-14)
    # invariant to rescaling v
    np.testing.assert_allclose(weightnorm.weight(7.0 * v, g), w, rtol=1e-14)
    # a single vector with a scalar gain
    np.testing.assert_allclose(weightnorm.weight(v[0], 2.0), 2.0 * v[0] / np.linalg.norm(v[0]), rtol=1e-14)
    np.testing.assert_allclose(weightnorm.weight(v, 2.0), weightnorm.weight(v, np.full(4, 2.0)))


def test_grads_projection_and_finite_differences():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((3, 5))
    g = np.array([1.3, -0.7, 2.0])
    X = rng.standard_normal((10, 5))
    T = rng.standard_normal((10, 3))

    def loss_w(w):  # a nonlinear scalar loss of the effective weights
        return 0.5 * np.sum(np.tanh(X @ w.T) - T) ** 2 / 10 + np.sum(np.sin(X @ w.T))

    w = weightnorm.weight(v, g)
    grad_w = _fd_grad(loss_w, w)
    grad_g, grad_v = weightnorm.grads(v, g, grad_w)
    # grad_v is orthogonal to v, row by row
    assert np.max(np.abs(np.sum(grad_v * v, axis=1))) < 1e-12 * np.max(np.abs(grad_v))
    # against finite differences of the loss as a function of (v, g)
    fd_g = _fd_grad(lambda gg: loss_w(weightnorm.weight(v, gg)), g)
    fd_v = _fd_grad(lambda vv: loss_w(weightnorm.weight(vv, g)), v)
    np.testing.assert_allclose(grad_g, fd_g, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grad_v, fd_v, rtol=1e-6, atol=1e-8)
    # the projection form M = I - w w^T / ||w||^2 written out
    for i in range(3):
        M = np.eye(5) - np.outer(w[i], w[i]) / (w[i] @ w[i])
        np.testing.assert_allclose(grad_v[i], g[i] / np.linalg.norm(v[i]) * M @ grad_w[i], rtol=1e-12)
    # g = 0: no gradient for v, grad_g still defined
    gg, gv = weightnorm.grads(v, np.zeros(3), grad_w)
    np.testing.assert_array_equal(gv, 0.0)
    np.testing.assert_allclose(gg, np.sum(grad_w * v, axis=1) / np.linalg.norm(v, axis=1))


def test_data_dependent_init_standardizes():
    rng = np.random.default_rng(2)
    v = rng.standard_normal((6, 4))
    X = 3.0 * rng.standard_normal((50, 4)) + 1.5
    g, b = weightnorm.data_dependent_init(v, X)
    t = weightnorm.weightnorm_dense(X, v, g, b)
    np.testing.assert_allclose(t.mean(axis=0), 0.0, atol=1e-13)
    np.testing.assert_allclose(t.std(axis=0), 1.0, rtol=1e-13)
    g2, b2 = weightnorm.data_dependent_init(v, X, scale=0.1)
    np.testing.assert_allclose(weightnorm.weightnorm_dense(X, v, g2, b2).std(axis=0), 0.1, rtol=1e-13)
    # ||w|| = g after initialization
    np.testing.assert_allclose(np.linalg.norm(weightnorm.weight(v, g), axis=1), g, rtol=1e-14)


def test_data_dependent_init_is_the_authors_code():
    """lasagne/nn.py lines 252-257 (WeightNormLayer, init=True), written out: with g = 1 the input is X w^T,
    m = mean(input), input -= m, stdv = sqrt(mean(input^2)), then b <- -m/stdv and g <- g/stdv; and lines 199-205
    (MeanOnlyBNLayer): the same stdv of the centred input, g <- g/stdv, b left at 0."""
    rng = np.random.default_rng(5)
    v = 0.05 * rng.standard_normal((5, 8))  # lasagne.init.Normal(0.05)
    X = rng.standard_normal((100, 8)) + 0.3
    inp = X @ (v / np.sqrt(np.sum(v**2, axis=1, keepdims=True))).T
    m = inp.mean(axis=0)
    cen = inp - m
    stdv = np.sqrt(np.mean(cen**2, axis=0))
    g, b = weightnorm.data_dependent_init(v, X)
    np.testing.assert_allclose(g, 1.0 / stdv, rtol=1e-13)
    np.testing.assert_allclose(b, -m / stdv, rtol=1e-13)
    gm, bm = weightnorm.data_dependent_init(v, X, mean_only_bn=True)
    np.testing.assert_allclose(gm, 1.0 / stdv, rtol=1e-13)
    np.testing.assert_array_equal(bm, 0.0)
    y = weightnorm.weightnorm_dense(X, v, gm, bm, mean_only_bn=True)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-13)
    np.testing.assert_allclose(y.std(axis=0), 1.0, rtol=1e-13)
    np.testing.assert_allclose(y, weightnorm.weightnorm_dense(X, v, g, b), rtol=1e-12, atol=1e-13)
    # the TensorFlow version (tensorflow/nn.py lines 150-157) adds 1e-10 to the variance: the same to ~1e-10
    np.testing.assert_allclose(g, 1.0 / np.sqrt(stdv**2 + 1e-10), rtol=1e-7)


def test_norm_of_v_grows_under_gradient_descent():
    """grad_v is orthogonal to v, so a gradient step v' = v - lr grad_v has ||v'||^2 = ||v||^2 + lr^2 ||grad_v||^2:
    the norm never decreases (the paper's self-stabilization argument), whatever the loss."""
    rng = np.random.default_rng(6)
    v, g = rng.standard_normal((4, 6)), rng.uniform(0.5, 2.0, 4)
    _, grad_v = weightnorm.grads(v, g, rng.standard_normal((4, 6)))
    for lr in (0.01, 0.3, 3.0):
        v2 = v - lr * grad_v
        np.testing.assert_allclose(np.sum(v2**2, axis=1), np.sum(v**2, axis=1) + lr**2 * np.sum(grad_v**2, axis=1),
                                   rtol=1e-12)


def test_mean_only_batchnorm_layer_is_the_numpy_function():
    import meanfield

    F = np.random.default_rng(7).standard_normal((6, 5)) + 2.0
    np.testing.assert_allclose(meanfield.MeanOnlyBatchNorm().on_features(F), weightnorm.mean_only_batchnorm(F),
                               rtol=0, atol=0)


def test_weightnorm_dense_matches_definition():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((7, 4))
    v = rng.standard_normal((3, 4))
    g = rng.uniform(0.5, 2.0, 3)
    b = rng.standard_normal(3)
    expected = g * (X @ v.T) / np.linalg.norm(v, axis=1) + b
    np.testing.assert_allclose(weightnorm.weightnorm_dense(X, v, g, b), expected, rtol=1e-13)
    np.testing.assert_allclose(weightnorm.weightnorm_dense(X, v, g), expected - b, rtol=1e-12, atol=1e-14)
    centred = expected - b - (expected - b).mean(axis=0)
    np.testing.assert_allclose(weightnorm.weightnorm_dense(X, v, g, b, mean_only_bn=True), centred + b, rtol=1e-12,
                               atol=1e-14)


def test_mean_only_batchnorm_forward_backward():
    rng = np.random.default_rng(4)
    t = rng.standard_normal((8, 3)) + 5.0
    out = weightnorm.mean_only_batchnorm(t)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-14)
    np.testing.assert_allclose(out.std(axis=0), t.std(axis=0), rtol=1e-13)  # no scaling
    R = rng.standard_normal((8, 3))

    def loss(tt):
        return np.sum(R * np.tanh(weightnorm.mean_only_batchnorm(tt)))

    grad_out = R * (1.0 - np.tanh(out) ** 2)
    grad_t = weightnorm.mean_only_batchnorm_backward(grad_out)
    np.testing.assert_allclose(grad_t, _fd_grad(loss, t), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(grad_t.sum(axis=0), 0.0, atol=1e-13)


def test_bad_inputs():
    v = np.array([[1.0, 2.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match=r"zero rows \[1\]"):
        weightnorm.weight(v, [1.0, 1.0])
    with pytest.raises(ValueError, match="zero rows"):
        weightnorm.grads(v, [1.0, 1.0], np.ones((2, 2)))
    with pytest.raises(ValueError, match="zero rows"):
        weightnorm.data_dependent_init(v, np.random.default_rng(0).standard_normal((5, 2)))
    with pytest.raises(ValueError, match="g must have shape"):
        weightnorm.weight(np.ones((2, 2)), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        weightnorm.weight(np.array([[np.nan, 1.0]]), [1.0])
    with pytest.raises(ValueError, match="grad_w must have the shape"):
        weightnorm.grads(np.ones((2, 2)), [1.0, 1.0], np.ones((2, 3)))
    with pytest.raises(ValueError, match="empty batch"):
        weightnorm.data_dependent_init(np.ones((2, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"units \[0, 1\] are constant"):
        weightnorm.data_dependent_init(np.eye(2), np.tile([[1.0, -2.0]], (4, 1)))
    with pytest.raises(ValueError, match=r"units \[1\] are constant"):  # one unit constant only
        weightnorm.data_dependent_init(np.eye(2), np.array([[1.0, 3.0], [2.0, 3.0], [0.5, 3.0]]))
    with pytest.raises(ValueError, match="constant"):  # a single sample has no spread
        weightnorm.data_dependent_init(np.eye(2), np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="X has 3 features"):
        weightnorm.data_dependent_init(np.eye(2), np.ones((4, 3)))
    with pytest.raises(ValueError, match="scale"):
        weightnorm.data_dependent_init(np.eye(2), np.eye(2), scale=0.0)
    with pytest.raises(ValueError, match="empty batch"):
        weightnorm.mean_only_batchnorm(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="empty batch"):
        weightnorm.mean_only_batchnorm_backward(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="dimensions"):
        weightnorm.mean_only_batchnorm(1.0)
