"""Tests of meanfield.train and meanfield.data: the training table, reproducibility, early stop, the data sets.

Independent truths: the data sets' definitions (scikit-learn's digits, balanced blobs), torch's own autograd
(the gradient norms and the Hessian against finite differences), and the definitions of the recorded
quantities (accuracy from the predictions, gamma and the isometry gap from the probe Gram).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

import meanfield  # noqa: E402
from meanfield import data as mdata  # noqa: E402
from meanfield.training import loss_hessian, with_readout  # noqa: E402

BLOBS = mdata.blobs(n=240, dim=8, classes=3, separation=3.0, seed=1)


def test_digits_is_the_real_data_set_standardized_and_split_per_class():
    d = mdata.digits()
    assert d.n + d.X_test.shape[0] == 1797 and d.dim == 64 and d.n_classes == 10
    assert d.X_test.shape[0] == sum(round(0.25 * c) for c in np.bincount(np.concatenate([d.y, d.y_test])))
    sd = d.X.std(axis=0)
    assert np.allclose(d.X.mean(axis=0), 0, atol=1e-12)
    assert np.all(np.isclose(sd, 1.0) | (sd == 0))  # pixels that are always 0 stay 0
    from sklearn.datasets import load_digits

    raw = load_digits()
    assert sorted(np.bincount(raw.target)) == sorted(np.bincount(np.concatenate([d.y, d.y_test])))
    again = mdata.digits()
    np.testing.assert_array_equal(d.X, again.X)
    assert not np.array_equal(mdata.digits(seed=1).y, d.y)
    assert mdata.digits(test_fraction=0.0).X_test is None
    small = mdata.digits(pool=2, standardize=False)
    np.testing.assert_allclose(small.X[:, 0], raw.data[:, [0, 1, 8, 9]].mean(axis=1)[_order(raw, small)])
    with pytest.raises(ValueError, match="pool"):
        mdata.digits(pool=3)


def _order(raw, d):
    """The rows of the raw data set that the training split holds, in its order (the same seeded split)."""
    full = mdata.digits(standardize=False)
    idx = {row.tobytes(): i for i, row in enumerate(raw.data)}
    return [idx[row.tobytes()] for row in full.X]


def test_blobs_and_teacher():
    assert np.all(np.bincount(np.concatenate([BLOBS.y, BLOBS.y_test])) == 80)
    t = mdata.teacher(n=300, dim=6, classes=3, width=32, seed=2)
    t2 = mdata.teacher(n=300, dim=6, classes=3, width=32, seed=2)
    np.testing.assert_array_equal(t.y, t2.y)
    assert set(np.unique(t.y)) <= {0, 1, 2} and t.dim == 6
    with pytest.raises(ValueError, match="classes"):
        mdata.teacher(meanfield.mlp(1, readout=4), n=50, classes=3)
    with pytest.raises(ValueError, match="separation"):
        mdata.blobs(separation=-1.0)
    with pytest.raises(ValueError, match="test_fraction"):
        mdata.blobs(test_fraction=0.95)


def test_as_dataset_from_arrays_and_names():
    X = np.random.default_rng(0).standard_normal((10, 3))
    y = np.arange(10) % 2
    d = mdata.as_dataset((X, y))
    assert d.n_classes == 2 and d.X_test is None
    assert mdata.as_dataset((X, y, X[:4], y[:4])).X_test.shape == (4, 3)
    for bad in ((X, y[:5]), (X, y.astype(float)), (X,), "mnist", (X, y, X[:, :2], y)):
        with pytest.raises(ValueError):
            mdata.as_dataset(bad)


def test_train_table_per_epoch():
    net = meanfield.mlp(2, "relu", norm="ln")
    df = meanfield.train(net, BLOBS, width=16, epochs=3, seeds=2, probe=12, lr=0.1)
    assert list(df.epoch) == [0, 1, 2, 3] * 2 and list(df.seed) == [0] * 4 + [1] * 4
    for col in ("loss", "accuracy", "train_loss", "test_loss", "test_accuracy", "class_accuracy_2",
                "predicted_fraction_0", "grad_norm_1", "grad_norm_3", "isometry_gap", "gamma", "status", "step"):
        assert col in df.columns, col
    assert "grad_norm_4" not in df.columns  # 2 blocks + the readout
    assert (df.status == "ok").all() and list(df.step[:4]) == [0, 1, 2, 3]  # full batch: one step per epoch
    frac = df[[f"predicted_fraction_{k}" for k in range(3)]].sum(axis=1)
    np.testing.assert_allclose(frac, 1.0)
    # accuracy is the class-size-weighted mean of the class-wise accuracies
    counts = np.bincount(BLOBS.y, minlength=3) / BLOBS.n
    cls = df[[f"class_accuracy_{k}" for k in range(3)]].to_numpy()
    np.testing.assert_allclose(cls @ counts, df.accuracy)
    assert df.loss.iloc[3] < df.loss.iloc[0]
    assert np.all(df.isometry_gap > 0) and np.all(np.isfinite(df.gamma))
    assert df.attrs["config"]["network"] == with_readout(net, 3).to_dict()


def test_train_is_reproducible_and_seeds_differ():
    kw = dict(width=16, epochs=2, batch_size=50, optimizer="adam")
    a = meanfield.train(meanfield.mlp(1, "tanh"), BLOBS, seeds=[3], **kw)
    b = meanfield.train(meanfield.mlp(1, "tanh"), BLOBS, seeds=[3], **kw)
    c = meanfield.train(meanfield.mlp(1, "tanh"), BLOBS, seeds=[4], **kw)
    cols = ["loss", "accuracy", "grad_norm_1"]
    np.testing.assert_array_equal(a[cols].to_numpy(), b[cols].to_numpy())
    assert not np.array_equal(a[cols].to_numpy(), c[cols].to_numpy())
    assert list(a.step) == [0, 4, 8]  # 180 training points in batches of 50


def test_gradient_norms_at_initialization_are_torchs():
    net = with_readout(meanfield.mlp(2, "tanh"), 3)
    df = meanfield.train(net, BLOBS, width=8, epochs=0, seeds=[0])
    from meanfield.torch import to_torch

    model = to_torch(net, 8, BLOBS.dim, seed=np.random.SeedSequence(0).spawn(2)[0])
    X, y = torch.as_tensor(BLOBS.X), torch.as_tensor(BLOBS.y)
    torch.nn.functional.cross_entropy(model(X), y).backward()
    for b, block in enumerate(model.blocks):
        norm = math.sqrt(sum(float((p.grad**2).sum()) for p in block.parameters()))
        assert df[f"grad_norm_{b + 1}"].iloc[0] == pytest.approx(norm, rel=1e-10)


def test_divergence_stops_early_with_the_reason():
    df = meanfield.train(meanfield.mlp(2, "relu"), BLOBS, width=16, epochs=20, lr=1e4, momentum=0.9)
    assert len(df) < 21
    assert df.status.iloc[-1].startswith("diverged") and "step" in df.status.iloc[-1]
    assert df.attrs["config"]["status"][0].startswith("diverged")
    assert (df.status.iloc[:-1] == "ok").all()


def test_weight_norm_data_init_and_batchnorm_train():
    for norm in ("wn", "wn+mobn", "bn"):
        df = meanfield.train(meanfield.mlp(2, "relu", norm=norm, placement="pre", wn_init="data"), BLOBS, width=16,
                             epochs=2, batch_size=60, loss="mse")
        assert (df.status == "ok").all() and np.all(np.isfinite(df.loss))


def test_on_epoch_callback_and_hessian():
    def angle(model, epoch, ds):
        H, g = loss_hessian(model, ds.X[:40], ds.y[:40])
        return {"angle": float(meanfield.fisher.gradient_newton_angle(H, g, [1.0])[0]), "params": g.size}

    df = meanfield.train(meanfield.mlp(1, "tanh"), BLOBS, width=4, epochs=1, on_epoch=angle)
    assert df.params.iloc[0] == 8 * 4 + 4 + 4 * 3 + 3
    assert np.all((df.angle >= 0) & (df.angle <= 180))


def test_loss_hessian_against_finite_differences():
    from meanfield.torch import to_torch

    model = to_torch(with_readout(meanfield.mlp(1, "tanh", norm="ln"), 3), 3, BLOBS.dim, seed=1)
    X, y = BLOBS.X[:30], BLOBS.y[:30]
    H, g = loss_hessian(model, X, y)
    assert np.allclose(H, H.T, atol=1e-12)
    params = list(model.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def grad_at(theta):
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(theta, params)
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.as_tensor(X)), torch.as_tensor(y)).backward()
        return torch.cat([p.grad.reshape(-1) for p in params]).numpy().copy()

    np.testing.assert_allclose(grad_at(flat), g, rtol=1e-10, atol=1e-14)
    h = 1e-5
    for i in (0, 7, flat.numel() - 1):
        e = torch.zeros_like(flat)
        e[i] = h
        fd = (grad_at(flat + e) - grad_at(flat - e)) / (2 * h)
        np.testing.assert_allclose(H[i], fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": -1}, "epochs"), ({"optimizer": "rmsprop"}, "optimizer"), ({"lr": 0.0}, "lr"),
    ({"batch_size": 0}, "batch_size"), ({"seeds": 0}, "seeds"), ({"loss": "hinge"}, "loss"),
    ({"probe": 1}, "probe"), ({"divergence": 1.0}, "divergence"), ({"dtype": "int8"}, "dtype"),
    ({"readout": True}, "readout"), ({"on_epoch": 3}, "on_epoch"), ({"threads": 0}, "threads")])
def test_train_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        meanfield.train(meanfield.mlp(1), BLOBS, **({"width": 4, "epochs": 1} | kwargs))


def test_readout_false_needs_the_class_count():
    with pytest.raises(ValueError, match="output width"):
        meanfield.train(meanfield.mlp(1), BLOBS, width=4, epochs=1, readout=False)
    df = meanfield.train(meanfield.mlp(1, readout=3), BLOBS, width=4, epochs=1, readout=False)
    assert "grad_norm_2" in df.columns and "grad_norm_3" not in df.columns
