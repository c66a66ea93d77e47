"""A conditional VAE on Fashion-MNIST generating each class on demand.

A conditional VAE (``--condition labels``: p(x | z, c) and q(z | x, c) with c the one-hot
class, Sohn et al. 2015; MLP 784-512-256-20, dynamically binarized training images, the
default ELBO) draws ``--per-class`` images of each class c: z ~ p(z), shown E[x | z, c]. A
classifier trained on the real training images (grey levels; an MLP 784-512-10, Adam) labels
them; the score is the fraction labelled as the class asked for, per class and overall, beside
the classifier's own accuracy on the real test images (what it can tell at all). Also: the
CVAE's test ELBO per image under its true c, and with c replaced by another class (how much
the model uses c).

Run: ``nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/conditional.py``
(results in benchmarks/results/conditional.{json,txt}).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vaelab import data
from vaelab.fit.train import train
from vaelab.use.trained import load

RESULTS = Path(__file__).parent / "results"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")


def _network(kind: str) -> torch.nn.Module:
    if kind == "mlp":
        return torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(),
                                   torch.nn.Linear(512, 10))
    return torch.nn.Sequential(      # a small CNN: two 3x3 conv + pool stages, dense head
        torch.nn.Unflatten(1, (1, 28, 28)), torch.nn.Conv2d(1, 32, 3, padding=1),
        torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Conv2d(32, 64, 3, padding=1),
        torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(64 * 7 * 7, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def classifier(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int,
               kind: str = "mlp") -> torch.nn.Module:
    """An MLP 784-512-10 or a small CNN trained on (x, y) with Adam (lr 1e-3, batch 128)."""
    torch.manual_seed(seed)
    net = _network(kind)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(128):
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    hits = sum(int((net(a).argmax(1) == b).sum()) for a, b in zip(x.split(1000), y.split(1000),
                                                                    strict=True))
    return hits / len(y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20, help="CVAE epochs (default 20)")
    p.add_argument("--classifier-epochs", type=int, default=8)
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classifier", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--run", type=Path, help="a trained conditional run to reuse (no training)")
    p.add_argument("--out", type=Path, default=RESULTS / "conditional")
    args = p.parse_args()
    torch.set_num_threads(1)
    train_set, test = data.load_dataset("fashion-mnist", "train"), data.load_dataset(
        "fashion-mnist", "test")
    start = time.perf_counter()
    run = args.run or Path(tempfile.mkdtemp()) / "cvae"
    config = {"model": {"latent_dim": 20, "net_options": {"hidden": [512, 256]},
                        "condition": "labels"},
              "train": {"data": "fashion-mnist", "epochs": args.epochs, "seed": args.seed,
                        "device": "cpu"}}
    if args.run is None:
        train(config, run, progress=False, log=None)
    cvae_seconds = time.perf_counter() - start
    model = load(run)
    args.epochs = len(model.metrics)
    if args.run is not None:      # the reused run's own training time
        cvae_seconds = sum(m["seconds"] for m in model.metrics)
    net = classifier(train_set.x, train_set.labels, args.classifier_epochs, args.seed,
                     args.classifier)
    real = accuracy(net, test.x, test.labels)
    per_class = {}
    gen = torch.Generator().manual_seed(args.seed)
    for k in range(10):
        images = model.sample(args.per_class, c=k, mean=True, generator=gen)
        per_class[CLASSES[k]] = accuracy(net, images, torch.full((args.per_class,), k))
    test_bin = data.static_binarize(test, args.seed).x[:2000]
    labels = test.labels[:2000]
    torch.manual_seed(args.seed)
    own = float(model.elbo(test_bin, num_samples=10, c=labels.numpy()).mean())
    torch.manual_seed(args.seed)
    other = float(model.elbo(test_bin, num_samples=10, c=((labels + 1) % 10).numpy()).mean())
    report = {
        "cvae": {"epochs": args.epochs, "seconds": round(cvae_seconds, 1),
                 "best_val_elbo": max(m["val_elbo"] for m in model.metrics
                                      if m["val_elbo"] is not None),
                 "test_elbo_own_c": own, "test_elbo_other_c": other,
                 "test_elbo_rows": 2000},
        "classifier": args.classifier, "classifier_test_accuracy": real,
        "generated_labelled_as_asked": float(np.mean(list(per_class.values()))),
        "per_class": per_class, "per_class_n": args.per_class, "seed": args.seed,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    name = "MLP 784-512-10" if args.classifier == "mlp" else "CNN 32-64 conv, 128 dense"
    lines = [f"CVAE ({args.epochs} epochs, {cvae_seconds:.0f} s): best validation ELBO "
             f"{report['cvae']['best_val_elbo']:.2f}; test ELBO (first 2000, binarized once) "
             f"under the true c {own:.2f}, under c+1 {other:.2f}",
             f"classifier ({name}, {args.classifier_epochs} epochs) on the real test "
             f"images: {real:.4f}",
             f"generated images labelled as the class asked for: "
             f"{report['generated_labelled_as_asked']:.4f} ({args.per_class} per class, "
             f"E[x | z, c], z ~ p(z))", "", "| class | labelled as asked |", "|---|---|"]
    lines += [f"| {name} | {acc:.3f} |" for name, acc in per_class.items()]
    args.out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
