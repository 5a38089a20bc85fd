"""PyTorch building blocks of the layers' torch forms (``Layer.to_torch_module``), and the model container.

Imported only by the layers' torch methods and by `meanfield.torch` (never by ``import meanfield``), so torch
stays an optional dependency. Nothing here names a layer type: each layer class builds its own module from
these pieces and torch's own (`nn.Linear`, `nn.LayerNorm`, ...), in float64 on the CPU; `meanfield.torch`
casts the finished model to the dtype and device asked for.

The modules follow the conventions of DESIGN.md: normalizations start at gamma = 1, beta = 0 (trainable);
batch-coupled modules use batch statistics in training mode (the mode `meanfield.to_torch` returns them in)
and running statistics at evaluation; a zero variance maps to 0, never to NaN.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Model", "Elementwise", "ResidualSum", "SampleCenter", "SampleScale", "BatchCenter", "UnitMaxPool",
           "DataInitWeightNorm", "build_sequence", "gaussian_", "weight_norm_linear", "native_activation",
           "frozen_statistics", "seed_of"]

DTYPE = torch.float64  # the layers build in float64; meanfield.torch casts
V_SCALE = 0.05  # standard deviation of weight-norm directions v (Salimans and Kingma's code)


def gaussian_(tensor: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Fill ``tensor`` with N(0, std^2) draws from ``generator`` (in place, no gradient); std = 0 gives zeros."""
    with torch.no_grad():
        if std > 0:
            tensor.normal_(0.0, std, generator=generator)
        else:
            tensor.zero_()
    return tensor


def build_sequence(layers, w_in: int, width, generator: torch.Generator) -> tuple[nn.Sequential, int]:
    """The torch forms of ``layers`` in order, as an `nn.Sequential`, and the output width.

    Each module is tagged with the layer it came from (``module.meanfield_layer``), so that
    `meanfield.from_torch` reads the description back exactly. A layer without a torch form raises the
    ValueError of `meanfield.Layer.to_torch_module`, which names it.
    """
    modules = []
    w = w_in
    for layer in layers:
        module, w = layer.to_torch_module(w, width, generator)
        module.meanfield_layer = layer
        modules.append(module)
    return nn.Sequential(*modules), w


# ---------------------------------------------------------------------------------------------------------
# activations
def _native_table() -> dict:
    """Built-in activation name -> (params -> torch function of the core phi), where torch has phi itself
    (faster, and exact derivatives at the kinks); every other activation runs through its array-API form."""
    return {
        "relu": lambda p: F.relu,
        "leaky_relu": lambda p: (lambda x: F.leaky_relu(x, p.get("negative_slope", 0.01))),
        "tanh": lambda p: torch.tanh,
        "sigmoid": lambda p: torch.sigmoid,
        "gelu": lambda p: F.gelu,
        "gelu_tanh": lambda p: (lambda x: F.gelu(x, approximate="tanh")),
        "silu": lambda p: F.silu,
        "mish": lambda p: F.mish,
        "elu": lambda p: (lambda x: F.elu(x, p.get("alpha", 1.0))),
        "selu": lambda p: F.selu,
        "hardtanh": lambda p: (lambda x: F.hardtanh(x, p.get("min_val", -1.0), p.get("max_val", 1.0))),
        "relu6": lambda p: F.relu6,
        "erf": lambda p: torch.special.erf,
        "identity": lambda p: (lambda x: x),
        "abs": lambda p: torch.abs,
        "sin": lambda p: torch.sin,
        "cos": lambda p: torch.cos,
        "exp": lambda p: torch.exp,
    }


def native_activation(act):
    """The torch function of the core of ``act`` (a `hermite.Activation`), or None where torch has none."""
    try:
        spec = act.to_dict()
    except ValueError:  # an opaque user callable
        return None
    make = _native_table().get(spec.get("name")) if isinstance(spec.get("name"), str) else None
    return None if make is None else make(dict(spec.get("params", {})))


