"""Transformations in nonlinearities (Vatanen, Raiko, Valpola and LeCun 2013) in a few lines.

Run:  python examples/transformations_demo.py

1. alpha, beta, gamma of tanh and ReLU for Gaussian pre-activations (the paper's gamma forms with the authors'
   regularizers, and the toolkit's unregularized ones), and the paper's empirical estimate on data;
2. the paper's deep shortcut network (all-to-all shortcuts, the authors' initialization) and the
   function-preserving update: re-estimating the transformations moves the removed linear part into the
   shortcut weights, the outputs stay the same to round-off;
3. same function, two parameterizations: the off-diagonal Fisher blocks and the gradient-Newton angle;
4. the toolkit's mean-field picture: only Hermite orders >= 2 remain, so correlations contract faster with depth.
"""

import numpy as np

import hermite
from meanfield import fisher, shortcuts
from meanfield import transformations as tr


def main() -> None:
    np.set_printoptions(precision=4, suppress=True)
    print("1. Gaussian estimator, u ~ N(0, q)")
    for act in ("tanh", "relu"):
        for q in (1.0, 0.5):
            t = tr.gaussian(act, q)
            row = "  ".join(f"{form}={float(tr.gaussian(act, q, gamma=form).gamma):.5f}"
                            for form in ("vatanen_geometric", "vatanen_variance", "unit_geometric", "unit_variance"))
            print(f"   {act:4s} q={q:3.1f}: alpha={float(t.alpha):+.6f} beta={float(t.beta):+.6f} gamma: {row}")
    rng = np.random.default_rng(0)
    U = rng.standard_normal((20000, 3))
    e = tr.empirical("tanh", U)
    print(f"   empirical (the paper's, gamma vatanen_geometric), N=20000, 3 units: alpha={e.alpha} gamma={e.gamma}")
    c = hermite.coefficients(tr.gaussian("tanh", 1.0, gamma="unit_variance").activation("tanh"), 5)
    print(f"   Hermite coefficients of the transformed tanh: {c}")

    print("\n2. The paper's network 6-10-10-10-2 and the function-preserving update")
    X = rng.standard_normal((300, 6))
    net = shortcuts.network((6, 10, 10, 10, 2), seed=1)
    y0 = fisher.forward(net, X)
    for gamma in ("vatanen_geometric", "vatanen_variance", None):
        net = shortcuts.update_transforms(net, X, gamma=gamma)
        print(f"   gamma={gamma!s:17s}: max |y_new - y_old| = {np.max(np.abs(fisher.forward(net, X) - y0)):.2e}")

    print("\n3. Same function, plain vs transformed parameters (6-12-1)")
    Y = np.sin(X @ rng.standard_normal(6) / 2)[:, None] + 0.3 * X[:, :1] * X[:, 1:2]
    plain = shortcuts.network((6, 12, 1), seed=2)
    mus = np.logspace(-3, 0, 4)
    for name, nn in (("plain", plain), ("transformed", shortcuts.update_transforms(plain, X))):
        G = fisher.gauss_newton(nn, X)
        bn = fisher.block_norms(G, fisher.parameters(nn).layout)
        ang = fisher.gradient_newton_angle(G, fisher.gradient(nn, X, Y), mus)
        print(f"   {name:11s}: |G_(W3,1)(W3,2)| = {bn[('W3,1', 'W3,2')]:.3f}, "
              f"|G_(W3,2)(b3)| = {bn[('W3,2', 'b3')]:.3f}, mean off-diagonal = {np.mean(list(bn.values())):.3f}, "
              f"angle(g, (G + mu I)^-1 g) at mu={mus} = {ang} deg")

    print("\n4. Mean field (toolkit): correlation of two inputs (rho0 = 0.9) through shortcut blocks")
    for act in ("tanh", "relu"):
        d = tr.depth_curves(act, depth=10, rho0=0.9)
        print(f"   {act:4s} transformed: {d['rho_transformed'][::2]}")
        print(f"   {act:4s} plain      : {d['rho_plain'][::2]}")


if __name__ == "__main__":
    main()
