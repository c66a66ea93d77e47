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

Choosing one default score without the test anomalies (``--n-val N``, N > 0): the last N
training images of the normal data (class c for one-class, all of Fashion-MNIST for ood) are
held out of training and scored against N validation anomalies of one of two kinds
(``--val-anomalies``); the default of the task is the (likelihood, score) pair with the highest
validation AUROC, chosen once from these numbers alone, and only then read off on the test
anomalies.

``glyphs`` (the default; outlier exposure, Hendrycks et al. 2019, with a set of our own):
N letters (:func:`glyphs`: Pillow's own font, upper and lower case, no digit, white on black
28×28 like the garments, sizes, strokes and slants varied), the validation AUROC the mean
over the two cases. They are centred shapes on the data's black background that are neither
Fashion-MNIST nor any test set (digits, flips, inversions, uniform noise), many of them
simpler than a garment — semantic departures of the kind on which likelihoods are known to
fail (Nalisnick et al. 2019), as the one-class test anomalies (other garments) are.

``natural``: N crops of the two photographs scikit-learn ships (:func:`natural_crops`:
squares of 28 to 280 pixels averaged down to 28×28, 8-bit). Tried first and set aside: their
grey backgrounds make every discretized-logistic likelihood score reach a validation AUROC of
1.000 (a tie that says nothing about the test anomalies).

``synthetic`` (the first protocol, kept to reproduce its results): each held-out image is
copied once with one synthetic corruption
(:data:`SYNTHETIC`, image i gets kind i mod 6): a local 8×8 patch of uniform noise, a blur,
additive Gaussian noise, the four quadrants rotated one place, a 90° rotation and a gamma
darkening (x²), each rounded back to 8 bits. The validation AUROC of a score is the mean over
the six kinds of its AUROC (held-out normals against that kind), averaged over the classes for
one-class. It chose the discretized logistic's ELBO for one-class (test 0.701) where the best
score was at 0.893: five of the six corruptions make an image less likely, which a likelihood
sees by construction, while the test anomalies are other garments. The synthetic
kinds avoid the four ood test sets' own transforms (vertical flip, inversion, uniform noise
over the whole image, digits): a kind equal to a test set would choose the score on that set.
Why these kinds: they are generic, label-free departures from the normal images, some local
(patch, quadrants), some of texture (blur, noise) or geometry (rotation) or intensity (gamma),
so no single score property wins them all by construction.

Model (``--hidden``, ``--latent``, ``--gated``, ``--likelihoods``): the strong runs use a
784-300-40 gated MLP with a cosine learning rate (the craft of recipes/fashion-mnist/vae.toml)
and compare a Bernoulli on the grey levels with an 8-bit discretized logistic
(``--likelihoods bernoulli,discretized-logistic``, ``--input grey``).

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
from dataclasses import dataclass
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

BASELINES = ("isolation-forest", "pca-reconstruction", "knn-distance", "one-class-svm")
#: Every score but hierarchical-llr: the models here have one latent layer.
NAMES = tuple(n for n in SCORE_NAMES if n != "hierarchical-llr")
#: Training rows that typicality and the latent scores compare with (the first ones; at most
#: ``--reference-rows``).
REFERENCE_ROWS = 5000


