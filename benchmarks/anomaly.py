"""Anomaly and out-of-distribution detection with vaelab's scores, beside baselines.

Two parts (``--part``):

* ``one-class`` — for each Fashion-MNIST class c in ``--classes``: a VAE trained on the
  training images of c alone (``classes=[c]``), a background model on the same images with a
  fraction μ of pixels replaced by noise (``perturb_fraction``, Ren et al. 2019), then the
  first ``--n-test`` test images scored (label 1 = not class c). AUROC of each vaelab score
  against scikit-learn baselines on the grey pixels fitted to the same training images:
  IsolationForest, PCA reconstruction error (PCA of the latent dimension), mean distance to
  the 5 nearest training images.
* ``ood`` — one VAE (and its background model) trained on all of Fashion-MNIST; the
  in-distribution test images against scikit-learn's digits upsampled to 28×28 (MNIST-like),
  Fashion-MNIST test images flipped upside down, inverted (1 − x) and uniform noise. AUROC of
  each score per set, and the mean log p̂(x) per set (Nalisnick et al. 2019: below 0.5 AUROC
  means the model likes the foreign set *more*).

With ``--input binary`` (default) the VAE is trained with dynamic binarization and scores
statically binarized test images (one seeded Bernoulli draw, as ``vaelab evaluate``): log p(x)
is then a normalised likelihood, but the draw adds noise to every score. With ``--input grey``
it is trained and scored on the grey levels themselves (``binarize="none"``): the Bernoulli
log-probability of a grey image is the *expected* log-probability of its binarizations (it is
linear in x), a score rather than log p(x). The pixel baselines always see the grey levels.
Every score is oriented higher = more anomalous.

Run: ``nice -n 10 .venv/bin/python benchmarks/anomaly.py --part one-class`` and
``--part ood`` (results in benchmarks/results/anomaly-*.{json,txt}).

``--part one-class --via sklearn|cli|both`` scores log p̂(x) alone through
``vaelab.sklearn.VAEOutlierDetector``, through the command line (``vaelab train`` +
``vaelab score``, the estimator's settings as flags) or both, on the same arrays; with both,
the two paths' scores are compared row by row, beside the CLI against itself with another
seed, in benchmarks/results/sklearn-vs-cli.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from use_common import (
    baselines,
    binarize,
    digits_28,
    estimator_seed,
    machine,
    record_sklearn_vs_cli,
    same_weights,
    test_set,
    train_model,
    vaelab_cli,
    write,
)
from vaelab import data
from vaelab.sklearn import VAEOutlierDetector
from vaelab.use.detect import anomaly_metrics
from vaelab.use.scores import SCORE_COLUMNS, SCORE_NAMES, ScoreOptions, anomaly_scores

BASELINES = ("isolation-forest", "pca-reconstruction", "knn-distance")
#: Every score but hierarchical-llr: the models here have one latent layer.
NAMES = tuple(n for n in SCORE_NAMES if n != "hierarchical-llr")
#: Training rows that typicality and the latent scores compare with (the first ones).
REFERENCE_ROWS = 5000


def _score(model, background, x: torch.Tensor, options: ScoreOptions, seed: int,
           reference: torch.Tensor) -> dict:
    torch.manual_seed(seed)
    scores = anomaly_scores(model, x, NAMES, background=(background, background.encoder),
                            image_shape=(1, 28, 28), options=options, reference=reference)
    return {name: scores[SCORE_COLUMNS[name]] for name in NAMES} | {
        "mean_log_likelihood": float(-scores["nll"].mean())}


def _binarize(args) -> str:
    return "none" if args.input == "grey" else "dynamic"


def _model_input(grey: torch.Tensor, args, seed: int) -> torch.Tensor:
    return grey if args.input == "grey" else binarize(grey, seed)


def one_class(args, options: ScoreOptions, work: Path, save) -> dict:
    train_grey = data.load_dataset("fashion-mnist", "train")
    test_grey = data.load_dataset("fashion-mnist", "test").subset(slice(0, args.n_test))
    x_test = (test_grey.x if args.input == "grey" else test_set(args.seed).x[:args.n_test])
    rows = {}
    for c in args.classes:
        start = time.perf_counter()
        model = train_model(work / f"c{c}", args.seed, args.epochs, classes=[c],
                            binarize=_binarize(args))
        background = train_model(work / f"c{c}-bg", args.seed, args.epochs, classes=[c],
                                 perturb_fraction=args.mu, binarize=_binarize(args))
        labels = (test_grey.labels != c).long().numpy()
        grey = data.select_classes(train_grey, [c]).x.numpy()
        reference = _model_input(torch.from_numpy(grey[:REFERENCE_ROWS]), args, args.seed)
        scores = _score(model, background, x_test, options, args.seed, reference)
        scores |= baselines(grey, test_grey.x.numpy(), 16, args.seed)
        rows[c] = {name: anomaly_metrics(scores[name], labels)["auroc"]
                   for name in (*NAMES, *BASELINES)}
        print(f"class {c}: {rows[c]}  ({time.perf_counter() - start:.0f} s)", flush=True)
        save(rows, _table_one_class(rows))     # partial results survive an interrupted run
    return rows


def one_class_via(args, work: Path) -> dict:
    """One-class detection by log p̂(x) through ``vaelab.sklearn.VAEOutlierDetector`` and/or
    the command line (``vaelab train`` + ``vaelab score --score log-likelihood``), with the
    same settings and seed, beside the pixel baselines.

    Both paths get the same arrays: the first ``--n-train`` training images of class c and
    the first ``--n-test`` test images, as grey levels (``--input grey``) or one seeded
    Bernoulli draw (``--input binary``; no dynamic binarization, so the arrays are the data
    of both runs). → per class: AUROC of each path and baseline; with both paths the largest
    and the mean difference between their scores and the median of its ratio to the CLI's
    standard error, the same for the CLI against itself with another ``--seed`` (what Monte
    Carlo noise alone gives), and whether the two runs' weights are byte-identical.
    """
    train_grey = data.load_dataset("fashion-mnist", "train")
    test_grey = data.load_dataset("fashion-mnist", "test").subset(slice(0, args.n_test))
    run_seed = estimator_seed(args.seed)
    rows = {}
    for c in args.classes:
        grey = data.select_classes(train_grey, [c]).x[:args.n_train]
        x_train = _model_input(grey, args, args.seed).numpy()
        x_test = _model_input(test_grey.x, args, args.seed + 1).numpy()
        labels = (test_grey.labels != c).long().numpy()
        scores, row = {}, {"n_train": len(x_train), "n_test": len(x_test)}
        folder = work / f"c{c}"
        folder.mkdir()
        if args.via in ("sklearn", "both"):
            start = time.perf_counter()
            detector = VAEOutlierDetector(latent_dim=16, hidden=(256,), likelihood="bernoulli",
                                          epochs=args.epochs, batch_size=64, lr=1e-3,
                                          num_samples=args.k, random_state=args.seed
                                          ).fit(x_train)
            scores["sklearn"] = -detector.score_samples(x_test)     # higher = anomalous
            row["sklearn_s"] = time.perf_counter() - start
            detector.save(folder / "sklearn-run")
        if args.via in ("cli", "both"):
            # The estimator's settings as flags; where the CLI's defaults differ from the
            # estimator's (val-fraction, binarize, compile, the seed) they are named.
            start = time.perf_counter()
            np.save(folder / "train.npy", x_train)
            np.save(folder / "test.npy", x_test)
            vaelab_cli("train", "--data", str(folder / "train.npy"), "--out",
                       str(folder / "cli-run"), "--quiet", "--latent-dim", "16",
                       "--hidden", "256", "--likelihood", "bernoulli",
                       "--epochs", str(args.epochs), "--batch-size", "64", "--lr", "0.001",
                       "--seed", str(run_seed), "--val-fraction", "0", "--binarize", "none",
                       "--device", "cpu", "--compile", "off")
            vaelab_cli("score", str(folder / "cli-run"), "--data", str(folder / "test.npy"),
                       "--score", "log-likelihood", "--k", str(args.k), "--seed", str(run_seed),
                       "--out", str(folder / "scores.csv"), "--quiet")
            table = np.genfromtxt(folder / "scores.csv", delimiter=",", names=True)
            scores["cli"], cli_se = table["nll"], table["nll_se"]
            row["cli_s"] = time.perf_counter() - start
            if args.via == "both":      # the yardstick: the CLI against itself, other draws
                vaelab_cli("score", str(folder / "cli-run"), "--data",
                           str(folder / "test.npy"), "--score", "log-likelihood", "--k",
                           str(args.k), "--seed", str(run_seed + 1), "--out",
                           str(folder / "scores-reseeded.csv"), "--quiet")
                reseeded = np.genfromtxt(folder / "scores-reseeded.csv", delimiter=",",
                                         names=True)["nll"]
        for path, values in scores.items():
            row[f"log-likelihood ({path})"] = anomaly_metrics(values, labels)["auroc"]
        base = baselines(grey.numpy(), test_grey.x.numpy(), 16, args.seed)
        row |= {b: anomaly_metrics(base[b], labels)["auroc"] for b in BASELINES}
        if len(scores) == 2:
            for pair, diff in (("sklearn-cli", scores["sklearn"] - scores["cli"]),
                               ("cli-cli", reseeded - scores["cli"])):
                row |= {f"{pair} max_abs_diff": float(np.abs(diff).max()),
                        f"{pair} mean_diff": float(diff.mean()),
                        f"{pair} median_abs_diff_over_cli_se":
                            float(np.median(np.abs(diff) / cli_se))}
            row["same_weights"] = same_weights(folder / "sklearn-run", folder / "cli-run")
        rows[c] = row
        print(f"class {c}: {row}", flush=True)
    return rows


def _table_via(rows: dict, args) -> str:
    """The sklearn-vs-CLI table of :func:`one_class_via` (both paths)."""
    lines = [f"One-class Fashion-MNIST ({args.input} input): AUROC of −log p̂(x) (K = {args.k} "
             f"importance samples) through `VAEOutlierDetector.score_samples` (sklearn) and "
             f"through `vaelab train` + `vaelab score --score log-likelihood` (cli) with the "
             f"same settings (784-256-16 Bernoulli MLP, {args.epochs} epochs, batch 64, no "
             f"validation split), beside scikit-learn's detectors on the grey pixels. Then "
             f"the per-row scores compared (nats): max \\|Δ\\|, mean Δ and the median of "
             f"\\|Δ\\| / SE (the CLI's own standard error of each score), for sklearn − cli "
             f"and, as the yardstick of Monte Carlo noise, for the CLI against itself with "
             f"another `--seed`; same weights: the two runs' model.safetensors are "
             f"byte-identical. Short training on a subset, one seed: a check that the two "
             f"paths agree, not a quality figure (that is "
             f"benchmarks/results/anomaly-one-class-*.txt).", "",
             "| class | train rows | test rows | AUROC sklearn | AUROC cli | isolation-forest | "
             "pca-reconstruction | knn-distance | sklearn − cli: max \\|Δ\\| / mean Δ / "
             "median \\|Δ\\|/SE | cli − cli, other seed: max \\|Δ\\| / mean Δ / median "
             "\\|Δ\\|/SE | same weights |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c, r in rows.items():
        pairs = [" / ".join((f"{r[pair + ' max_abs_diff']:.2f}", f"{r[pair + ' mean_diff']:.3f}",
                             f"{r[pair + ' median_abs_diff_over_cli_se']:.2f}"))
                 for pair in ("sklearn-cli", "cli-cli")]
        lines.append(f"| {c} | {r['n_train']} | {r['n_test']} | "
                     f"{r['log-likelihood (sklearn)']:.4f} | {r['log-likelihood (cli)']:.4f} | "
                     + " | ".join(f"{r[b]:.4f}" for b in BASELINES)
                     + f" | {pairs[0]} | {pairs[1]} | {'yes' if r['same_weights'] else 'no'} |")
    return "\n".join(lines)


def _table_one_class(rows: dict) -> str:
    names = (*NAMES, *BASELINES)
    lines = ["AUROC, one-class Fashion-MNIST (normal = class c; higher is better)",
             "class " + "".join(f"{n:>20}" for n in names)]
    for c, row in rows.items():
        lines.append(f"{c:<6}" + "".join(f"{row[n]:>20.3f}" for n in names))
    means = {n: float(np.mean([row[n] for row in rows.values()])) for n in names}
    lines.append("mean  " + "".join(f"{means[n]:>20.3f}" for n in names))
    best_vae = max(NAMES, key=means.get)
    best_base = max(BASELINES, key=means.get)
    lines.append(f"best vaelab score: {best_vae} {means[best_vae]:.3f}; best baseline: "
                 f"{best_base} {means[best_base]:.3f}")
    return "\n".join(lines)


def ood_sets(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Grey-level foreign sets [n, 784] in [0, 1] (the in-distribution set is separate)."""
    grey = data.load_dataset("fashion-mnist", "test").x
    other = grey[n:2 * n]          # different images from the in-distribution rows [0, n)
    noise = torch.rand(n, 784, generator=torch.Generator().manual_seed(seed))
    return {"digits (sklearn, 28x28)": torch.from_numpy(digits_28(n)),
            "flipped": other.reshape(-1, 28, 28).flip(1).reshape(-1, 784),
            "inverted": 1 - other, "uniform noise": noise}


