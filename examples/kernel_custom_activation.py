"""Dual kernel of your own activation: a Python callable with kinks, and a formula string.

For jointly Gaussian (u, v) with unit variances and correlation rho, the dual kernel is

    k(rho) = E[f(u) f(v)] = sum_k c_k^2 rho^k              (Mehler; c_k = E[f(z) h_k(z)], h_k = He_k/sqrt(k!))

`hermite.kernel` evaluates k(rho) directly (closed forms, or a 2-D quadrature split at the kinks), to
about 1e-12 for every rho in [-1, 1]. This script compares it with the Mehler series truncated at K terms:
for |rho| < 1 the truncation error falls geometrically (like |rho|^K), but at rho = +-1 it falls only like
a power of K for an activation with a kink (K^(-3/2) for a ReLU-like corner: c_k^2 ~ k^(-5/2)), so a
truncated series is no substitute for the kernel near |rho| = 1.

    python examples/kernel_custom_activation.py
"""

from __future__ import annotations

import numpy as np

import hermite


def clipped_leaky(x):
    """A leaky ReLU that saturates: slope 0.1 below 0, slope 1 on [0, 1], flat above 1 (kinks at 0 and 1)."""
    x = np.asarray(x, dtype=float)
    return np.where(x < 0, 0.1 * x, np.minimum(x, 1.0))


def mehler(c: np.ndarray, rho: np.ndarray, K: int) -> np.ndarray:
    """sum_{k<=K} c_k^2 rho^k (Horner)."""
    out = np.zeros_like(rho)
    for ck in c[K::-1]:
        out = out * rho + ck * ck
    return out


def report(act: hermite.Activation, title: str, orders=(10, 40, 160, 640)) -> None:
    rho = np.array([-1.0, -0.9, -0.5, 0.0, 0.5, 0.9, 0.99, 1.0])
    k = hermite.kernel(act, rho)  # direct evaluation
    c = hermite.coefficients(act, max(orders))
    print(f"\n{title}")
    print(f"  E f(z)^2 = {hermite.second_moment(act):.15f}   (= k(1); sum of c_k^2 up to K={max(orders)}: "
          f"{float(np.sum(c * c)):.15f})")
    print(f"  c_0..c_5 = {np.array2string(c[:6], precision=6, suppress_small=True)}")
    print("  " + f"{'rho':>6} {'kernel(rho)':>20}" + "".join(f"{'|err| K=' + str(K):>15}" for K in orders))
    for i, r in enumerate(rho):
        errs = "".join(f"{abs(mehler(c, rho[i:i + 1], K)[0] - k[i]):>15.2e}" for K in orders)
        print(f"  {r:>6.2f} {k[i]:>20.15f}{errs}")


def main() -> None:
    # a callable: declare its kinks so the quadrature is split there (1e-12 instead of ~1e-4)
    act = hermite.activation(clipped_leaky, kinks=[0.0, 1.0], name="clipped_leaky")
    report(act, "callable clipped_leaky (kinks at 0 and 1): Mehler series vs hermite.kernel")

    # a formula string: parsed safely with sympy; its kinks (here at x = 0) are found automatically
    act = hermite.activation("Max(x, 0) + 0.5*tanh(x)")
    report(act, "formula 'Max(x, 0) + 0.5*tanh(x)': Mehler series vs hermite.kernel")

    # derivative kernel E f'(u) f'(v) (what chi_1 and the gradient norms use) and the covariance
    print("\nE f'(u) f'(v) and the centred kernel of the formula at rho = 0.5:",
          float(hermite.kernel(act, 0.5, derivative=1)), float(hermite.kernel(act, 0.5, centered=True)))


if __name__ == "__main__":
    main()
