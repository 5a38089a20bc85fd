"""Signal-propagation maps of one block: q-map, c-map, fixed points, chi_1, depth scales, edge of chaos.

The classic mean-field theory of deep networks at initialization (Poole, Lahiri, Raghu, Sohl-Dickstein
and Ganguli 2016, "Exponential expressivity in deep neural networks through transient chaos";
Schoenholz, Gilmer, Ganguli and Sohl-Dickstein 2017, "Deep information propagation"), for a stack of
identical blocks Dense(sigma_w, sigma_b) + Activation(f), with sigma_w and sigma_b standard deviations
(W_ij ~ N(0, sigma_w^2 / fan_in), b_i ~ N(0, sigma_b^2)), at infinite width.

Public facade: the implementation lives in two modules by idea, and their public names are re-exported
here (``from meanfield import maps; maps.fixed_point_q(...)``):

* `meanfield.qc_maps`: the q-map and c-map of one block (`qmap`, `cmap`, `cmap_slope`) and their fixed
  points (`fixed_point_q`, `fixed_point_c`);
* `meanfield.criticality`: `chi1`, `chi_c`, `depth_scales`, `edge_of_chaos` and the order-to-chaos
  `phase_diagram`.

Norms are keys of the one norm vocabulary of `meanfield.network` (`norm_choices`); these scalar maps
support None, "ln", "rms" and "bn" and raise a ValueError naming that subset for the
others ("gln", "wn", "mobn", ...), which `meanfield.propagate` covers.

Plain blocks (``norm=None``). The state is the pre-activation (the activation's input) of a block, of
variance q and, between two inputs, correlation c (Poole et al.):

    q-map   q -> Q(q) = sigma_w^2 E f(sqrt(q) z)^2 + sigma_b^2,                       z ~ N(0, 1)
    c-map   c -> C(c) = (sigma_w^2 E[f(u) f(v)] + sigma_b^2) / Q(q),   Var u = Var v = q, corr(u, v) = c
    slope   C'(c) = sigma_w^2 q E[f'(u) f'(v)] / Q(q)                  (Price's theorem, dK/dCov = E f'f')
    chi_1   = sigma_w^2 E f'(sqrt(q*) z)^2 = C'(1) at q = q*             (Schoenholz et al. eq. 5)
    chi_q   = Q'(q*) = sigma_w^2 E[f'^2 + f f''],  xi_q = -1 / log chi_q (Schoenholz et al. eq. 7)
    chi_c   = C'(c*) = sigma_w^2 E[f'(u) f'(v)] at (c*, q*),  xi_c = -1 / log chi_c (eq. 9)

chi_1 is also the factor by which the squared gradient norm grows per block (Schoenholz et al. sec. 4;
Pennington, Schoenholz and Ganguli 2017); chi_1 < 1 is the ordered phase (c* = 1 is stable, correlations
converge to 1), chi_1 > 1 the chaotic phase (c = 1 is unstable and a c* < 1 attracts), chi_1 = 1 the edge
of chaos, where xi_c = infinity.

Structure used throughout: with q1 = q2 = q, Mehler's formula E[f(u) f(v)] = sum_k c_k(q)^2 c^k has
non-negative coefficients and C(1) = 1, so the c-map is a probability generating function in c. On [0, 1]
it is increasing and convex: 1 is always a fixed point, there is exactly one more fixed point in [0, 1)
when C'(1) = chi_1 > 1 or C(0) = 0 and none otherwise (unless C is the identity), and every c in [0, 1)
is attracted to the *smallest* fixed point c* in [0, 1] (as the extinction probability of a branching
process). (At q* = 0, chi_1 = sigma_w^2 E f'^2 is the q -> 0+ limit, while the c-map's slope at 1 is
sigma_w^2 q E f'^2 / Q(q), which tends to 1 for a smooth f; the c-map is then the q -> 0+ limit.)
`chi_c` and `depth_scales` use that c*; `fixed_point_c` also finds the fixed points in [-1, 0) (e.g. -1
and -c* for odd activations with sigma_b = 0).

Blocks with a normalization layer (``norm="ln" | "rms" | "bn"``, ``placement="pre" | "post"``; pre is
Dense -> Norm -> Activation, post is Dense -> Activation -> Norm; no affine parameters). At infinite
width the per-sample feature mean of a pre-activation vanishes, so LN and RMS agree before an activation.

    placement="pre" (LN, RMS): the norm fixes the activation's input variance to 1, so Q(q) = 1 for every
        q (q* = 1, chi_q = 0, xi_q = 0). The state is the activation's input, as for plain blocks, and the
        c-map is the plain c-map at q = 1:  c -> (sigma_w^2 K(c; 1) + sigma_b^2) / (sigma_w^2 K(1; 1)
        + sigma_b^2),  K(c; q) = E[f(u) f(v)].
    placement="post" (LN, RMS): the block output has unit diagonal, so the activation's input variance
        is q = sigma_w^2 + sigma_b^2 at every block (Q(q) = sigma_w^2 + sigma_b^2, chi_q = 0). The state
        is the block output (the norm's output), and the c-map is the Dense step followed by the
        normalized kernel:  rho = (sigma_w^2 c + sigma_b^2) / (sigma_w^2 + sigma_b^2),
        c -> (K(rho; q) - m^2) / (K(1; q) - m^2) for LN (m = E f(sqrt(q) z): LN centres each sample
        across features, and that mean is m at infinite width), c -> K(rho; q) / K(1; q) for RMS.
    chi_1 with a norm is the c-map's slope at c = 1, which is also the per-block growth of the squared
        gradient norm at infinite width (the norm's Jacobian is 1/std on all but O(1) directions):
        post: sigma_w^2 E f'(u)^2 / Var f(u) (LN), sigma_w^2 E f'(u)^2 / E f(u)^2 (RMS), u ~ N(0, q);
        pre: sigma_w^2 E f'(z)^2 / (sigma_w^2 E f(z)^2 + sigma_b^2).
    norm="bn" (either placement), batch statistics in the large-batch limit: BatchNorm acts as LN on the
        batch-centred Gram, K -> P K P with P = I - 11^T / n, then unit diagonal. For an exchangeable batch
        (all pairwise correlations c, n -> infinity) P K P = q (1 - c) P has off-diagonal correlation
        -1/(n - 1) -> 0: centring over the batch removes the mean correlation, so *the scalar c-map of two
        inputs after a BN is c -> 0* (a constant; its only fixed point is c* = 0, with slope 0, and
        xi_c = 0). (c = 1, a batch of identical inputs, is degenerate: BN maps it to the zero vector; the
        limit from c < 1, 0, is returned.) The q-map is that of LN/RMS in the same placement. chi_1 and
        the edge of chaos are not defined by these scalar maps for BN (the gradient of a BN network
        depends on the whole batch, Yang et al. 2019, "A mean field theory of batch normalization") and
        raise ValueError; `meanfield.propagate` has the exact batch-coupled rule.

Numerics: every expectation is `hermite.kernel` / `hermite.second_moment` (closed forms, proven Mehler
series or kink-split quadrature, 1e-12 accurate including c = +-1); C(1) = 1 exactly and C maps into
[-1, 1]. chi_q uses a five-point central difference of the (analytic) second moment, relative accuracy
about 1e-10.

Sources: Poole et al. 2016 (NeurIPS); Schoenholz et al. 2017 (ICLR); Pennington et al. 2017 ("Resurrecting
the sigmoid"); Cho and Saul 2009 (arc-cosine kernels, the ReLU c-map); Williams 1997 (the erf kernel);
Yang, Pennington, Rao, Sohl-Dickstein and Schoenholz 2019 (batch normalization); Xiong et al. 2020 (pre-
and post-LN placement).
"""

from meanfield.criticality import chi1, chi_c, depth_scales, edge_of_chaos, phase_diagram
from meanfield.qc_maps import (
    Q_LIMIT,
    FixedPoint,
    NoFixedPointError,
    UndefinedMapError,
    cmap,
    cmap_slope,
    fixed_point_c,
    fixed_point_q,
    qmap,
)

__all__ = [
    "FixedPoint", "qmap", "cmap", "cmap_slope", "fixed_point_q", "fixed_point_c", "chi1", "chi_c",
    "depth_scales", "edge_of_chaos", "phase_diagram", "Q_LIMIT", "NoFixedPointError",
    "UndefinedMapError",
]
