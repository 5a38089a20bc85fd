"""Tests of meanfield.shortcuts: the paper's network and initialization, the function-preserving update and the
trainer, each against a line-by-line re-derivation of the authors' MATLAB code (tvatanen/ltmlp-neuralnet)."""

import json
import math

import numpy as np
import pytest

import meanfield
from meanfield import Activation, Concat, Dense, Linear, Network, fisher, shortcuts


# ----------------------------------------------------------------------------------------------------
# the authors' code, written out in numpy (MATLAB orientation: units x samples)
# ----------------------------------------------------------------------------------------------------
def _nonlin(x, typ, trans, deriv=0):
    """nonlin.m for 'tanh' and 'linear'; trans is (units, 3) = [alpha beta gamma]."""
    if typ == "linear":
        return x if deriv == 0 else np.ones_like(x)
    a, b, g = trans[:, 0:1], trans[:, 1:2], trans[:, 2:3]
    if deriv == 0:
        return g * (np.tanh(x) + (a * x + b))
    return g * ((1 - np.tanh(x) ** 2) + a)


class _Authors:
    """The state of an ltmlp network: W[(l, ll)], bias[l], trans[l], types[l] for l = 2..L."""

    def __init__(self, net):
        P = fisher.parameters(net).unflatten()
        self.L = max(int(k[1:].split(",")[0]) for k in P)
        self.W = {tuple(int(v) for v in k[1:].split(",")): np.array(a) for k, a in P.items() if k[0] == "W"}
        self.bias = {int(k[1:]): np.array(a) for k, a in P.items() if k[0] == "b"}
        self.types = {l: "tanh" for l in range(2, self.L)} | {self.L: "linear"}
        self.trans = {}
        for l in range(2, self.L):
            act = net.blocks[l - 2].layers[0].branch[1].act
            n = self.bias[l].size
            self.trans[l] = np.stack([np.broadcast_to(np.asarray(getattr(act, k), float), (n,))
                                      for k in ("alpha", "beta", "gamma")], axis=1).copy()
        self.trans[self.L] = np.tile([0.0, 0.0, 1.0], (self.bias[self.L].size, 1))

    def ff(self, inp):
        """ltmlp_ff.m lines 12-21."""
        X, Y = {}, {1: inp}
        for l in range(2, self.L + 1):
            X[l] = np.tile(self.bias[l][:, None], (1, inp.shape[1]))
            for ll in range(1, l):
                X[l] = X[l] + self.W[(l, ll)] @ Y[ll]
            Y[l] = _nonlin(X[l], self.types[l], self.trans[l])
        return X, Y

    def transform(self, inp, num_transf, gammatype):
        """ltmlp_transform.m lines 16-98."""
        W, bias, trans, L = self.W, self.bias, self.trans, self.L
        X, Y = {}, {1: inp}
        for l in range(2, L + 1):
            X[l] = np.tile(bias[l][:, None], (1, inp.shape[1]))
            for ll in range(1, l):
                X[l] = X[l] + W[(l, ll)] @ Y[ll]
            if self.types[l] == "tanh":
                old = trans[l].copy()
                n = trans[l].shape[0]
                zero = np.column_stack([np.zeros((n, 2)), np.ones(n)])
                trans[l][:, 0] = -np.mean(_nonlin(X[l], "tanh", zero, 1), axis=1)
                if num_transf > 1:
                    trans[l][:, 1] = -np.mean(_nonlin(X[l], "tanh", zero, 0) + trans[l][:, 0:1] * X[l], axis=1)
                for lll in range(l + 1, L + 1):
                    da = (old[:, 0] - trans[l][:, 0]) * trans[l][:, 2]
                    bias[lll] = bias[lll] + W[(lll, l)] @ (da * bias[l] + (old[:, 1] - trans[l][:, 1]) * trans[l][:, 2])
                    for ll in range(1, l):
                        W[(lll, ll)] = W[(lll, ll)] + (W[(lll, l)] * da[None, :]) @ W[(l, ll)]
            Y[l] = _nonlin(X[l], self.types[l], trans[l])
        if num_transf > 2:
            for l in range(2, L + 1):
                X[l] = np.tile(bias[l][:, None], (1, inp.shape[1]))
                for ll in range(1, l):
                    X[l] = X[l] + W[(l, ll)] @ Y[ll]
                if self.types[l] == "tanh":
                    oldg = trans[l][:, 2].copy()
                    ab1 = np.column_stack([trans[l][:, :2], np.ones(trans[l].shape[0])])
                    f, df = _nonlin(X[l], "tanh", ab1, 0), _nonlin(X[l], "tanh", ab1, 1)
                    if gammatype == 1:
                        trans[l][:, 2] = (np.mean(f**2, axis=1) * np.mean(df**2, axis=1) + 1e-4) ** -0.25
                    else:
                        trans[l][:, 2] = (np.mean(f**2, axis=1) + 1e-2) ** -0.5
                    for lll in range(l + 1, L + 1):
                        W[(lll, l)] = W[(lll, l)] * (oldg / trans[l][:, 2])[None, :]
                Y[l] = _nonlin(X[l], self.types[l], trans[l])

    def train(self, inp, out, iters, stepsize, blen, momentum, num_transf, gammatype, every):
        """ltmlp_train.m lines 14-190 without the CPU-time schedule (stepsize constant)."""
        L, dlen = self.L, inp.shape[1]
        step_w = {(l, ll): 1 / 2 ** (l - ll - 1) for l in range(2, L + 1) for ll in range(1, l)}
        dW = {k: np.zeros_like(v) for k, v in self.W.items()}
        db = {l: np.zeros_like(v) for l, v in self.bias.items()}
        i0 = 0
        for it in range(1, iters + 1):
            inds = slice(i0, min(dlen, i0 + blen))
            i0 = i0 + blen
            if i0 >= dlen:
                i0 = 0
            if num_transf > 0 and it % every == 0:
                self.transform(inp, num_transf, gammatype)
            X, Y = self.ff(inp[:, inds])
            n = Y[1].shape[1]
            reco = Y[L] - out[:, inds]
            gr = {L: _nonlin(X[L], self.types[L], self.trans[L], 1) * reco}
            for l in range(L - 1, 1, -1):
                gr[l] = 0
                for ll in range(l + 1, L + 1):
                    gr[l] = gr[l] + (self.W[(ll, l)].T @ gr[ll]) * _nonlin(X[l], self.types[l], self.trans[l], 1)
            for l in range(2, L + 1):
                db[l] = gr[l].sum(axis=1) / n + momentum * db[l]
                for ll in range(1, l):
                    dW[(l, ll)] = gr[l] @ Y[ll].T / n + momentum * dW[(l, ll)]
            for l in range(2, L + 1):
                self.bias[l] = self.bias[l] - stepsize * db[l]
                for ll in range(1, l):
                    self.W[(l, ll)] = self.W[(l, ll)] - stepsize * step_w[(l, ll)] * dW[(l, ll)]


