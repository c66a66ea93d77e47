"""Imputation quality: MIWAE and not-MIWAE (vaelab) against scikit-learn's imputers.

Tables (Mattei & Frellsen 2019; Ipsen, Mattei & Frellsen 2021): scikit-learn's breast cancer,
wine and diabetes tables, standardized on the complete data; missing entries made
  * MCAR 20% / 50%: each entry missing independently with that probability;
  * MNAR: in a random half of the features, every value above the feature's mean removed
    (the self-masking setting of not-MIWAE);
then imputed in-sample (as both papers do) by: mean, KNNImputer (k = 5), IterativeImputer
(MICE, BayesianRidge), IterativeImputer with ExtraTreesRegressor (missForest-like), vaelab
MIWAE (``missing="mask"``, IWAE bound K = 20) and not-MIWAE (``missing_model="self-masking"``).
Metric: RMSE over the missing entries on the standardized scale; mean ± standard error over
seeds, and paired differences against MIWAE (same seed, same mask).

Images: Fashion-MNIST, binarized at 1/2; a subset of training images with 50% of the pixels
missing completely at random trains MIWAE and fits the peers; test images with 50% MCAR
pixels or with the top half missing are imputed out of sample. Metric: accuracy on the
missing pixels (the mode for binary data); for the 8-bit images (k/255, MIWAE with the
discretized logistic likelihood) the RMSE in grey levels. ``vaelab complete``
(use/complete.py: a VAE trained on the *complete* training images, q(h) fitted per image)
runs on the binary top-half setting only (it takes one hidden-pixel mask for the whole
batch).

Every vaelab model is trained with the library's own step (``vaelab.fit.masked
.MaskedTrainStep`` around ``vaelab.fit.step.TrainStep``) in a plain loop (no run directory),
one thread per process. The committed results (benchmarks/results/imputation.md, .json,
.rows.jsonl) came from ``python3 benchmarks/imputation.py --workers 15 --table-steps 3000
--image-train 10000 --image-steps 4000 --image-kinds binary`` on a 16-core machine in 5
minutes, and the 8-bit table from ``--skip-tables --image-kinds 8-bit --workers 2`` with the
same image sizes (imputation_8bit.json); on a shared 2-core
machine use ``nice -n 10 .venv/bin/python benchmarks/imputation.py --workers 2`` (about 20×
longer), or ``--quick`` for a smoke test.

``--via sklearn|cli|both`` trains and imputes the tables' MIWAE and not-MIWAE through
``vaelab.sklearn.VAEImputer``, through the command line (``vaelab train`` + ``vaelab impute``,
the estimator's settings as flags, ``--table-epochs``), or both; with both, each row records
the largest difference between the two paths' imputations and whether their weights are
byte-identical, in benchmarks/results/sklearn-vs-cli.{json,md} (``--tables`` and
``--settings`` pick a few cells).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import ExtraTreesRegressor
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer
from threadpoolctl import threadpool_limits

from use_common import estimator_seed, record_sklearn_vs_cli, same_weights, vaelab_cli
from vaelab import data as data_
from vaelab.config import ModelConfig, RunConfig, TrainConfig, load_config_file
from vaelab.fit.masked import MaskedTrainStep, build_masked_model
from vaelab.fit.step import TrainStep
from vaelab.infer.schemes import Amortized
from vaelab.model.vae import build_vae
from vaelab.sklearn import VAEImputer
from vaelab.use import complete as complete_
from vaelab.use.impute import impute

TABLES = {"breast-cancer": load_breast_cancer, "wine": load_wine, "diabetes": load_diabetes}
SETTINGS = ("mcar-20", "mcar-50", "mnar-above-mean")
PEERS = ("mean", "knn", "mice", "missforest")
#: The recipes of the "recipe" column: MIWAE for values missing at random, not-MIWAE (with
#: its missingness model) for values missing because of their size.
RECIPES = {"mcar": Path("recipes/tables/impute.toml"),
           "mnar": Path("recipes/tables/impute-mnar.toml")}
#: The central interval whose coverage of the hidden values is measured, from DRAWS multiple
#: imputations (sampling importance resampling, K = --table-k).
LEVEL, DRAWS = 0.9, 100


def make_missing(x: np.ndarray, setting: str, rng: np.random.Generator) -> np.ndarray:
    """Bool [N, D], True = missing."""
    if setting.startswith("mcar"):
        return rng.random(x.shape) < int(setting.split("-")[1]) / 100
    cols = rng.permutation(x.shape[1])[: x.shape[1] // 2]
    miss = np.zeros(x.shape, bool)
    miss[:, cols] = x[:, cols] > x[:, cols].mean(0)
    return miss


def peer(name: str, seed: int):
    if name == "mean":
        return SimpleImputer()
    if name == "knn":
        return KNNImputer(n_neighbors=5)
    if name == "mice":
        return IterativeImputer(max_iter=10, random_state=seed)
    return IterativeImputer(estimator=ExtraTreesRegressor(n_estimators=20, random_state=seed),
                            max_iter=5, random_state=seed)


def train_vaelab(x: np.ndarray, *, missing_model: str, likelihood: str, hidden, latent: int,
                 steps: int, k: int, batch: int, seed: int, lr: float = 1e-3,
                 gated: bool = False):
    """A MaskedVAE trained for ``steps`` MaskedTrainStep steps on x [N, D] with NaN."""
    torch.manual_seed(seed)
    xt = torch.from_numpy(x.astype(np.float32))
    mc = ModelConfig(data_dim=x.shape[1], latent_dim=latent, hidden=hidden, activation="tanh",
                     likelihood=likelihood, missing="mask", missing_model=missing_model,
                     gated=gated)
    tc = TrainConfig(binarize="none", num_samples=k, objective="iwae", batch_size=batch)
    model = build_masked_model(RunConfig(model=mc, train=tc), xt)
    inner = TrainStep(model, Amortized(model.encoder), lr=lr, num_samples=k, compile=False)
    step = MaskedTrainStep(inner, objective="iwae")
    batches = data_.Batches(xt, batch, seed=seed)
    _take_steps(step, batches, steps)
    return model.eval()


def _take_steps(step, batches, steps: int) -> None:
    """Run ``steps`` training steps over the batches' successive epochs."""
    done, epoch = 0, 0
    while done < steps:
        for xb, index in batches.epoch(epoch):
            step(xb, index)
            done += 1
            if done >= steps:
                return
        epoch += 1


