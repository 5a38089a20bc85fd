"""Contract tests over the registry of layer types: every class in `meanfield.layer_types()` (built-in and
user-defined, including `Affine` below, defined here as a user would) is covered through its ``example()``:

- the mean-field rule against the seed mean of the finite-width simulator (within 5 standard errors at width
  1024; Monte Carlo rules within their reported ``mc_error`` plus the simulation's error);
- every vector-Jacobian product against central finite differences of the simulator's loss;
- the JSON round trip of the description;
- the infinite-data (population) rule of batch-coupled layers against finite-width, finite-data simulation
  of the initial guessing bias, or its clear error;
- bad constructor arguments raise ValueError.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from finite_differences import input_gradient_fd

import meanfield
from meanfield import Activation, Block, Dense, Layer, Network, bias
from meanfield.core.law import Gaussian, Sampled
from meanfield.core.ops import Op
from meanfield.core.validate import check_real
from meanfield.finite import _input_gradient


# ---------------------------------------------------------------------------------------------------------
# a layer type defined outside the package, exactly as the user guide shows
@dataclasses.dataclass(frozen=True, repr=False)
class Affine(Layer):
    """y = scale * x + shift, unit by unit (a user-defined layer type)."""

    scale: float = 1.0
    shift: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "scale", check_real("Affine", "scale", self.scale))
        object.__setattr__(self, "shift", check_real("Affine", "shift", self.shift))

    def infinite(self, law, ctx):
        # K -> s^2 K + s b (m 1^T + 1 m^T) + b^2, m -> s m + b; a centred Gaussian stays Gaussian if b = 0
        s, b = self.scale, self.shift
        K = s * s * law.K + s * b * (law.m[:, None] + law.m[None, :]) + b * b
        if isinstance(law, Gaussian) and b == 0.0:
            return Gaussian(K, law.mc_error)
        src = law.sampler()
        return Sampled(K, s * law.m + b, lambda rng, M: s * src(rng, M) + b, law.mc_error)

    def on_features(self, F):
        return self.scale * F + self.shift

    def compile(self, w_in, compiler):
        return AffineOp(self.scale, self.shift, w_in), w_in

    @classmethod
    def example(cls):
        return cls(scale=1.5, shift=-0.3)

    @classmethod
    def invalid_parameters(cls):
        return [{"scale": float("nan")}, {"shift": "x"}]


class AffineOp(Op):
    def __init__(self, scale, shift, w):
        self.scale, self.shift = scale, shift
        self.w_in = self.w_out = w

    def forward(self, h, rt):
        return self.scale * h + self.shift, None

    def backward(self, g, cache, rt):
        return self.scale * g


@dataclasses.dataclass(frozen=True, repr=False)
class BatchShift(Layer):
    """A batch-coupled user layer without a population rule: exchangeable mode must refuse it."""

    batch_coupled = True

    def infinite(self, law, ctx):
        return law.affine(np.full(law.n, law.m.mean()), None)

    def compile(self, w_in, compiler):
        return AffineOp(1.0, 0.0, w_in), w_in


TYPES = [cls for cls in meanfield.layer_types() if cls is not BatchShift]
IDS = [cls.__name__ for cls in TYPES]
X = np.random.default_rng(11).standard_normal((4, 3))


def contract_network(cls) -> Network:
    """The example after a Dense layer (on the data itself for deterministic-only types), then a tanh block;
    a layer outside a Block is a block of its own."""
    head = [] if cls.deterministic_only else [Dense(1.2, 0.1)]
    return Network([*head, cls.example(), Block([Dense(1.0, 0.1), Activation("tanh")])])


# ---------------------------------------------------------------------------------------------------------
def test_registry_lists_builtin_and_user_types():
    names = {cls.__name__ for cls in meanfield.layer_types()}
    assert {"Dense", "Activation", "LayerNorm", "BatchNorm", "MeanOnlyBatchNorm", "Residual", "Block",
            "Affine"} <= names
    assert meanfield.MeanOnlyBatchNorm in meanfield.layer_types()


@pytest.mark.parametrize("cls", TYPES, ids=IDS)
def test_propagate_matches_the_seed_mean_of_simulate(cls):
    net = contract_network(cls)
    width, seeds = 1024, 24
    mf = meanfield.propagate(net, X=X, mc_samples=2**16)
    sim = meanfield.simulate(net, X, width=width, seeds=seeds, seed=5)
    for l in range(1, net.depth + 1):
        mean = sim.gram[:, l].mean(axis=0)
        se = sim.gram[:, l].std(axis=0, ddof=1) / math.sqrt(seeds)
        tol = 5.0 * np.sqrt(se**2 + mf.mc_error[l] ** 2) + 4.0 / width
        excess = np.abs(mean - mf.gram[l]) - tol
        assert np.all(excess <= 0), f"block {l}: worst excess {excess.max():.3g}"


SCALED = [c.example() for c in TYPES if c.example().scale_degree is not None] + [
    Activation("relu"), Activation("step"), Activation("abs"), Dense(1.5, 0.0), meanfield.WeightNormDense(g=1.3),
    meanfield.WeightNormDense(init="data"), meanfield.Residual([Dense(1.0, 0.0), Activation("relu")]),
    Block([Dense(1.0, 0.0), meanfield.LayerNorm()]), meanfield.Concat([Dense(1.0, 0.0), Activation("relu")], share=0.5),
    meanfield.MeanFieldCenter("tanh"), meanfield.MaxPool(k=3)]


@pytest.mark.parametrize("layer", SCALED, ids=repr)
def test_declared_scale_degree_holds(layer):
    """rule(s K) = s^d rule(K) (means s^(d/2)) for the declared degree d: what the scale-free recursion relies on."""
    from meanfield.infinite import Propagation

    d = layer.scale_degree
    assert d is not None
    K = Dense(1.2, 0.0).infinite(Gaussian(X @ X.T / X.shape[1]), None).K
    for s in (1e-6, 1e5):
        runs = []
        for scale in (1.0, s):
            ctx = Propagation(np.random.default_rng(0), 2**12, False, None)
            runs.append(ctx.apply(layer, Gaussian(scale * K)))
        base, scaled = runs
        np.testing.assert_allclose(scaled.K, s**d * base.K, rtol=1e-10, atol=1e-13 * s**d * np.abs(base.K).max())
        np.testing.assert_allclose(scaled.m, s ** (d / 2) * base.m, rtol=1e-10,
                                   atol=1e-13 * s ** (d / 2) * max(np.abs(base.m).max(), 1.0))


@pytest.mark.parametrize("cls", TYPES, ids=IDS)
def test_vjp_matches_central_finite_differences(cls):
    net = contract_network(cls)
    loss, grad = _input_gradient(net, X, width=8, seed=3)
    assert grad.shape == X.shape and np.all(np.isfinite(grad))
    fd = input_gradient_fd(net, X, width=8, seed=3, h=1e-6)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6 * max(np.abs(fd).max(), 1e-12))


@pytest.mark.parametrize("cls", TYPES, ids=IDS)
def test_json_round_trip(cls):
    net = contract_network(cls)
    back = Network.from_dict(json.loads(json.dumps(net.to_dict())))
    assert back == net
    assert repr(back) == repr(net)
    np.testing.assert_array_equal(meanfield.propagate(back, X=X, mc_samples=2**10).gram,
                                  meanfield.propagate(net, X=X, mc_samples=2**10).gram)


@pytest.mark.parametrize("cls", TYPES, ids=IDS)
def test_exchangeable_rule_or_clear_error(cls):
    net = contract_network(cls)
    K0 = np.array([[1.0, 0.2], [0.2, 1.0]])
    if cls.deterministic_only:
        with pytest.raises(ValueError):
            meanfield.propagate(net, K0, exchangeable=True)
        return
    t = meanfield.propagate(net, K0, exchangeable=True, mc_samples=2**12)
    assert np.all(np.isfinite(t.gram)) and t.gram.shape == (net.depth + 1, 2, 2)


@pytest.mark.parametrize("cls", [c for c in TYPES if c.batch_coupled or c.__name__ == "WeightNormDense"],
                         ids=lambda c: c.__name__)
def test_population_rule_against_finite_data_simulation(cls):
    """The infinite-data rule of a batch-coupled layer predicts the initial guessing bias that finite-width,
    finite-data simulation measures (Gaussian blob inputs)."""
    ex = cls.example() if cls.__name__ != "WeightNormDense" else cls(init="data")
    net = Network([Block([Dense(1.0), ex, Activation("relu")]), Block([Dense(1.0, 0.0, width=2)])])
    g = bias.gamma(net)
    sim = bias.simulate(net, n_points=600, seeds=96, width=256, seed=2)
    assert abs(sim.gamma - g) <= 5 * sim.gamma_stderr + 0.05 * g + 2.0 / 600, (g, sim.gamma, sim.gamma_stderr)


def test_batch_coupled_layer_without_population_rule_raises():
    net = Network([Block([Dense(), BatchShift(), Activation("relu")])])
    with pytest.raises(ValueError, match="population"):
        meanfield.propagate(net, np.eye(2), exchangeable=True)
    with pytest.raises(ValueError, match="population"):
        bias.gamma(net)
    meanfield.propagate(net, np.eye(2))  # the batch rule itself works


@pytest.mark.parametrize("cls", TYPES, ids=IDS)
def test_bad_parameters_raise(cls):
    bad = cls.invalid_parameters()
    if any(f.init for f in dataclasses.fields(cls)):
        assert bad, f"{cls.__name__} has parameters but lists no invalid ones"
    for kwargs in bad:
        with pytest.raises(ValueError):
            cls(**kwargs)


def test_mean_only_batchnorm_in_mlp():
    net = meanfield.mlp(3, "relu", norm="wn+mobn", placement="pre")
    assert [type(layer).__name__ for layer in net.blocks[0].layers] == ["WeightNormDense", "MeanOnlyBatchNorm",
                                                                       "Activation"]
    assert isinstance(meanfield.mlp(2, "tanh", norm="mobn").blocks[0].layers[-1], meanfield.MeanOnlyBatchNorm)
    # population rule: BN-pre ReLU gives 1/(pi - 1) at every depth, as with BatchNorm (Francazi et al.)
    assert bias.gamma(meanfield.mlp(3, "relu", norm="mobn", placement="pre")) == pytest.approx(1 / (math.pi - 1),
                                                                                                  rel=1e-12)
    with pytest.raises(ValueError, match="norm"):
        meanfield.mlp(2, norm="ln+bn")
    with pytest.raises(ValueError, match="norm"):
        meanfield.mlp(2, norm="wn+wn")
