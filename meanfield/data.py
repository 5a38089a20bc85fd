"""Data sets for training checks: scikit-learn's digits (real data that ships with the package), Gaussian blobs
and teacher networks (controlled alternatives). Nothing is downloaded.

Every loader returns a `Dataset`: float64 inputs (n, d), integer labels 0..C-1, a held-out split, split per
class with a seeded permutation, and, by default, features standardized with the training split's mean and
standard deviation (a feature that is constant on the training split is centred only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from meanfield.core.validate import check_bool, check_data, check_int, check_real, check_seed

__all__ = ["Dataset", "digits", "blobs", "teacher", "as_dataset"]


@dataclass(frozen=True)
class Dataset:
    """A classification data set: ``X`` (n, d) float64 and ``y`` (n,) int64 in 0..n_classes-1 for training,
    ``X_test``/``y_test`` held out (None when there is no test split)."""

    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray | None
    y_test: np.ndarray | None
    n_classes: int
    name: str = "data"
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    def __repr__(self) -> str:
        test = 0 if self.X_test is None else self.X_test.shape[0]
        return f"Dataset({self.name!r}: {self.n} train + {test} test, dim {self.dim}, {self.n_classes} classes)"


def _labels(owner: str, y, n: int, name: str = "y") -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (n and y.min() < 0):
        raise ValueError(f"{owner}: {name} must be {n} integer class labels >= 0, got shape {y.shape} and dtype "
                         f"{y.dtype}")
    return y.astype(np.int64)


def as_dataset(data, owner: str = "train") -> Dataset:
    """A `Dataset` from a Dataset, a name ("digits", "blobs", "teacher", with their defaults), ``(X, y)`` or
    ``(X, y, X_test, y_test)``."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str):
        loaders = {"digits": digits, "blobs": blobs, "teacher": teacher}
        if data not in loaders:
            raise ValueError(f"{owner}: data={data!r} must be a Dataset, (X, y), (X, y, X_test, y_test) or one of "
                             f"{', '.join(map(repr, loaders))}")
        return loaders[data]()
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 4):
        raise ValueError(f"{owner}: data must be a Dataset, (X, y), (X, y, X_test, y_test) or a name, got "
                         f"{type(data).__name__}")
    X = check_data(owner, data[0], "X")
    y = _labels(owner, data[1], X.shape[0])
    Xt = yt = None
    if len(data) == 4:
        Xt = check_data(owner, data[2], "X_test")
        if Xt.shape[1] != X.shape[1]:
            raise ValueError(f"{owner}: X_test has {Xt.shape[1]} features but X has {X.shape[1]}")
        yt = _labels(owner, data[3], Xt.shape[0], "y_test")
    classes = int(max(y.max(), -1 if yt is None else yt.max())) + 1
    return Dataset(X, y, Xt, yt, classes, "arrays")


def _split(owner: str, X: np.ndarray, y: np.ndarray, test_fraction, seed, standardize, name: str,
           classes: int, info: dict) -> Dataset:
    """Per-class seeded split (each class keeps round(test_fraction * count) points for testing), then
    standardization with the training statistics."""
    f = check_real(owner, "test_fraction", test_fraction, lo=0.0, hi=0.9)
    standardize = check_bool(owner, "standardize", standardize)
    rng = np.random.default_rng(check_seed(owner, seed))
    test = np.zeros(len(y), dtype=bool)
    for c in range(classes):
        idx = np.flatnonzero(y == c)
        pick = rng.permutation(idx)[: int(round(f * idx.size))]
        test[pick] = True
    order = rng.permutation(len(y))
    train_idx, test_idx = order[~test[order]], order[test[order]]
    Xtr, ytr = X[train_idx], y[train_idx]
    Xte, yte = (X[test_idx], y[test_idx]) if test_idx.size else (None, None)
    if standardize:
        mu = Xtr.mean(axis=0)
        sd = Xtr.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        Xtr = (Xtr - mu) / sd
        Xte = None if Xte is None else (Xte - mu) / sd
    info = dict(info, test_fraction=f, seed=seed if isinstance(seed, int) else repr(seed), standardized=standardize)
    return Dataset(np.ascontiguousarray(Xtr, dtype=np.float64), ytr.astype(np.int64),
                   None if Xte is None else np.ascontiguousarray(Xte, dtype=np.float64),
                   None if yte is None else yte.astype(np.int64), classes, name, info)