def rmse(filled: np.ndarray, truth: np.ndarray, miss: np.ndarray) -> float:
    return float(np.sqrt(np.mean((filled[miss] - truth[miss]) ** 2)))


def table_task(args, name: str, setting: str, seed: int) -> dict:
    """One (table, setting, seed): every imputer on the same mask."""
    x = TABLES[name]().data.astype(np.float64)
    x = (x - x.mean(0)) / x.std(0)
    rng = np.random.default_rng(1000 * seed + SETTINGS.index(setting))
    miss = make_missing(x, setting, rng)
    xm = np.where(miss, np.nan, x)
    row = {"data": name, "setting": setting, "seed": seed, "n": x.shape[0], "d": x.shape[1],
           "missing_fraction": float(miss.mean())}
    if args.from_rows is not None:
        return row | reused_row(args.from_rows, row, xm, x, miss) | recipe_task(args, row, xm,
                                                                               x, miss, seed)
    for p in PEERS:
        start = time.perf_counter()
        row[p] = rmse(peer(p, seed).fit_transform(xm), x, miss)
        row[p + "_s"] = time.perf_counter() - start
    if args.recipe:
        row |= recipe_task(args, row, xm, x, miss, seed)
    for label, mm in (("miwae", "none"), ("not-miwae", "self-masking")):
        if args.via != "loop":
            row |= vaelab_paths(args, label, mm, xm, x, miss, seed)
            continue
        start = time.perf_counter()
        model = train_vaelab(xm, missing_model=mm, likelihood="gaussian", hidden=(128, 128),
                             latent=max(1, x.shape[1] - 1), steps=args.table_steps, k=20,
                             batch=64, seed=seed)
        filled = impute(model, xm, num_samples=args.table_k, seed=seed)
        row[label] = rmse(filled, x, miss)
        row[label + "_s"] = time.perf_counter() - start
    return row