class _HostFunction(torch.autograd.Function):
    """f on the host (numpy), with f' on the host for the backward pass: the torch form of an activation
    that only runs on numpy arrays (first derivatives only)."""

    @staticmethod
    def forward(ctx, x, act):
        ctx.save_for_backward(x)
        ctx.act = act
        y = np.asarray(act.fn(x.detach().cpu().double().numpy()), dtype=np.float64)
        return torch.as_tensor(y, dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        d = np.asarray(ctx.act.derivative(x.detach().cpu().double().numpy()), dtype=np.float64)
        return grad * torch.as_tensor(d, dtype=grad.dtype, device=grad.device), None


class Elementwise(nn.Module):
    """f(x) = gamma (phi(gain x) + alpha x + beta) unit by unit, for any `hermite.Activation`.

    phi is torch's own function where it has one (`native_activation`); else the activation's array-API
    form on torch tensors (differentiable by autograd like any torch expression); else, for an activation
    that only runs on numpy arrays (a user callable, a transform that subtracts Hermite orders >= 2), a host
    round trip with f' for the backward pass (``mode`` says which). Per-unit alpha, beta, gamma are buffers
    over the last axis.
    """

    def __init__(self, act):
        super().__init__()
        import array_api_compat.torch as xp

        self.act = act
        self._xp = xp
        self._native = native_activation(act)
        for key in ("alpha", "beta", "gamma"):
            v = getattr(act, key)
            if isinstance(v, np.ndarray):
                self.register_buffer(key, torch.as_tensor(v, dtype=DTYPE))
            else:
                setattr(self, key, float(v))
        self.gain = float(act.gain)
        probe = torch.linspace(-3.0, 3.0, 7, dtype=DTYPE)
        if act.per_unit:
            probe = probe[:, None].expand(7, act.units).contiguous()
        self.mode = "native" if self._native is not None else "array_api"
        failure = None
        for mode in ((self.mode,) if self.mode == "native" else ("array_api", "host")):
            self.mode = mode
            try:
                out = self.forward(probe)
            except Exception as exc:  # noqa: BLE001 - any failure means "not this way"
                failure = f"{type(exc).__name__}: {exc}"
                continue
            if isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(probe.shape):
                return
            failure = f"it returns {type(out).__name__}, not a tensor of the input's shape"
        raise ValueError(f"to_torch: activation {act.name!r} has no torch form ({failure})")

    def forward(self, x):
        if self.mode == "array_api":
            from meanfield.core.backends import OnDevice

            return self.act.array_fn(x, self._xp if x.device.type == "cpu" else OnDevice(self._xp, x.device))
        if self.mode == "host":
            return _HostFunction.apply(x, self.act)
        y = self._native(x * self.gain if self.gain != 1.0 else x)
        if self.act.is_plain:
            return y
        return self.gamma * (y + self.alpha * x + self.beta)

    def extra_repr(self) -> str:
        return f"{self.act.name!r}" + ("" if self.mode == "native" else f", mode={self.mode!r}")


# ---------------------------------------------------------------------------------------------------------
# normalizations without a torch.nn equivalent
class SampleCenter(nn.Module):
    """x - (mean of x over its features), per sample."""

    def forward(self, x):
        return x - x.mean(dim=-1, keepdim=True)


class SampleScale(nn.Module):
    """x / sqrt(mean of x^2 over its features), per sample; an all-zero sample stays 0."""

    def forward(self, x):
        ms = (x * x).mean(dim=-1, keepdim=True)
        ok = ms > 0
        return x * torch.where(ok, torch.rsqrt(torch.where(ok, ms, torch.ones_like(ms))), torch.zeros_like(ms))


class BatchCenter(nn.Module):
    """Mean-only batch normalization (Salimans and Kingma 2016, section 2.2): y = x - mu[x] + b.

    Training mode: mu is each feature's batch mean, and the running mean moves towards it by ``momentum``
    (0.1, the authors' 0.9/0.1 average); evaluation mode: mu is the running mean. b is a trainable bias,
    0 at initialization.
    """

    def __init__(self, width: int, momentum: float = 0.1):
        super().__init__()
        self.momentum = momentum
        self.bias = nn.Parameter(torch.zeros(width, dtype=DTYPE))
        self.register_buffer("running_mean", torch.zeros(width, dtype=DTYPE))

    def forward(self, x):
        if self.training:
            mu = x.mean(dim=0)
            if self.momentum:
                with torch.no_grad():
                    self.running_mean.lerp_(mu.detach(), self.momentum)
        else:
            mu = self.running_mean
        return x - mu + self.bias


class ConstantAffine(nn.Module):
    """(x - shift) * scale with fixed constants (Joudaki et al.'s mean-field centring and normalization)."""

    def __init__(self, shift: float = 0.0, scale: float = 1.0):
        super().__init__()
        self.shift, self.scale = float(shift), float(scale)

    def forward(self, x):
        return (x - self.shift) * self.scale

    def extra_repr(self) -> str:
        return f"shift={self.shift:.6g}, scale={self.scale:.6g}"


class Concatenation(nn.Module):
    """y = [x, branch(x)] along the features (all-to-all shortcuts)."""

    def __init__(self, branch: nn.Module):
        super().__init__()
        self.branch = branch

    def forward(self, x):
        return torch.cat([x, self.branch(x)], dim=-1)


class UnitMaxPool(nn.Module):
    """Max over k consecutive units of the last axis (the width shrinks by k)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        return x.reshape(*x.shape[:-1], x.shape[-1] // self.k, self.k).amax(dim=-1)

    def extra_repr(self) -> str:
        return f"k={self.k}"


# ---------------------------------------------------------------------------------------------------------
# weight normalization
def weight_norm_linear(w_in: int, w_out: int, g: float, sigma_b: float, generator: torch.Generator) -> nn.Linear:
    """nn.Linear under torch's weight-norm parametrization (``torch.nn.utils.parametrizations.weight_norm``)
    w_i = g_i v_i / ||v_i||: v ~ N(0, 0.05^2) (a uniformly random direction per row; the scale 0.05 of
    Salimans and Kingma's code, which sets the effective step size of v under SGD and Adam, not the law of
    w), every g_i = g, biases N(0, sigma_b^2)."""
    from torch.nn.utils.parametrizations import weight_norm

    lin = nn.Linear(w_in, w_out, dtype=DTYPE)
    gaussian_(lin.weight, V_SCALE, generator)
    gaussian_(lin.bias, sigma_b, generator)
    lin = weight_norm(lin, name="weight", dim=0)
    with torch.no_grad():
        lin.parametrizations.weight.original0.fill_(g)
    return lin


class DataInitWeightNorm(nn.Module):
    """Salimans and Kingma's data-dependent initialization of a weight-normalized linear layer.

    The first forward pass in training mode sets g_i = 1/sigma_i and b_i = -mu_i/sigma_i from the batch
    statistics (population standard deviation) of t_i = v_i . x / ||v_i||, so that the pre-activations of that
    batch have mean 0 and standard deviation 1 per unit; a unit with zero variance gets g_i = b_i = 0 (output
    0, as in both engines). Later passes are plain weight-normalized linear maps.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, x):
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                p = self.linear.parametrizations.weight
                p.original0.fill_(1.0)
                self.linear.bias.zero_()
                t = self.linear(x)
                mu = t.mean(dim=0)
                var = ((t - mu) ** 2).mean(dim=0)
                tol = 4.0 * max(t.shape[0], 16) * torch.finfo(t.dtype).eps ** 2 * (t * t).mean(dim=0)
                ok = var > tol
                inv = torch.where(ok, torch.rsqrt(torch.where(ok, var, torch.ones_like(var))), torch.zeros_like(var))
                p.original0.copy_(inv[:, None])
                self.linear.bias.copy_(-mu * inv)
                self.initialized.fill_(True)
        return self.linear(x)