def _compare(net, auth, tol):
    P = fisher.parameters(net).unflatten()
    for (l, ll), W in auth.W.items():
        np.testing.assert_allclose(P[f"W{l},{ll}"], W, rtol=tol, atol=tol)
    for l, b in auth.bias.items():
        np.testing.assert_allclose(P[f"b{l}"], b, rtol=tol, atol=tol)
    for l in range(2, auth.L):
        act = net.blocks[l - 2].layers[0].branch[1].act
        for k, name in enumerate(("alpha", "beta", "gamma")):
            np.testing.assert_allclose(getattr(act, name), auth.trans[l][:, k], rtol=tol, atol=tol)


# ----------------------------------------------------------------------------------------------------
def test_network_is_the_authors_architecture_and_init():
    net = shortcuts.network((6, 40, 30, 3), seed=4)
    assert [type(b.layers[0]).__name__ for b in net.blocks] == ["Concat", "Concat", "Linear"]
    P = fisher.parameters(net)
    assert list(P.layout) == ["W2,1", "b2", "W3,1", "W3,2", "b3", "W4,1", "W4,2", "W4,3", "b4"]
    D = P.unflatten()
    widths = {1: 6, 2: 40, 3: 30, 4: 3}
    for name, (l, s) in P.sources.items():
        a = D[name]
        if s is None:  # biases ~ U[-0.5, 0.5]
            assert np.all(np.abs(a) <= 0.5)
        elif s == l - 1:  # direct weights ~ U[-r, r], r = sqrt(6 / (n_l + n_s))
            r = math.sqrt(6.0 / (widths[l] + widths[s]))
            assert np.all(np.abs(a) <= r) and np.max(np.abs(a)) > 0.8 * r
            if a.size >= 1000:  # the uniform law: variance r^2/3 within 5 standard errors
                se = r**2 * math.sqrt(4 / 45 / a.size)
                assert abs(np.mean(a**2) - r**2 / 3) < 5 * se
        else:  # shortcuts start at zero
            assert np.all(a == 0.0)
    big = shortcuts.network((2, 3000, 1), seed=1)
    b2 = fisher.parameters(big).unflatten()["b2"]
    assert abs(np.var(b2) - 1 / 12) < 5 * math.sqrt(1 / 180 / 3000)
    for blk in net.blocks[:2]:
        act = blk.layers[0].branch[1].act
        assert act.per_unit and np.all(act.alpha == 0) and np.all(act.beta == 0) and np.all(act.gamma == 1)
    assert Network.from_dict(json.loads(json.dumps(net.to_dict()))) == net
    assert shortcuts.network((6, 40, 30, 3), seed=4) == net
    # at initialization (zero shortcuts, no transformation) it is a plain tanh MLP
    X = np.random.default_rng(0).standard_normal((7, 6))
    W21, W32, W43 = D["W2,1"], D["W3,2"], D["W4,3"]
    y = np.tanh(np.tanh(X @ W21.T + D["b2"]) @ W32.T + D["b3"]) @ W43.T + D["b4"]
    np.testing.assert_allclose(fisher.forward(net, X), y, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("num_transf, gamma, gammatype", [(2, None, 1), (3, "vatanen_geometric", 1),
                                                          (3, "vatanen_variance", 2)])
def test_update_transforms_is_the_authors_ltmlp_transform(num_transf, gamma, gammatype):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((120, 4))
    net = shortcuts.network((4, 7, 6, 5, 2), seed=3)
    auth = _Authors(net)
    for _ in range(3):  # repeated updates: the second and third start from nonzero transformations and shortcuts
        net = shortcuts.update_transforms(net, X, gamma)
        auth.transform(X.T, num_transf, gammatype)
        _compare(net, auth, 1e-12)


@pytest.mark.parametrize("gamma", ["vatanen_geometric", "vatanen_variance", None, "unit_variance", "unit_geometric"])
def test_update_transforms_preserves_the_function(gamma):
    rng = np.random.default_rng(6)
    X = rng.standard_normal((150, 4))
    Xnew = 2 * rng.standard_normal((40, 4))  # points not used for the estimate
    net = shortcuts.network((4, 7, 6, 5, 2), seed=1)
    net = shortcuts.train(net, X, X[:, :2] ** 2, steps=20, lr=0.1, transform=False).net  # nonzero shortcuts
    y0, y0new = fisher.forward(net, X), fisher.forward(net, Xnew)
    scale = max(1.0, np.max(np.abs(y0)), np.max(np.abs(y0new)))
    cur = net
    for _ in range(3):
        cur = shortcuts.update_transforms(cur, X[:100], gamma=gamma)
        assert np.max(np.abs(fisher.forward(cur, X) - y0)) < 1e-12 * scale
        assert np.max(np.abs(fisher.forward(cur, Xnew) - y0new)) < 1e-12 * scale
    # the new transformations are the empirical ones on the data: zero mean output and slope per unit
    for blk, u in zip(cur.blocks, shortcuts.preactivations(cur, X[:100])):
        act = blk.layers[0].branch[1].act
        assert np.max(np.abs(act.fn(u).mean(axis=0))) < 1e-12
        assert np.max(np.abs(act.derivative(u).mean(axis=0))) < 1e-12
    assert not np.allclose(fisher.parameters(cur).theta, fisher.parameters(net).theta)


@pytest.mark.parametrize("gamma, num_transf, gammatype", [("vatanen_geometric", 3, 1), (None, 2, 1)])
def test_train_is_the_authors_ltmlp_train(gamma, num_transf, gammatype):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((50, 3))
    Y = np.column_stack([np.sin(X @ [1.0, -1.0, 0.5]), X[:, 0] * X[:, 1]])
    net = shortcuts.network((3, 6, 5, 2), seed=2)
    auth = _Authors(net)
    res = shortcuts.train(net, X, Y, steps=12, lr=0.1, batch_size=20, momentum=0.9, gamma=gamma, every=1,
                          record_every=4)
    auth.train(X.T, Y.T, 12, 0.1, 20, 0.9, num_transf, gammatype, 1)
    _compare(res.net, auth, 1e-10)
    assert res.steps.tolist() == [0, 4, 8, 12] and np.all(np.isfinite(res.losses))


def test_train_options():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((120, 3))
    Y = np.tanh(X @ [1.0, -2.0, 0.5])[:, None]
    net = shortcuts.network((3, 6, 1), seed=0)
    res = shortcuts.train(net, X, Y, steps=200, lr=0.05, batch_size=40, record_every=50, track_units=True)
    assert not res.diverged and res.losses[-1] < 0.5 * res.losses[0]
    assert len(res.history) == 5 and res.history[-1][0]["input_std"].shape == (6,)
    assert res.max_gamma <= 10.0  # the authors' regularizer caps gamma
    base = shortcuts.train(net, X, Y, steps=200, lr=0.05, batch_size=40, record_every=50, transform=False,
                           momentum=0.0, anneal=True)
    assert base.max_gamma == 1.0 and base.losses[-1] < base.losses[0]
    # anneal: the last step of a one-step run uses max(1e-8, 2 lr (1 - 1)) = 1e-8
    one = shortcuts.train(net, X, Y, steps=1, lr=0.5, transform=False, anneal=True, record_every=1)
    g = fisher.gradient(net, X, Y)
    np.testing.assert_allclose(fisher.parameters(one.net).theta,
                               fisher.parameters(net).theta - 1e-8 * shortcuts.step_scales(net) * g, rtol=1e-14)


def test_train_stops_at_a_divergence():
    rng = np.random.default_rng(10)
    X = rng.standard_normal((60, 3))
    Y = np.tanh(X @ [1.0, -2.0, 0.5])[:, None]
    res = shortcuts.train(shortcuts.network((3, 6, 1), seed=0), X, Y, steps=200, lr=50.0, record_every=1,
                          gamma="unit_variance")
    assert res.diverged
    k = int(np.argmax(np.isnan(res.losses)))
    assert k > 0 and np.all(np.isnan(res.losses[k:])) and np.all(np.isfinite(res.losses[:k]))
    assert np.all(np.isfinite(fisher.parameters(res.net).theta)) and len(res.history) == 1


def test_step_scales():
    net = shortcuts.network((2, 3, 3, 1))
    P = fisher.parameters(net)
    s = shortcuts.step_scales(net)
    expect = {"W2,1": 1, "b2": 1, "W3,1": 0.5, "W3,2": 1, "b3": 1, "W4,1": 0.25, "W4,2": 0.5, "W4,3": 1, "b4": 1}
    for name, v in expect.items():
        assert np.all(s[P.layout[name]] == v)


def test_fisher_activation_bias_block_exactly_zero_with_empirical_transform():
    """After update_transforms the hidden units' outputs have zero mean over the data, so the Fisher block between
    their outgoing weights W3,2 and the output bias b3 vanishes exactly; with Gaussian inputs the block with the
    input shortcut W3,1 vanishes in expectation (Stein)."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((400, 3))
    net = shortcuts.update_transforms(shortcuts.network((3, 6, 2), seed=4), X)
    G = fisher.gauss_newton(net, X)
    lay = fisher.parameters(net).layout
    assert np.max(np.abs(G[lay["W3,2"], lay["b3"]])) < 1e-13 * np.max(np.abs(G))
    plain = shortcuts.network((3, 6, 2), seed=4)
    G0 = fisher.gauss_newton(plain, X)
    assert np.max(np.abs(G0[lay["W3,2"], lay["b3"]])) > 1e-2 * np.max(np.abs(G0))
    n0, n1 = fisher.block_norms(G0, lay), fisher.block_norms(G, lay)
    assert n1[("W3,1", "W3,2")] < 0.5 * n0[("W3,1", "W3,2")]


def test_unit_stats_and_preactivations():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((30, 3))
    net = shortcuts.update_transforms(shortcuts.network((3, 4, 5, 2), seed=1), X)
    pre = shortcuts.preactivations(net, X)
    assert [p.shape for p in pre] == [(30, 4), (30, 5)]
    D = fisher.parameters(net).unflatten()
    np.testing.assert_allclose(pre[0], X @ D["W2,1"].T + D["b2"], rtol=1e-14)
    st = shortcuts.unit_stats(net, X)
    np.testing.assert_allclose(st[0]["input_std"], pre[0].std(axis=0), rtol=1e-14)
    f = net.blocks[0].layers[0].branch[1].act.fn(pre[0])
    w = np.sqrt(np.sum(D["W3,2"] ** 2, axis=0) + np.sum(D["W4,2"] ** 2, axis=0))
    np.testing.assert_allclose(st[0]["output_rms"], w * np.sqrt(np.mean(f * f, axis=0)), rtol=1e-13)


def test_bad_inputs():
    X = np.zeros((4, 3))
    with pytest.raises(ValueError, match="widths"):
        shortcuts.network((3, 2))
    with pytest.raises(ValueError, match=r"widths\[1\]"):
        shortcuts.network((3, 0, 2))
    with pytest.raises(ValueError, match="bias_scale"):
        shortcuts.network((3, 2, 1), bias_scale=-1.0)
    with pytest.raises(ValueError, match="shortcut network"):
        shortcuts.update_transforms(Network([Dense(), Activation("tanh")]), X)
    with pytest.raises(ValueError, match="shortcut network"):
        shortcuts.update_transforms(Network([Concat([Linear(np.ones((2, 3)))]), Linear(np.ones((1, 5)))]), X)
    with pytest.raises(ValueError, match="net must be"):
        shortcuts.update_transforms("net", X)
    net = shortcuts.network((3, 2, 1))
    with pytest.raises(ValueError, match="X is an empty batch"):
        shortcuts.update_transforms(net, np.zeros((0, 3)))
    with pytest.raises(ValueError, match="X has 2 features"):
        shortcuts.preactivations(net, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="gamma="):
        shortcuts.update_transforms(net, np.ones((4, 3)), gamma="variance")
    with pytest.raises(ValueError, match="Y must have shape"):
        shortcuts.train(net, np.ones((4, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="batch_size"):
        shortcuts.train(net, np.ones((4, 3)), np.ones(4), batch_size=5)
    with pytest.raises(ValueError, match="momentum"):
        shortcuts.train(net, np.ones((4, 3)), np.ones(4), momentum=1.0)


def test_example_script_runs(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "transformations_demo.py"
    spec = importlib.util.spec_from_file_location("transformations_demo", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main()
    out = capsys.readouterr().out
    assert "max |y_new - y_old|" in out and "transformed" in out


def test_meanfield_engines_run_the_paper_network():
    """Fixed weights: the mean-field engine is exact on the data, the simulator runs every seed as the same net."""
    rng = np.random.default_rng(9)
    X = rng.standard_normal((5, 3))
    net = shortcuts.update_transforms(shortcuts.network((3, 4, 4, 2), seed=0), rng.standard_normal((50, 3)))
    mf = meanfield.propagate(net, X=X)
    sim = meanfield.simulate(net, X, width=4, seeds=2)
    np.testing.assert_allclose(sim.gram[1], mf.gram, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError):
        meanfield.propagate(net, X @ X.T / 3)  # no infinite-width rule for fixed weights
