"""Scale-free recursions (`meanfield.core.scale`): correlations exact at any depth, whatever the scale."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

import meanfield
from meanfield import Dense, Layer, mlp, propagate
from meanfield.core.law import Gaussian


def _gram(n=4, d=10, seed=1):
    X = np.random.default_rng(seed).standard_normal((n, d))
    return X @ X.T / d


def _corr(G):
    s = np.sqrt(np.einsum("...ii->...i", G))
    return G / (s[..., :, None] * s[..., None, :])


def _check_psd_correlations(G):
    assert np.all(np.isfinite(G))
    np.testing.assert_array_equal(G, np.swapaxes(G, -1, -2))
    C = _corr(G)
    assert np.all(np.abs(C) <= 1.0 + 4e-16)
    lam = np.linalg.eigvalsh(G)
    assert np.all(lam >= -1e-14 * np.abs(G).max(axis=(-1, -2))[..., None])


@pytest.fixture(scope="module")
def relu_reference():
    # sigma_w = sqrt 2: the variance stays put, so this run never leaves float64 and is the scale-free answer
    return propagate(mlp(1000, "relu", sigma_w=math.sqrt(2.0)), _gram(), scale_free=True)


@pytest.mark.parametrize("sigma_w", [0.1, 1.0, 2.0])
def test_relu_correlations_are_scale_free(relu_reference, sigma_w):
    """ReLU is positively homogeneous: sigma_w only scales the variance, the correlations are sigma_w's-free."""
    t = propagate(mlp(1000, "relu", sigma_w=sigma_w), _gram(), scale_free=True)
    assert np.all(relu_reference.info["log_scale"] == 0.0)
    np.testing.assert_allclose(_corr(t.gram), _corr(relu_reference.gram), rtol=0, atol=1e-12)
    _check_psd_correlations(t.gram)
    # the scale itself is log(sigma_w^2 / 2) per block, carried exactly as a logarithm
    L = t.info["log_scale"]
    scale = np.log(np.mean(np.einsum("lii->li", t.gram), axis=1)) + L
    ref = np.log(np.mean(np.diag(_gram()))) + np.arange(1001) * math.log(sigma_w**2 / 2)
    np.testing.assert_allclose(scale, ref, rtol=1e-12, atol=1e-9)


def test_true_scale_raises_where_float64_ends():
    with pytest.raises(ValueError, match=r"block 134 .*below float64's normal range.*scale_free=True"):
        propagate(mlp(200, "relu", sigma_w=0.1), _gram())
    with pytest.raises(ValueError, match=r"block 10\d\d .*overflows float64"):
        propagate(mlp(1100, "relu", sigma_w=2.0), _gram())
    # within float64 the true Grams come back, equal to the scale-free ones times their scale
    t = propagate(mlp(120, "relu", sigma_w=0.1), _gram())
    s = propagate(mlp(120, "relu", sigma_w=0.1), _gram(), scale_free=True)
    assert np.any(s.info["log_scale"] != 0.0) and "log_scale" not in t.info
    np.testing.assert_allclose(t.gram, s.gram * np.exp(s.info["log_scale"])[:, None, None], rtol=1e-13, atol=0)


def test_bias_below_rounding_at_huge_scale():
    """With a bias, the recursion needs the true scale until the bias is below the variance's rounding: the
    scale-free run equals the true run where the latter exists, and goes on past float64's end."""
    net = mlp(1200, "relu", sigma_w=2.0, sigma_b=0.1)
    s = propagate(net, _gram(), scale_free=True)
    t = propagate(mlp(1000, "relu", sigma_w=2.0, sigma_b=0.1), _gram())
    np.testing.assert_allclose(_corr(s.gram[:1001]), _corr(t.gram), rtol=0, atol=1e-13)
    _check_psd_correlations(s.gram)
    assert math.log(np.mean(np.diag(s.gram[-1]))) + s.info["log_scale"][-1] > 1200 * math.log(2.0) - 1.0


def test_tanh_tiny_scale_is_linear_and_psd():
    """tanh with sigma_w = 0.5 and no bias: the variance falls by about 4 per block; once it is tiny, tanh is
    linear to rounding and the correlations stop moving (Dense and a linear map preserve them)."""
    s = propagate(mlp(1000, "tanh", sigma_w=0.5, sigma_b=0.0), _gram(), scale_free=True)
    _check_psd_correlations(s.gram)
    C = _corr(s.gram)
    np.testing.assert_allclose(C[1000], C[600], rtol=0, atol=1e-14)
    assert not np.allclose(np.abs(C[1000]), 1.0)  # not pinned at +-1 (the float64 failure this replaces)
    with pytest.raises(ValueError, match=r"block 5\d\d "):
        propagate(mlp(1000, "tanh", sigma_w=0.5, sigma_b=0.0), _gram())
    # where the true scale exists, both runs agree
    t = propagate(mlp(300, "tanh", sigma_w=0.5, sigma_b=0.0), _gram())
    np.testing.assert_allclose(_corr(s.gram[:301]), _corr(t.gram), rtol=0, atol=1e-13)


