"""The experimental protocol of Joudaki, Daneshmand and Bach (NeurIPS 2023), run with both engines.

A. Joudaki, H. Daneshmand and F. Bach, "On the impact of activation and normalization in obtaining isometric
embeddings at initialization". Every figure of the paper's validation section is drawn by one function of
the authors' code (github.com/ajoudaki/deepnet-isometry, ``validations.ipynb``: ``run_experiments``, with
``create_input``, ``isometry_gap`` and ``potential_gap`` of ``utils.py``). This module re-implements that
protocol on the toolkit's engines (our code, the authors' definitions):

- inputs (`degenerate_input`, ``create_input(dist='norm')``): X ~ N(0, 1)^(n x d), its top singular value
  multiplied by ``degeneracy``, the matrix scaled to unit overall mean square; each row is then scaled to
  unit mean square before the first layer (``X / (X**2).mean(dim=1)**0.5``);
- layers (`protocol_network`): ``activation_first=True``: X -> F(X W) then the centring and the
  normalization; ``activation_first=False``: X -> F(X) W then the centring and the normalization; W has
  i.i.d. N(0, gain^2 / d) entries (``torch.randn(d, d) * gain / sqrt(d)``), the width d is the input
  dimension, and the bias is 0 (every figure uses ``bias = 0``);
- centring: None, "layer" (each sample's feature mean, ``X.mean(dim=1)``), "meanfield" (the constant c_0,
  `MeanFieldCenter`; the authors' 'MF'); normalization: None, "layer" (each sample's root mean square),
  "meanfield" (the constant sqrt(sum_{k>=1} c_k^2), `MeanFieldScale`; the authors' 'MF'). The authors'
  "batch" options appear in no figure and are not offered; "per_sample" (both) is the toolkit's extension
  ``Center/Scale(mode="per_sample")``, not in the authors' code;
- recorded, per layer l = 1..L and per repeat: the Gram X X^T after the activation block ("pre_norm") and
  after the normalization ("post_norm"), and, at l = 0, the Gram of the input before its row scaling
  ("input"); measures: the isometry gap -log I(G) and the potential max_{i != j} |rho| / (1 - |rho|);
- what the published figures plot (`IsometryExperiment.plotted`): the authors' ``plot_line_graph`` passes
  every row of the table to seaborn's ``lineplot(x="l")``, which averages, at each l >= 1, the pre-norm
  *and* the post-norm gaps of all repeats (one input row at l = 0). ``plot_line`` (``gamma_vs_theory``)
  keeps the post-norm rows only. Compare published values with the same average;
- theory lines: ``gamma_theory = gamma0 / beta**l`` with gamma0 the post-norm potential at l = 1 of the
  same repeat and beta = beta_sigma = 2 - c_1^2 / (E f^2 - c_0^2) (the authors estimate it from 2e6
  samples; here it is exact, `meanfield.rates.beta_sigma`), and, for the training figure
  ``isogap_vs_theory``, beta_sigma^(-l) itself.

Each repeat draws its own input (``create_input`` is called once per configuration row). With
``engine="simulate"`` the toolkit's simulator samples one network per repeat at the given width (its exact
Gaussian shortcut has the law of the authors' explicit weights); with ``engine="meanfield"`` the same inputs
go through the infinite-width recursion (`meanfield.propagate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

import hermite
from meanfield.core.validate import check_bool, check_choice, check_int, check_real, check_seed
from meanfield.infinite import propagate
from meanfield.layers import Activation, Block, Center, Dense, MeanFieldCenter, MeanFieldScale, Scale
from meanfield.measures import isometry_gap, potential
from meanfield.network import Network

__all__ = ["degenerate_input", "protocol_network", "isometry_experiment", "IsometryExperiment", "CENTERINGS",
           "NORMALIZATIONS"]

CENTERINGS = (None, "layer", "meanfield", "per_sample")
NORMALIZATIONS = (None, "layer", "meanfield", "per_sample")


def degenerate_input(n: int, d: int, degeneracy: float = 10.0, seed=0, *, normalize_rows: bool = False) -> np.ndarray:
    """The authors' input batch (``create_input(dist='norm', n, d, degeneracy)``), shape (n, d).

    X = G with G ~ N(0, 1)^(n x d); with G = U S V^T (reduced SVD), the top singular value is multiplied by
    ``degeneracy`` (>= 1 makes the inputs nearly collinear) and X = U S V^T / rms(U S V^T), rms the root mean
    square of all entries. ``normalize_rows=True`` also scales each row to unit mean square, as the authors
    do before the first layer (``X / (X**2).mean(dim=1, keepdim=True)**0.5``).
    """
    owner = "degenerate_input"
    n = check_int(owner, "n", n, lo=2)
    d = check_int(owner, "d", d, lo=n)
    deg = check_real(owner, "degeneracy", degeneracy, lo=0.0)
    rng = np.random.default_rng(check_seed(owner, seed))
    G = rng.standard_normal((n, d))
    U, S, Vt = np.linalg.svd(G, full_matrices=False)
    S[0] *= deg
    X = (U * S) @ Vt
    X /= math.sqrt(np.mean(X * X))
    if normalize_rows:
        X /= np.sqrt(np.mean(X * X, axis=1, keepdims=True))
    return X


def _norm_layers(act: hermite.Activation, centering, normalization) -> list:
    layers = []
    if centering in ("layer", "per_sample"):
        layers.append(Center(mode=centering))
    elif centering == "meanfield":
        layers.append(MeanFieldCenter(act))
    if normalization in ("layer", "per_sample"):
        layers.append(Scale(mode=normalization))
    elif normalization == "meanfield":
        layers.append(MeanFieldScale(act))
    return layers


def protocol_network(depth: int, activation="relu", centering="layer", normalization="layer", *,
                     activation_first: bool = True, gain: float = 1.0) -> Network:
    """The authors' network as a `Network` of 2 ``depth`` blocks: block 2l - 1 ends where the authors record
    "pre_norm" of layer l, block 2l where they record "post_norm" (the blocks after the input).

    activation_first=True: [Dense(gain), Activation], [centring, normalization]; activation_first=False:
    [Activation, Dense(gain)], [centring, normalization]. With neither centring nor normalization the
    second block of each pair is left out (the network then has ``depth`` blocks: post = pre).
    ``centering`` and ``normalization`` are None, "layer" or "meanfield" (the authors' 'None', 'layer', 'MF'),
    or "per_sample", the toolkit's extension ``Center/Scale(mode="per_sample")`` (not in the authors' code).
    """
    owner = "protocol_network"
    L = check_int(owner, "depth", depth, lo=1)
    check_choice(owner, "centering", centering, CENTERINGS)
    check_choice(owner, "normalization", normalization, NORMALIZATIONS)
    first = check_bool(owner, "activation_first", activation_first)
    g = check_real(owner, "gain", gain, lo=0.0)
    act = Activation(activation)
    core = [Dense(sigma_w=g), act] if first else [act, Dense(sigma_w=g)]
    norm = _norm_layers(act.act, centering, normalization)
    blocks = []
    for _ in range(L):
        blocks.append(Block(tuple(core), name="pre_norm"))
        if norm:
            blocks.append(Block(tuple(norm), name="post_norm"))
    return Network(blocks)


@dataclass(frozen=True)
class IsometryExperiment:
    """Result of `isometry_experiment`: per-repeat measures of the authors' protocol.

    Attributes
    ----------
    gap_input, potential_input : (repeats,) at l = 0 (the input before its row scaling, as recorded)
    gap_pre, gap_post, potential_pre, potential_post : (repeats, depth + 1), index l = 1..depth the layer
        (index 0 repeats the input values, so that an array is a curve over l = 0..depth)
    beta_sigma : exact 2 - c_1^2 / sum_{k>=1} c_k^2 of the activation at unit variance
    settings : the protocol's parameters
    """

    gap_input: np.ndarray
    potential_input: np.ndarray
    gap_pre: np.ndarray
    gap_post: np.ndarray
    potential_pre: np.ndarray
    potential_post: np.ndarray
    beta_sigma: float
    settings: dict = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return self.gap_post.shape[1] - 1

    def plotted(self, measure: str = "isometry_gap") -> np.ndarray:
        """What the authors' figures plot, (depth + 1,): at l = 0 the mean input value, at l >= 1 the mean
        over repeats of the pre-norm and the post-norm values together (seaborn ``lineplot`` over every row
        of the table, as ``plot_line_graph`` draws it)."""
        pre, post = self._pair(measure)
        out = 0.5 * (pre.mean(axis=0) + post.mean(axis=0))
        out[0] = post[:, 0].mean()
        return out

    def post(self, measure: str = "isometry_gap") -> np.ndarray:
        """Mean over repeats of the post-norm values, (depth + 1,) (``plot_line`` keeps these rows only)."""
        return self._pair(measure)[1].mean(axis=0)

    def pre(self, measure: str = "isometry_gap") -> np.ndarray:
        """Mean over repeats of the pre-norm values (after the activation block), (depth + 1,)."""
        return self._pair(measure)[0].mean(axis=0)

    def gamma_theory(self) -> np.ndarray:
        """The authors' theory line of ``gamma_vs_theory``: mean over repeats of gamma0 beta_sigma^(-l), gamma0
        the post-norm potential at l = 1 of the repeat (``df['gamma0'] / df.beta ** df.l``), (depth + 1,)."""
        layers = np.arange(self.depth + 1)
        return np.mean(self.potential_post[:, 1:2], axis=0) * self.beta_sigma ** (-layers.astype(float))

    def _pair(self, measure):
        check_choice("IsometryExperiment", "measure", measure, ("isometry_gap", "potential"))
        if measure == "isometry_gap":
            return self.gap_pre, self.gap_post
        return self.potential_pre, self.potential_post


def isometry_experiment(activation="relu", *, n: int = 10, width: int = 1000, depth: int = 30,
                        degeneracy: float = 10.0, repeats: int = 10, centering="layer", normalization="layer",
                        activation_first: bool = True, gain: float = 1.0, engine: str = "simulate",
                        seed: int = 0) -> IsometryExperiment:
    """Run the authors' ``run_experiments`` for one configuration with one of the toolkit's engines.

    ``repeats`` inputs `degenerate_input` (n, width, degeneracy; seeds seed, seed + 1, ...), each through
    `protocol_network` (depth, activation, centering, normalization, activation_first, gain): with
    ``engine="simulate"`` one random network of the given width per repeat (`meanfield.simulate`, seed of
    the repeat), with ``engine="meanfield"`` the infinite-width recursion on the same input
    (`meanfield.propagate`). Gaps and potentials as the authors record them (module docstring); a singular
    Gram has gap +inf.
    """
    from meanfield.finite import simulate  # the simulator is needed only here
    from meanfield.rates import beta_sigma

    owner = "isometry_experiment"
    R = check_int(owner, "repeats", repeats, lo=1)
    L = check_int(owner, "depth", depth, lo=1)
    check_choice(owner, "engine", engine, ("simulate", "meanfield"))
    seed = check_int(owner, "seed", seed, lo=0)
    net = protocol_network(L, activation, centering, normalization, activation_first=activation_first, gain=gain)
    pairs = net.depth // L  # 2 blocks per layer, or 1 without centring and normalization
    gi, pi = np.empty(R), np.empty(R)
    shape = (R, L + 1)
    gpre, gpost, ppre, ppost = (np.empty(shape) for _ in range(4))
    for r in range(R):
        X0 = degenerate_input(n, width, degeneracy, seed + r)
        G0 = X0 @ X0.T
        X = X0 / np.sqrt(np.mean(X0 * X0, axis=1, keepdims=True))
        if engine == "simulate":
            grams = simulate(net, X, width=width, seeds=1, seed=seed + r, progress=False).gram[0]
        else:
            grams = propagate(net, X=X).gram
        pre = grams[1::pairs]
        post = grams[pairs::pairs]
        gi[r], pi[r] = isometry_gap(G0), potential(G0)
        gpre[r, 1:], gpost[r, 1:] = isometry_gap(pre), isometry_gap(post)
        ppre[r, 1:], ppost[r, 1:] = potential(pre), potential(post)
    for a, v in ((gpre, gi), (gpost, gi), (ppre, pi), (ppost, pi)):
        a[:, 0] = v
    settings = {"activation": hermite.activation(activation).name, "n": n, "width": width, "depth": L,
                "degeneracy": degeneracy, "repeats": R, "centering": centering, "normalization": normalization,
                "activation_first": activation_first, "gain": gain, "engine": engine, "seed": seed}
    return IsometryExperiment(gap_input=gi, potential_input=pi, gap_pre=gpre, gap_post=gpost, potential_pre=ppre,
                              potential_post=ppost, beta_sigma=float(beta_sigma(activation, 1.0)), settings=settings)