def reused_row(path: Path, row: dict, xm: np.ndarray, x: np.ndarray, miss: np.ndarray) -> dict:
    """The peers' and the first MIWAE / not-MIWAE's RMSE of the same (table, setting, seed)
    from an earlier run's rows, once the mean imputer's RMSE, recomputed here, is the file's to
    1e-12 (the same standardized table and the same mask)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    old = [r for r in rows if (r["data"], r["setting"], r["seed"]) ==
           (row["data"], row["setting"], row["seed"])]
    if len(old) != 1:
        raise SystemExit(f"--from-rows: expected one row for {row['data']} {row['setting']} "
                         f"seed {row['seed']} in {path}, got {len(old)}")
    mean = rmse(SimpleImputer().fit_transform(xm), x, miss)
    if abs(mean - old[0]["mean"]) > 1e-12:
        raise SystemExit(f"--from-rows: the mask of {row['data']} {row['setting']} seed "
                         f"{row['seed']} is not the file's (mean imputer {mean} here, "
                         f"{old[0]['mean']} there)")
    keys = [m for m in (*PEERS, "miwae", "not-miwae") if m in old[0]]
    return {k: old[0][k] for k in keys} | {k + "_s": old[0].get(k + "_s") for k in keys}


def recipe_of(setting: str) -> Path:
    return RECIPES["mnar" if setting.startswith("mnar") else "mcar"]


def train_recipe(xm: np.ndarray, path: Path, *, latent: int, seed: int,
                 epochs: int | None = None):
    """A MaskedVAE trained as ``vaelab train --config path --latent-dim latent`` trains it on
    xm (NaN missing): the recipe's model, objective, K, batch size, lr and epochs, no
    validation split; the same step as ``train_vaelab``, run epoch by epoch."""
    config = RunConfig.from_dict(load_config_file(path))
    mc = dataclasses.replace(config.model, data_dim=xm.shape[1], latent_dim=latent)
    tc = config.train if epochs is None else dataclasses.replace(config.train, epochs=epochs)
    torch.manual_seed(seed)
    xt = torch.from_numpy(xm.astype(np.float32))
    model = build_masked_model(RunConfig(model=mc, train=tc), xt)
    inner = TrainStep(model, Amortized(model.encoder), lr=tc.lr, num_samples=tc.num_samples,
                      compile=False)
    step = MaskedTrainStep(inner, objective=tc.objective)
    batches = data_.Batches(xt, tc.batch_size, seed=seed)
    for epoch in range(tc.epochs):
        for xb, index in batches.epoch(epoch):
            step(xb, index)
    return model.eval(), tc.epochs * math.ceil(len(xm) / tc.batch_size)


def recipe_task(args, row: dict, xm: np.ndarray, x: np.ndarray, miss: np.ndarray,
                seed: int) -> dict:
    """The "recipe" column: RMSE of the recipe's conditional means, and the share of the
    hidden values inside the central LEVEL interval of DRAWS multiple imputations."""
    start = time.perf_counter()
    path = recipe_of(row["setting"])
    fills, draws = [], []
    for run in range(args.ensemble):   # --ensemble R: R runs (seeds seed + 1000 r) averaged
        model, steps = train_recipe(xm, path, latent=max(1, x.shape[1] - 1),
                                    seed=seed + 1000 * run, epochs=args.recipe_epochs)
        fills.append(impute(model, xm, num_samples=args.table_k, seed=seed))
        draws.append(impute(model, xm, num_samples=args.table_k,
                            draws=DRAWS // args.ensemble, seed=seed + 1))
    out = {"recipe": rmse(np.mean(fills, 0), x, miss), "recipe_file": str(path),
           "recipe_steps": steps, "recipe_runs": args.ensemble}
    out["recipe_s"] = time.perf_counter() - start
    draws = np.concatenate(draws)         # the runs' draws pooled: DRAWS in all
    lo, hi = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2], axis=0)
    inside = (x >= lo) & (x <= hi)
    out["recipe_cover"] = float(inside[miss].mean())
    out["recipe_width"] = float((hi - lo)[miss].mean())
    return out


def vaelab_paths(args, label: str, missing_model: str, xm: np.ndarray, x: np.ndarray,
                 miss: np.ndarray, seed: int) -> dict:
    """MIWAE / not-MIWAE through ``vaelab.sklearn.VAEImputer`` and/or the command line
    (``vaelab train`` + ``vaelab impute``) with the same settings and seed → RMSE per path
    (``label`` is the first path's), and with both the largest |difference| between their
    imputations and whether the two runs' weights are byte-identical."""
    latent, k = max(1, x.shape[1] - 1), args.table_k
    row, filled = {}, {}
    run_seed = estimator_seed(seed)
    with tempfile.TemporaryDirectory(prefix="imputation-") as tmp:
        work = Path(tmp)
        if args.via in ("sklearn", "both"):
            start = time.perf_counter()
            imputer = VAEImputer(latent_dim=latent, hidden=(128, 128), likelihood="gaussian",
                                 epochs=args.table_epochs, batch_size=64, lr=1e-3,
                                 num_samples=k, train_samples=20, missing_model=missing_model,
                                 random_state=seed).fit(xm)
            filled["sklearn"] = imputer.transform(xm)
            row[f"{label}-sklearn_s"] = time.perf_counter() - start
            imputer.save(work / "sklearn-run")
        if args.via in ("cli", "both"):
            # The estimator's settings as flags; where the CLI's defaults differ from the
            # estimator's (val-fraction, binarize, objective, num-samples, drop-empty-rows,
            # compile, the seed) they are named.
            start = time.perf_counter()
            np.save(work / "x.npy", xm)
            vaelab_cli("train", "--data", str(work / "x.npy"), "--out", str(work / "cli-run"),
                       "--quiet", "--missing", "mask", "--missing-model", missing_model,
                       "--drop-empty-rows", "--objective", "iwae", "--num-samples", "20",
                       "--latent-dim", str(latent), "--hidden", "128,128",
                       "--likelihood", "gaussian", "--epochs", str(args.table_epochs),
                       "--batch-size", "64", "--lr", "0.001", "--seed", str(run_seed),
                       "--val-fraction", "0", "--binarize", "none", "--device", "cpu",
                       "--compile", "off")
            vaelab_cli("impute", str(work / "cli-run"), "--data", str(work / "x.npy"),
                       "--out", str(work / "filled.npy"), "--k", str(k), "--seed", str(run_seed))
            filled["cli"] = np.load(work / "filled.npy")
            row[f"{label}-cli_s"] = time.perf_counter() - start
        for path, values in filled.items():
            row[f"{label}-{path}"] = rmse(values, x, miss)
        row[label] = row[f"{label}-{next(iter(filled))}"]
        if len(filled) == 2:
            row[f"{label}-max-abs-diff"] = float(np.abs(filled["sklearn"] - filled["cli"]).max())
            row[f"{label}-same-weights"] = same_weights(work / "sklearn-run", work / "cli-run")
    return row


def _one_thread() -> None:
    torch.set_num_threads(1)
    threadpool_limits(1)          # scikit-learn's BLAS too: one thread per task


def _run_all(args) -> tuple[list[dict], dict | None]:
    """Every table task and the image task, on ``args.workers`` processes (one thread each)."""
    tasks = [] if args.skip_tables else [
        (name, setting, seed) for seed in range(args.seeds) for name in args.tables
        for setting in args.settings]
    rows: list[dict] = []
    log = args.out.with_suffix(".rows.jsonl").open("w")
    with mp.get_context("fork").Pool(args.workers, initializer=_one_thread) as pool:
        kinds = args.image_kinds.split(",")
        images = (None if args.skip_images or "binary" not in kinds
                  else pool.apply_async(image_runs, (args,)))
        images8 = (None if args.skip_images or "8-bit" not in kinds
                   else pool.apply_async(image_runs_8bit, (args,)))
        for row in pool.imap_unordered(_table_task_star, [(args, *t) for t in tasks]):
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                              for k, v in row.items() if not k.endswith("_s")}), flush=True)
        images = None if images is None else images.get()
        if images8 is not None:
            images = dict(images or {}, eight_bit=images8.get())
    return rows, images


