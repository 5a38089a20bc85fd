"""Tests of the network description: meanfield.layers, meanfield.network (mlp, Network, Block)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import hermite
import meanfield
from meanfield import (
    Activation,
    BatchNorm,
    Block,
    Center,
    Dense,
    GroupLayerNorm,
    LayerNorm,
    Linear,
    MaxPool,
    MeanFieldCenter,
    MeanFieldScale,
    MeanOnlyBatchNorm,
    Network,
    Residual,
    RMSNorm,
    Scale,
    WeightNormDense,
    mlp,
)
from meanfield.layers import layer_from_dict


def kinds(block):
    return [type(layer).__name__ for layer in block.layers]


# ------------------------------------------------------------------------------------------------
# the mlp builder
@pytest.mark.parametrize("norm,cls", [("ln", LayerNorm), ("rms", RMSNorm), ("bn", BatchNorm),
                                      ("gln", GroupLayerNorm)])
@pytest.mark.parametrize("placement", ["pre", "post"])
def test_mlp_layer_order(norm, cls, placement):
    net = mlp(4, "tanh", norm=norm, placement=placement, sigma_w=1.3, sigma_b=0.2)
    assert net.depth == 4 and len(net) == 4 and len(net.blocks) == 4
    expected = (["Dense", cls.__name__, "Activation"] if placement == "pre"
                else ["Dense", "Activation", cls.__name__])
    for block in net:
        assert isinstance(block, Block)
        assert kinds(block) == expected
        dense = block.layers[0]
        assert (dense.sigma_w, dense.sigma_b, dense.width) == (1.3, 0.2, None)
        act = next(layer for layer in block.layers if isinstance(layer, Activation))
        assert act.act == hermite.activation("tanh")
    assert len(net.layers) == 12


def test_mlp_without_norm_and_options():
    net = mlp(3, "relu")
    assert all(kinds(b) == ["Dense", "Activation"] for b in net)
    assert mlp(3, "relu", placement="pre") == net  # placement is irrelevant without a norm
    assert net.blocks[0].layers[0] == Dense(1.0, 0.0)
    # group layer norm: groups=1 by default, or as given
    assert mlp(2, norm="gln").blocks[0].layers[-1] == GroupLayerNorm(groups=1)
    assert mlp(2, norm="gln", groups=4).blocks[0].layers[-1] == GroupLayerNorm(groups=4)
    assert mlp(2, norm="gln", group_size=8).blocks[0].layers[-1] == GroupLayerNorm(group_size=8)
    # batch norm mode
    assert mlp(2, norm="bn").blocks[0].layers[-1] == BatchNorm("exact")
    assert mlp(2, norm="bn", bn_mode="large_batch").blocks[0].layers[-1] == BatchNorm("large_batch")


def test_mlp_weight_norm_replaces_dense():
    net = mlp(3, "relu", norm="wn", sigma_w=1.7, sigma_b=0.1, wn_init="data")
    for block in net:
        assert kinds(block) == ["WeightNormDense", "Activation"]
        assert block.layers[0] == WeightNormDense(g=1.7, init="data", sigma_b=0.1)
    assert mlp(1, norm="wn").blocks[0].layers[0].init == "fixed"


@pytest.mark.parametrize("centering", ["layer", "per_sample"])
def test_mlp_centering_follows_activation(centering):
    assert kinds(mlp(2, centering=centering).blocks[0]) == ["Dense", "Activation", "Center"]
    post = mlp(2, norm="ln", centering=centering).blocks[0]
    assert kinds(post) == ["Dense", "Activation", "Center", "LayerNorm"]
    assert post.layers[2] == Center(mode=centering)
    assert kinds(mlp(2, norm="rms", placement="pre", centering=centering).blocks[0]) == [
        "Dense", "RMSNorm", "Activation", "Center"]


def test_mlp_readout_adds_one_block():
    base = mlp(5, "relu", norm="ln", sigma_w=1.4)
    for readout, width in [(True, 1), (1, 1), (10, 10)]:
        net = mlp(5, "relu", norm="ln", sigma_w=1.4, readout=readout)
        assert net.depth == 6
        assert net.blocks[:5] == base.blocks
        last = net.blocks[-1]
        assert last.name == "readout"
        assert last.layers == (Dense(sigma_w=1.4, sigma_b=0.0, width=width),)
    assert mlp(5, "relu", norm="ln", sigma_w=1.4, readout=False) == base
    assert mlp(5, "relu", norm="ln", sigma_w=1.4, readout=None) == base
    assert base.widths == [None] * 5
    assert mlp(2, readout=3).widths == [None, None, 3]


def test_mlp_residual_wraps_each_block():
    plain = mlp(3, "relu", norm="ln", sigma_b=0.1)
    net = mlp(3, "relu", norm="ln", sigma_b=0.1, residual=0.5)
    assert net.depth == 3
    for pb, rb in zip(plain, net):
        assert len(rb.layers) == 1
        res = rb.layers[0]
        assert isinstance(res, Residual)
        assert res.branch == pb.layers and res.alpha == 0.5 and res.shortcut is None
    # the walk into residual branches finds their Dense layers
    assert net.widths == [None] * 3
    with_readout = mlp(3, "relu", residual=1.0, readout=True)
    assert isinstance(with_readout.blocks[-1].layers[0], Dense)


def test_mlp_accepts_activation_objects_and_formulas():
    act = hermite.activation("gelu")
    assert mlp(2, act) == mlp(2, "gelu")
    tr = hermite.transform(hermite.activation("relu"), remove=(0, 1))
    assert mlp(2, tr).blocks[0].layers[1].act == tr
    assert mlp(2, "x*tanh(x)").blocks[0].layers[1].act == hermite.activation("x*tanh(x)")


# ------------------------------------------------------------------------------------------------
# Network: grouping, repr, equality, hashing
def test_network_groups_layers_into_blocks():
    net = Network([Dense(), Activation("relu"), Block([Dense(2.0), Activation("tanh")]), LayerNorm()])
    assert net.depth == 4
    assert [kinds(b) for b in net] == [["Dense"], ["Activation"], ["Dense", "Activation"], ["LayerNorm"]]
    # a Network of Networks concatenates blocks; a single layer is a network of one block
    both = Network([mlp(2), mlp(3, "tanh")])
    assert both.depth == 5 and both.blocks == mlp(2).blocks + mlp(3, "tanh").blocks
    assert Network(Dense()).depth == 1
    # dicts are accepted as layers
    assert Network([{"type": "Dense", "sigma_w": 2.0}]) == Network([Dense(2.0)])


def test_repr_one_line_per_block():
    net = mlp(12, "relu", norm="ln", placement="pre", sigma_w=1.5, readout=True)
    lines = repr(net).splitlines()
    assert lines[0] == "Network(13 blocks)"
    assert len(lines) == 1 + net.depth
    for i, (line, block) in enumerate(zip(lines[1:], net.blocks)):
        assert line.split(":", 1)[0].strip() == str(i + 1)
        assert line.split(":", 1)[1].strip() == " -> ".join(repr(layer) for layer in block.layers)
    assert "Dense(sigma_w=1.5) -> LayerNorm() -> Activation('relu')" in lines[1]
    assert "width=1" in lines[-1]
    # residual blocks stay on one line
    res = repr(mlp(3, residual=0.5)).splitlines()
    assert len(res) == 4 and all("Residual(" in line for line in res[1:])


def test_layer_reprs():
    assert repr(Dense()) == "Dense()"
    assert repr(Dense(1.5, 0.1)) == "Dense(sigma_w=1.5, sigma_b=0.1)"
    assert repr(Activation("tanh")) == "Activation('tanh')"
    assert repr(BatchNorm("large_batch")) == "BatchNorm(mode='large_batch')"
    assert repr(GroupLayerNorm(group_size=4)) == "GroupLayerNorm(group_size=4)"
    assert "identity" in repr(Residual([Dense(), Activation("relu")]))


def test_equality_and_hash():
    a = mlp(4, "relu", norm="ln", sigma_w=1.2, sigma_b=0.1)
    b = mlp(4, "relu", norm="ln", sigma_w=1.2, sigma_b=0.1)
    assert a == b and hash(a) == hash(b)
    assert a is not b
    others = [mlp(4, "relu", norm="ln", sigma_w=1.3, sigma_b=0.1), mlp(4, "tanh", norm="ln", sigma_w=1.2, sigma_b=0.1),
              mlp(4, "relu", norm="ln", placement="pre", sigma_w=1.2, sigma_b=0.1),
              mlp(5, "relu", norm="ln", sigma_w=1.2, sigma_b=0.1), mlp(4, "relu", norm="rms", sigma_w=1.2, sigma_b=0.1)]
    for o in others:
        assert a != o
    assert len({a, b, *others}) == 1 + len(others)
    assert {a: 1}[b] == 1
    # ints and floats describe the same layer
    assert Dense(1, 0) == Dense(1.0, 0.0) and hash(Dense(1, 0)) == hash(Dense(1.0, 0.0))
    assert GroupLayerNorm(groups=2.0) == GroupLayerNorm(groups=2)


def test_immutability():
    net = mlp(2, "relu", norm="ln")
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.blocks = ()
    layer = net.blocks[0].layers[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.sigma_w = 3.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.blocks[0].layers = ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        Residual([Dense()]).alpha = 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        BatchNorm().mode = "large_batch"
    assert isinstance(net.blocks, tuple) and isinstance(net.blocks[0].layers, tuple)
    # lists given by the user are copied into tuples: mutating them afterwards changes nothing
    layers = [Dense(), Activation("relu")]
    blk = Block(layers)
    layers.append(LayerNorm())
    assert len(blk.layers) == 2


# ------------------------------------------------------------------------------------------------
# serialization
def _every_layer_network():
    tr = hermite.transform(hermite.activation("relu"), remove=(0, 1))
    tr2 = hermite.transform(hermite.activation("tanh"), remove=(1,), unit_variance=True)
    return Network([
        Block([Dense(1.2, 0.1, width=64), Activation(tr), LayerNorm()], name="first"),
        Block([Dense(), Activation("x*tanh(x)"), RMSNorm()]),
        Block([WeightNormDense(g=1.3, init="data"), Activation(tr2), BatchNorm()]),
        Block([WeightNormDense(g=0.9, sigma_b=0.2, width=32), BatchNorm("large_batch")]),
        Block([Dense(), MeanOnlyBatchNorm(), Activation("tanh")]),
        Block([Dense(), Activation(hermite.activation("leaky_relu", negative_slope=0.2)),
               GroupLayerNorm(group_size=3)]),
        Block([Dense(), Activation("gelu"), Center("per_sample"), Scale("per_sample"), GroupLayerNorm(groups=2)]),
        Block([Dense(), Activation("relu"), Center(), Scale(), MaxPool(2)]),
        Block([Dense(), Activation("sigmoid"), MeanFieldCenter("sigmoid"), MeanFieldScale("sigmoid")]),
        Residual(branch=[Dense(), Activation("tanh")], alpha=0.5, shortcut=[Dense(2.0)]),
        Residual(branch=[Dense(1.4), Activation(hermite.activation("relu", gain=2.0)), LayerNorm()]),
        meanfield.Concat(branch=[Dense(1.1, 0.1), Activation("tanh")], share=0.5),
        Block([Dense(1.0, width=1)], name="readout"),
        Block([Linear([[1.0, -2.0], [0.5, 0.25]], [0.1, -0.3])]),
    ])


def test_every_layer_type_is_covered():
    used = set()

    def walk(layers):
        for layer in layers:
            used.add(type(layer).__name__)
            if isinstance(layer, Residual):
                walk(layer.branch)
                walk(layer.shortcut or ())

    net = _every_layer_network()
    used.update(type(b).__name__ for b in net.blocks)
    walk(net.layers)
    # every built-in type (user-defined types of other test modules may be registered in the same session)
    assert used == {cls.__name__ for cls in meanfield.layer_types() if cls.__module__.startswith("meanfield.")}


def test_to_dict_from_dict_json_round_trip():
    net = _every_layer_network()
    d = net.to_dict()
    s = json.dumps(d)  # plain, JSON-safe
    back = Network.from_dict(json.loads(s))
    assert back == net and hash(back) == hash(net)
    assert repr(back) == repr(net)
    assert back.to_dict() == d
    assert Network.from_dict(json.loads(net.to_json())) == net
    # every layer on its own
    for layer in net.layers:
        assert layer_from_dict(json.loads(json.dumps(layer.to_dict()))) == layer
    # the named blocks keep their names
    assert back.blocks[0].name == "first" and back.blocks[-2].name == "readout"


def test_round_trip_preserves_the_mean_field():
    """The transformed / formula / parametrized activations come back as the same functions."""
    net = Network([
        Block([Dense(1.2, 0.1), Activation(hermite.transform(hermite.activation("relu"), remove=(0, 1))),
               LayerNorm()]),
        Block([Dense(1.1, 0.2), Activation("x*tanh(x)")]),
        Block([Dense(1.0, 0.1), Activation(hermite.activation("leaky_relu", negative_slope=0.2)), RMSNorm()]),
    ])
    back = Network.from_dict(json.loads(json.dumps(net.to_dict())))
    K0 = np.array([[1.0, 0.3, -0.2], [0.3, 2.0, 0.5], [-0.2, 0.5, 0.7]])
    np.testing.assert_array_equal(meanfield.propagate(net, K0).gram, meanfield.propagate(back, K0).gram)
    x = np.linspace(-3, 3, 13)
    for a, b in zip(net.layers, back.layers):
        if isinstance(a, Activation):
            np.testing.assert_array_equal(a.act.fn(x), b.act.fn(x))


def test_mlp_round_trip_all_norms():
    for norm in meanfield.network.NORMS:
        for placement in meanfield.network.PLACEMENTS:
            net = mlp(3, "gelu", norm=norm, placement=placement, sigma_w=1.1, sigma_b=0.05, centering="layer",
                      readout=2)
            assert Network.from_dict(json.loads(json.dumps(net.to_dict()))) == net
            res = mlp(2, "relu", norm=norm, placement=placement, residual=0.3)
            assert Network.from_dict(json.loads(json.dumps(res.to_dict()))) == res


def test_opaque_callable_cannot_be_serialized():
    net = mlp(2, lambda x: np.maximum(x, 0.0) ** 1.5)
    assert net.depth == 2  # it can be described and used ...
    with pytest.raises(ValueError, match="(?i)serializ"):  # ... but not serialized, with a clear reason
        net.to_dict()
    with pytest.raises(ValueError, match="(?i)opaque|callable"):
        Activation(lambda x: np.tanh(x) ** 3).to_dict()


def test_from_dict_bad_input():
    with pytest.raises(ValueError, match="blocks"):
        Network.from_dict({"layers": []})
    with pytest.raises(ValueError, match="blocks"):
        Network.from_dict([1, 2])
    with pytest.raises(ValueError, match="Foo"):
        layer_from_dict({"type": "Foo"})
    with pytest.raises(ValueError, match="type"):
        layer_from_dict({"sigma_w": 1.0})
    with pytest.raises(ValueError, match="Dense"):
        layer_from_dict({"type": "Dense", "sigma_x": 1.0})
    with pytest.raises(ValueError, match="sigma_w"):
        layer_from_dict({"type": "Dense", "sigma_w": -1.0})


# ------------------------------------------------------------------------------------------------
# bad inputs: each a ValueError naming the argument
@pytest.mark.parametrize("call,match", [
    (lambda: mlp(0), "depth"),
    (lambda: mlp(-3), "depth"),
    (lambda: mlp(2.5), "depth"),
    (lambda: mlp(True), "depth"),
    (lambda: mlp(2, norm="layernorm"), "norm"),
    (lambda: mlp(2, norm="LN"), "norm"),
    (lambda: mlp(2, norm="ln", placement="middle"), "placement"),
    (lambda: mlp(2, sigma_w=-1.0), "sigma_w"),
    (lambda: mlp(2, sigma_b=-0.1), "sigma_b"),
    (lambda: mlp(2, sigma_w=float("nan")), "sigma_w"),
    (lambda: mlp(2, sigma_b=float("inf")), "sigma_b"),
    (lambda: mlp(2, centering="batch"), "centering"),
    (lambda: mlp(2, "no_such_activation"), "no_such_activation"),
    (lambda: mlp(2, norm="gln", groups=2, group_size=3), "groups"),
    (lambda: mlp(2, norm="bn", bn_mode="running"), "mode"),
    (lambda: mlp(2, norm="wn", wn_init="kaiming"), "init"),
    (lambda: mlp(2, residual="yes"), "alpha"),
    (lambda: mlp(2, readout=0), "width"),
    (lambda: Dense(sigma_w=-2.0), "sigma_w"),
    (lambda: Dense(sigma_b=-1e-9), "sigma_b"),
    (lambda: Dense(sigma_w="big"), "sigma_w"),
    (lambda: Dense(width=0), "width"),
    (lambda: Dense(width=2.5), "width"),
    (lambda: WeightNormDense(g=-1.0), "g"),
    (lambda: WeightNormDense(init="random"), "init"),
    (lambda: WeightNormDense(sigma_b=-1.0), "sigma_b"),
    (lambda: GroupLayerNorm(), "groups.*group_size"),
    (lambda: GroupLayerNorm(groups=2, group_size=4), "groups.*group_size"),
    (lambda: GroupLayerNorm(groups=0), "groups"),
    (lambda: GroupLayerNorm(group_size=1), "group_size"),
    (lambda: GroupLayerNorm(group_size=2.5), "group_size"),
    (lambda: BatchNorm(mode="running"), "mode"),
    (lambda: BatchNorm("population"), "mode"),
    (lambda: Center(mode="batch"), "mode"),
    (lambda: Scale(mode="batch"), "mode"),
    (lambda: MaxPool(0), "k"),
    (lambda: MaxPool(1.5), "k"),
    (lambda: Residual(branch=()), "branch"),
    (lambda: Residual(branch=[Dense()], alpha=float("nan")), "alpha"),
    (lambda: Residual(branch=["relu"]), "layer"),
    (lambda: Block([]), "layers"),
    (lambda: Block([Block([Dense()])]), "nested"),
    (lambda: Network([]), "at least one"),
    (lambda: Network(["relu"]), "relu"),
    (lambda: Activation("no_such_activation"), "no_such_activation"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("depth", [None, "a"])
def test_mlp_non_numeric_depth(depth):
    with pytest.raises(ValueError, match="depth"):
        mlp(depth)


def test_valid_edge_inputs_are_accepted():
    assert mlp(np.int64(3)).depth == 3
    assert mlp(3.0).depth == 3
    assert mlp(1).depth == 1
    assert Dense(0.0, 0.0) == Dense(0, 0)  # zero weights are allowed (sigma >= 0)
    assert GroupLayerNorm(group_size=2).group_size == 2
    assert MaxPool(1).k == 1
    assert Residual([Dense()], alpha=-0.5).alpha == -0.5
