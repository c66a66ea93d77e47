"""Shared pieces of the anomaly, clustering and imputation benchmarks: data sets, training,
baselines on pixels, the ``vaelab`` command line and the scikit-learn-API-vs-CLI record.
Imported by benchmarks/anomaly.py, benchmarks/clustering.py and benchmarks/imputation.py."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vaelab import data
from vaelab.config import RunConfig
from vaelab.fit.train import train

RESULTS = Path(__file__).resolve().parent / "results"


def train_model(out: Path, seed: int, epochs: int, **train_options) -> torch.nn.Module:
    """Train a 784-256-16 Bernoulli MLP VAE (small: the machine is shared) → model (eval)."""
    model_options = {"hidden": [256], "latent_dim": 16, **train_options.pop("model", {})}
    config = RunConfig.from_dict({"model": model_options, "train": {
        "epochs": epochs, "seed": seed, "compile": False, "device": "cpu", **train_options}})
    start = time.perf_counter()
    result = train(config, out, overwrite=True, progress=False, log=None)
    last = result.metrics[-1]
    print(f"  trained {out.name}: {len(result.metrics)} epochs, val ELBO "
          f"{last.get('val_elbo')}, {time.perf_counter() - start:.0f} s", flush=True)
    return result.model.eval()


def test_set(seed: int = 0) -> data.Dataset:
    """The Fashion-MNIST test split, statically binarized with ``seed`` (the model's input)."""
    return data.static_binarize(data.load_dataset("fashion-mnist", "test"), seed)


def digits_28(n: int | None = None) -> np.ndarray:
    """scikit-learn's 8×8 handwritten digits (1797) as MNIST-like 28×28 images in [0, 1].

    Each 8×8 image (levels 0..16) is resized to 20×20 (bilinear) and centred in a 28×28 frame,
    as MNIST centres its 20×20 digits; → float32 [N, 784].
    """
    from sklearn.datasets import load_digits

    images = load_digits().images[:n] / 16.0
    out = np.zeros((len(images), 28, 28), dtype=np.float32)
    for i, image in enumerate(images):
        small = Image.fromarray((image * 255).astype(np.uint8)).resize((20, 20),
                                                                     Image.BILINEAR)
        out[i, 4:24, 4:24] = np.asarray(small, dtype=np.float32) / 255
    return out.reshape(len(images), 784)


def binarize(x: np.ndarray | torch.Tensor, seed: int) -> torch.Tensor:
    """One seeded Bernoulli draw of grey levels x [N, D] in [0, 1]."""
    x = torch.as_tensor(x, dtype=torch.float32)
    return data.binarize(x, torch.Generator().manual_seed(seed))


def baselines(train_x: np.ndarray, test_x: np.ndarray, dim: int, seed: int) -> dict:
    """Pixel-space anomaly scores (higher = anomalous): IsolationForest, PCA reconstruction
    error, kNN distance and a one-class SVM (RBF kernel of scikit-learn's "scale" width,
    ν = 0.1: the share of training images it may leave outside)."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import NearestNeighbors
    from sklearn.svm import OneClassSVM

    forest = IsolationForest(n_estimators=200, random_state=seed).fit(train_x)
    pca = PCA(dim, random_state=seed).fit(train_x)
    recon = pca.inverse_transform(pca.transform(test_x))
    knn = NearestNeighbors(n_neighbors=5).fit(train_x)
    return {"isolation-forest": -forest.score_samples(test_x),
            "pca-reconstruction": ((test_x - recon) ** 2).sum(1),
            "knn-distance": knn.kneighbors(test_x)[0].mean(1),
            "one-class-svm": -OneClassSVM(nu=0.1).fit(train_x).score_samples(test_x)}


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}


def write(name: str, result: dict, table: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{name}.txt").write_text(table + "\n")
    print(table)


def vaelab_cli(*args: str) -> str:
    """Run the ``vaelab`` command line (this interpreter's, one thread) → its stdout; a
    failure raises with the command's last lines of output."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "vaelab", *args], capture_output=True,
                          text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"vaelab {' '.join(args)} failed ({done.returncode}): "
                           f"{(done.stdout + done.stderr)[-2000:]}")
    return done.stdout


def estimator_seed(random_state: int) -> int:
    """The run seed a ``vaelab.sklearn`` estimator trains with for ``random_state``: its
    ``fit`` draws one int32 from ``check_random_state(random_state)`` (``seed_``), so the CLI
    needs ``--seed`` of that number, not of ``random_state`` itself, to train the same run."""
    from sklearn.utils import check_random_state

    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def same_weights(run_a: Path, run_b: Path) -> bool:
    """Whether two run directories hold byte-identical model.safetensors."""
    return (run_a / "model.safetensors").read_bytes() == (run_b / "model.safetensors").read_bytes()


SKLEARN_VS_CLI = RESULTS / "sklearn-vs-cli"


def record_sklearn_vs_cli(section: str, result: dict, table: str) -> None:
    """Store one benchmark's scikit-learn-API-vs-CLI comparison as ``section`` of
    results/sklearn-vs-cli.json (the other benchmark's section is kept) and rewrite the .md
    from every section's table, command and machine."""
    path = SKLEARN_VS_CLI.with_suffix(".json")
    record = json.loads(path.read_text()) if path.is_file() else {}
    record[section] = result | {"table": table}
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# vaelab through scikit-learn's API and through its command line", "",
             "The same settings and seed through `vaelab.sklearn` and through `vaelab train` "
             "+ `vaelab impute` / `vaelab score`, side by side (written by the benchmarks' "
             "`--via both`).", ""]
    for name, part in sorted(record.items()):
        lines += [f"## {name}", "", part["table"], "",
                  f"Command: `{part['command']}`", "",
                  f"Machine: {part['machine']}, {part['seconds']:.0f} s.", ""]
    SKLEARN_VS_CLI.with_suffix(".md").write_text("\n".join(lines))
    print(table)