def ood(args, options: ScoreOptions, work: Path) -> dict:
    model = train_model(work / "all", args.seed, args.epochs, binarize=_binarize(args),
                        limit=args.n_train)
    background = train_model(work / "all-bg", args.seed, args.epochs, perturb_fraction=args.mu,
                             binarize=_binarize(args), limit=args.n_train)
    base_train = data.load_dataset("fashion-mnist", "train").x[:10000].numpy()
    grey_in = data.load_dataset("fashion-mnist", "test").x[:args.n_test]
    x_in = _model_input(grey_in, args, args.seed)
    train_grey = data.load_dataset("fashion-mnist", "train").x
    reference = _model_input(train_grey[:min(REFERENCE_ROWS, args.n_train or REFERENCE_ROWS)],
                             args, args.seed + 100)
    inside = _score(model, background, x_in, options, args.seed, reference)
    rows = {"fashion-mnist test": {"mean_log_likelihood": inside["mean_log_likelihood"]}}
    for i, (name, grey) in enumerate(ood_sets(args.n_test, args.seed).items()):
        foreign = _score(model, background, _model_input(grey, args, args.seed + 1 + i), options,
                         args.seed, reference)
        labels = np.r_[np.zeros(len(x_in)), np.ones(len(grey))].astype(int)
        base = baselines(base_train, np.r_[grey_in.numpy(), grey.numpy()], 16, args.seed)
        row = {"mean_log_likelihood": foreign["mean_log_likelihood"]}
        for score in NAMES:
            both = np.r_[inside[score], foreign[score]]
            row[score] = anomaly_metrics(both, labels)["auroc"]
        row |= {b: anomaly_metrics(base[b], labels)["auroc"] for b in BASELINES}
        rows[name] = row
        print(f"{name}: {row}", flush=True)
    return rows