def test_silu_tiny_scale_limit():
    """silu(0) = 0, silu'(0) = 1/2: at tiny scale the law is halved each block, the correlations are kept."""
    s = propagate(mlp(400, "silu", sigma_w=0.5, sigma_b=0.0), _gram(), scale_free=True)
    _check_psd_correlations(s.gram)
    C = _corr(s.gram)
    np.testing.assert_allclose(C[400], C[300], rtol=0, atol=1e-14)


def test_ordered_phase_psd_over_5000_blocks():
    """tanh in the ordered phase (sigma_w = 1, sigma_b = 0.3): correlations go to 1, the Gram to rank one;
    every Gram stays symmetric PSD with correlations in [-1, 1]."""
    t = propagate(mlp(5000, "tanh", sigma_w=1.0, sigma_b=0.3), _gram(n=3), scale_free=True)
    _check_psd_correlations(t.gram)


def test_normalized_networks_never_rescale():
    t = propagate(mlp(50, "relu", norm="ln", sigma_w=0.1), _gram(), scale_free=True)
    assert np.all(t.info["log_scale"] == 0.0)


def test_scale_degrees_of_the_built_ins():
    assert Dense(2.0, 0.0).scale_degree == 1 and Dense(1.0, 0.1).scale_degree is None
    assert meanfield.Activation("relu").scale_degree == 1 and meanfield.Activation("step").scale_degree == 0
    assert meanfield.Activation("tanh").scale_degree is None
    assert meanfield.LayerNorm().scale_degree == 0 and meanfield.BatchNorm().scale_degree == 0
    assert meanfield.Residual([Dense(1.0, 0.0), meanfield.Activation("relu")]).scale_degree == 1
    assert meanfield.Residual([Dense(1.0, 0.0), meanfield.Activation("tanh")]).scale_degree is None
    assert meanfield.Block([Dense(1.0, 0.0), meanfield.LayerNorm()]).scale_degree == 0
    assert meanfield.MeanFieldCenter("tanh").scale_degree == 1
    assert meanfield.MeanFieldCenter("relu").scale_degree is None


def test_residual_relu_deep_scale_free():
    """A bias-free residual ReLU branch is of degree 1: the whole network rescales exactly."""
    blocks = [meanfield.Residual([Dense(0.05, 0.0), meanfield.Activation("relu"), Dense(1.0, 0.0)])] * 3
    net = meanfield.Network([Dense(0.1, 0.0), *blocks, meanfield.Activation("relu")] * 200)
    s = propagate(net, _gram(), scale_free=True)
    _check_psd_correlations(s.gram)
    assert s.info["log_scale"][-1] < -700
    ref = propagate(meanfield.Network([Dense(1.0, 0.0), *blocks, meanfield.Activation("relu")] * 200), _gram(),
                    scale_free=True)
    np.testing.assert_allclose(_corr(s.gram), _corr(ref.gram), rtol=0, atol=1e-12)


@dataclass(frozen=True, repr=False)
class _PlainCopy(Layer):
    """A user layer without a scale rule: the identity on a Gaussian law."""

    def infinite(self, law, ctx):
        return Gaussian(law.K.copy(), law.mc_error)


def test_user_layer_without_scale_rule():
    block = meanfield.Block([Dense(2.0, 0.0), meanfield.Activation("relu"), _PlainCopy()])
    net = meanfield.Network([block] * 1100)
    # still within float64 (the layer gets the true law): agrees with the bias-free relu run
    s = propagate(meanfield.Network([block] * 400), _gram(), scale_free=True)
    ref = propagate(mlp(400, "relu", sigma_w=2.0), _gram(), scale_free=True)
    np.testing.assert_allclose(_corr(s.gram), _corr(ref.gram), rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match=r"block 10\d\d, layer _PlainCopy\(\).*overflows float64"):
        propagate(net, _gram(), scale_free=True)


def test_detail_and_width_options():
    t = propagate(mlp(150, "relu", sigma_w=0.1), _gram(), scale_free=True, detail=True)
    assert len(t.layers) == 300 and t.info["layer_log_scale"].shape == (300,)
    np.testing.assert_array_equal(t.layers[-1][1], t.gram[-1])
    with pytest.raises(ValueError, match="scale_free"):
        propagate(mlp(2, "relu"), _gram(), width=64, scale_free=True)

