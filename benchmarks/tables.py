"""Data that is not pixels: counts, and a mixed-type table with categories, on real tables.

**Counts** (``--parts counts``). scikit-learn's handwritten digits (1797 images of 8×8 blocks,
each value the number of set pixels of a 4×4 block: 0..16 of 16, exactly a binomial count)
are split once (seeded, 80/20). On the same training rows, with the same seed and the same
networks (MLP 64-128-8, 8 latent dimensions, the default ELBO, Adam 1e-3), vaelab trains
three models (several training seeds):

* a binomial VAE (``likelihood="binomial"``, 16 trials): p(x | z) is a probability of the
  integers, and vaelab's importance-sampled log p̂(x) (``TrainedModel.log_likelihood``, the
  encoder's q as proposal, K draws) is the log-probability of each test row;
* two Gaussian VAEs (``likelihood="gaussian"``): one with vaelab's default per-column
  standardization of the encoder's input (its decoder mapped back to the data's units), one
  reading the raw counts as the binomial's encoder does (``standardize="off"``). p(x | z) is
  a *density*, and its log p̂(x) is not a probability of the integers at all. To
  compare in the same units, each value v is given the Gaussian's mass of the integer's
  interval, P(v | z) = Φ((v + ½ − μ)/σ) − Φ((v − ½ − μ)/σ), with the intervals of 0 and 16
  open to −∞ and +∞ (the censored Gaussian: a proper distribution on {0, …, 16} that gives
  the Gaussian all of its mass), and log P̂(x) = log (1/K) Σ_k p(z_k) ∏_d P(x_d | z_k) /
  q(z_k | x) with the same estimator (vaelab's ``measure.evaluate.log_likelihood`` on a model
  whose decoder returns these masses, below). The plain intervals without the open ends (a
  sub-normalised distribution) and the density itself are reported beside it, labelled.

Before the runs the script checks the masses against scipy (float64, μ and σ from 1e-3 to
10), that the censored masses sum to 1 over 0..16, and the importance-sampled log P̂(x) of a
small model with one latent dimension against its brute-force value (the integral over z on
a dense grid); it stops if any check fails. Paired differences per test row (binomial minus
Gaussian, same row) give the standard errors; several training seeds on the one split.

**Mixed table** (``--parts mixed``). Two of scikit-learn's bundled tables, read as a user
would hand them over (a DataFrame with a text column):

* diabetes (``load_diabetes(scaled=False)``, 442 patients): age, sex (coded 1/2 in the
  data; given as the text labels "1"/"2", a category), BMI, blood pressure, six blood
  serum measurements and the disease progression after a year (the target, a column here);
* wine (``load_wine``, 178 wines): 13 chemical measurements and the cultivar (class_0,
  class_1, class_2) as a category.

Both ship with scikit-learn (no network, no download) and have a category beside several
numbers: in diabetes a recorded attribute, in wine the class label, used here as a column.
20 % of the cells are hidden completely at random (seeded; a row left with no cell gets one
back), then imputed in-sample, as in ``benchmarks/imputation.py``, by

* vaelab: ``likelihood="mixed"`` with the schema vaelab infers from the DataFrame (shown in
  the results; the category column named by ``column_types``, since diabetes' "1"/"2" read
  as numbers would be inferred as counts), ``missing="mask"``, MLP 128-128 tanh, IWAE
  K = 20, batch 64, ``--steps`` steps; imputed with ``vaelab.impute`` (K = 1000 importance
  draws): the conditional mean of numbers and counts, the most probable label of a category;
* mode / mean: scikit-learn's SimpleImputer per column;
* MICE: chained equations (:func:`chained`), each hidden number column refit by Bayesian
  ridge regression on the other columns (the category one-hot), the category by multinomial
  logistic regression on the numbers (as R's mice does for a factor), 10 rounds;
* missForest-like: the same loop with extremely randomized trees (scikit-learn's
  ExtraTreesRegressor / ExtraTreesClassifier, 50 trees), 5 rounds (missForest, Stekhoven &
  Bühlmann 2012, uses a random forest classifier for categories, too);

both start from the mean and the mode. (scikit-learn's IterativeImputer regresses every
column, so it can only see a category as one-hot columns; a row whose category is hidden
has its whole block at the column means, each one-hot column is predicted almost exactly
from its siblings, and the imputed category stays the mode: on wine it was the mode's
accuracy to three digits. Hence the classifier.) Metrics on the
hidden cells only: categorical accuracy; numeric RMSE with each column divided by its
standard deviation on the complete table (so columns weigh alike, as in imputation.md).
Mean ± SE over seeds (each seed: a new mask and a new vaelab seed), and paired differences
against vaelab on the same mask.

Run (one thread; on the shared 2-core machine under load the counts part took 16 minutes,
the mixed part 13):

    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tables.py

writes benchmarks/results/tables.{json,md}; ``--parts counts`` or ``--parts mixed`` reruns
one part and keeps the other's results; ``--quick`` is a smoke run at tiny size (writes
nothing unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_diabetes, load_digits, load_wine
from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import BayesianRidge, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import vaelab
from vaelab.fit.train import train
from vaelab.measure.evaluate import log_likelihood
from vaelab.use.trained import load

RESULTS = Path(__file__).resolve().parent / "results"
TRIALS = 16                      # each digit value counts the set pixels of a 4×4 block
PEERS = ("mode-mean", "mice", "missforest")


# --------------------------------------------------------------------------- counts


def log_mass(loc: torch.Tensor, scale: torch.Tensor, v: torch.Tensor, *, low: float = 0,
             high: float = TRIALS, censored: bool = True) -> torch.Tensor:
    """log P(v) of the integers v under N(loc, scale²): the mass of [v − ½, v + ½] (with
    ``censored``, of (−∞, low + ½] at v = low and [high − ½, ∞) at v = high), float64,
    elementwise. Stable in both tails: Φ(b) − Φ(a) is taken as Φ(−a) − Φ(−b) when a > 0."""
    loc, scale, v = (t.to(torch.float64) for t in torch.broadcast_tensors(loc, scale, v))
    a, b = (v - 0.5 - loc) / scale, (v + 0.5 - loc) / scale
    if censored:
        a = torch.where(v <= low, -math.inf, a)
        b = torch.where(v >= high, math.inf, b)
    flip = a > 0
    a, b = torch.where(flip, -b, a), torch.where(flip, -a, b)
    upper, lower = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    gap = (lower - upper).clamp_max(0)           # log Φ(a) − log Φ(b) ≤ 0
    return upper + torch.where(gap > -math.log(2), torch.log(-torch.expm1(gap)),
                               torch.log1p(-torch.exp(gap)))


class _Masses:
    """p(x | z) of a Gaussian decoder read as the masses of the integers (a Distribution's
    log_prob is all the estimator calls)."""

    def __init__(self, normal: object, censored: bool) -> None:
        base = normal.base_dist                                       # Independent(Normal)
        self.loc, self.scale, self.censored = base.loc, base.scale, censored

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return log_mass(self.loc, self.scale, x, censored=self.censored).sum(-1)


class DiscretizedGaussian:
    """A trained Gaussian VAE whose p(x | z) is the masses of the integers (:func:`log_mass`):
    the prior and q unchanged, so vaelab's importance sampler estimates log P(x)."""

    def __init__(self, model: object, censored: bool = True) -> None:
        self.model, self.censored = model, censored

    def prior(self):
        return self.model.prior()

    def decode(self, z: torch.Tensor) -> _Masses:
        return _Masses(self.model.decode(z), self.censored)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.prior().log_prob(z).double() + self.decode(z).log_prob(x)

    def check_data(self, x: object, name: str = "x") -> torch.Tensor:
        return self.model.check_data(x, name)


