"""Clustering Fashion-MNIST in latent space, over several seeds, beside pixel k-means.

Per seed: k-means (K = 10, scikit-learn) on the test images' grey pixels, on their PCA
projection to the latent dimension, and on the posterior means E_q[z | x] of a standard-prior
VAE, a GMM fitted to that VAE's training codes and VaDE (Jiang et al. 2017: the GMM becomes
the prior, the VAE is fine-tuned with the ELBO for ``--vade-epochs``, clusters are
argmax_c p(c | z)); and a VAE trained with the mixture-of-Gaussians prior (``prior="mog"``,
10 components) whose own assignments argmax_c p(c | z = E_q[z | x]) are the clusters (as
GMVAE), plus k-means on its codes. And vaelab's ``--method manifold`` (as N2D, McConville
et al. 2020): a GMM on the spectral embedding of the k-nearest-neighbour graph of the VAE's
test codes — beside the same embedding of the PCA projection, which says how much of the gain
is the embedding's and how much the codes'. Scores against the true classes: accuracy under the best
one-to-one cluster → class map (Hungarian), NMI, ARI; and the 5-fold linear-probe accuracy of
each representation. The VAEs read statically binarized images (as ``vaelab cluster``); pixels and
PCA read grey levels. Reported as mean ± sd over seeds.

Run (the committed results; about 35 min on one thread of the shared 2-core machine):
``nice -n 5 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/clustering.py
--seeds 5 --epochs 20 --n-train 60000 --n-test 10000 --latent 10 --vade-epochs 10
--vade-rows 10000 --neighbours 10 --skip-mog`` (results in
benchmarks/results/clustering.{json,txt}; the VAEs are recipes/fashion-mnist/cluster.toml's).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from use_common import machine, train_model, write
from vaelab import data
from vaelab.use import cluster, vade
from vaelab.use.encode import encode
from vaelab.use.trained import load

METHODS = ("k-means on pixels", "k-means on PCA", "k-means on VAE codes",
           "GMM on VAE codes", "VaDE (GMM-initialised)", "manifold on PCA",
           "manifold on VAE codes", "k-means on mog-VAE codes", "mog prior assignments")


def _row(labels, assignments, codes=None, seed: int = 0) -> dict:
    row = cluster.cluster_metrics(labels, assignments)
    if codes is not None:
        row["probe"] = cluster.linear_probe_accuracy(codes, labels, seed=seed)
    return row


def one_seed(args, seed: int, work: Path) -> dict:
    from sklearn.decomposition import PCA

    test = data.load_dataset("fashion-mnist", "test").subset(slice(0, args.n_test))
    labels = test.labels.numpy()
    grey = test.x.numpy()
    x = data.static_binarize(test, seed).x
    pca = PCA(args.latent, random_state=seed).fit_transform(grey)
    rows = {"k-means on pixels": _row(labels, cluster.kmeans(grey, 10, seed=seed, n_init=3)),
            "k-means on PCA": _row(labels, cluster.kmeans(pca, 10, seed=seed), pca, seed)}
    options = {"limit": args.n_train, "model": {"latent_dim": args.latent}}
    vae = (load(args.model_run).model if args.model_run else
           train_model(work / f"std-{seed}", seed, args.epochs, **options))
    z = encode(vae.encoder, x).numpy()
    rows["k-means on VAE codes"] = _row(labels, cluster.kmeans(z, 10, seed=seed), z, seed)
    manifold = {"neighbours": args.neighbours, "dims": args.embed_dim, "seed": seed}
    rows["manifold on PCA"] = _row(labels, cluster.manifold(pca, 10, **manifold))
    rows["manifold on VAE codes"] = _row(labels, cluster.manifold(z, 10, **manifold))
    # VaDE from the standard VAE: a GMM on its training codes becomes the prior, fine-tuned
    train = data.load_dataset("fashion-mnist", "train").subset(slice(0, args.vade_rows))
    try:
        result = vade.vade(vae, data.static_binarize(train, seed).x, 10, seed=seed,
                           options=vade.VadeOptions(epochs=args.vade_epochs))
    except ValueError as e:          # a run VaDE cannot take (e.g. a hierarchy): say so
        print(f"VaDE skipped: {e}", flush=True)
        return rows
    rows["GMM on VAE codes"] = _row(labels, result.gmm.predict(z))
    zv, found, _ = vade.assign(result.model, x)
    rows["VaDE (GMM-initialised)"] = _row(labels, found, zv.numpy(), seed) | {
        "elbo_per_epoch": result.history}
    if args.skip_mog or args.model_run:
        return rows
    options["model"] |= {"prior": "mog", "prior_components": 10}
    mog = train_model(work / f"mog-{seed}", seed, args.epochs, **options)
    zm = encode(mog.encoder, x)
    rows["k-means on mog-VAE codes"] = _row(labels, cluster.kmeans(zm.numpy(), 10, seed=seed),
                                            zm.numpy(), seed)
    assign = cluster.prior_responsibilities(mog.prior(), zm).argmax(1).numpy()
    rows["mog prior assignments"] = _row(labels, assign) | {
        "clusters_used": int(len(np.unique(assign)))}
    return rows


def _table(per_seed: list[dict]) -> str:
    lines = ["Clustering Fashion-MNIST test images (10 classes): mean ± sd over "
             f"{len(per_seed)} seeds",
             f"{'method':<28}{'accuracy':>16}{'NMI':>16}{'ARI':>16}{'linear probe':>16}"]
    for method in METHODS:
        if method not in per_seed[0]:
            continue
        cells = []
        for key in ("accuracy", "nmi", "ari", "probe"):
            values = [rows[method][key] for rows in per_seed if key in rows[method]]
            cells.append(f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
                         if len(values) > 1 else (f"{values[0]:.3f}" if values else "—"))
        lines.append(f"{method:<28}" + "".join(f"{c:>16}" for c in cells))
    if "mog prior assignments" in per_seed[0]:
        used = [rows["mog prior assignments"]["clusters_used"] for rows in per_seed]
        lines.append(f"mog prior: clusters used per seed {used}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--n-test", type=int, default=5000)
    p.add_argument("--latent", type=int, default=10)
    p.add_argument("--vade-epochs", type=int, default=10, help="VaDE's ELBO fine-tuning")
    p.add_argument("--vade-rows", type=int, default=10000,
                   help="training rows of VaDE's GMM and fine-tuning (vaelab's --train-limit)")
    p.add_argument("--neighbours", type=int, default=10, help="manifold: graph neighbours")
    p.add_argument("--embed-dim", type=int, default=None,
                   help="manifold: embedding dimensions (default: the 10 clusters)")
    p.add_argument("--skip-mog", action="store_true",
                   help="leave out the VAE trained with the mixture prior (time)")
    p.add_argument("--name", default="clustering", help="results file name (no suffix)")
    p.add_argument("--model-run", type=Path, metavar="DIR",
                   help="the VAE rows from this trained run (e.g. a published-quality recipe's, "
                        "converged) instead of a VAE trained per seed; the seeds then vary the "
                        "binarization and the clusterers' seeds (no mog VAE)")
    args = p.parse_args()
    start, per_seed = time.perf_counter(), []
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    models = (f"the trained run {args.model_run}" if args.model_run else
              "784-256-L Bernoulli VAEs (L = --latent)")
    with tempfile.TemporaryDirectory() as work:
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            per_seed.append(one_seed(args, seed, Path(work)))
            print(f"seed {seed}: {per_seed[-1]}", flush=True)
            seconds = round(time.perf_counter() - start)
            table = _table(per_seed) + (
                f"\nsettings: {settings}; {models}, {seconds} s "
                f"on {machine()}\ncommand: nice -n 5 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "
                ".venv/bin/python benchmarks/clustering.py " + " ".join(sys.argv[1:]))
            write(args.name, {"settings": settings, "seconds": seconds, "machine": machine(),
                                 "per_seed": per_seed}, table)


if __name__ == "__main__":
    main()
