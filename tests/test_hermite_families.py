"""Registry-wide checks of the activation families (`hermite.cores`, `hermite.builtins`) and of the
Activation API the engines use (homogeneity, second derivatives, per-unit parameters).

Every closed form a family class overrides must agree with the generic numerical path of the `Core` base
class (kink-split quadrature, proven Mehler series, two-dimensional quadrature) to 1e-12 relative to
sqrt(E f(u)^2 E f(v)^2), so a new family (one class and one table row) is checked by its row alone.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import hermite
from hermite import cores, quadrature
from hermite.builtins import TABLE, builtin_core

TOL = 1e-12
REPO = Path(__file__).resolve().parents[1]
CLOSED = ("closed_coefficients", "closed_second_moment", "closed_kernel")
RHOS = np.array([-1.0, -0.5, 0.0, 0.3, 0.9, 1.0])
Q1, Q2 = 0.7, 1.9


def _overrides(cls, method) -> bool:
    return getattr(cls, method) is not getattr(cores.Core, method)


# the built-in rows of every family class with a closed form, plus parameterized members
# softplus(beta) reads its numerics off the unit softplus only for beta != 1 (at beta = 1 it is the unit itself)
FAMILY_ROWS = [(name, {"beta": 3.0} if name == "softplus" else {}) for name, (cls, _) in TABLE.items()
               if any(_overrides(cls, m) for m in CLOSED)]
FAMILY_ROWS += [("leaky_relu", {"negative_slope": 0.2}), ("leaky_relu", {"negative_slope": -0.5})]
IDS = [f"{n}{p or ''}" for n, p in FAMILY_ROWS]


def test_every_family_class_has_a_row():
    """Each class in hermite.cores with a closed form is reachable through a built-in row (so it is
    checked below); adding a family is one class and one row."""
    classes = {obj for obj in vars(cores).values()
               if isinstance(obj, type) and issubclass(obj, cores.Core) and any(_overrides(obj, m) for m in CLOSED)}
    covered = {type(builtin_core(name, p)) for name, p in FAMILY_ROWS}
    assert classes == covered, classes ^ covered
    assert {"ArcCosineCore", "StepCore", "ErfCore", "ExpCore", "SinCore", "CosCore", "GaussianCore",
            "GeluCore"} <= {c.__name__ for c in classes}


@pytest.mark.parametrize("name,params", FAMILY_ROWS, ids=IDS)
def test_closed_forms_agree_with_the_generic_numerical_path(name, params):
    core = builtin_core(name, params)
    cls = type(core)
    Q = np.array([0.3, 1.0, 2.5])
    M = core.numerical_second_moment(Q)
    if _overrides(cls, "closed_second_moment"):
        assert np.all(np.abs(core.closed_second_moment(Q) - M) <= TOL * M)
    if _overrides(cls, "closed_coefficients"):
        known = 0
        for K in (30, 1):  # a family may know its low orders only (gelu: c_0, c_1), returning None above
            c = core.closed_coefficients(K, Q)
            if c is None:
                continue
            known += 1
            ref = core.numerical_coefficients(K, Q)
            assert np.all(np.abs(c - ref) <= TOL * np.sqrt(M)[:, None])
        assert known
    if _overrides(cls, "closed_kernel"):
        r = RHOS
        q1, q2 = np.full(r.size, Q1), np.full(r.size, Q2)
        scale = math.sqrt(core.numerical_second_moment(np.array([Q1]))[0]
                          * core.numerical_second_moment(np.array([Q2]))[0])
        with np.errstate(divide="ignore"):
            k = core.closed_kernel(r, q1, q2, 0)
        ref = core.numerical_kernel(r, q1, q2, 0)
        assert np.all(np.abs(k - ref) <= TOL * scale), (k, ref)
        with np.errstate(divide="ignore"):
            k1 = core.closed_kernel(r, q1, q2, 1)
        if k1 is not None and not core.jumps:  # phi' with delta masses has no numerical kernel
            d = core.derivative_moment(np.array([Q1, Q2]))
            ref1 = core.numerical_kernel(r, q1, q2, 1)
            assert np.all(np.abs(k1 - ref1) <= TOL * math.sqrt(d[0] * d[1])), (k1, ref1)


def test_family_fast_numba_kernel_matches_numpy():
    """The compiled arc-cosine kernel (large arrays) equals the numpy formula to rounding."""
    core = builtin_core("leaky_relu", {"negative_slope": 0.2})
    rng = np.random.default_rng(1)
    r = rng.uniform(-1, 1, 5000)
    q1, q2 = rng.uniform(0.1, 3, 5000), rng.uniform(0.1, 3, 5000)
    big = core.closed_kernel(r, q1, q2, 0)
    small = np.concatenate([core.closed_kernel(r[i:i + 1000], q1[i:i + 1000], q2[i:i + 1000], 0)
                            for i in range(0, 5000, 1000)])
    assert np.max(np.abs(big - small)) <= 1e-15 * np.max(np.abs(small))


# ------------------------------------------------------------------------------------------------
# homogeneity
def _holds(f, d, x, c):
    return np.allclose(f(c * x), c**d * f(x), rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize("name", hermite.builtin_names())
def test_homogeneous_degree_of_every_builtin(name):
    """d = act.homogeneous_degree satisfies f(c x) = c^d f(x) for c > 0; None means neither d = 0 nor 1 does."""
    act = hermite.activation(name)
    x = np.linspace(-5, 5, 101)
    d = act.homogeneous_degree
    cs = (0.37, 2.9)
    if d is None:
        assert not any(all(_holds(act, dd, x, c) for c in cs) for dd in (0, 1)), name
    else:
        assert d in (0, 1)
        assert all(_holds(act, d, x, c) for c in cs), name


def test_homogeneous_degree_with_affine_parts():
    relu = hermite.activation("relu")
    assert relu.homogeneous_degree == 1
    assert hermite.activation("relu", gain=3.0).homogeneous_degree == 1
    assert replace(relu, alpha=0.3, gamma=2.0).homogeneous_degree == 1
    assert replace(relu, beta=0.1).homogeneous_degree is None
    assert hermite.transform("relu").homogeneous_degree is None  # centred: beta != 0
    sign = hermite.activation("sign")
    assert sign.homogeneous_degree == 0
    assert replace(sign, beta=0.5, gamma=3.0).homogeneous_degree == 0
    assert replace(sign, alpha=0.5).homogeneous_degree is None
    assert hermite.activation("tanh").homogeneous_degree is None
    assert hermite.activation("monomial", k=3).homogeneous_degree is None  # degree 3: not 0 or 1


# ------------------------------------------------------------------------------------------------
# second derivatives
def _second_derivative_cases():
    out = [(n, hermite.activation(n)) for n in hermite.builtin_names()]
    out += [("elu(2)", hermite.activation("elu", alpha=2.0)), ("softplus(3)", hermite.activation("softplus", beta=3.0)),
            ("monomial(4)", hermite.activation("monomial", k=4)), ("hermite(5)", hermite.activation("hermite", k=5)),
            ("formula", hermite.activation("x*tanh(x) + abs(x - 0.5)")),
            ("gain+affine", replace(hermite.activation("softplus", gain=1.7), alpha=0.2, beta=-0.1, gamma=1.3)),
            ("transform", hermite.transform("tanh")), ("transform_poly", hermite.transform("gelu", remove=(0, 1, 2))),
            ("callable", hermite.activation(np.sin, derivative=np.cos, second_derivative=lambda t: -np.sin(t)))]
    return out


@pytest.mark.parametrize("label,act", _second_derivative_cases(), ids=[c[0] for c in _second_derivative_cases()])
def test_second_derivative_matches_finite_differences(label, act):
    """f''(x) against the central difference (f'(x + h) - f'(x - h)) / (2h), away from the kinks."""
    assert act.has_derivative and act.has_second_derivative
    x = np.linspace(-3.1, 3.3, 67)
    h = 1e-5
    if act.kinks:
        x = x[np.min(np.abs(x[:, None] - np.array(act.kinks)[None, :]), axis=1) > 10 * h]
    fd = (act.derivative(x + h) - act.derivative(x - h)) / (2 * h)
    d2 = act.second_derivative(x)
    scale = 1.0 + np.abs(d2)
    assert np.all(np.abs(d2 - fd) <= 1e-5 * scale), np.max(np.abs(d2 - fd) / scale)


def test_second_derivative_missing_is_a_value_error():
    act = hermite.activation(np.tanh, derivative=lambda t: 1 / np.cosh(t) ** 2)
    assert act.has_derivative and not act.has_second_derivative
    with pytest.raises(ValueError, match="second derivative"):
        act.second_derivative(np.zeros(3))
    bare = hermite.activation(np.tanh)
    assert not bare.has_derivative
    assert not hermite.transform(bare, remove=(0, 1, 2)).has_derivative


# ------------------------------------------------------------------------------------------------
# per-unit parameters
ALPHA = np.array([0.1, -0.4, 0.0, 1.5])
BETA = np.array([0.0, 0.3, -0.2, 0.05])
GAMMA = np.array([1.0, 2.0, 0.5, 1.25])


@pytest.mark.parametrize("name", ["tanh", "relu", "gelu", "x*tanh(x)"])
def test_per_unit_activation_matches_per_column_scalars(name):
    base = hermite.activation(name, gain=1.3)
    act = replace(base, alpha=base.alpha + ALPHA, beta=list(BETA), gamma=tuple(GAMMA))
    assert act.per_unit and act.units == 4 and not base.per_unit
    X = np.random.default_rng(0).normal(size=(7, 3, 4)) * 2
    cols = [replace(base, alpha=base.alpha + ALPHA[i], beta=BETA[i], gamma=GAMMA[i]) for i in range(4)]
    for method in ("fn", "derivative", "second_derivative"):
        got = getattr(act, method)(X)
        want = np.stack([getattr(c, method)(X[..., i]) for i, c in enumerate(cols)], axis=-1)
        np.testing.assert_allclose(got, want, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(act.array_fn(X.astype(np.float32), np), act(X), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="x.shape"):
        act(np.zeros((2, 3)))
    assert "[" in act.name  # per-unit values are formatted, not an error


def test_per_unit_refuses_scalar_expansions():
    act = replace(hermite.activation("tanh"), alpha=ALPHA, gamma=GAMMA)
    calls = [lambda: hermite.coefficients(act, 3), lambda: hermite.kernel(act, 0.5),
             lambda: hermite.second_moment(act), lambda: hermite.tail_mass(act, 3),
             lambda: hermite.transform(act), lambda: hermite.kernel(act, 0.5, derivative=1, centered=True),
             lambda: act.kernel_at(np.zeros(1), np.ones(1), np.ones(1)), lambda: act.mean_at(np.ones(1)),
             lambda: hermite.exact_coefficients(replace(hermite.activation("relu"), beta=BETA), 2)]
    for call in calls:
        with pytest.raises(ValueError, match="per-unit parameters .* no single Hermite expansion"):
            call()
    assert act.expr is None


def test_per_unit_serialization_equality_and_validation():
    act = replace(hermite.activation("softplus", beta=2.0), alpha=ALPHA, beta=BETA, gamma=GAMMA, label="t")
    d = act.to_dict()
    assert d["alpha"] == list(ALPHA) and d["gamma"] == list(GAMMA)
    back = hermite.Activation.from_dict(json.loads(json.dumps(d)))
    assert back == act and hash(back) == hash(act) and back.label == "t"
    assert replace(act, gamma=GAMMA * 2) != act
    assert len({act, back}) == 1
    np.testing.assert_array_equal(back(np.ones((2, 4))), act(np.ones((2, 4))))
    with pytest.raises(ValueError, match="alpha"):
        replace(act, alpha=np.ones((2, 2)))
    with pytest.raises(ValueError, match="lengths"):
        replace(act, alpha=np.ones(3))
    with pytest.raises(ValueError, match="gain"):
        replace(act, gain=np.ones(4))
    with pytest.raises(ValueError, match="beta"):
        replace(act, beta=[0.0, np.nan, 0.0, 0.0])


def test_scalar_parameters_are_unchanged():
    """Scalars stay scalars (no conversion), so scalar activations behave exactly as before."""
    t = hermite.transform("tanh")
    assert not t.per_unit and t.units is None
    assert isinstance(t.alpha, (float, np.floating)) and not isinstance(t.alpha, np.ndarray)
    assert hermite.Activation.from_dict(t.to_dict()) == t


# ------------------------------------------------------------------------------------------------
# the engines' view of an activation
def test_features_and_has_derivative():
    act = hermite.activation("tanh", gain=4.0)
    assert act.features == (0.0,) and act.has_derivative
    assert hermite.activation("relu").features == ()
    assert not hermite.activation(lambda x: np.abs(x) ** 1.5, kinks=[0.0]).has_derivative


def test_gaussian_expectation_against_closed_forms():
    """E relu(m + s z) = m Phi(m/s) + s phi(m/s); E (m + s z)^2 = m^2 + s^2, several functions at once."""
    from scipy.special import ndtr

    for m, q in [(0.3, 0.5), (-2.0, 4.0), (0.0, 1e-4), (5.0, 1e3)]:
        s = math.sqrt(q)

        def g(u):
            return np.stack([np.maximum(u, 0.0), u * u])

        v = quadrature.gaussian_expectation(g, m, q, kinks=(0.0,))
        relu = m * ndtr(m / s) + s * math.exp(-0.5 * (m / s) ** 2) / math.sqrt(2 * math.pi)
        assert abs(v[0] - relu) <= 1e-14 * (abs(relu) + s)
        assert abs(v[1] - (m * m + q)) <= 1e-14 * (m * m + q)


@pytest.mark.parametrize("call,arg", [
    (lambda: hermite.coefficients("relu", -1), "K=-1 must be"),
    (lambda: hermite.coefficients("relu", 2, q=-1.0), "q=-1.0 must be"),
    (lambda: hermite.second_moment("relu", q=float("nan")), "q=nan must be"),
    (lambda: hermite.kernel("relu", 1.5), "rho=1.5 must be"),
    (lambda: hermite.kernel("relu", 0.5, derivative=2), "derivative=2 must be"),
    (lambda: hermite.kernel("relu", 0.5, centered="yes"), "centered='yes' must be"),
    (lambda: hermite.coefficients("relu", 2, convention="x"), "convention='x' must be"),
    (lambda: hermite.activation("relu", gain=0), "gain=0 must be"),
    (lambda: hermite.activation(np.sin, parity=2), "parity=2 must be"),
])
def test_one_message_style(call, arg):
    """hermite's validators say '<argument>=<value> must be <allowed range>'."""
    with pytest.raises(ValueError, match=arg.replace("(", r"\(").replace("[", r"\[")):
        call()


def test_import_imports_neither_numba_nor_sympy():
    code = "import sys, hermite; print('numba' in sys.modules, 'sympy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["False", "False"]