class _Toy(torch.nn.Module):
    """One latent dimension, D = 3: p(z) = N(0, 1), p(x | z) = N(w z + b, s²) per column."""

    def __init__(self) -> None:
        super().__init__()
        self.w, self.b = torch.tensor([3.0, -2.0, 0.5]), torch.tensor([8.0, 4.0, 15.8])
        self.s = torch.tensor([1.5, 0.4, 0.05])

    def prior(self):
        return torch.distributions.Independent(torch.distributions.Normal(
            torch.zeros(1), torch.ones(1)), 1)

    def decode(self, z: torch.Tensor):
        normal = torch.distributions.Normal(z * self.w + self.b, self.s.expand(*z.shape[:-1], 3))
        return torch.distributions.Independent(normal, 1)

    def check_data(self, x: object, name: str = "x") -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32)


def self_check() -> dict:
    """The masses against scipy, their sum over 0..16, and log P̂(x) of a toy model against
    brute force (the integral over its one latent dimension on a dense grid)."""
    from scipy.stats import norm

    loc = torch.tensor([-3.0, 0.0, 0.3, 7.5, 16.0, 16.2, 25.0], dtype=torch.float64)
    worst, total = 0.0, 0.0
    for number in (1e-3, 0.05, 0.7, 3.0, 10.0):
        scale = torch.tensor(number, dtype=torch.float64)
        for v in range(TRIALS + 1):
            for censored in (True, False):
                got = log_mass(loc, scale, torch.tensor(float(v)),
                               censored=censored).exp().numpy()
                lo = -np.inf if censored and v == 0 else v - 0.5
                hi = np.inf if censored and v == TRIALS else v + 0.5
                want = norm.sf(lo, loc.numpy(), number) - norm.sf(hi, loc.numpy(), number)
                worst = max(worst, float(np.max(np.abs(got - want))))
        grid = torch.arange(TRIALS + 1.0)[:, None]
        total = max(total, float((log_mass(loc, scale, grid).exp().sum(0) - 1).abs().max()))
    toy = _Toy()
    x = torch.tensor([[11.0, 2.0, 16.0], [5.0, 6.0, 16.0]])
    z = torch.linspace(-12, 12, 240_001, dtype=torch.float64)[:, None]
    brute = []
    for row in x:
        inner = toy.decode(z)
        terms = (log_mass(inner.base_dist.loc, inner.base_dist.scale, row).sum(-1)
                 + torch.distributions.Normal(0.0, 1.0).log_prob(z[:, 0]).double())
        brute.append(float(torch.logsumexp(terms, 0) + math.log(float(z[1, 0] - z[0, 0]))))
    torch.manual_seed(0)
    q = torch.distributions.Independent(torch.distributions.Normal(
        torch.tensor([[1.0], [0.5]]), torch.tensor([[0.5], [0.5]])), 1)
    estimate = log_likelihood(DiscretizedGaussian(toy), q, x, num_samples=200_000)
    got = estimate.log_likelihood.tolist()
    se = estimate.stderr.tolist()
    report = {"mass_vs_scipy_max_abs_error": worst, "censored_sum_minus_1_max": total,
              "toy_brute_force": brute, "toy_importance_sampled": got, "toy_is_se": se}
    ok = worst < 1e-12 and total < 1e-12 and all(
        abs(g - b) < 4 * s + 1e-3 for g, b, s in zip(got, brute, se, strict=True))
    if not ok:
        raise SystemExit(f"self-check failed: {json.dumps(report)}")
    return report


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) float32 rows of 64 counts 0..16 (floats: vaelab reads integer arrays in
    0..255 as 8-bit images), a seeded 80/20 split."""
    x = load_digits().data.astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    return x[order[:cut]], x[order[cut:]]


#: The count models: name → (likelihood, its options, standardize).
COUNT_MODELS = {"binomial": ("binomial", {"trials": TRIALS}, "auto"),
                "gaussian": ("gaussian", {}, "auto"),
                "gaussian-raw": ("gaussian", {}, "off")}


def _train_counts(name: str, x: np.ndarray, seed: int, epochs: int, out: Path):
    likelihood, options, standardize = COUNT_MODELS[name]
    config = {"model": {"likelihood": likelihood, "likelihood_options": options,
                        "latent_dim": 8, "hidden": [128], "standardize": standardize},
              "train": {"epochs": epochs, "seed": seed, "binarize": "none", "device": "cpu",
                        "compile": False, "val_fraction": 0.1}}
    start = time.perf_counter()
    train(config, out, overwrite=True, progress=False, log=None, dataset=x)
    model = load(out)
    vals = [m["val_elbo"] for m in model.metrics]
    return model, {"seconds": round(time.perf_counter() - start, 1),
                   "val_elbo_last": vals[-1], "val_elbo_best": max(vals),
                   "best_epoch": int(np.argmax(vals)) + 1,
                   "standardize": model.config.model.standardize}


def _paired(d: np.ndarray) -> dict:
    return {"mean": float(d.mean()), "se": float(d.std(ddof=1) / math.sqrt(len(d)))}


def _summary_of(est) -> tuple[np.ndarray, dict]:
    """Per-row log p̂ and the estimate's mean, SE over rows and the sampler's diagnostics."""
    values = est.log_likelihood.double().numpy()
    ess = est.ess.double().numpy()
    return values, {**_paired(values), "is_se_median": float(est.stderr.median()),
                    "is_se_max": float(est.stderr.max()), "ess_median": float(np.median(ess)),
                    "rows_ess_below_10": int((ess < 10).sum())}


def counts(args, work: Path) -> dict:
    check = self_check()
    print("self-check passed:", json.dumps(check), flush=True)
    train_x, test_x = digits_split(0)
    x = torch.from_numpy(test_x)
    seeds = []
    for seed in range(args.seeds):
        row: dict = {"seed": seed}
        binomial = None
        for name in COUNT_MODELS:
            trained, info = _train_counts(name, train_x, seed, args.epochs,
                                          work / f"{name}-{seed}")
            with torch.no_grad():
                q = trained.encode(x)
                variants = ({"log_p": trained.model} if name == "binomial" else {
                    "censored": DiscretizedGaussian(trained.model, True),
                    "interval": DiscretizedGaussian(trained.model, False),
                    "density": trained.model})
                for variant, model in variants.items():
                    torch.manual_seed(seed)         # the same z draws for every variant
                    values, info[variant] = _summary_of(
                        log_likelihood(model, q, x, num_samples=args.k))
                    if name == "binomial":
                        binomial = values
                    elif variant != "density":
                        assert binomial is not None
                        info[f"binomial_minus_{variant}"] = _paired(binomial - values)
                    if args.k_check and variant in ("log_p", "censored"):
                        torch.manual_seed(seed)
                        info[f"{variant}_k_check"] = _summary_of(
                            log_likelihood(model, q, x, num_samples=args.k_check))[1]
            row[name] = info
        seeds.append(row)
        print(json.dumps(row), flush=True)
    over = {}
    for name in COUNT_MODELS:
        if name != "binomial":
            diffs = np.array([r[name]["binomial_minus_censored"]["mean"] for r in seeds])
            over[name] = {"mean": float(diffs.mean()), "se": float(
                diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else None}
    return {"data": "scikit-learn digits (1797 × 64, values 0..16), split 80/20 seed 0",
            "train_rows": len(train_x), "test_rows": len(test_x), "epochs": args.epochs,
            "k": args.k, "k_check": args.k_check,
            "nets": "MLP 64-128-8 (encoder) / 8-128-64·P (decoder), ELBO, Adam 1e-3, batch 128, "
                    "10 % of the training rows for validation",
            "self_check": check, "seeds": seeds,
            "over_seeds_binomial_minus_censored": over}


# --------------------------------------------------------------------------- mixed table


def mixed_table(name: str):
    """(DataFrame with one text column, the name of that column)."""
    import pandas as pd

    if name == "diabetes":
        d = load_diabetes(scaled=False)
        frame = pd.DataFrame(d.data, columns=d.feature_names)
        frame["sex"] = frame["sex"].astype(int).astype(str)     # a label, not a number
        frame["progression"] = d.target
        return frame, "sex"
    d = load_wine()
    frame = pd.DataFrame(d.data, columns=d.feature_names)
    frame["cultivar"] = np.array(d.target_names, dtype=object)[d.target]
    return frame, "cultivar"


def hide(frame, seed: int, fraction: float) -> np.ndarray:
    """Bool [N, C], True = hidden: MCAR cells, a row left with none observed gets one back."""
    rng = np.random.default_rng(seed)
    miss = rng.random(frame.shape) < fraction
    for row in np.flatnonzero(miss.all(1)):
        miss[row, rng.integers(frame.shape[1])] = False
    return miss


def _peer_impute(name: str, holes, category: str, seed: int):
    """The peer's filled table: numbers, and the category as a label."""
    numeric = [c for c in holes.columns if c != category]
    filled = holes.copy()
    if name == "mode-mean":
        filled[numeric] = SimpleImputer(strategy="mean").fit_transform(holes[numeric])
        filled[category] = holes[category].fillna(holes[category].mode().iloc[0])
        return filled
    x = holes[numeric].to_numpy(np.float64)
    y = holes[category].to_numpy(object)
    x_done, y_done = chained(x, y, seed, *PEER_MODELS[name])
    filled[numeric], filled[category] = x_done, y_done
    return filled