def _table_ood(rows: dict) -> str:
    names = (*NAMES, *BASELINES)
    lines = ["AUROC, Fashion-MNIST test (normal) vs each foreign set (higher is better); "
             "mean log p(x) (a score for --input grey) in nats",
             f"{'set':<24}{'mean log p':>11}" + "".join(f"{n:>19}" for n in names)]
    for name, row in rows.items():
        cells = "".join(f"{row[n]:>19.3f}" if n in row else f"{'':>19}" for n in names)
        lines.append(f"{name:<24}{row['mean_log_likelihood']:>11.1f}" + cells)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("one-class", "ood"), required=True)
    p.add_argument("--classes", type=lambda s: [int(c) for c in s.split(",")],
                   default=list(range(10)))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--n-train", type=int, default=None,
                   help="ood: train on the first N training images (default: all)")
    p.add_argument("--k", type=int, default=200, help="importance samples per example")
    p.add_argument("--regret-steps", type=int, default=50)
    p.add_argument("--mu", type=float, default=0.2, help="background perturbation fraction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input", choices=("binary", "grey"), default="binary")
    p.add_argument("--via", choices=("library", "sklearn", "cli", "both"), default="library",
                   help="one-class: the library's functions and every score (default), or "
                        "log p̂(x) alone through vaelab.sklearn.VAEOutlierDetector, the "
                        "command line, or both, compared (results/sklearn-vs-cli)")
    args = p.parse_args()
    if args.via != "library" and args.part != "one-class":
        p.error(f"--via {args.via}: expected --part one-class, got --part {args.part}")
    options = ScoreOptions(num_samples=args.k, elbo_samples=16, regret_steps=args.regret_steps,
                           regret_samples=4, batch_size=250)
    start = time.perf_counter()
    if args.part == "ood":
        args.n_test = min(args.n_test, 1797)      # the digits set has 1797 images
    settings = dict(vars(args))

    def save(rows: dict, table: str) -> None:
        seconds = round(time.perf_counter() - start)
        table += (f"\nsettings: {settings}; 784-256-16 Bernoulli VAE, {seconds} s on "
                  f"{machine()}\ncommand: nice -n 10 .venv/bin/python benchmarks/anomaly.py "
                  + " ".join(f"--{k.replace('_', '-')} "
                             f"{','.join(map(str, v)) if isinstance(v, list) else v}"
                             for k, v in settings.items() if v is not None))
        write(f"anomaly-{args.part}-{args.input}", {"settings": settings, "seconds": seconds,
                                                    "machine": machine(), "auroc": rows}, table)

    with tempfile.TemporaryDirectory() as work:
        if args.via != "library":
            rows = one_class_via(args, Path(work))
            if args.via == "both":
                _record_both(rows, args, time.perf_counter() - start)
            else:
                print(rows)
        elif args.part == "one-class":
            one_class(args, options, Path(work), save)
        else:
            rows = ood(args, options, Path(work))
            save(rows, _table_ood(rows))

def _record_both(rows: dict, args, seconds: float) -> None:
    command = ("nice -n 5 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python "
               "benchmarks/anomaly.py " + " ".join(sys.argv[1:]))
    info = machine()
    described = (f"{info['cpu']} CPU, {os.cpu_count()} cores, {info['threads']} thread(s), "
                 f"torch {info['torch']}")
    # One section per K: the two paths' scores are different Monte Carlo estimates (see
    # docs/concepts/sklearn.md), so runs at several K show their difference shrinking.
    record_sklearn_vs_cli(f"anomaly, K = {args.k}", {"command": command, "machine": described,
                                      "seconds": seconds, "settings": vars(args),
                                      "rows": rows}, _table_via(rows, args))


if __name__ == "__main__":
    main()