def digits(test_fraction: float = 0.25, seed: int = 0, standardize: bool = True, pool: int = 1) -> Dataset:
    """scikit-learn's handwritten digits: 1,797 images of 8 x 8 pixels (64 features, grey levels 0..16), 10
    classes (UCI optical recognition of handwritten digits; ships with scikit-learn, nothing is downloaded).

    Parameters
    ----------
    test_fraction : float in [0, 0.9]
        Share of each class held out (default 0.25: 1,347 training and 450 test images).
    seed : int
        Seed of the split.
    standardize : bool
        Centre and scale every pixel with the training split's mean and standard deviation (pixels that are
        constant on the training split are centred only).
    pool : 1, 2, 4 or 8
        Average pool x pool blocks of pixels first (pool=2: 4 x 4 images, 16 features), for models small
        enough for a full Hessian.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn comes with the torch extra
        raise ImportError("digits needs scikit-learn: pip install meanfield-hermite[torch]") from exc
    d = load_digits()
    pool = check_int("digits", "pool", pool, lo=1)
    if pool not in (1, 2, 4, 8):
        raise ValueError(f"digits: pool={pool!r} must be one of 1, 2, 4, 8")
    X = np.asarray(d.data, dtype=np.float64)
    if pool > 1:
        s = 8 // pool
        X = X.reshape(-1, s, pool, s, pool).mean(axis=(2, 4)).reshape(-1, s * s)
    y = np.asarray(d.target, dtype=np.int64)
    return _split("digits", X, y, test_fraction, seed, standardize, "digits", 10,
                  {"source": "sklearn.datasets.load_digits", "pool": pool})


def blobs(n: int = 1000, dim: int = 16, classes: int = 4, separation: float = 2.0, test_fraction: float = 0.25,
          seed: int = 0, standardize: bool = True) -> Dataset:
    """Gaussian blobs: x = m_c + z with z ~ N(0, I_dim) and class means m_c ~ N(0, separation^2 I_dim / dim)
    (so |m_c - m_c'| is about separation * sqrt(2), against unit noise in every direction); balanced classes.
    """
    n = check_int("blobs", "n", n, lo=2)
    dim = check_int("blobs", "dim", dim, lo=1)
    classes = check_int("blobs", "classes", classes, lo=2, hi=n)
    sep = check_real("blobs", "separation", separation, lo=0.0)
    rng = np.random.default_rng(check_seed("blobs", seed))
    means = rng.standard_normal((classes, dim)) * (sep / np.sqrt(dim))
    y = rng.permutation(np.arange(n) % classes)
    X = means[y] + rng.standard_normal((n, dim))
    return _split("blobs", X, y, test_fraction, seed, standardize, "blobs", classes,
                  {"n": n, "dim": dim, "separation": sep})


def teacher(net=None, n: int = 1000, dim: int = 16, classes: int = 4, width: int = 64,
            test_fraction: float = 0.25, seed: int = 0, standardize: bool = True) -> Dataset:
    """Labels of a random teacher network: inputs x ~ N(0, I_dim), label = argmax of the teacher's outputs.

    ``net`` is a description whose output width is ``classes`` (default ``mlp(2, "tanh", readout=classes)``:
    an odd activation without biases has no initial guessing bias, so the classes are balanced on average);
    its torch model (`meanfield.torch.to_torch`, seed ``seed``, ``width``) labels the data. Needs torch.
    """
    import torch

    from meanfield.network import mlp
    from meanfield.torch import to_torch

    n = check_int("teacher", "n", n, lo=2)
    dim = check_int("teacher", "dim", dim, lo=1)
    classes = check_int("teacher", "classes", classes, lo=2)
    net = mlp(2, "tanh", readout=classes) if net is None else net
    model = to_torch(net, width, dim, seed=seed)
    if model.widths[-1] != classes:
        raise ValueError(f"teacher: the teacher's output width is {model.widths[-1]}, but classes={classes}")
    rng = np.random.default_rng(check_seed("teacher", seed))
    X = rng.standard_normal((n, dim))
    with torch.no_grad():
        y = model(torch.as_tensor(X)).argmax(dim=1).numpy().astype(np.int64)
    return _split("teacher", X, y, test_fraction, seed, standardize, "teacher", classes,
                  {"n": n, "dim": dim, "width": width, "teacher": net.to_dict()})