def _table_task_star(packed) -> dict:
    return table_task(*packed)


def _accuracy(pred: np.ndarray, truth: np.ndarray, miss: np.ndarray) -> float:
    return float(np.mean((pred[miss] > 0.5) == (truth[miss] > 0.5)))


def _per_image(pred: np.ndarray, truth: np.ndarray, miss: np.ndarray) -> np.ndarray:
    """Each image's accuracy on its own missing pixels [N] (images without any: left out by
    the caller's masks, which hide pixels in every image)."""
    right = ((pred > 0.5) == (truth > 0.5)) & miss
    return right.sum(1) / miss.sum(1)


def _paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean and standard error of the per-image difference a − b (same images, same masks):
    the spread over test images, not over training seeds."""
    d = a - b
    return {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d)))}


def image_halves() -> np.ndarray:
    """The four half-image masks [4, 784] (True = missing): top, bottom, left, right."""
    halves = np.zeros((4, 28, 28), bool)
    halves[0, :14], halves[1, 14:], halves[2, :, :14], halves[3, :, 14:] = True, True, True, True
    return halves.reshape(4, 784)


def image_runs(args) -> dict:
    train = (data_.load_dataset("fashion-mnist", "train", limit=args.image_train).x > 0.5)
    test = (data_.load_dataset("fashion-mnist", "test", limit=args.image_test).x > 0.5)
    train, test = train.numpy().astype(np.float64), test.numpy().astype(np.float64)
    rng = np.random.default_rng(0)
    train_miss = rng.random(train.shape) < 0.5
    top = np.zeros(test.shape, bool)
    top[:, : 14 * 28] = True
    masks = {"mcar-50": rng.random(test.shape) < 0.5, "top-half": top}
    if args.image_train_masks == "mixed":
        # Half of the training images lose one of their four halves (drawn per image) instead
        # of 50 % of their pixels at random: the large, connected holes an inpainting model
        # must learn to fill; the test masks above are drawn first, so they are unchanged.
        blocks = rng.random(len(train)) < 0.5
        train_miss[blocks] = image_halves()[rng.integers(0, 4, int(blocks.sum()))]
    train_m = np.where(train_miss, np.nan, train)
    out = {"n_train": len(train), "n_test": len(test), "settings": {},
           "model": {"hidden": args.image_hidden, "latent": args.image_latent,
                     "gated": args.image_gated, "train_masks": args.image_train_masks}}
    start = time.perf_counter()
    model = train_vaelab(train_m, missing_model="none", likelihood="bernoulli",
                         hidden=tuple(args.image_hidden), latent=args.image_latent,
                         steps=args.image_steps, k=5, batch=64, seed=0,
                         gated=args.image_gated)
    out["miwae_train_s"] = time.perf_counter() - start
    full = _complete_data_vae(train, args.image_steps)
    fitted = {"mean": SimpleImputer().fit(train_m),
              "knn": KNNImputer(n_neighbors=5).fit(train_m),
              "mice": IterativeImputer(max_iter=3, n_nearest_features=20, random_state=0
                                       ).fit(train_m)}
    for setting, miss in masks.items():
        xm = np.where(miss, np.nan, test)
        res: dict = {}
        images = {}
        for p, imp in fitted.items():
            pred = imp.transform(xm)
            res[p], images[p] = _accuracy(pred, test, miss), _per_image(pred, test, miss)
        pred = impute(model, xm, num_samples=args.image_k, seed=0)
        res["miwae"], images["miwae"] = _accuracy(pred, test, miss), _per_image(pred, test, miss)
        res["miwae_minus_knn_per_image"] = _paired(images["miwae"], images["knn"])
        if setting == "top-half":
            res["vaelab-complete"] = _complete_accuracy(full, test, miss[0])
        out["settings"][setting] = res
        print(setting, json.dumps(res), flush=True)
    args.out.with_suffix(".images.json").write_text(json.dumps(out, indent=1))
    return out


def image_runs_8bit(args) -> dict:
    """Fashion-MNIST as 8-bit grey levels k/255: RMSE (in grey levels, 0–255) on the missing
    pixels; MIWAE with the discretized logistic likelihood (Salimans et al. 2017)."""
    train = data_.load_dataset("fashion-mnist", "train", limit=args.image_train).x
    test = data_.load_dataset("fashion-mnist", "test", limit=args.image_test).x
    train, test = train.numpy().astype(np.float64), test.numpy().astype(np.float64)
    rng = np.random.default_rng(0)
    train_m = np.where(rng.random(train.shape) < 0.5, np.nan, train)
    top = np.zeros(test.shape, bool)
    top[:, : 14 * 28] = True
    masks = {"mcar-50": rng.random(test.shape) < 0.5, "top-half": top}
    out = {"n_train": len(train), "n_test": len(test), "settings": {}}
    start = time.perf_counter()
    model = train_vaelab(train_m, missing_model="none", likelihood="discretized-logistic",
                         hidden=(256,), latent=20, steps=args.image_steps, k=5, batch=64, seed=0)
    out["miwae_train_s"] = time.perf_counter() - start
    fitted = {"mean": SimpleImputer().fit(train_m),
              "knn": KNNImputer(n_neighbors=5).fit(train_m),
              "mice": IterativeImputer(max_iter=3, n_nearest_features=20, random_state=0
                                       ).fit(train_m)}
    for setting, miss in masks.items():
        xm = np.where(miss, np.nan, test)
        res = {p: 255 * rmse(imp.transform(xm), test, miss) for p, imp in fitted.items()}
        res["miwae"] = 255 * rmse(impute(model, xm, num_samples=args.image_k, seed=0), test,
                                  miss)
        out["settings"][setting] = res
        print("8-bit", setting, json.dumps(res), flush=True)
    args.out.with_suffix(".images8.json").write_text(json.dumps(out, indent=1))
    return out


def _complete_data_vae(train: np.ndarray, steps: int):
    """The ordinary VAE (same networks, ELBO) on the complete training images."""
    torch.manual_seed(0)
    mc = ModelConfig(data_dim=784, latent_dim=20, hidden=(256,), activation="tanh")
    model = build_vae(mc)
    step = TrainStep(model, Amortized(model.encoder), lr=1e-3, compile=False)
    batches = data_.Batches(torch.from_numpy(train.astype(np.float32)), 64, seed=0)
    _take_steps(step, batches, steps)
    return model.eval()


def _complete_accuracy(model, test: np.ndarray, hidden: np.ndarray) -> float:
    x = torch.from_numpy(test.astype(np.float32))
    hid = torch.from_numpy(hidden)
    torch.manual_seed(0)
    marginal = complete_.marginal_pixel_mean(model)[hid]
    start = complete_.initial_logits(model, x, hid, marginal, "reconstruction")
    logits, _ = complete_.fit_hidden(model, x, hid, start, steps=100, samples=8)
    pred = np.asarray(test, copy=True)
    pred[:, hidden] = torch.sigmoid(logits).numpy()
    return _accuracy(pred, test, np.broadcast_to(hidden, test.shape))


VAELAB = ("miwae", "not-miwae", "recipe")


def _methods(rows: list[dict]) -> tuple[str, ...]:
    return tuple(m for m in (*PEERS, *VAELAB) if rows and all(m in r for r in rows))


def summarize(rows: list[dict]) -> list[dict]:
    methods = _methods(rows)
    out = []
    for name in TABLES:
        for setting in SETTINGS:
            sel = [r for r in rows if r["data"] == name and r["setting"] == setting]
            if not sel:
                continue
            s = {"data": name, "setting": setting, "seeds": len(sel)}
            for m in methods:
                v = np.array([r[m] for r in sel])
                s[m] = (float(v.mean()), _se(v))
                d = v - np.array([r["miwae"] for r in sel])
                s[m + "-minus-miwae"] = (float(d.mean()), _se(d))
            if "recipe" in methods:
                s |= _against_peers(s, sel, methods)
            out.append(s)
    return out


def _against_peers(s: dict, sel: list[dict], methods: tuple[str, ...]) -> dict:
    """The target's test: the best vaelab column (lowest mean) against the best peer, paired
    (same seed and mask); met when vaelab's mean is lower or above by at most one paired SE;
    and the recipe's interval coverage."""
    ours = min((m for m in methods if m in VAELAB), key=lambda m: s[m][0])
    theirs = min(PEERS, key=lambda m: s[m][0])
    d = np.array([r[ours] - r[theirs] for r in sel])
    diff = (float(d.mean()), _se(d))
    cover = np.array([r["recipe_cover"] for r in sel])
    width = np.array([r["recipe_width"] for r in sel])
    return {"best-vaelab": ours, "best-peer": theirs, "vaelab-minus-peer": diff,
            "met": bool(diff[0] <= (diff[1] or 0.0)),
            "recipe_cover": (float(cover.mean()), _se(cover)),
            "recipe_width": (float(width.mean()), _se(width))}


