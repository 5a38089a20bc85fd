"""Training the torch model of a description (`meanfield.train`), with torch's autograd and optimizers.

``train(net, data, ...)`` builds the model with `meanfield.torch.to_torch` (one model per seed), adds a
linear readout to the number of classes when the description has none, trains it with SGD (momentum) or
Adam, full-batch or mini-batch, and returns a tidy table (pandas), one row per seed and epoch, epoch 0 being
the network at initialization: loss, accuracy, class-wise accuracy and predicted-class fractions on the
training set (and the test set), gradient norms per block, and optionally the isometry gap and the initial
guessing bias gamma of a probe batch. A run stops early when it diverges; the reason is recorded.

What the recorded numbers mean
------------------------------
- Evaluation passes use the model in training mode with frozen running statistics: batch-coupled layers
  (BatchNorm, mean-only BatchNorm, weight-norm data init) use the statistics of the evaluated batch, as in
  both engines and the papers' theory (DESIGN.md), and evaluation changes nothing in the model. The batches
  are those of training (``batch_size``), in data order; the whole set when training is full-batch.
- ``loss``/``accuracy`` are measured on the whole training set after the epoch's updates; ``train_loss`` is
  the mean of the losses of the epoch's steps (before each update); ``test_*`` on the test split.
- ``class_accuracy_k``: the share of class k's training points classified correctly;
  ``predicted_fraction_k``: the share of training points assigned to class k (Francazi et al.'s G_k).
- ``grad_norm_b``: the root mean square over the epoch's steps of ||d loss / d theta_b||, theta_b the
  parameters of block b (epoch 0: the gradient at initialization on the first training batch).
- ``isometry_gap`` and ``gamma`` (with ``probe``): of the Gram K = H H^T / width of the last hidden features
  (the input of the readout) on a fixed probe batch of training points: -log I(K) (Joudaki et al. 2023),
  and gamma = c / (K - c), c the mean off-diagonal and K the mean diagonal entry (Francazi et al.), the
  bias of a random linear readout over the probe batch.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from meanfield.core.backends import stderr_tty
from meanfield.core.validate import check_bool, check_choice, check_int, check_real, check_seed
from meanfield.data import Dataset, as_dataset
from meanfield.layers import Block, Dense
from meanfield.measures import gamma_from_gram, isometry_gap
from meanfield.network import Network

__all__ = ["train", "with_readout", "loss_hessian", "OPTIMIZERS", "LOSSES"]

OPTIMIZERS = ("sgd", "adam")
LOSSES = ("cross_entropy", "mse")
PROGRESS_FLOPS = 5e10  # a run estimated above this many flops shows a progress bar (stderr a terminal)


def with_readout(net: Network, classes: int, sigma_w: float = 1.0) -> Network:
    """``net`` with a readout block Dense(sigma_w, 0, width=classes) appended, unless its last block is
    already a single weighted layer of width ``classes``."""
    last = net.blocks[-1].layers
    if len(last) == 1 and last[0].weighted and last[0].width == classes:
        return net
    return Network([*net.blocks, Block((Dense(sigma_w=sigma_w, sigma_b=0.0, width=classes),), name="readout")],
                   meta=net.meta)


def _loss_fn(name: str, classes: int):
    import torch.nn.functional as F

    if name == "cross_entropy":
        return lambda out, y: F.cross_entropy(out, y)
    return lambda out, y: F.mse_loss(out, F.one_hot(y, classes).to(out.dtype))


def _batches(n: int, batch_size: int, perm=None) -> list:
    idx = np.arange(n) if perm is None else perm
    return [idx[i:i + batch_size] for i in range(0, n, batch_size)]


def _evaluate(model, X, y, classes: int, batch_size: int, loss_fn) -> dict:
    """Loss, accuracy, class-wise accuracy and predicted fractions of the model on (X, y), in training mode
    with frozen running statistics (batch statistics of each evaluation batch)."""
    import torch

    from meanfield.core.torch_modules import frozen_statistics

    n = X.shape[0]
    total, preds = 0.0, []
    with torch.no_grad(), frozen_statistics(model):
        for idx in _batches(n, batch_size):
            out = model(X[idx])
            total += float(loss_fn(out, y[idx])) * len(idx)
            preds.append(out.argmax(dim=1))
    pred = torch.cat(preds).cpu().numpy()
    yy = y.cpu().numpy()
    correct = pred == yy
    counts = np.bincount(yy, minlength=classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        cls_acc = np.bincount(yy, weights=correct, minlength=classes) / counts
    return {"loss": total / n, "accuracy": float(correct.mean()),
            "class_accuracy": np.where(counts > 0, cls_acc, np.nan),
            "predicted_fraction": np.bincount(pred, minlength=classes)[:classes] / n}


def _probe(model, Xp) -> dict:
    """Isometry gap and gamma of the last hidden features (the readout's input) on the probe batch."""
    import torch

    from meanfield.core.torch_modules import frozen_statistics

    with torch.no_grad(), frozen_statistics(model):
        feats = model.features(Xp)
    H = feats[-2].double() if len(feats) > 2 else feats[-1].double()
    K = (H @ H.T / H.shape[-1]).cpu().numpy()
    K = 0.5 * (K + K.T)
    if not np.all(np.isfinite(K)) or np.trace(K) <= 0:
        return {"isometry_gap": math.nan, "gamma": math.nan}
    return {"isometry_gap": float(isometry_gap(K, rcond=1e-12)), "gamma": float(gamma_from_gram(K))}


def _block_grad_norms(model) -> np.ndarray:
    out = []
    for block in model.blocks:
        s = 0.0
        for p in block.parameters():
            if p.grad is not None:
                s += float((p.grad.detach().double() ** 2).sum())
        out.append(math.sqrt(s))
    return np.array(out)


def _optimizer(name: str, params, lr: float, momentum: float, weight_decay: float):
    import torch

    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _seed_list(seeds, seed) -> list:
    if isinstance(seeds, (list, tuple, range, np.ndarray)):
        out = [check_seed("train", s, "seeds") for s in seeds]
        if not out:
            raise ValueError("train: seeds must name at least one seed")
        return [int(s) for s in out]
    k = check_int("train", "seeds", seeds, lo=1)
    base = check_seed("train", seed)
    return [int(base) + i for i in range(k)]


def train(net, data="digits", *, width: int | Sequence[int] = 128, epochs: int = 20, optimizer: str = "sgd",
          lr: float | None = None, momentum: float = 0.9, weight_decay: float = 0.0, batch_size: int | None = None,
          seeds=1, seed: int = 0, loss: str = "cross_entropy", readout: bool | str = "auto",
          readout_sigma_w: float = 1.0, probe: int | None = None, divergence: float = 1e3,
          dtype: str = "float64", device=None, progress: bool | None = None,
          on_epoch: Callable | None = None, threads: int | None = None):
    """Train the torch model of a description on a classification data set; a tidy table per epoch.

    Parameters
    ----------
    net : Network (or layers)
        The description; `meanfield.torch.to_torch` builds one model per seed, initialized by its law.
    data : Dataset, "digits" (default), "blobs", "teacher", (X, y) or (X, y, X_test, y_test)
        See `meanfield.data`.
    width : int or per-block sequence
        Width of the description's Dense-like layers.
    epochs : int >= 0
    optimizer : "sgd" (with ``momentum``) or "adam"
    lr : float > 0
        Default 0.05 for SGD, 1e-3 for Adam.
    momentum, weight_decay : float >= 0
    batch_size : int or None
        None: full-batch training (one step per epoch); else mini-batches of a seeded reshuffle per epoch.
    seeds : int or sequence of int
        Number of runs (seeds ``seed, seed + 1, ...``) or the seeds themselves. Run s draws the model
        (`to_torch` with ``SeedSequence(s)``'s first child) and the shuffles (its second child) from s alone.
    loss : "cross_entropy" or "mse" (squared error to one-hot targets)
    readout : "auto" or False
        "auto": append Dense(readout_sigma_w, 0, width=classes) unless the last block already is one
        (`with_readout`); False: the description's output width must equal the number of classes.
    probe : int or None
        Size of a fixed probe batch of training points for ``isometry_gap`` and ``gamma``.
    divergence : float > 1
        Stop a run when a step's loss is not finite or exceeds ``divergence`` times the loss at
        initialization; the ``status`` column says when and why.
    dtype : "float64" or "float32"
    device : None (CPU) or a torch device
    progress : None (a tqdm bar for long runs when stderr is a terminal), True or False
    on_epoch : callable ``(model, epoch, data) -> dict`` or None
        Extra columns per row (e.g. a Hessian diagnostic), called after each evaluation.
    threads : int or None
        torch's CPU threads during the run (restored afterwards). None: one thread for small models (below
        5e9 flops per step), where threads only add overhead and collapse on shared cores; torch's setting
        otherwise.

    Returns
    -------
    pandas.DataFrame
        One row per (seed, epoch), epochs 0..E (fewer after a divergence), columns seed, epoch, step, loss,
        accuracy, train_loss, [test_loss, test_accuracy], class_accuracy_k, predicted_fraction_k,
        grad_norm_b (b = 1..blocks), [isometry_gap, gamma], status, seconds. ``df.attrs["config"]`` holds
        the settings, the description (``network``) and the per-seed status.

    Examples
    --------
    >>> import meanfield
    >>> df = meanfield.train(meanfield.mlp(2, "relu", norm="ln"), "blobs", width=32, epochs=2)  # doctest: +SKIP
    >>> df[["epoch", "loss", "accuracy"]]                                                          # doctest: +SKIP
    """
    import pandas as pd
    import torch

    from meanfield.torch import _device, _network, to_torch, torch_dtype

    net = _network("train", net)
    ds: Dataset = as_dataset(data)
    C = ds.n_classes
    epochs = check_int("train", "epochs", epochs, lo=0)
    optimizer = check_choice("train", "optimizer", optimizer, OPTIMIZERS)
    if lr is None:
        lr = 0.05 if optimizer == "sgd" else 1e-3
    lr = check_real("train", "lr", lr, lo=0.0, lo_open=True)
    momentum = check_real("train", "momentum", momentum, lo=0.0)
    weight_decay = check_real("train", "weight_decay", weight_decay, lo=0.0)
    n = ds.n
    bs = n if batch_size is None else check_int("train", "batch_size", batch_size, lo=1, hi=n)
    seed_list = _seed_list(seeds, seed)
    loss = check_choice("train", "loss", loss, LOSSES)
    check_choice("train", "readout", readout, ("auto", False))
    readout_sigma_w = check_real("train", "readout_sigma_w", readout_sigma_w, lo=0.0)
    probe = None if probe is None else check_int("train", "probe", probe, lo=2, hi=n)
    divergence = check_real("train", "divergence", divergence, lo=1.0, lo_open=True, allow_inf=True)
    dt, dev = torch_dtype("train", dtype), _device("train", device)
    if progress is not None:
        progress = check_bool("train", "progress", progress)
    if on_epoch is not None and not callable(on_epoch):
        raise ValueError(f"train: on_epoch={on_epoch!r} must be callable or None")
    full = with_readout(net, C, readout_sigma_w) if readout == "auto" else net
    loss_fn = _loss_fn(loss, C)
    X = torch.as_tensor(ds.X, dtype=dt, device=dev)
    y = torch.as_tensor(ds.y, device=dev)
    Xt = None if ds.X_test is None else torch.as_tensor(ds.X_test, dtype=dt, device=dev)
    yt = None if ds.y_test is None else torch.as_tensor(ds.y_test, device=dev)
    Xp = None if probe is None else X[np.random.default_rng(seed_list[0]).permutation(n)[:probe]]

    threads = None if threads is None else check_int("train", "threads", threads, lo=1)
    if threads is None and _step_flops(full, width, ds, bs) < 5e9:
        threads = 1
    setup = _Setup(ds, X, y, Xt, yt, Xp, C, bs, loss_fn, on_epoch, divergence)
    rows, status_of = [], {}
    bar = _bar(progress, full, width, ds, epochs, len(seed_list))
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for s in seed_list:
            model_seq, shuffle_seq = np.random.SeedSequence(s).spawn(2)
            model = to_torch(full, width, ds.dim, seed=model_seq, dtype=dt, device=dev)
            if model.widths[-1] != C:
                raise ValueError(f"train: the model's output width is {model.widths[-1]} but the data have {C} "
                                 "classes; use readout='auto' or end the description with a Dense of that width")
            opt = _optimizer(optimizer, model.parameters(), lr, momentum, weight_decay)
            status_of[s] = _train_one(setup, model, opt, s, np.random.default_rng(shuffle_seq), epochs, rows, bar)
    finally:
        torch.set_num_threads(saved_threads)
        if bar is not None:
            bar.close()
    df = pd.DataFrame(rows)
    df.attrs["config"] = {"network": full.to_dict(), "data": repr(ds), "width": width, "epochs": epochs,
                          "optimizer": optimizer, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                          "batch_size": batch_size, "loss": loss, "dtype": str(dtype), "status": status_of}
    return df


@dataclass
class _Setup:
    """What every run of `train` shares: the data (as tensors), the probe batch and the settings."""

    ds: Dataset
    X: Any
    y: Any
    Xt: Any
    yt: Any
    Xp: Any
    C: int
    bs: int
    loss_fn: Callable
    on_epoch: Callable | None
    divergence: float

    def row(self, model, seed: int, epoch: int, step: int, losses: list, grads: list, status: str, t0: float) -> dict:
        ev = _evaluate(model, self.X, self.y, self.C, self.bs, self.loss_fn)
        row = {"seed": seed, "epoch": epoch, "step": step, "loss": ev["loss"], "accuracy": ev["accuracy"],
               "train_loss": float(np.mean(losses)) if losses else ev["loss"]}
        if self.Xt is not None:
            et = _evaluate(model, self.Xt, self.yt, self.C, self.bs, self.loss_fn)
            row.update(test_loss=et["loss"], test_accuracy=et["accuracy"])
        row.update({f"class_accuracy_{k}": ev["class_accuracy"][k] for k in range(self.C)})
        row.update({f"predicted_fraction_{k}": ev["predicted_fraction"][k] for k in range(self.C)})
        g = np.sqrt(np.mean(np.square(grads), axis=0)) if grads else np.full(len(model.blocks), np.nan)
        row.update({f"grad_norm_{b + 1}": g[b] for b in range(len(g))})
        if self.Xp is not None:
            row.update(_probe(model, self.Xp))
        if self.on_epoch is not None:
            row.update(self.on_epoch(model, epoch, self.ds) or {})
        row["status"], row["seconds"] = status, time.perf_counter() - t0
        return row


def _train_one(st: _Setup, model, opt, seed: int, shuffle, epochs: int, rows: list, bar) -> str:
    """One run: epoch 0 (the network at initialization; its first training-mode pass also runs any data
    init), then the epochs, appending a row per epoch to ``rows``; returns the status."""
    n, t0, step = st.X.shape[0], time.perf_counter(), 0
    first = _batches(n, st.bs, shuffle.permutation(n))[0]
    model.zero_grad(set_to_none=True)
    st.loss_fn(model(st.X[first]), st.y[first]).backward()
    grads0 = [_block_grad_norms(model)]
    model.zero_grad(set_to_none=True)
    rows.append(st.row(model, seed, 0, 0, [], grads0, "ok", t0))
    loss0 = rows[-1]["loss"]
    limit = st.divergence * max(loss0, 1e-12)
    for epoch in range(1, epochs + 1):
        losses, grads = [], []
        for idx in _batches(n, st.bs, shuffle.permutation(n)):
            opt.zero_grad(set_to_none=True)
            value = st.loss_fn(model(st.X[idx]), st.y[idx])
            lv = float(value.detach())
            step += 1
            if not math.isfinite(lv) or lv > limit:
                status = f"diverged: step {step} (epoch {epoch}) loss {lv:.4g}" + (
                    f" > {st.divergence:g} x the initial {loss0:.4g}" if math.isfinite(lv) else "")
                rows.append({"seed": seed, "epoch": epoch, "step": step, "loss": lv, "accuracy": math.nan,
                             "train_loss": lv, "status": status, "seconds": time.perf_counter() - t0})
                return status
            value.backward()
            grads.append(_block_grad_norms(model))
            losses.append(lv)
            opt.step()
        rows.append(st.row(model, seed, epoch, step, losses, grads, "ok", t0))
        if bar is not None:
            bar.update(1)
    return "ok"


def _step_flops(net, width, ds: Dataset, batch: int) -> float:
    """Rough flops of one training step (forward and backward): 6 batch (d w + depth w^2)."""
    w = width if isinstance(width, (int, np.integer)) else max(width)
    return 6.0 * batch * (ds.dim * w + net.depth * w * w)


def _bar(progress, net, width, ds: Dataset, epochs: int, runs: int):
    if progress is False or epochs == 0:
        return None
    if progress is None:
        flops = _step_flops(net, width, ds, ds.n) * epochs * runs
        if not (flops > PROGRESS_FLOPS and stderr_tty()):
            return None
    from tqdm import tqdm

    return tqdm(total=epochs * runs, desc="train", unit="epoch", file=sys.stderr)


def loss_hessian(model, X, y, loss: str = "cross_entropy"):
    """(H, g): the Hessian and the gradient of the training loss with respect to all trainable parameters of
    ``model`` (flattened in ``model.parameters()`` order), by torch's autograd (``torch.func``), as float64
    numpy arrays (H symmetrized: differentiating the gradient leaves rounding-level asymmetry).
    Batch-coupled layers use the statistics of X (training mode, running statistics frozen).
    For `meanfield.fisher.gradient_newton_angle(H, g, mus)` (Vatanen et al. 2013)."""
    import torch
    from torch.func import functional_call

    from meanfield.core.torch_modules import frozen_statistics

    names = [k for k, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    dev = flat.device
    Xt = X if isinstance(X, torch.Tensor) else torch.as_tensor(X, dtype=flat.dtype, device=dev)
    yt = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y), device=dev)
    C = int(model.widths[-1]) if hasattr(model, "widths") else int(yt.max()) + 1
    fn = _loss_fn(check_choice("loss_hessian", "loss", loss, LOSSES), C)

    def f(theta):
        chunks = torch.split(theta, sizes)
        ps = {k: c.reshape(s) for k, c, s in zip(names, chunks, shapes)}
        return fn(functional_call(model, ps, (Xt,)), yt)

    with frozen_statistics(model):
        g = torch.func.grad(f)(flat)
        H = torch.func.jacrev(torch.func.grad(f))(flat)  # reverse over reverse
    H = H.double().cpu().numpy()
    return 0.5 * (H + H.T), g.double().cpu().numpy()
