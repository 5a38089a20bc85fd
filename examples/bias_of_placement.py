"""Initial guessing bias and where the norm sits: mean-field theory against a small simulation.

ReLU MLP, sigma_w^2 = 2, sigma_b = 0 (Francazi, Pinto, Lucchi and Baity-Jesi 2025). gamma = Var over
initializations of an output's data mean / mean over initializations of its data variance; the theory is
the infinite-width, infinite-data value c / (1 - c), the simulation uses Gaussian-blob data and a random
Gaussian readout with two outputs (BatchNorm with batch statistics over the evaluated set).

    python examples/bias_of_placement.py [--depth 3] [--points 400] [--seeds 60] [--width 256]
"""

import argparse
import math

from meanfield import bias, mlp

PLACEMENTS = [("none", None, "post"), ("LN pre", "ln", "pre"), ("LN post", "ln", "post"),
              ("BN pre", "bn", "pre"), ("BN post", "bn", "post")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--points", type=int, default=400)
    p.add_argument("--seeds", type=int, default=60)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(f"ReLU, sigma_w^2 = 2, sigma_b = 0, depth {a.depth}; simulation: {a.points} points, {a.seeds} "
          f"initializations, width {a.width}; 1/(pi - 1) = {1 / (math.pi - 1):.4f}\n")
    head = (f"{'placement':<10}{'gamma_1':>10}{'gamma_L':>10}  {'regime (theory)':<16}{'simulated gamma_L':>22}"
            f"{'E majority':>12}{'theory':>8}")
    print(head)
    print("-" * len(head))
    for name, norm, placement in PLACEMENTS:
        net = mlp(a.depth, "relu", norm=norm, placement=placement, sigma_w=math.sqrt(2.0), sigma_b=0.0)
        traj = bias.gamma_trajectory(net)
        sim = bias.simulate(net, n_points=a.points, seeds=a.seeds, width=a.width, seed=a.seed)
        law = bias.class_fraction_law(traj[-1])
        sim_txt = f"{sim.gamma:.4f} +- {sim.gamma_stderr:.4f}"
        print(f"{name:<10}{traj[1]:>10.4f}{traj[-1]:>10.4f}  {bias.regime(traj[1:]):<16}{sim_txt:>22}"
              f"{sim.majority().mean():>12.3f}{law.expected_majority():>8.3f}")
    print("\nE majority: mean over initializations of the largest class fraction; theory "
          "1/2 + arctan(sqrt(gamma))/pi (infinite data).")


if __name__ == "__main__":
    main()