def _se(v: np.ndarray) -> float | None:
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None


def markdown(summary: list[dict], images: dict | None, args) -> str:
    methods = tuple(m for m in (*PEERS, *VAELAB) if summary and m in summary[0])
    fmt = lambda p: f"{p[0]:.3f}" + ("" if p[1] is None else f" ± {p[1]:.3f}")  # noqa: E731
    trained = (f"vaelab: {args.table_steps} steps (batch 64, K = 20), imputation K = "
               f"{args.table_k}." if args.from_rows is None else
               f"The peers, MIWAE and not-MIWAE are copied from {args.from_rows} (the same "
               f"masks, checked); recipe: {RECIPES['mcar']} on the MCAR settings, "
               f"{RECIPES['mnar']} on MNAR, trained for their epochs"
               + ("" if args.ensemble == 1 else f", {args.ensemble} runs averaged")
               + f", imputation K = {args.table_k}.")
    lines = [f"Tables: RMSE on missing entries (standardized), mean ± SE over {args.seeds} "
             f"seeds; lower is better. {trained}", "",
             "| data | setting | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for s in summary:
        best = min(methods, key=lambda m: s[m][0])
        cells = [("**" + fmt(s[m]) + "**") if m == best else fmt(s[m]) for m in methods]
        lines.append(f"| {s['data']} | {s['setting']} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences (method − MIWAE, same seed and mask), mean ± SE:", "",
              "| data | setting | " + " | ".join(m for m in methods if m != "miwae") + " |",
              "|---|---|" + "---|" * (len(methods) - 1)]
    for s in summary:
        cells = [fmt(s[m + "-minus-miwae"]) for m in methods if m != "miwae"]
        lines.append(f"| {s['data']} | {s['setting']} | " + " | ".join(cells) + " |")
    if "recipe" in methods:
        lines += _target_lines(summary, args, fmt)
    eight = (images or {}).get("eight_bit")
    if eight:
        lines += ["", f"Fashion-MNIST 8-bit (k/255): RMSE in grey levels (0-255) on missing "
                  f"pixels, {eight['n_train']} training images (50% MCAR), {eight['n_test']} "
                  f"test images, one seed; lower is better. MIWAE: discretized logistic "
                  f"likelihood, {args.image_steps} steps, imputation K = {args.image_k}.", "",
                  "| test setting | mean | knn | mice | miwae |", "|---|---|---|---|---|"]
        for setting, r in eight["settings"].items():
            lines.append(f"| {setting} | {r['mean']:.2f} | {r['knn']:.2f} | {r['mice']:.2f} | "
                         f"{r['miwae']:.2f} |")
    if images and "settings" in images:
        masks = ("50% MCAR" if args.image_train_masks == "mcar" else
                 "half of them 50% MCAR, half missing one of their four halves")
        net = "-".join(map(str, [784, *args.image_hidden, args.image_latent]))
        lines += ["", f"Fashion-MNIST (binarized at 1/2): accuracy on missing pixels, "
                  f"{images['n_train']} training images ({masks}), {images['n_test']} test "
                  f"images, one seed; higher is better. vaelab: {net} MIWAE"
                  f"{' (gated)' if args.image_gated else ''}, {args.image_steps} steps, "
                  f"imputation K = {args.image_k}; MICE = IterativeImputer(max_iter=3, "
                  f"n_nearest_features=20).", "",
                  "| test setting | mean | knn | mice | miwae | vaelab complete |",
                  "|---|---|---|---|---|---|"]
        for setting, r in images["settings"].items():
            vc = f"{r['vaelab-complete']:.4f}" if "vaelab-complete" in r else "n/a"
            lines.append(f"| {setting} | {r['mean']:.4f} | {r['knn']:.4f} | {r['mice']:.4f} | "
                         f"{r['miwae']:.4f} | {vc} |")
        paired = {k: r["miwae_minus_knn_per_image"] for k, r in images["settings"].items()
                  if "miwae_minus_knn_per_image" in r}
        if paired:
            lines += ["", "MIWAE − KNN, paired per test image (mean of the per-image accuracy "
                      "differences ± its SE over the test images; training randomness not "
                      "included): " + "; ".join(f"{k} {v['mean']:+.4f} ± {v['se']:.4f}"
                                                for k, v in paired.items())]
    return "\n".join(lines) + "\n"


def _target_lines(summary: list[dict], args, fmt) -> list[str]:
    """The best vaelab column against the best peer, and the recipe's interval coverage."""
    lines = ["", f"Target: the best vaelab column against the best peer (paired, same seed and "
             f"mask; met: lower, or higher by at most one paired SE), and the share of the "
             f"hidden values inside the central {LEVEL:.0%} interval of {DRAWS} multiple "
             f"imputations of the recipe's model (sampling importance resampling, K = "
             f"{args.table_k}; width on the standardized scale), mean ± SE over seeds:", "",
             "| data | setting | best vaelab | best peer | vaelab − peer | met | "
             f"{LEVEL:.0%} coverage | width |", "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['data']} | {s['setting']} | {s['best-vaelab']} | {s['best-peer']} "
                     f"| {fmt(s['vaelab-minus-peer'])} | {'yes' if s['met'] else 'no'} | "
                     f"{fmt(s['recipe_cover'])} | {fmt(s['recipe_width'])} |")
    met = sum(s["met"] for s in summary)
    lines += ["", f"Met in {met} of {len(summary)} settings."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--table-steps", type=int, default=2000)
    ap.add_argument("--table-k", type=int, default=1000)
    ap.add_argument("--image-train", type=int, default=5000)
    ap.add_argument("--image-test", type=int, default=1000)
    ap.add_argument("--image-steps", type=int, default=3000)
    ap.add_argument("--image-k", type=int, default=200)
    ap.add_argument("--image-hidden", type=lambda t: [int(h) for h in t.split(",")],
                    default=[256], help="binary images: MIWAE's hidden sizes (default 256)")
    ap.add_argument("--image-latent", type=int, default=20,
                    help="binary images: MIWAE's latent size (default 20)")
    ap.add_argument("--image-gated", action="store_true",
                    help="binary images: gated units in MIWAE's networks")
    ap.add_argument("--image-train-masks", choices=("mcar", "mixed"), default="mcar",
                    help="binary images: MIWAE's training images miss 50%% of their pixels "
                         "at random (mcar), or half of them one of their four halves instead "
                         "(mixed)")
    ap.add_argument("--skip-images", action="store_true")
    ap.add_argument("--skip-tables", action="store_true")
    ap.add_argument("--workers", type=int, default=2, help="processes, one thread each")
    ap.add_argument("--image-kinds", default="binary,8-bit",
                    help="comma-separated: binary (accuracy), 8-bit (RMSE)")
    ap.add_argument("--tables", type=_names(TABLES), default=list(TABLES),
                    help="comma-separated tables (default: all)")
    ap.add_argument("--settings", type=_names(SETTINGS), default=list(SETTINGS),
                    help="comma-separated missingness settings (default: all)")
    ap.add_argument("--via", choices=("loop", "sklearn", "cli", "both"), default="loop",
                    help="how the tables' MIWAE / not-MIWAE are trained and imputed: loop (the "
                         "step in a plain loop, --table-steps), sklearn (vaelab.sklearn."
                         "VAEImputer), cli (vaelab train + vaelab impute) or both, compared "
                         "(--table-epochs; results/sklearn-vs-cli)")
    ap.add_argument("--recipe", action="store_true",
                    help="add the column of the recipes (recipes/tables/impute.toml for MCAR, "
                         "impute-mnar.toml for MNAR) with its interval coverage")
    ap.add_argument("--recipe-epochs", type=int, default=None,
                    help="train the recipes this many epochs instead of theirs (smoke tests)")
    ap.add_argument("--ensemble", type=int, default=1, metavar="R",
                    help="the recipe column averages the conditional means of R runs (seeds "
                         "seed + 1000 r); its intervals pool DRAWS // R draws of each")
    ap.add_argument("--from-rows", type=Path, default=None, metavar="ROWS.jsonl",
                    help="take the peers' and MIWAE / not-MIWAE's RMSE from an earlier run's "
                         "rows (the mask checked) and train only the recipe column")
    ap.add_argument("--table-epochs", type=int, default=100,
                    help="epochs of the sklearn / cli paths (--via)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: benchmarks/results/imputation with --via loop, else a "
                         "temporary folder")
    args = ap.parse_args()
    if args.out is None:
        args.out = (Path("benchmarks/results/imputation") if args.via == "loop"
                    else Path(tempfile.mkdtemp(prefix="imputation-")) / "imputation")
    if args.quick:
        args.seeds, args.table_steps, args.table_k = 2, 50, 50
        args.image_train, args.image_test, args.image_steps, args.image_k = 300, 50, 30, 20
        args.recipe_epochs = 2
    start = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows, images = _run_all(args)
    summary = summarize(rows)
    meta = {"args": vars(args) | {"out": str(args.out), "from_rows": args.from_rows and str(
                args.from_rows)}, "seconds": time.perf_counter() - start,
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    args.out.with_suffix(".json").write_text(json.dumps(
        {"meta": meta, "tables": rows, "summary": summary, "images": images}, indent=1))
    args.out.with_suffix(".md").write_text(markdown(summary, images, args))
    print(markdown(summary, images, args))
    print(f"total {meta['seconds']:.0f} s")
    if args.via == "both":
        _record_both(rows, meta)


def _names(allowed) -> object:
    def parse(text: str) -> list[str]:
        names = text.split(",")
        for name in names:
            if name not in allowed:
                raise argparse.ArgumentTypeError(f"expected names among {', '.join(allowed)}, "
                                                 f"got {name!r}")
        return names
    return parse


def _record_both(rows: list[dict], meta: dict) -> None:
    """The sklearn-vs-CLI section of results/sklearn-vs-cli (every row, one line each)."""
    args = meta["args"]
    lines = [f"Imputation: RMSE on the missing entries (standardized scale), in-sample, "
             f"through `VAEImputer` and through `vaelab train` + `vaelab impute` with the same "
             f"settings ({args['table_epochs']} epochs, batch 64, MIWAE bound K = 20, "
             f"imputation K = {args['table_k']}, 128-128 MLP, latent D − 1), beside "
             f"scikit-learn's imputers on the same mask; max |Δ| is the largest difference "
             f"between the two paths' imputed values, same weights whether the two runs' "
             f"model.safetensors are byte-identical. One seed and a short training (one Adam "
             f"step per batch of 64 rows, {args['table_epochs']} times over the table), on "
             f"{os.cpu_count()} CPU cores, one thread per process: a check that the two paths "
             f"agree, not a quality figure (that is benchmarks/results/imputation.md, "
             f"3000 steps and 5 seeds).", "",
             "| data | setting | seed | mean | knn | mice | missforest | model | sklearn | "
             "cli | max \\|Δ\\| | same weights |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for label in ("miwae", "not-miwae"):
            lines.append(
                f"| {r['data']} | {r['setting']} | {r['seed']} | " + " | ".join(
                    f"{r[p]:.4f}" for p in PEERS) + f" | {label} | {r[label + '-sklearn']:.4f} | "
                f"{r[label + '-cli']:.4f} | {r[label + '-max-abs-diff']:.3g} | "
                f"{'yes' if r[label + '-same-weights'] else 'no'} |")
    command = ("nice -n 5 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python "
               "benchmarks/imputation.py " + " ".join(sys.argv[1:]))
    machine = (f"{meta['machine']} CPU, {os.cpu_count()} cores, one thread per process "
               f"(--workers {args['workers']}), torch {meta['torch']}")
    record_sklearn_vs_cli("imputation", {"command": command, "machine": machine,
                                         "torch": meta["torch"], "seconds": meta["seconds"],
                                         "settings": args, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
