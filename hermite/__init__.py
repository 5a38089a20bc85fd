"""hermite: Hermite expansions and dual kernels of activation functions.

Convention (see docs/conventions.md): h_k = He_k / sqrt(k!) are orthonormal under z ~ N(0, 1), the
coefficients of f at input variance q are c_k(q) = E[f(sqrt(q) z) h_k(z)], so f(sqrt(q) z) =
sum_k c_k(q) h_k(z), E f(sqrt(q) z)^2 = sum_k c_k(q)^2, and by Mehler's formula the dual kernel is
E[f(u) f(v)] = sum_k c_k(q1) c_k(q2) rho^k.

Importing this package compiles nothing and touches no network.
"""

from hermite.activations import Activation, activation, builtin_names, parse_expression
from hermite.expansions import coefficients, second_moment, tail_mass
from hermite.kernels import kernel
from hermite.symbolic import exact_coefficients
from hermite.transforms import transform

__all__ = [
    "Activation", "activation", "builtin_names", "parse_expression", "coefficients", "second_moment",
    "tail_mass", "exact_coefficients", "kernel", "transform",
]
__version__ = "0.1.0"
