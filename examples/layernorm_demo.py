"""The nonlinearity of layer normalization (Ni, Guo, Jia and Huang, ICML 2024) in a few lines.

Run:  python examples/layernorm_demo.py

1. The Hessian nonlinearity H(f; x) = sum_i ||Hess f_i(x)||_F^2 of LN and of LN-G (g groups), closed form
   against finite differences, and the amplification by groups g (d - 2g) / (d - 2) (equal group variances);
2. the XOR example: one affine map + LN reaches an SSR below the LSSR that bounds every affine map;
3. a width-3 LN-Net that fits random labels of m points, run through the mean-field engine;
4. the finite-width trace of LN's nonlinearity: GroupLayerNorm(group_size=G), mean field vs simulation.
"""

import numpy as np

import meanfield
from meanfield import layernorm as L


def main() -> None:
    rng = np.random.default_rng(0)

    print("1. H(LN) vs H(LN-G) at one x ~ N(0, I_d): closed form, finite differences, the ratio at this x\n"
          "   (unequal group variances) and the equal-variance amplification")
    for d in (12, 24, 64):
        x = rng.standard_normal(d)
        h_ln = L.nonlinearity(x)
        print(f"   d = {d}: H(LN) = {h_ln:.4f} (FD {L.nonlinearity_fd(L.layer_norm, x, vectorized=True):.4f}), "
              f"best g = {L.best_groups(d)}")
        for g in sorted({2, 3, 4, d // 4}):
            if d % g or d // g < 3:
                continue
            h = L.nonlinearity(x, groups=g)
            fd = L.nonlinearity_fd(lambda v, g=g: L.layer_norm(v, groups=g), x, vectorized=True)
            print(f"      g = {g:2d}: H(LN-G) = {h:10.4f}  FD {fd:10.4f}  ratio {h / h_ln:7.2f}  "
                  f"g(d-2g)/(d-2) = {L.group_amplification(d, g):.2f}")

    print("\n2. XOR: four clusters, labels sign(x1 x2)")
    ex = L.xor_example(seed=0)
    print(f"   SSR(input) = {ex.ssr_input:.4f}, LSSR(input) = {ex.lssr_input:.4f} (no affine map goes below)")
    print(f"   SSR(LN(W x + b)) = {ex.ssr_output:.4f}  < LSSR: one affine + LN layer beats every affine map")

    print("\n3. Width-3 LN-Net on random labels")
    for m in (5, 10, 20, 40):
        X = rng.standard_normal((m, 2))
        y = rng.integers(0, 2, m)
        net = L.ln_net_classifier(X, y)
        traj = meanfield.propagate(net, X=X)
        acc = np.mean(L.predict(net, X) == y)
        print(f"   m = {m:2d}: {net.depth - 1:2d} LN layers of width {max(net.widths)} (bound m - 1 = {m - 1}), "
              f"training accuracy {acc:.0%}, propagate: {traj}")

    print("\n4. Linear network Dense -> GroupLayerNorm(group_size=G): mean field vs simulation")
    st = L.group_size_study(None, group_sizes=(3, 4, 8, 16), depth=6, width=480, seeds=32)
    print("   " + st.table().replace("\n", "\n   "))


if __name__ == "__main__":
    main()
