"""Hermite coefficients, second moment and linear share of every built-in activation.

For each built-in f (parameterized ones at their default parameters) and input variance q (default 1):

    c_k    = E[f(sqrt(q) z) h_k(z)],  z ~ N(0, 1),  h_k = He_k / sqrt(k!)   (orthonormal Hermite basis)
    E f^2  = E[f(sqrt(q) z)^2] = sum_k c_k^2
    beta_0 = c_1^2 / sum_{k>=1} c_k^2 = c_1^2 / (E f^2 - c_0^2)        (the linear share of centred f)

beta_0 = 1 means f is affine; small beta_0 means f is strongly nonlinear at this input scale.

    python examples/hermite_table.py [--q 1.0] [--order 5]
"""

from __future__ import annotations

import argparse
import math

import hermite


def label(act: hermite.Activation) -> str:
    params = act.params
    if not params:
        return act.name
    return f"{act.name}({', '.join(f'{k}={v:g}' for k, v in params.items())})"


def fmt(x: float, digits: int = 5) -> str:
    """Fixed-point, without the '-0.00000' of tiny negative numbers."""
    s = f"{x:.{digits}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def rows(q: float, order: int):
    for name in hermite.builtin_names():
        act = hermite.activation(name)
        c = hermite.coefficients(act, order, q)
        m2 = hermite.second_moment(act, q)
        scale = math.sqrt(m2)
        c = [0.0 if abs(x) < 1e-13 * scale else float(x) for x in c]  # exact zeros print as 0
        var = m2 - c[0] ** 2
        beta0 = c[1] ** 2 / var if var > 1e-15 * m2 else float("nan")
        yield label(act), c, m2, beta0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--q", type=float, default=1.0, help="input variance q (default 1)")
    ap.add_argument("--order", type=int, default=5, help="highest Hermite order shown (default 5)")
    args = ap.parse_args(argv)

    data = list(rows(args.q, args.order))
    wname = max(len("activation"), *(len(r[0]) for r in data))
    cols = [f"c_{k}" for k in range(args.order + 1)] + ["E f^2", "beta_0"]
    w = 10
    print(f"Hermite coefficients of the built-in activations at input variance q = {args.q:g}")
    print("c_k = E[f(sqrt(q) z) h_k(z)], h_k = He_k/sqrt(k!) orthonormal; "
          "beta_0 = c_1^2 / (E f^2 - c_0^2) (linear share)")
    print()
    header = f"{'activation':<{wname}}" + "".join(f"{h:>{w}}" for h in cols)
    print(header)
    print("-" * len(header))
    for name, c, m2, beta0 in data:
        cells = "".join(f"{fmt(x):>{w}}" for x in c)
        print(f"{name:<{wname}}{cells}{fmt(m2):>{w}}{fmt(beta0, 4):>{w}}")


if __name__ == "__main__":
    main()
