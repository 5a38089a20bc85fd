"""Tests of meanfield.torch: networks to torch and back, and the simulator on torch tensors.

Independent truths: the laws of the initial weights (Kolmogorov-Smirnov against N(0, sigma^2)), torch's own
modules and initialization schemes, the definitions of each normalization, and the numpy simulator and the
mean-field engine for the Gram matrices at initialization (two-sample z-tests and KS tests over seeds).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

torch = pytest.importorskip("torch")
nn = torch.nn

import hermite  # noqa: E402
import meanfield  # noqa: E402
from meanfield import (  # noqa: E402
    Activation,
    BatchNorm,
    Block,
    Dense,
    GroupLayerNorm,
    Layer,
    LayerNorm,
    MeanOnlyBatchNorm,
    Network,
    Residual,
    RMSNorm,
    WeightNormDense,
)
from meanfield.core.validate import check_real  # noqa: E402
from meanfield.torch import from_torch, model_grams, register_from_torch, to_torch, trajectory  # noqa: E402

X = np.random.default_rng(11).standard_normal((4, 3))
BUILTIN = [cls for cls in meanfield.layer_types() if cls.__module__.startswith("meanfield.")]


@pytest.fixture(autouse=True)
def one_thread():
    """Small models: one torch thread (threads only collapse on shared cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def contract_network(cls) -> Network:
    head = [] if cls.deterministic_only else [Dense(1.2, 0.1)]
    return Network([*head, cls.example(), Block([Dense(1.0, 0.1), Activation("tanh")])])


# ---------------------------------------------------------------------------------------------------------
# the registry: every built-in layer type has a torch form whose Gram law is the simulator's
@pytest.mark.parametrize("cls", BUILTIN, ids=lambda c: c.__name__)
def test_every_builtin_layer_type_converts_and_agrees_in_distribution_with_simulate(cls):
    net = contract_network(cls)
    S = 64
    a = trajectory(net, X, width=64, seeds=S, seed=1).gram
    b = meanfield.simulate(net, X, width=64, seeds=S, seed=2).gram
    assert a.shape == b.shape == (S, net.depth + 1, 4, 4)
    # seed means entry by entry: |diff| <= 4.5 standard errors, plus torch's eps = 1e-5 in the norms (which
    # moves a normalized entry by about eps / variance)
    se = np.sqrt(a.var(axis=0, ddof=1) / S + b.var(axis=0, ddof=1) / S)
    excess = np.abs(a.mean(axis=0) - b.mean(axis=0)) - 4.5 * se - 1e-3
    assert np.all(excess <= 0), f"worst excess {excess.max():.3g} at {np.unravel_index(excess.argmax(), excess.shape)}"
    # the whole law of one statistic: the last block's trace (after Dense + tanh, no norm)
    ta, tb = (np.trace(g[:, -1], axis1=-2, axis2=-1) for g in (a, b))
    assert stats.ks_2samp(ta, tb).pvalue > 1e-3


def test_large_width_torch_grams_match_propagate():
    Xb = np.random.default_rng(3).standard_normal((5, 20))
    for net in (meanfield.mlp(3, "tanh", norm="ln", sigma_b=0.1), meanfield.mlp(2, "relu", norm="bn", placement="pre",
                                                                                sigma_w=math.sqrt(2))):
        mf = meanfield.propagate(net, X=Xb)
        t = trajectory(net, Xb, width=1024, seeds=6, seed=0)
        mean = t.gram.mean(axis=0)
        se = t.gram.std(axis=0, ddof=1) / math.sqrt(6)
        assert np.all(np.abs(mean - mf.gram) <= 6 * se + 4.0 / 1024 + 1e-3 * mf.mc_error.max(initial=0) + 1e-3)


def test_user_layer_with_its_torch_form_converts_and_one_without_raises():
    @dataclasses.dataclass(frozen=True, repr=False)
    class Shift(Layer):
        shift: float = 0.5

        def __post_init__(self):
            object.__setattr__(self, "shift", check_real("Shift", "shift", self.shift))

        def to_torch_module(self, w_in, width, generator):
            class M(nn.Module):
                def forward(inner, x):  # noqa: N805
                    return x + self.shift

            return M(), w_in

    @dataclasses.dataclass(frozen=True, repr=False)
    class NoTorch(Layer):
        pass

    model = to_torch(Network([Dense(), Shift(0.25)]), width=8, input_dim=3)
    x = torch.zeros(2, 3, dtype=torch.float64)
    assert torch.allclose(model(x), model.blocks[0][0](x) + 0.25)
    assert from_torch(model).blocks[1].layers[0] == Shift(0.25)  # the tag reads it back
    with pytest.raises(ValueError, match="NoTorch.*no torch form"):
        to_torch(Network([Dense(), NoTorch()]), width=8, input_dim=3)
    # and the built-in layers that have none say so
    with pytest.raises(ValueError, match="per_sample"):
        to_torch(meanfield.mlp(2, "relu", centering="per_sample"), width=8, input_dim=3)
    # the paper's constant centring (Joudaki et al.) has one
    to_torch(meanfield.mlp(2, "relu", centering="meanfield"), width=8, input_dim=3)


# ---------------------------------------------------------------------------------------------------------
# initialization laws
def test_dense_weights_and_biases_follow_the_law():
    net = Network([Dense(1.7, 0.3, width=400)])
    model = to_torch(net, width=10, input_dim=300, seed=4)
    lin = model.blocks[0][0]
    assert isinstance(lin, nn.Linear) and lin.weight.shape == (400, 300)
    W = lin.weight.detach().numpy().ravel() / (1.7 / math.sqrt(300))
    assert stats.kstest(W, "norm").pvalue > 1e-3
    assert stats.kstest(lin.bias.detach().numpy() / 0.3, "norm").pvalue > 1e-3
    assert lin.weight.requires_grad and lin.bias.requires_grad
    # reproducible, and another seed draws other weights
    again = to_torch(net, width=10, input_dim=300, seed=4).blocks[0][0].weight
    other = to_torch(net, width=10, input_dim=300, seed=5).blocks[0][0].weight
    assert torch.equal(lin.weight, again) and not torch.equal(lin.weight, other)


def test_norms_start_at_unit_affine_and_batch_modules_in_training_mode():
    model = to_torch(meanfield.mlp(1, "relu", norm="ln"), width=16, input_dim=4)
    ln = model.blocks[0][2]
    assert isinstance(ln, nn.LayerNorm) and torch.all(ln.weight == 1) and torch.all(ln.bias == 0)
    assert ln.weight.requires_grad
    bn = to_torch(meanfield.mlp(1, "relu", norm="bn"), width=16, input_dim=4).blocks[0][2]
    assert isinstance(bn, nn.BatchNorm1d) and bn.training and torch.all(bn.weight == 1)
    gn = to_torch(meanfield.mlp(1, "relu", norm="gln", groups=4), width=16, input_dim=4).blocks[0][2]
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 4
    assert isinstance(to_torch(meanfield.mlp(1, norm="rms"), width=8, input_dim=2).blocks[0][2], nn.RMSNorm)
    assert model.training


def test_weight_norm_fixed_and_data_init():
    from torch.nn.utils import parametrize

    fixed = to_torch(Network([WeightNormDense(g=1.3, sigma_b=0.2)]), width=32, input_dim=10, seed=1).blocks[0][0]
    assert parametrize.is_parametrized(fixed, "weight")
    assert torch.allclose(fixed.weight.norm(dim=1), torch.full((32,), 1.3, dtype=torch.float64))
    model = to_torch(Network([WeightNormDense(init="data")]), width=32, input_dim=10, seed=1)
    x = torch.as_tensor(np.random.default_rng(0).standard_normal((50, 10)))
    with torch.no_grad():
        pre = model(x)
    assert torch.allclose(pre.mean(dim=0), torch.zeros(32, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(pre.std(dim=0, unbiased=False), torch.ones(32, dtype=torch.float64), atol=1e-12)
    with torch.no_grad():  # later passes are a fixed map: another batch is not standardized
        assert not torch.allclose(model(2 * x[:20]).std(dim=0, unbiased=False), torch.ones(32, dtype=torch.float64))


def test_mean_only_batchnorm_batch_mean_in_training_running_mean_at_evaluation():
    model = to_torch(Network([Dense(1.0, 1.0), MeanOnlyBatchNorm()]), width=6, input_dim=3, seed=2)
    x = torch.as_tensor(np.random.default_rng(1).standard_normal((20, 3)) + 3.0)
    pre = model.blocks[0][0](x)
    out = model(x)
    assert torch.allclose(out, pre - pre.mean(dim=0), atol=1e-12)
    mob = model.blocks[1][0]
    assert torch.allclose(mob.running_mean, 0.1 * pre.mean(dim=0).detach())
    model.eval()
    assert torch.allclose(model(x), pre - mob.running_mean, atol=1e-12)


def test_activation_modules_match_hermite_for_every_builtin_and_transformed_activation():
    from meanfield.core.torch_modules import Elementwise

    x = np.linspace(-4.0, 4.0, 101)
    xt = torch.as_tensor(x)
    names = [n for n in hermite.builtins.builtin_names() if n not in ("monomial", "hermite")]
    acts = [hermite.activation(n) for n in names] + [
        hermite.activation("leaky_relu", negative_slope=0.2), hermite.activation("elu", alpha=0.5),
        hermite.activation("hardtanh", min_val=-0.5, max_val=2.0), hermite.activation("softplus", beta=2.0),
        hermite.transform("tanh"), hermite.transform("relu", remove=(0, 1, 2)), hermite.activation("hermite", k=3)]
    for act in acts:
        got = Elementwise(act)(xt).numpy()
        np.testing.assert_allclose(got, act.fn(x), rtol=1e-12, atol=1e-12, err_msg=act.name)
    # a numpy-only callable: a host round trip, differentiable through its derivative
    act = hermite.activation(lambda v: np.asarray([math.tanh(t) for t in np.ravel(v)]).reshape(np.shape(v)),
                             derivative=lambda v: 1 - np.tanh(v) ** 2)
    mod = Elementwise(act)
    assert mod.mode == "host" and Elementwise(hermite.transform("relu", remove=(0, 1, 2))).mode == "host"
    xg = xt.clone().requires_grad_(True)
    mod(xg).sum().backward()
    np.testing.assert_allclose(xg.grad.numpy(), 1 - np.tanh(x) ** 2, rtol=1e-12)
    assert Elementwise(hermite.activation("tanh")).mode == "native"
    assert Elementwise(hermite.activation("step")).mode == "array_api"


def test_float32_and_features():
    net = meanfield.mlp(2, "gelu", norm="ln", readout=3)
    model = to_torch(net, width=16, input_dim=5, dtype="float32")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    feats = model.features(torch.randn(7, 5))
    assert [f.shape[-1] for f in feats] == model.widths == [5, 16, 16, 3]
    K = model_grams(model, np.random.default_rng(0).standard_normal((7, 5)))
    assert K.shape == (4, 7, 7) and K.dtype == np.float64


@pytest.mark.parametrize("kwargs, match", [({"width": 0}, "width"), ({"input_dim": 0}, "input_dim"),
                                           ({"dtype": "float16"}, "dtype"), ({"seed": -1}, "seed"),
                                           ({"device": "nowhere"}, "device")])
def test_to_torch_rejects_bad_arguments(kwargs, match):
    args = {"width": 8, "input_dim": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        to_torch(meanfield.mlp(2), **args)


# ---------------------------------------------------------------------------------------------------------
# from torch
@pytest.mark.parametrize("net", [
    meanfield.mlp(3, "relu", norm="ln", readout=10), meanfield.mlp(2, "tanh", norm="ln", placement="pre"),
    meanfield.mlp(2, "relu", norm="bn"), meanfield.mlp(2, "relu", norm="wn"), meanfield.mlp(2, "relu", norm="wn",
                                                                                          wn_init="data"),
    meanfield.mlp(2, "relu", norm="wn+mobn", placement="pre"), meanfield.mlp(2, "silu", norm="gln", group_size=4),
    meanfield.mlp(2, "elu", norm="rms", residual=0.5), meanfield.mlp(2, hermite.transform("tanh"))],
    ids=lambda n: repr(n).split("\n")[1].strip())
def test_round_trip_of_to_torch(net):
    assert from_torch(to_torch(net, width=16, input_dim=16)) == net


def test_sequential_with_every_module_type():
    seq = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.LayerNorm(16),
        nn.Sequential(nn.Linear(16, 16), nn.LeakyReLU(0.2), nn.Dropout(0.1), nn.Tanh(), nn.Sigmoid()),
        nn.Linear(16, 16), nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Mish(), nn.ELU(0.5), nn.SELU(),
        nn.Softplus(beta=2.0), nn.Hardtanh(-0.5, 2.0), nn.ReLU6(), nn.Identity(), nn.RMSNorm(16),
        nn.Linear(16, 16, bias=False), nn.BatchNorm1d(16), nn.GroupNorm(4, 16), nn.Linear(16, 3))
    net = from_torch(seq)
    assert net.depth == 5
    acts = [layer.act.to_dict() for layer in net.layers if isinstance(layer, Activation)]
    assert [a["name"] for a in acts] == ["relu", "leaky_relu", "tanh", "sigmoid", "gelu", "gelu_tanh", "silu", "mish",
                                         "elu", "selu", "softplus", "hardtanh", "relu6"]
    assert acts[1]["params"] == {"negative_slope": 0.2} and acts[8]["params"] == {"alpha": 0.5}
    kinds = [type(layer).__name__ for layer in net.layers if not isinstance(layer, Activation)]
    assert kinds == ["Dense", "LayerNorm", "Dense", "Dense", "RMSNorm", "Dense", "BatchNorm", "GroupLayerNorm", "Dense"]
    assert net.layers[-2] == GroupLayerNorm(groups=4)
    d0 = net.layers[0]
    assert d0.sigma_w == pytest.approx(1 / math.sqrt(3)) and d0.sigma_b == pytest.approx(1 / math.sqrt(24))
    assert d0.width == 16 and net.blocks[-1].layers[0].width == 3
    assert [layer for layer in net.layers if isinstance(layer, Dense)][3].sigma_b == 0.0  # bias=False
    notes = " ".join(net.meta["from_torch"]["notes"])
    assert "Dropout" in notes and "BatchNorm1d" in notes and "Softplus" in notes


def test_residual_wrappers_and_functional_activations():
    class Res(nn.Module):
        def __init__(self, f, alpha=None):
            super().__init__()
            self.f, self.alpha = f, alpha

        def forward(self, x):
            return x + (self.f(x) if self.alpha is None else self.alpha * self.f(x))

    class Proj(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)

        def forward(self, x):
            return self.a(x) + torch.nn.functional.relu(self.b(x)).tanh()

    model = nn.Sequential(nn.Linear(4, 6), Res(nn.Sequential(nn.Linear(6, 6), nn.Tanh()), 0.5),
                          Res(nn.Linear(6, 6)), Proj())
    net = from_torch(model, init="kaiming_normal", bias="zeros")
    r1, r2, r3 = (b.layers[0] for b in net.blocks[1:])
    assert isinstance(r1, Residual) and r1.alpha == 0.5 and r1.shortcut is None
    assert r1.branch == (Dense(math.sqrt(2), 0.0, width=6), Activation("tanh"))
    assert r2.alpha == 1.0 and r2.branch == (Dense(math.sqrt(2), 0.0, width=6),)
    assert r3.shortcut == (Dense(math.sqrt(2), 0.0, width=6),)
    assert r3.branch[1:] == (Activation("relu"), Activation("tanh"))


def test_init_schemes_and_empirical_weights():
    lin = nn.Linear(200, 100)
    seq = nn.Sequential(lin)
    assert from_torch(seq, init="xavier_uniform", gain=2.0).layers[0].sigma_w == pytest.approx(
        2.0 * math.sqrt(2 * 200 / 300))
    assert from_torch(seq, init="kaiming_uniform", gain=1.5).layers[0].sigma_w == 1.5
    # empirical: the second moments of the weights themselves
    nn.init.normal_(lin.weight, std=0.7 / math.sqrt(200))
    d = from_torch(seq, init="weights").layers[0]
    assert d.sigma_w == pytest.approx(math.sqrt(200 * float((lin.weight.detach()**2).mean())))
    assert d.sigma_w == pytest.approx(0.7, rel=0.02)
    assert d.sigma_b == pytest.approx(math.sqrt(float((lin.bias.detach()**2).mean())))
    # torch's default law, checked against torch itself: Var W = 1/(3 fan_in)
    fresh = nn.Linear(300, 400)
    assert float(fresh.weight.detach().var()) * 300 == pytest.approx(1 / 3, rel=0.02)
    assert from_torch(nn.Sequential(fresh)).layers[0].sigma_w == pytest.approx(1 / math.sqrt(3))
    # a to_torch model read through its weights: close to its law
    model = to_torch(meanfield.mlp(2, "relu", sigma_w=1.4), width=256, input_dim=256)
    assert [layer.sigma_w for layer in from_torch(model, init="weights").layers if isinstance(layer, Dense)] == \
        pytest.approx([1.4, 1.4], rel=0.02)


def test_from_torch_errors_name_the_module():
    with pytest.raises(ValueError, match=r"'1' \(Conv1d\)"):
        from_torch(nn.Sequential(nn.Linear(3, 3), nn.Conv1d(1, 1, 1)))
    ln = nn.LayerNorm(4)
    with torch.no_grad():
        ln.weight.mul_(2.0)
    with pytest.raises(ValueError, match="affine"):
        from_torch(nn.Sequential(nn.Linear(3, 4), ln))

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(ValueError, match="traced"):
        from_torch(Branchy())

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Linear(3, 3)

        def forward(self, x):
            return self.f(x) * 2.0

    with pytest.raises(ValueError, match="constant outside a residual"):
        from_torch(Twice())
    for bad in ({"init": "orthogonal"}, {"gain": -1.0}, {"bias": "ones"}):
        with pytest.raises(ValueError):
            from_torch(nn.Sequential(nn.Linear(2, 2)), **bad)
    with pytest.raises(ValueError, match="torch.nn.Module"):
        from_torch(meanfield.mlp(2))


def test_register_from_torch_extends_the_table():
    class Swish2(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x)

    with pytest.raises(ValueError):
        register_from_torch(int, lambda m, r: None)
    register_from_torch(Swish2, lambda m, r: Activation("silu"))
    try:
        net = from_torch(nn.Sequential(nn.Linear(2, 4), Swish2()))
        assert net.layers[1] == Activation("silu")
    finally:
        meanfield.torch.FROM_TORCH.pop(Swish2)


# ---------------------------------------------------------------------------------------------------------
# simulate(..., backend="torch")
def test_simulate_on_torch_has_numpys_draws_and_law():
    Xb = np.random.default_rng(0).standard_normal((6, 10))
    for norm in (None, "ln", "wn", "gln"):
        net = meanfield.mlp(3, "gelu", norm=norm)
        a = meanfield.simulate(net, Xb, width=32, seeds=4, backend="torch")
        b = meanfield.simulate(net, Xb, width=32, seeds=4, backend="numpy")
        assert isinstance(a.gram, np.ndarray) and a.gram.dtype == np.float64
        assert a.info["backend"] == "torch"
        np.testing.assert_allclose(a.gram, b.gram, rtol=1e-10, atol=1e-12)
    # BatchNorm: eigen square roots of singular Grams differ by a rotation, the law does not
    net = meanfield.mlp(2, "relu", norm="bn")
    a = meanfield.simulate(net, Xb, width=32, seeds=48, backend="torch", seed=1).gram
    b = meanfield.simulate(net, Xb, width=32, seeds=48, backend="numpy", seed=2).gram
    se = np.sqrt(a.var(axis=0, ddof=1) / 48 + b.var(axis=0, ddof=1) / 48)
    assert np.all(np.abs(a.mean(axis=0) - b.mean(axis=0)) <= 4.5 * se + 1e-12)


def test_simulate_on_torch_float32_gradients_and_devices():
    Xb = np.random.default_rng(1).standard_normal((5, 8))
    net = meanfield.mlp(2, "tanh", norm="ln")
    a = meanfield.simulate(net, Xb, width=16, seeds=3, backend="torch:cpu", dtype="float32", gradients=True)
    b = meanfield.simulate(net, Xb, width=16, seeds=3, backend="numpy", dtype="float32", gradients=True)
    assert a.grad_norms.dtype == np.float64
    np.testing.assert_allclose(a.grad_norms, b.grad_norms, rtol=1e-4)
    with pytest.raises(ValueError, match="device"):
        meanfield.simulate(net, Xb, width=16, seeds=1, backend="torch:nowhere")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            meanfield.simulate(net, Xb, width=16, seeds=1, backend="torch:cuda")


def test_on_device_namespace_creates_on_its_device():
    import array_api_compat.torch as ctorch

    from meanfield.core.backends import OnDevice

    xp = OnDevice(ctorch, torch.device("cpu"))
    assert xp.asarray([1.0, 2.0]).device.type == "cpu" and xp.arange(3).device.type == "cpu"
    assert xp.tanh is ctorch.tanh and xp.float64 is ctorch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_simulate_and_to_torch_on_cuda():  # pragma: no cover - run where a GPU is present
    Xb = np.random.default_rng(0).standard_normal((6, 10))
    net = meanfield.mlp(2, "relu", norm="bn")
    a = meanfield.simulate(net, Xb, width=64, seeds=8, backend="torch:cuda", gradients=True)
    b = meanfield.simulate(net, Xb, width=64, seeds=8, backend="numpy", gradients=True)
    np.testing.assert_allclose(a.grad_norms, b.grad_norms, rtol=1e-8)
    t = trajectory(net, Xb, width=64, seeds=2, device="cuda")
    assert t.gram.shape == (2, 3, 6, 6)


def test_mean_field_batchnorm_pitfall_evaluation_mode_is_the_identity():
    """Francazi et al.'s pitfall (i): a BatchNorm model in evaluation mode at initialization normalizes with
    running statistics (mean 0, variance 1), i.e. not at all."""
    model = to_torch(Network([Dense(1.0, 2.0), BatchNorm()]), width=8, input_dim=3).eval()
    x = torch.randn(10, 3, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(model(x), model.blocks[0][0](x) / math.sqrt(1 + 1e-5))


def test_layer_norm_model_grams_are_torch_layer_norms():
    model = to_torch(Network([Dense(), LayerNorm(), RMSNorm()]), width=32, input_dim=4, seed=3)
    K = model_grams(model, np.random.default_rng(2).standard_normal((5, 4)))
    np.testing.assert_allclose(np.diag(K[2]), np.ones(5), atol=1e-4)
    np.testing.assert_allclose(np.diag(K[3]), np.ones(5), atol=1e-12)