def chained(x: np.ndarray, y: np.ndarray, seed: int, regressor, classifier, rounds: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Chained equations over numbers x [N, D] (NaN hidden) and one category y [N] (None or
    NaN hidden): from the mean and the mode, ``rounds`` times each hidden number column is
    refit by ``regressor`` on the other numbers and the category (one-hot), then the category
    by ``classifier`` on the numbers; the columns in order of fewest hidden cells."""
    import pandas as pd

    hidden_x, hidden_y = np.isnan(x), pd.isna(y)
    labels = sorted({v for v in y[~hidden_y]}, key=str)
    codes = np.array([labels.index(v) if not h else -1 for v, h in zip(y, hidden_y,
                                                                        strict=True)])
    done = np.where(hidden_x, np.nanmean(x, 0), x)
    guess = np.where(hidden_y, np.bincount(codes[~hidden_y]).argmax(), codes)
    order = np.argsort(hidden_x.sum(0), kind="stable")
    for _ in range(rounds):
        for j in order:
            rows = hidden_x[:, j]
            if not rows.any():
                continue
            features = np.column_stack([np.delete(done, j, 1), np.eye(len(labels))[guess]])
            model = regressor(seed).fit(features[~rows], x[~rows, j])
            done[rows, j] = model.predict(features[rows])
        if hidden_y.any():
            model = classifier(seed).fit(done[~hidden_y], codes[~hidden_y])
            guess[hidden_y] = model.predict(done[hidden_y])
    return done, np.array(labels, dtype=object)[guess]


def _mice_regressor(seed: int):
    return make_pipeline(StandardScaler(), BayesianRidge())


def _mice_classifier(seed: int):
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def _forest_regressor(seed: int):
    return ExtraTreesRegressor(n_estimators=50, random_state=seed)


def _forest_classifier(seed: int):
    return ExtraTreesClassifier(n_estimators=50, random_state=seed)


#: name → (regressor, classifier, rounds) of the chained-equations peers.
PEER_MODELS = {"mice": (_mice_regressor, _mice_classifier, 10),
               "missforest": (_forest_regressor, _forest_classifier, 5)}


def _vaelab_impute(holes, category: str, seed: int, args, work: Path):
    width = holes.shape[1]
    epochs = max(1, math.ceil(args.steps / math.ceil(len(holes) / 64)))
    config = {"model": {"likelihood": "mixed", "missing": "mask", "hidden": [128, 128],
                        "activation": "tanh", "latent_dim": max(2, width - 1),
                        # numbers that name categories (diabetes' sex, 1/2) would be inferred
                        # as counts: the user says which column is a category
                        "likelihood_options": {"column_types": {
                            category: "categorical",
                            **{c: "gaussian" for c in holes.columns
                               if c != category and args.numbers == "gaussian"}}}},
              "train": {"epochs": epochs, "batch_size": 64, "objective": "iwae",
                        "num_samples": 20, "binarize": "none", "val_fraction": 0.0,
                        "seed": seed, "device": "cpu", "compile": False}}
    train(config, work, overwrite=True, progress=False, log=None, dataset=holes)
    trained = vaelab.load(work)
    filled = vaelab.impute(trained, holes, num_samples=args.impute_k, seed=seed)
    return filled, trained, epochs


def _score(filled, truth, miss: np.ndarray, category: str, scale) -> dict:
    columns = list(truth.columns)
    j = columns.index(category)
    cat = miss[:, j]
    accuracy = float((filled[category].astype(str).to_numpy()[cat]
                      == truth[category].astype(str).to_numpy()[cat]).mean())
    numeric = [c for c in columns if c != category]
    mask = np.delete(miss, j, axis=1)
    error = ((filled[numeric].to_numpy(np.float64) - truth[numeric].to_numpy(np.float64))
             / scale[None])[mask]
    return {"accuracy": accuracy, "rmse": float(np.sqrt(np.mean(error ** 2))),
            "hidden_categories": int(cat.sum()), "hidden_numbers": int(mask.sum())}


def mixed(args, work: Path) -> dict:
    out = {"tables": {}, "fraction": args.fraction, "steps": args.steps,
           "numbers": args.numbers,
           "impute_k": args.impute_k}
    for name in args.tables:
        truth, category = mixed_table(name)
        numeric = [c for c in truth.columns if c != category]
        scale = truth[numeric].std(ddof=0).to_numpy()
        rows, schema = [], None
        for seed in range(args.seeds):
            miss = hide(truth, 1000 + seed, args.fraction)
            holes = truth.astype(object).mask(miss)
            for c in numeric:
                holes[c] = holes[c].astype(np.float64)
            row = {"seed": seed}
            for p in PEERS:
                start = time.perf_counter()
                row[p] = {**_score(_peer_impute(p, holes, category, seed), truth, miss,
                                   category, scale),
                          "seconds": round(time.perf_counter() - start, 1)}
            start = time.perf_counter()
            filled, trained, epochs = _vaelab_impute(holes, category, seed, args,
                                                     work / f"{name}-{seed}")
            row["vaelab"] = {**_score(filled, truth, miss, category, scale),
                             "seconds": round(time.perf_counter() - start, 1),
                             "epochs": epochs}
            schema = trained.config.model.likelihood_options["columns"]
            rows.append(row)
            print(name, json.dumps(row), flush=True)
        out["tables"][name] = {"rows": len(truth), "columns": list(truth.columns),
                               "category": category, "schema": schema, "seeds": rows,
                               "summary": _summary(rows)}
    return out


def _summary(rows: list[dict]) -> dict:
    def stats(values: list[float]) -> dict:
        a = np.array(values)
        return {"mean": float(a.mean()),
                "se": float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else None}
    out = {}
    for method in ("vaelab", *PEERS):
        out[method] = {m: stats([r[method][m] for r in rows]) for m in ("accuracy", "rmse")}
        if method != "vaelab":
            out[method]["minus_vaelab"] = {m: stats([r[method][m] - r["vaelab"][m]
                                                     for r in rows])
                                           for m in ("accuracy", "rmse")}
    return out


# --------------------------------------------------------------------------- report


def _pm(s: dict, digits: int = 3) -> str:
    se = "" if s.get("se") is None else f" ± {s['se']:.{digits}f}"
    return f"{s['mean']:.{digits}f}{se}"


def markdown(result: dict) -> str:
    lines = ["# Counts and mixed tables", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['threads']} torch "
             f"thread (shared 2-core CPU, nice'd), Python {result['machine']['python']}, "
             f"torch {result['machine']['torch']}. What the numbers are and how they are "
             "made: the docstring of benchmarks/tables.py and docs/benchmarks/tables.md.", ""]
    c = result.get("counts")
    if c:
        lines += ["## Counts: binomial against Gaussian on scikit-learn's digits", "",
                  "```bash", c["command"], "```", "",
                  f"Wall time {c['seconds'] / 60:.0f} minutes. "
                  f"{c['train_rows']} training rows, {c['test_rows']} test rows, "
                  f"{c['epochs']} epochs, {c['nets']}. Held-out log-probability of the test "
                  f"rows' integer values in nats per image (64 values; higher is better), "
                  f"importance-sampled with K = {c['k']} draws from each model's encoder q; "
                  f"± is the standard error over the test rows (for differences: paired, the "
                  f"same row). The Gaussian's probability of an integer v is its mass on "
                  f"[v − ½, v + ½] with the ends 0 and 16 open to ∓∞ (censored: a "
                  f"distribution on 0..16). 'gaussian' reads standardized columns (vaelab's "
                  f"default for a Gaussian table), 'gaussian-raw' the raw counts like the "
                  f"binomial (`standardize='off'`).", "",
                  "| seed | binomial | gaussian, censored | binomial − gaussian | "
                  "gaussian-raw, censored | binomial − gaussian-raw |", "|---|---|---|---|---|---|"]
        for r in c["seeds"]:
            g, h = r["gaussian"], r["gaussian-raw"]
            lines.append(f"| {r['seed']} | {_pm(r['binomial']['log_p'], 2)} | "
                         f"{_pm(g['censored'], 2)} | **{_pm(g['binomial_minus_censored'], 2)}** | "
                         f"{_pm(h['censored'], 2)} | **{_pm(h['binomial_minus_censored'], 2)}** |")
        over = c["over_seeds_binomial_minus_censored"]
        lines += ["", f"Over the {len(c['seeds'])} training seeds (mean ± SE over seeds), "
                      f"binomial − censored Gaussian: {_pm(over['gaussian'], 2)} nats per image "
                      f"against 'gaussian', {_pm(over['gaussian-raw'], 2)} against "
                      f"'gaussian-raw'.", "",
                  "The Gaussians' other readings: 'intervals' keeps the ends closed (mass "
                  "below −½ and above 16½ lost: sub-normalised, never higher than censored); "
                  "'density' is the importance-sampled log p(x) of the Gaussian *density*, "
                  "**not a probability** and not comparable with the columns above (shown "
                  "because it looks far better). Diagnostics: validation ELBO per image at the "
                  "last and the best epoch (a density ELBO for the Gaussians), training "
                  "seconds, the median of the per-row importance-sampling SE and the rows "
                  "(of the test rows) whose importance weights had an effective sample size "
                  "below 10 (for the censored reading of the Gaussians).", "",
                  "| seed | model | intervals | density (not a probability) | val ELBO last / "
                  "best (epoch) | seconds | IS SE median | rows ESS < 10 |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in c["seeds"]:
            for name in ("binomial", "gaussian", "gaussian-raw"):
                i = r[name]
                main = i["log_p"] if name == "binomial" else i["censored"]
                lines.append(
                    f"| {r['seed']} | {name} | "
                    f"{'' if name == 'binomial' else _pm(i['interval'], 2)} | "
                    f"{'' if name == 'binomial' else _pm(i['density'], 2)} | "
                    f"{i['val_elbo_last']:.2f} / {i['val_elbo_best']:.2f} ({i['best_epoch']})"
                    f" | {i['seconds']:.0f} | {main['is_se_median']:.3f} | "
                    f"{main['rows_ess_below_10']} |")
        if c.get("k_check"):
            lines += ["", f"The same estimates with K = {c['k_check']} draws instead of "
                          f"{c['k']} (the same models; how far the estimates were from "
                          f"converged):", "",
                      f"| seed | model | K = {c['k']} | K = {c['k_check']} | shift | "
                      f"rows ESS < 10 |", "|---|---|---|---|---|---|"]
            for r in c["seeds"]:
                for name in ("binomial", "gaussian", "gaussian-raw"):
                    key = "log_p" if name == "binomial" else "censored"
                    a, b = r[name][key], r[name][f"{key}_k_check"]
                    lines.append(f"| {r['seed']} | {name} | {a['mean']:.2f} | {b['mean']:.2f} | "
                                 f"{b['mean'] - a['mean']:+.2f} | {b['rows_ess_below_10']} |")
        s = c["self_check"]
        lines += ["", f"Self-check before the runs: masses against scipy, largest error "
                      f"{s['mass_vs_scipy_max_abs_error']:.1e}; censored masses sum to 1 "
                      f"within {s['censored_sum_minus_1_max']:.1e}; a one-latent toy model's "
                      f"log P(x) brute force {', '.join(f'{v:.4f}' for v in s['toy_brute_force'])}"
                      f" against importance-sampled "
                      f"{', '.join(f'{v:.4f}' for v in s['toy_importance_sampled'])} "
                      f"(SE {', '.join(f'{v:.4f}' for v in s['toy_is_se'])}).", ""]
    m = result.get("mixed")
    if m:
        lines += ["## Mixed tables: imputing categories and numbers", "", "```bash",
                  m["command"], "```", "",
                  f"Wall time {m['seconds'] / 60:.0f} minutes. MCAR {m['fraction']:.0%} of the "
                  f"cells hidden, imputed in-sample; vaelab "
                  f"(number columns: {m.get('numbers', 'inferred')}) "
                  f"{m['steps']} steps (batch 64, IWAE K = 20), imputation K = "
                  f"{m['impute_k']}. Accuracy over the hidden categories (higher is better); "
                  f"RMSE over the hidden numbers, each column divided by its standard "
                  f"deviation (lower is better). Mean ± SE over "
                  f"{len(next(iter(m['tables'].values()))['seeds'])} seeds (mask and model).",
                  ""]
        for name, t in m["tables"].items():
            lines += [f"### {name} ({t['rows']} rows; category: {t['category']})", "",
                      ("Schema (every number column named gaussian, the category "
                       "categorical, by `column_types`): "
                       if m.get("numbers") == "gaussian" else
                       "Schema (vaelab's inference; the category named by `column_types`): ")
                      + ", ".join(
                          f"{col['name']} {col['likelihood']}" for col in t["schema"]) + ".",
                      "", "| method | accuracy | RMSE | accuracy − vaelab (paired) | "
                      "RMSE − vaelab (paired) |", "|---|---|---|---|---|"]
            for method, s in t["summary"].items():
                d = s.get("minus_vaelab")
                lines.append(f"| {method} | {_pm(s['accuracy'])} | {_pm(s['rmse'])} | "
                             f"{_pm(d['accuracy']) if d else ''} | "
                             f"{_pm(d['rmse']) if d else ''} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["counts", "mixed"],
                        choices=("counts", "mixed"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=300, help="counts: training epochs")
    parser.add_argument("--k", type=int, default=1000, help="counts: importance draws")
    parser.add_argument("--k-check", type=int, default=0,
                        help="counts: estimate again with this many draws (0: not)")
    parser.add_argument("--mixed-seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000, help="mixed: vaelab steps")
    parser.add_argument("--impute-k", type=int, default=1000)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--numbers", choices=("inferred", "gaussian"), default="inferred",
                        help="mixed: vaelab's likelihood of the number columns (as inferred: "
                             "counts or Gaussian; or every one Gaussian)")
    parser.add_argument("--tables", nargs="+", default=["diabetes", "wine"],
                        choices=("diabetes", "wine"))
    parser.add_argument("--quick", action="store_true", help="a smoke run at tiny size")
    parser.add_argument("--out", type=Path, help="results stem (default: "
                        "benchmarks/results/tables; --quick writes none without it)")
    parser.add_argument("--render", action="store_true",
                        help="only write the .md again from the .json (no runs)")
    args = parser.parse_args()
    if args.render:
        stem = args.out or RESULTS / "tables"
        stem.with_suffix(".md").write_text(markdown(json.loads(
            stem.with_suffix(".json").read_text())))
        return
    if args.quick:
        args.seeds, args.epochs, args.k, args.mixed_seeds, args.steps, args.impute_k = (
            2, 2, 20, 2, 20, 20)
    torch.set_num_threads(1)
    # how it was run: the niceness and thread count it ran under are part of the numbers
    prefix = f"nice -n {os.nice(0)} env OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}"
    command = " ".join([prefix, ".venv/bin/python", *map(shlex.quote, sys.argv)])
    stem = args.out or (None if args.quick else RESULTS / "tables")
    old = (json.loads(stem.with_suffix(".json").read_text())
           if stem is not None and stem.with_suffix(".json").is_file() else {})
    result = {**old, "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                 "cpu": platform.processor() or platform.machine(),
                                 "threads": torch.get_num_threads()}}
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(1):
        if "counts" in args.parts:
            start = time.perf_counter()
            result["counts"] = {**counts(args, Path(tmp)), "command": command}
            result["counts"]["seconds"] = round(time.perf_counter() - start)
        if "mixed" in args.parts:
            start = time.perf_counter()
            seeds, args.seeds = args.seeds, args.mixed_seeds
            result["mixed"] = {**mixed(args, Path(tmp)), "command": command}
            result["mixed"]["seconds"] = round(time.perf_counter() - start)
            args.seeds = seeds
    table = markdown(result)
    print(table)
    if stem is not None:
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        stem.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