# ---------------------------------------------------------------------------------------------------------
# structure
class ResidualSum(nn.Module):
    """y = shortcut(x) + alpha * branch(x); shortcut None is the identity."""

    def __init__(self, branch: nn.Module, alpha: float, shortcut: nn.Module | None = None):
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut
        self.alpha = float(alpha)

    def forward(self, x):
        s = x if self.shortcut is None else self.shortcut(x)
        return s + self.alpha * self.branch(x)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}"


class Model(nn.Module):
    """The torch model of a `meanfield.Network`: one `nn.Sequential` per block (``model.blocks``).

    ``model(x)`` is the output of the last block; ``model.features(x)`` lists the input and the output of
    every block (what the Gram trajectories of both engines record); ``model.network`` is the description.
    """

    def __init__(self, blocks: list, network, widths: list):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.meanfield_network = network
        self.widths = list(widths)

    @property
    def network(self):
        return self.meanfield_network

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x

    def features(self, x) -> list:
        """[x, output of block 1, ..., output of block L]."""
        out = [x]
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out


def frozen_statistics(model: nn.Module):
    """Context manager: training-mode (batch-statistics) forward passes that leave every running statistic
    (BatchNorm1d, BatchCenter) unchanged."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        saved = []
        for m in model.modules():
            if hasattr(m, "momentum") and hasattr(m, "running_mean"):
                saved.append((m, m.momentum))
                m.momentum = 0.0
        try:
            yield
        finally:
            for m, mom in saved:
                m.momentum = mom

    return ctx()


def seed_of(seq: np.random.SeedSequence) -> int:
    """A 63-bit torch seed from a numpy SeedSequence."""
    return int(seq.generate_state(1, dtype=np.uint64)[0] % (2**63 - 1))