#: The synthetic anomalies of the validation protocol (module docstring): name → function of
#: grey images [N, 28, 28] in [0, 1] and a generator → corrupted images, same shape.
def _patch_noise(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    out = x.clone()
    for i in range(len(out)):
        r, c = (int(v) for v in torch.randint(0, 21, (2,), generator=g))
        out[i, r:r + 8, c:c + 8] = torch.rand(8, 8, generator=g)
    return out


def _blur(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    kernel = torch.full((1, 1, 3, 3), 1 / 9)
    out = x.unsqueeze(1)
    for _ in range(2):
        out = torch.nn.functional.conv2d(out, kernel, padding=1)
    return out.squeeze(1)


def _gaussian_noise(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x + 0.2 * torch.randn(x.shape, generator=g)


def _quadrants(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    a, b = x[:, :14, :14], x[:, :14, 14:]
    c, d = x[:, 14:, :14], x[:, 14:, 14:]
    return torch.cat([torch.cat([c, a], 2), torch.cat([d, b], 2)], 1)


SYNTHETIC = {"patch-noise": _patch_noise, "blur": _blur, "gaussian-noise": _gaussian_noise,
             "quadrants": _quadrants, "rotate-90": lambda x, g: x.rot90(1, (1, 2)),
             "gamma": lambda x, g: x ** 2}


def synthetic_anomalies(normal: torch.Tensor, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Held-out normal grey images [N, 784] → (one corrupted copy of each [N, 784], rounded to
    8 bits, and the index of its kind in :data:`SYNTHETIC`, image i getting kind i mod 6)."""
    g = torch.Generator().manual_seed(seed)
    images = normal.reshape(-1, 28, 28)
    kinds = np.arange(len(images)) % len(SYNTHETIC)
    out = torch.empty_like(images)
    for k, fn in enumerate(SYNTHETIC.values()):
        out[kinds == k] = fn(images[kinds == k], g)
    return (out.clamp(0, 1) * 255).round().div(255).reshape(-1, 784), kinds


#: The photographs scikit-learn ships (no download): the outlier-exposure source of the
#: "natural" validation anomalies.
PHOTOS = ("china", "flower")


def natural_crops(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` grey 28×28 crops [n, 784] of scikit-learn's two sample photographs, rounded to 8
    bits, and the index of their photograph in :data:`PHOTOS` (image i from photo i mod 2).

    Each crop is a square of side drawn log-uniformly in [28, 280] pixels at a uniform
    position, averaged down to 28×28 (area interpolation): textures at fine scales, objects
    and smooth regions at coarse ones."""
    from sklearn.datasets import load_sample_images

    photos = [torch.from_numpy(im.astype(np.float32).mean(2) / 255)
              for im in load_sample_images().images]
    g = torch.Generator().manual_seed(seed)
    kinds = np.arange(n) % len(photos)
    out = torch.empty(n, 28, 28)
    for i, k in enumerate(kinds):
        photo = photos[k]
        side = int(round(28 * 10 ** float(torch.rand((), generator=g))))
        r = int(torch.randint(0, photo.shape[0] - side + 1, (), generator=g))
        c = int(torch.randint(0, photo.shape[1] - side + 1, (), generator=g))
        crop = photo[r:r + side, c:c + side][None, None]
        out[i] = torch.nn.functional.interpolate(crop, size=(28, 28), mode="area")[0, 0]
    return (out.clamp(0, 1) * 255).round().div(255).reshape(-1, 784), kinds


#: The characters of the "glyphs" validation anomalies: letters, none a digit (a test set).
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghijkmnpqrtuy"


def glyphs(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` letters drawn white on black 28×28 [n, 784], 8-bit, as Fashion-MNIST draws its
    garments, and their kind: 0 upper case, 1 lower case (image i of kind i mod 2).

    Pillow's own scalable font (no download) at a size of 14 to 26 points, a stroke of 0 to 2
    pixels, rotated by up to ±20°, centred by its bounding box and smoothed by a 2×2 box
    (anti-aliasing as in the garments' edges)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    g = np.random.default_rng(seed)
    kinds = np.arange(n) % 2
    out = np.empty((n, 28, 28), np.float32)
    upper, lower = LETTERS[:26], LETTERS[26:]
    for i, k in enumerate(kinds):
        char = (upper if k == 0 else lower)[g.integers(len(upper if k == 0 else lower))]
        font = ImageFont.load_default(size=int(g.integers(14, 27)))
        canvas = Image.new("L", (56, 56))
        ImageDraw.Draw(canvas).text((28, 28), char, fill=int(g.integers(180, 256)), font=font,
                                    anchor="mm", stroke_width=int(g.integers(0, 3)),
                                    stroke_fill=255)
        canvas = canvas.rotate(float(g.uniform(-20, 20)), resample=Image.BILINEAR)
        box = canvas.getbbox() or (14, 14, 42, 42)
        cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
        canvas = canvas.crop((cx - 14, cy - 14, cx + 14, cy + 14)).filter(
            ImageFilter.BoxBlur(0.5))
        out[i] = np.asarray(canvas, np.float32) / 255
    return torch.from_numpy(out.reshape(n, 784)), kinds


#: The validation anomalies (``--val-anomalies``): name → (a function of the held-out normal
#: images [N, 784] and a seed → N anomalous images and the index of each one's kind, the
#: kinds' names).
VALIDATION = {
    "synthetic": (synthetic_anomalies, tuple(SYNTHETIC)),
    "natural": (lambda held, seed: natural_crops(len(held), seed), PHOTOS),
    "glyphs": (lambda held, seed: glyphs(len(held), seed), ("upper case", "lower case")),
}


def validation_anomalies(args, held: torch.Tensor, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    return VALIDATION[args.val_anomalies][0](held, seed)


def kind_aurocs(normal: np.ndarray, anomalous: np.ndarray, kinds: np.ndarray,
                count: int) -> list[float]:
    """Per kind of validation anomaly (``count`` kinds), the AUROC of the held-out normals'
    scores against that kind's (higher score = anomalous); their mean is the validation
    AUROC."""
    return [anomaly_metrics(np.r_[normal, anomalous[kinds == k]],
                            np.r_[np.zeros(len(normal)), np.ones(int((kinds == k).sum()))]
                            )["auroc"] for k in range(count)]


def _validate(out: dict, key: str, normal: np.ndarray, anomalous: np.ndarray,
              kinds: np.ndarray, args) -> None:
    """Record the validation AUROC of ``key`` and its per-kind values in row ``out``."""
    names = VALIDATION[args.val_anomalies][1]
    per = kind_aurocs(normal, anomalous, kinds, len(names))
    out.setdefault("validation", {})[key] = float(np.mean(per))
    out.setdefault("validation_kinds", {})[key] = dict(zip(names, per, strict=True))


@dataclass(frozen=True)
class Validation:
    """The held-out normal grey images [N, 784], as many validation anomalies and each one's
    kind, and the seeds of the two sets' model inputs (binarization draws)."""

    held: torch.Tensor
    anomalous: torch.Tensor
    kinds: np.ndarray
    seeds: tuple[int, int]

    @classmethod
    def make(cls, args, held: torch.Tensor, seed: int, input_seeds: tuple[int, int]
             ) -> Validation:
        anomalous, kinds = validation_anomalies(args, held, seed)
        return cls(held, anomalous, kinds, input_seeds)

    def score_model(self, out: dict, lik: str, model, background, options: ScoreOptions,
                    reference: torch.Tensor, names: tuple[str, ...], args) -> None:
        """Record in ``out`` the validation AUROC of each of ``names`` for one model."""
        normal, bad = (_score(model, background, _model_input(x, args, seed), options,
                              args.seed, reference, names)
                       for x, seed in zip((self.held, self.anomalous), self.seeds, strict=True))
        for n in names:
            _validate(out, _key(lik, n), normal[n], bad[n], self.kinds, args)

    def score_baselines(self, out: dict, train: np.ndarray, args) -> None:
        """Record in ``out`` the validation AUROC of each pixel baseline fitted to ``train``."""
        n = len(self.held)
        base = baselines(train, np.r_[self.held.numpy(), self.anomalous.numpy()], 16, args.seed)
        for b in BASELINES:
            _validate(out, b, base[b][:n], base[b][n:], self.kinds, args)


def _model_options(args, likelihood: str) -> dict:
    return {"hidden": args.hidden, "latent_dim": args.latent, "gated": args.gated,
            "likelihood": likelihood}


def _train_options(args) -> dict:
    return {"lr_schedule": args.lr_schedule, "batch_size": args.batch_size, "lr": args.lr}


def _score(model, background, x: torch.Tensor, options: ScoreOptions, seed: int,
           reference: torch.Tensor, names: tuple[str, ...]) -> dict:
    torch.manual_seed(seed)
    scores = anomaly_scores(model, x, names,
                            background=None if background is None else
                            (background, background.encoder),
                            image_shape=(1, 28, 28), options=options, reference=reference)
    return {name: scores[SCORE_COLUMNS[name]] for name in names} | {
        "mean_log_likelihood": float(-scores["nll"].mean())}


def _binarize(args) -> str:
    return "none" if args.input == "grey" else "dynamic"


def _model_input(grey: torch.Tensor, args, seed: int) -> torch.Tensor:
    return grey if args.input == "grey" else binarize(grey, seed)


def _names(args) -> tuple[str, ...]:
    """The scores of a run: --scores, with log-likelihood always (its mean is reported)."""
    names = tuple(args.scores)
    return names if "log-likelihood" in names else ("log-likelihood", *names)


def _models(args, work: Path, tag: str, **data_options) -> dict:
    """likelihood → (model, background model or None), trained on the same data."""
    out = {}
    for lik in args.likelihoods:
        options = dict(model=_model_options(args, lik), binarize=_binarize(args),
                       **_train_options(args), **data_options)
        model = train_model(work / f"{tag}-{lik}", args.seed, args.epochs, **options)
        background = (train_model(work / f"{tag}-{lik}-bg", args.seed, args.epochs,
                                  perturb_fraction=args.mu, **options)
                      if "likelihood-ratio" in args.scores else None)
        out[lik] = (model, background)
    return out


def _key(lik: str, name: str) -> str:
    return f"{lik}/{name}"


def one_class(args, options: ScoreOptions, work: Path, save) -> dict:
    train_grey = data.load_dataset("fashion-mnist", "train")
    test_grey = data.load_dataset("fashion-mnist", "test").subset(slice(0, args.n_test))
    x_test = (test_grey.x if args.input == "grey" else test_set(args.seed).x[:args.n_test])
    names = _names(args)
    rows: dict = {}
    for c in args.classes:
        start = time.perf_counter()
        grey = data.select_classes(train_grey, [c]).x
        n_fit = len(grey) - args.n_val        # the last n_val images are held out
        models = _models(args, work, f"c{c}", classes=[c], limit=n_fit)
        labels = (test_grey.labels != c).long().numpy()
        reference = _model_input(grey[:min(args.reference_rows, n_fit)], args, args.seed)
        row: dict = {"test": {}, "validation": {}}
        val = (Validation.make(args, grey[n_fit:], args.seed + c, (args.seed + 1, args.seed + 2))
               if args.n_val else None)
        for lik, (model, background) in models.items():
            scores = _score(model, background, x_test, options, args.seed, reference, names)
            row["test"] |= {_key(lik, n): anomaly_metrics(scores[n], labels)["auroc"]
                            for n in names}
            row[f"mean_log_likelihood {lik}"] = scores["mean_log_likelihood"]
            if val is not None:
                val.score_model(row, lik, model, background, options, reference, names, args)
        base = baselines(grey[:n_fit].numpy(), test_grey.x.numpy(), 16, args.seed)
        row["test"] |= {b: anomaly_metrics(base[b], labels)["auroc"] for b in BASELINES}
        if val is not None:
            val.score_baselines(row, grey[:n_fit].numpy(), args)
        row["seconds"] = round(time.perf_counter() - start)
        rows[c] = row
        print(f"class {c}: {row}", flush=True)
        save(rows, _table_one_class(rows, args))   # partial results survive an interrupted run
    return rows


def choose(rows: dict, args) -> str | None:
    """The default score: the likelihood/score pair with the highest validation AUROC averaged
    over ``rows`` (classes, or the one ood row); None without validation."""
    if not args.n_val:
        return None
    keys = [_key(lik, n) for lik in args.likelihoods for n in _names(args)
            if all(_key(lik, n) in r["validation"] for r in rows.values())]   # partial rows
    return max(keys, key=lambda k: float(np.mean([r["validation"][k] for r in rows.values()])))


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
             "| class | train rows | test rows | AUROC sklearn | AUROC cli | "
             + " | ".join(BASELINES) + " | sklearn − cli: max \\|Δ\\| / mean Δ / "
             "median \\|Δ\\|/SE | cli − cli, other seed: max \\|Δ\\| / mean Δ / median "
             "\\|Δ\\|/SE | same weights |", "|---" * (len(BASELINES) + 8) + "|"]
    for c, r in rows.items():
        pairs = [" / ".join((f"{r[pair + ' max_abs_diff']:.2f}", f"{r[pair + ' mean_diff']:.3f}",
                             f"{r[pair + ' median_abs_diff_over_cli_se']:.2f}"))
                 for pair in ("sklearn-cli", "cli-cli")]
        lines.append(f"| {c} | {r['n_train']} | {r['n_test']} | "
                     f"{r['log-likelihood (sklearn)']:.4f} | {r['log-likelihood (cli)']:.4f} | "
                     + " | ".join(f"{r[b]:.4f}" for b in BASELINES)
                     + f" | {pairs[0]} | {pairs[1]} | {'yes' if r['same_weights'] else 'no'} |")
    return "\n".join(lines)


def _columns(rows: dict, part: str) -> list[str]:
    return list(next(iter(rows.values()))[part])


def _table_one_class(rows: dict, args) -> str:
    names = _columns(rows, "test")
    width = max(22, *(len(n) + 2 for n in names))
    lines = [f"AUROC, one-class Fashion-MNIST (normal = class c, anomalies = the other 9 "
             f"classes, first {args.n_test} test images; higher is better); columns "
             f"likelihood/score"]
    for part in ("test", "validation") if args.n_val else ("test",):
        lines += ["", f"{part}" + (f" (held-out normal training images vs {args.val_anomalies} "
                                   "anomalies, mean over the kinds)"
                                   if part == "validation" else ""),
                  "class " + "".join(f"{n:>{width}}" for n in names)]
        for c, row in rows.items():
            lines.append(f"{c:<6}" + "".join(f"{row[part][n]:>{width}.3f}" for n in names))
        means = {n: float(np.mean([row[part][n] for row in rows.values()])) for n in names}
        lines.append("mean  " + "".join(f"{means[n]:>{width}.3f}" for n in names))
    lines.append("")
    chosen = choose(rows, args)
    test_means = {n: float(np.mean([row["test"][n] for row in rows.values()])) for n in names}
    if chosen is not None:
        hard = ", ".join(f"class {c} {rows[c]['test'][chosen]:.3f}" for c in (6, 2, 4)
                         if c in rows)
        lines.append(f"default chosen on validation: {chosen}; its test mean AUROC "
                     f"{test_means[chosen]:.3f} (hardest classes: {hard})")
    best_base = max(BASELINES, key=test_means.get)
    best = max((n for n in names if n not in BASELINES), key=test_means.get)
    lines.append(f"best vaelab score on test (hindsight, not a default): {best} "
                 f"{test_means[best]:.3f}; best baseline: {best_base} "
                 f"{test_means[best_base]:.3f}")
    return "\n".join(lines)


def ood_sets(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Grey-level foreign sets [n, 784] in [0, 1] (the in-distribution set is separate)."""
    grey = data.load_dataset("fashion-mnist", "test").x
    other = grey[n:2 * n]          # different images from the in-distribution rows [0, n)
    # Uniform over the 256 grey levels: 8-bit like the other sets, so that a discretized
    # likelihood can score it.
    noise = torch.randint(0, 256, (n, 784), generator=torch.Generator().manual_seed(seed)) / 255
    return {"digits (sklearn, 28x28)": torch.from_numpy(digits_28(n)),
            "flipped": other.reshape(-1, 28, 28).flip(1).reshape(-1, 784),
            "inverted": 1 - other, "uniform noise": noise}


def trained_run(args) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """``--model-run``: the run's model (eval), the grey training images it was fitted to and
    the grey images its run held out for validation (never trained on: the held normals)."""
    from vaelab.data.transforms import train_val_split
    from vaelab.use.trained import load

    trained = load(args.model_run)
    tc = trained.config.train
    if tc.data not in ("fashion-mnist", "binarized-fashion-mnist") or not tc.val_fraction:
        raise SystemExit(f"--model-run: expected a run trained on Fashion-MNIST with a "
                         f"validation split, got data {tc.data!r}, val_fraction "
                         f"{tc.val_fraction}")
    fitted, held = train_val_split(data.load_dataset("fashion-mnist", "train"),
                                   tc.val_fraction, tc.seed)
    return trained.model, fitted.x, held.x


def ood(args, options: ScoreOptions, work: Path, save) -> dict:
    names = _names(args)
    if args.model_run:
        model, fit_grey, held_grey = trained_run(args)
        models = {args.likelihoods[0]: (model, None)}
    else:
        train_grey = data.load_dataset("fashion-mnist", "train").x
        n_fit = min(args.n_train or len(train_grey), len(train_grey) - args.n_val)
        models = _models(args, work, "all", limit=n_fit)
        fit_grey, held_grey = train_grey[:n_fit], train_grey[len(train_grey) - args.n_val:]
    base_train = fit_grey[:10000].numpy()
    grey_in = data.load_dataset("fashion-mnist", "test").x[:args.n_test]
    x_in = _model_input(grey_in, args, args.seed)
    reference = _model_input(fit_grey[:args.reference_rows], args, args.seed + 100)
    sets = ood_sets(args.n_test, args.seed)
    val = (Validation.make(args, held_grey[:args.n_val], args.seed,
                           (args.seed + 10, args.seed + 11)) if args.n_val else None)
    rows: dict = {"fashion-mnist test": {}}
    for name in sets:
        rows[name] = {}
    for lik, (model, background) in models.items():
        inside = _score(model, background, x_in, options, args.seed, reference, names)
        rows["fashion-mnist test"][f"mean_log_likelihood {lik}"] = inside["mean_log_likelihood"]
        for i, (name, grey) in enumerate(sets.items()):
            foreign = _score(model, background, _model_input(grey, args, args.seed + 1 + i),
                             options, args.seed, reference, names)
            labels = np.r_[np.zeros(len(x_in)), np.ones(len(grey))].astype(int)
            rows[name][f"mean_log_likelihood {lik}"] = foreign["mean_log_likelihood"]
            rows[name] |= {_key(lik, n): anomaly_metrics(np.r_[inside[n], foreign[n]],
                                                         labels)["auroc"] for n in names}
            print(f"{lik} {name}: {rows[name]}", flush=True)
        if val is not None:
            val.score_model(rows, lik, model, background, options, reference, names, args)
            print(f"{lik} validation: {rows['validation']}", flush=True)
        save(rows, "partial: " + ", ".join(rows))     # survives an interrupted run
    for name, grey in sets.items():
        labels = np.r_[np.zeros(len(x_in)), np.ones(len(grey))].astype(int)
        base = baselines(base_train, np.r_[grey_in.numpy(), grey.numpy()], 16, args.seed)
        rows[name] |= {b: anomaly_metrics(base[b], labels)["auroc"] for b in BASELINES}
    if val is not None:
        val.score_baselines(rows, base_train, args)
    return rows


def _table_ood(rows: dict, args) -> str:
    sets = [n for n in rows if n not in ("fashion-mnist test", "validation",
                                         "validation_kinds")]
    names = [k for k in rows[sets[0]] if not k.startswith("mean_log_likelihood")]
    width = max(20, *(len(n) + 2 for n in names))
    liks = args.likelihoods
    lines = [f"AUROC, Fashion-MNIST test (first {args.n_test}, normal) vs each foreign set "
             f"(higher is better); columns likelihood/score; mean log p(x) in nats per "
             f"likelihood (normalised for discretized-logistic, a score for a Bernoulli on "
             f"grey levels)",
             f"{'set':<26}" + "".join(f"{'log p ' + lik[:5]:>14}" for lik in liks)
             + "".join(f"{n:>{width}}" for n in names)]
    for name, row in rows.items():
        if name == "validation_kinds":           # in the JSON only
            continue
        lls = "".join(f"{row[f'mean_log_likelihood {lik}']:>14.1f}"
                      if f"mean_log_likelihood {lik}" in row else f"{'':>14}" for lik in liks)
        cells = "".join(f"{row[n]:>{width}.3f}" if n in row else f"{'':>{width}}"
                        for n in names)
        lines.append(f"{name:<26}{lls}{cells}")
    if "validation" in rows:
        chosen = choose({"validation": rows}, args)
        worst = min(rows[s][chosen] for s in sets)
        lines += ["", f"validation: held-out training images vs {args.val_anomalies} "
                      f"anomalies (mean over the kinds); default chosen on it: {chosen}; its "
                      f"lowest test "
                      f"AUROC over the sets {worst:.3f}"]
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
    p.add_argument("--n-val", type=int, default=0,
                   help="held-out normal training images for choosing the default score "
                        "against --val-anomalies (0: no validation)")
    p.add_argument("--val-anomalies", choices=tuple(VALIDATION), default="glyphs",
                   help="the validation anomalies: rendered letters (glyphs, outlier "
                        "exposure), crops of scikit-learn's sample photos (natural) or "
                        "synthetic corruptions of the held-out normals (synthetic)")
    p.add_argument("--likelihoods", type=lambda s: s.split(","), default=["bernoulli"],
                   help="comma-separated likelihoods, one model each (e.g. "
                        "bernoulli,discretized-logistic)")
    p.add_argument("--scores", type=lambda s: s.split(","), default=list(NAMES),
                   help="comma-separated score names (likelihood-ratio trains background "
                        "models)")
    p.add_argument("--hidden", type=lambda s: [int(h) for h in s.split(",")], default=[256])
    p.add_argument("--latent", type=int, default=16)
    p.add_argument("--gated", action="store_true")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", default="constant")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--reference-rows", type=int, default=REFERENCE_ROWS,
                   help="training rows typicality and the latent scores compare with")
    p.add_argument("--name", help="results name (default anomaly-PART-INPUT)")
    p.add_argument("--model-run", type=Path, metavar="DIR",
                   help="ood: score with this trained run (e.g. a published-quality recipe's, "
                        "converged) instead of training one; its validation images are the "
                        "held normals, so --n-val draws from them")
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
    if args.model_run is not None:
        _check_model_run(p, args)
    if "discretized-logistic" in args.likelihoods and args.input != "grey":
        p.error("--likelihoods discretized-logistic: expected --input grey (8-bit levels), "
                f"got --input {args.input}")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    command = ("nice -n 5 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python "
               "benchmarks/anomaly.py " + " ".join(sys.argv[1:]))
    net = ("-".join(map(str, [784, *args.hidden, args.latent])) + (" gated" if args.gated else "")
           + f" MLP VAE, {args.epochs} epochs (not converged)")
    if args.model_run is not None:
        net = _describe_run(args.model_run)

    def save(rows: dict, table: str) -> None:
        seconds = round(time.perf_counter() - start)
        table += (f"\nsettings: {settings}; {net}, {seconds} s on {machine()} (shared 2-core "
                  f"CPU, one thread)"
                  f"\ncommand: {command}")
        write(args.name or f"anomaly-{args.part}-{args.input}",
              {"settings": settings, "command": command, "seconds": seconds,
               "machine": machine(), "default": choose(
                   rows if args.part == "one-class" else {"validation": rows}, args)
               if args.n_val else None, "auroc": rows}, table)

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
            rows = ood(args, options, Path(work), save)
            save(rows, _table_ood(rows, args))

def _check_model_run(p: argparse.ArgumentParser, args) -> None:
    """--model-run fixes the model: the part, input and likelihood must be the run's."""
    from vaelab.fit.runs import read_config

    if args.part != "ood":
        p.error(f"--model-run: expected --part ood (one-class trains a model per class), got "
                f"--part {args.part}")
    if args.scores == list(NAMES):                # the default: every score it can give
        args.scores = [n for n in NAMES if n != "likelihood-ratio"]
    if "likelihood-ratio" in args.scores:
        p.error("--model-run: expected --scores without likelihood-ratio (it needs a "
                "background model trained beside the run's), got it in --scores")
    try:
        model = read_config(args.model_run).model
    except (OSError, ValueError) as e:
        p.error(f"--model-run: expected a vaelab run folder, got {str(args.model_run)!r} ({e})")
    want = "binary" if model.data_kind == "binary" else "grey"
    if args.input != want:
        p.error(f"--model-run: the run was trained on {model.data_kind} data, so expected "
                f"--input {want}, got --input {args.input}")
    args.likelihoods = [model.likelihood]
    hierarchical = isinstance(model.latent_dim, (list, tuple)) and len(model.latent_dim) > 1
    if hierarchical and "hierarchical-llr" not in args.scores:
        args.scores = [*args.scores, "hierarchical-llr"]


def _describe_run(run: Path) -> str:
    from vaelab.fit.runs import read_config, read_metrics

    config, rows = read_config(run), read_metrics(run)
    last = rows[-1] if rows else {}
    return (f"the trained run {run} ({config.model.net} net, latent {config.model.latent_dim}, "
            f"prior {config.model.prior}, {len(rows)} of {config.train.epochs} epochs, last "
            f"val ELBO {last.get('val_elbo')})")


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
