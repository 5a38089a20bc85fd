"""Transformations in nonlinearities (Vatanen, Raiko, Valpola and LeCun 2013) in a few lines.

Run:  python examples/transformations_demo.py

1. alpha, beta, gamma of tanh and ReLU for Gaussian pre-activations, and the empirical estimate;
2. the function-preserving update: re-estimating the transformations moves the removed linear part
   into the shortcut weights, the outputs stay the same to round-off;
3. same function, two parameterizations: the off-diagonal Fisher blocks and the gradient-Newton angle;
4. the mean-field effect: only Hermite orders >= 2 remain, so correlations contract faster with depth.
"""

import numpy as np

import hermite
from meanfield import fisher
from meanfield import transformations as tr


def main() -> None:
    np.set_printoptions(precision=4, suppress=True)
    print("1. Gaussian estimator, u ~ N(0, q)")
    for act in ("tanh", "relu"):
        for q in (1.0, 0.5):
            t = tr.gaussian(act, q)
            tg = tr.gaussian(act, q, gamma="geometric")
            print(f"   {act:4s} q={q:3.1f}: alpha={float(t.alpha):+.6f} beta={float(t.beta):+.6f} "
                  f"gamma(variance)={float(t.gamma):.6f} gamma(geometric)={float(tg.gamma):.6f}")
    rng = np.random.default_rng(0)
    U = rng.standard_normal((20000, 3))
    e = tr.empirical("tanh", None, U)
    print(f"   empirical, N=20000, 3 units: alpha={e.alpha} gamma={e.gamma}")
    c = hermite.coefficients(tr.to_activation("tanh", tr.gaussian("tanh", 1.0)), 5)
    print(f"   Hermite coefficients of the transformed tanh: {c}")

    print("\n2. Function-preserving update on a 3-block shortcut MLP")
    X = rng.standard_normal((300, 6))
    net = fisher.shortcut_mlp((6, 10, 4, 10, 4, 10, 2), "tanh", seed=1, sigma_b=0.5)
    y0 = fisher.forward(net, X)
    for gamma in ("variance", "geometric", None):
        net = tr.update_transforms(net, X, gamma=gamma)
        print(f"   gamma={gamma!s:9s}: max |y_new - y_old| = {np.max(np.abs(fisher.forward(net, X) - y0)):.2e}")

    print("\n3. Same function, plain vs transformed parameters (y = A f(Bx + b) + Cx + d)")
    Y = np.sin(X @ rng.standard_normal(6) / 2)[:, None] + 0.3 * X[:, :1] * X[:, 1:2]
    plain = fisher.shortcut_mlp((6, 12, 1), "tanh", seed=2, sigma_b=0.5)
    mus = np.logspace(-3, 0, 4)
    for name, nn in (("plain", plain), ("transformed", tr.update_transforms(plain, X, gamma="variance"))):
        G = fisher.gauss_newton(nn, X)
        bn = fisher.block_norms(G, nn.layout)
        ang = fisher.gradient_newton_angle(G, fisher.gradient(nn, X, Y), mus)
        print(f"   {name:11s}: |G_AC| = {bn[('A', 'C')]:.3f}, |G_Ad| = {bn[('A', 'd')]:.3f}, mean off-diagonal "
              f"= {np.mean(list(bn.values())):.3f}, angle(g, (G + mu I)^-1 g) at mu={mus} = {ang} deg")

    print("\n4. Mean field: correlation of two inputs (rho0 = 0.9) through shortcut blocks")
    for act in ("tanh", "relu"):
        d = tr.depth_curves(act, depth=10, rho0=0.9)
        print(f"   {act:4s} transformed: {d['rho_transformed'][::2]}")
        print(f"   {act:4s} plain      : {d['rho_plain'][::2]}")


if __name__ == "__main__":
    main()
