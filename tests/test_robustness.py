"""Issue 17: refuse bad input, never return a wrong number.

Each test names the defect it covers (the numbering of issue 17):

2. bounded parsing of formulas (exponent towers, deep nesting, sympy failures);
3. divergent Gaussian integrals detected from the integrand (+inf or ValueError, never a finite number);
4. validation holes (relative PSD tolerance, gamma_from_gram, layer dicts, complex data, memory, seeds);
5. rank-aware measures (a deterministic relative eigenvalue threshold decides singularity).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import hermite
import meanfield

# ---------------------------------------------------------------------------------------------------------
# 2. bounded parsing


@pytest.mark.parametrize("text,limit", [
    ("9**9**9**9", "MAX_TOWER"),  # hung: 9**(9**387420489)
    ("-" * 1900 + "x", "MAX_DEPTH"),  # RecursionError
    ("9**9**9", "MAX_CONSTANT_BITS"),  # an exact integer of 1.2e9 bits
    ("x**1000", "MAX_EXPONENT"),
    ("(x**10)**20", "MAX_EXPONENT"),  # sympy folds it into x**200
    ("exp(" * 70 + "x" + ")" * 70, "MAX_DEPTH"),
    ("Max(" + ",".join(["x"] * 700) + ")", "MAX_NODES"),
    ("x" * 2001, "MAX_LENGTH"),
])
def test_formula_limits_are_named_and_fast(text, limit):
    """Defect 2: a formula is refused in bounded time with a ValueError naming the limit."""
    hermite.activation("x")  # import sympy outside the timing
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=limit):
        hermite.activation(text)
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize("text", ["1/0", "1e999", "sin(x, 2)", "Max()", "erf()"])
def test_sympy_failures_and_non_finite_constants_are_value_errors(text):
    """Defect 2: every failure inside sympy is a ValueError naming the formula."""
    with pytest.raises(ValueError, match="activation"):
        hermite.activation(text)


def test_allowed_formulas_within_the_limits_still_parse():
    assert hermite.activation("x**2**3")(np.array([2.0]))[0] == 256.0  # tower of height 3
    assert hermite.activation("9.0**9**9").name  # a float constant: bounded cost
    x = np.array([0.5, 1.5])
    np.testing.assert_allclose(hermite.activation("(" * 100 + "x" + ")" * 100)(x), x)  # parentheses are free
    np.testing.assert_allclose(hermite.activation("x**100")(x), x**100)


@pytest.mark.parametrize("text", ["sqrt(x)", "log(x)", "x**0.5"])
def test_formulas_not_real_on_an_interval_are_refused(text):
    """Defect 3 (a formula that is NaN for x < 0 would give NaN moments): refused at construction."""
    with pytest.raises(ValueError, match="real-valued"):
        hermite.activation(text)


def test_tower_through_network_from_dict_and_mlp():
    """Defect 2 through the other entry points (Network.from_dict, mlp; the CLI and sweeps use them)."""
    d = meanfield.mlp(1, "tanh").to_dict()
    d["blocks"][0]["layers"][1]["act"] = {"expr": "9**9**9**9"}
    hermite.activation("x")  # import sympy outside the timing
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="MAX_TOWER"):
        meanfield.Network.from_dict(d)
    with pytest.raises(ValueError, match="MAX_DEPTH"):
        meanfield.mlp(1, "-" * 1900 + "x")
    assert time.perf_counter() - t0 < 2.0


