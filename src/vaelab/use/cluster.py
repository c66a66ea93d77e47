"""Clusters and representations from latent codes: k-means, mixture-prior assignments, scores.

The lecture calls inferring z given x "an extension of k-means". Three ways to cluster here
(and VaDE in :mod:`vaelab.use.vade`):

* :func:`kmeans` — scikit-learn's k-means (Lloyd's algorithm, k-means++ starts) on codes
  [N, L], e.g. the posterior means of :func:`vaelab.use.encode.encode`;
* :func:`prior_responsibilities` — when the prior is a mixture p(z) = Σ_c π_c p(z | c) (a
  ``torch.distributions.MixtureSameFamily``, e.g. ``--prior mog``), the responsibilities
  p(c | z) ∝ π_c p(z | c) at z = each example's posterior mean, as VaDE (Jiang et al. 2017)
  and GMVAE (Dilokthanakul et al. 2016) assign clusters; the argmax is the cluster;
* :func:`manifold` — the codes' neighbour graph, embedded by its Laplacian eigenmap, then a
  Gaussian mixture, as N2D (McConville, Santos-Rodriguez, Piechocki & Craddock 2020: an
  autoencoder's codes → a manifold embedding → a GMM), with scikit-learn's spectral embedding
  (Belkin & Niyogi 2003) in place of UMAP. Clusters that are curved, elongated or joined by
  thin bridges in the code space, which k-means cuts across, become compact blobs there.

Against class labels (:func:`cluster_metrics`): accuracy under the best one-to-one matching of
clusters to classes (Hungarian algorithm, :func:`scipy.optimize.linear_sum_assignment`; with
more clusters than classes the unmatched clusters count as errors), normalized mutual
information and adjusted Rand index (scikit-learn). :func:`linear_probe_accuracy` measures how
linearly decodable the classes are from the codes (cross-validated logistic regression).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.distributions import Distribution, MixtureSameFamily

from vaelab import _checks


def _codes(z: object, name: str = "z") -> np.ndarray:
    z = np.asarray(z.detach().cpu() if isinstance(z, torch.Tensor) else z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 2 or not np.isfinite(z).all():
        raise ValueError(f"{name}: expected finite codes of shape [N >= 2, L], got shape "
                         f"{list(z.shape)}" + ("" if np.isfinite(z).all() else " with non-finite "
                                               "values"))
    return z


def _labels(labels: object, n: int, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if labels.shape != (n,) or labels.dtype.kind not in "iub":
        raise ValueError(f"{name}: expected {n} integer labels, one per example, got shape "
                         f"{labels.shape} of dtype {labels.dtype}")
    return labels.astype(np.int64)


def kmeans(z: object, clusters: int, *, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """sklearn.cluster.KMeans on codes z [N, L] → cluster index per example, int64 [N]."""
    from sklearn.cluster import KMeans

    z = _codes(z)
    clusters = _checks.positive_int("clusters", clusters)
    if clusters > z.shape[0]:
        raise ValueError(f"clusters: expected at most the number of examples ({z.shape[0]}), "
                         f"got {clusters}")
    model = KMeans(clusters, n_init=n_init, random_state=_checks.non_negative_int("seed", seed))
    return model.fit_predict(z).astype(np.int64)


class DisconnectedGraphWarning(UserWarning):
    """The codes' neighbour graph falls into pieces, which a spectral embedding cannot place
    relative to each other (:func:`manifold`)."""


def manifold(z: object, clusters: int, *, neighbours: int = 10, dims: int | None = None,
             seed: int = 0, n_init: int = 5,
             note: Callable[[str], None] | None = None) -> np.ndarray:
    """Clusters of codes z [N, L] through a neighbour-graph embedding → int64 [N].

    1. the symmetrised k-nearest-neighbour graph of the codes (``neighbours`` each, Euclidean,
       0/1 weights) and its normalised Laplacian L = I − D^{-1/2} W D^{-1/2};
    2. each example's coordinates in the ``dims`` (default: ``clusters``) eigenvectors of L
       with the smallest non-zero eigenvalues (``sklearn.manifold.SpectralEmbedding``);
    3. a Gaussian mixture with full covariances and ``clusters`` components fitted to those
       coordinates (EM, ``n_init`` k-means starts); the cluster is argmax_c p(c | embedding).

    When the graph falls into several connected pieces, one line says what that means for the
    clusters (:func:`graph_pieces_line`): to ``note`` if given, else as a
    :class:`DisconnectedGraphWarning` (in place of scikit-learn's bare "Graph is not fully
    connected").
    """
    from scipy.sparse.csgraph import connected_components
    from sklearn.manifold import SpectralEmbedding
    from sklearn.mixture import GaussianMixture

    z = _codes(z)
    clusters = _checks.positive_int("clusters", clusters)
    neighbours = _checks.positive_int("neighbours", neighbours)
    dims = clusters if dims is None else _checks.positive_int("dims", dims)
    seed = _checks.non_negative_int("seed", seed)
    for name, value in (("clusters", clusters), ("neighbours", neighbours), ("dims", dims)):
        if value >= z.shape[0]:
            raise ValueError(f"{name}: expected fewer than the number of examples "
                             f"({z.shape[0]}), got {value}")
    embedder = SpectralEmbedding(dims, affinity="nearest_neighbors", n_neighbors=neighbours,
                                 random_state=seed)
    with warnings.catch_warnings():     # said below, with what it means for the clusters
        warnings.filterwarnings("ignore", "Graph is not fully connected", UserWarning)
        embedding = embedder.fit_transform(z)
    pieces = int(connected_components(embedder.affinity_matrix_, directed=False)[0])
    if pieces > 1:
        line = graph_pieces_line(pieces, neighbours, clusters)
        if note is None:
            warnings.warn(line, DisconnectedGraphWarning, stacklevel=2)
        else:
            note(line)
    gmm = GaussianMixture(clusters, covariance_type="full", n_init=n_init, random_state=seed)
    return gmm.fit(embedding).predict(embedding).astype(np.int64)


def graph_pieces_line(pieces: int, neighbours: int, clusters: int) -> str:
    """What a neighbour graph in ``pieces`` > 1 connected pieces means for :func:`manifold`.

    The Laplacian then has one zero eigenvalue per piece, and its eigenvectors for them are
    any basis of the pieces' indicators: the embedding places the pieces without regard to how
    far apart their codes are. With more pieces than clusters some pieces must share a cluster,
    and which do does not follow their distances: more neighbours join pieces. With no more
    pieces than clusters the embedding sets the pieces apart, and they can be the very
    clusters sought (well separated groups, e.g. rings): no advice to join them then.
    """
    where = (f"the {neighbours}-nearest-neighbour graph of the codes falls into {pieces} "
             f"separate pieces, which the spectral embedding places without regard to the "
             f"distances between their codes")
    if pieces <= clusters:
        return (f"{where}: no more pieces than the {clusters} clusters, so the pieces are kept "
                f"apart and can be the clusters themselves (well separated groups of codes)")
    return (f"{where}: whether pieces share a cluster does not depend on how close they are "
            f"(some must: {pieces} pieces, {clusters} clusters); more neighbours per code "
            f"(--neighbours, now {neighbours}) join them")


def is_mixture(prior: Distribution) -> bool:
    """Whether p(z) is a finite mixture whose components can be told apart (MixtureSameFamily)."""
    return isinstance(prior, MixtureSameFamily)


def prior_responsibilities(prior: Distribution, z: torch.Tensor) -> torch.Tensor:
    """p(c | z) = π_c p(z | c) / Σ_c' π_c' p(z | c') for z [N, L] → [N, K] (rows sum to 1).

    Uses the mixture's own ``mixture_distribution`` logits and ``component_distribution``
    log-densities (torch's). Raises ValueError when ``prior`` is not a MixtureSameFamily.
    """
    if not isinstance(prior, MixtureSameFamily):      # is_mixture, spelled out for the checker
        raise ValueError(f"prior: expected a mixture prior (MixtureSameFamily, e.g. --prior mog),"
                         f" got {type(prior).__name__}")
    z = _checks.tensor("z", z)
    with torch.no_grad():
        log_pi = prior.mixture_distribution.logits.log_softmax(-1)               # [K]
        log_comp = prior.component_distribution.log_prob(z.unsqueeze(-2))        # [N, K]
        return (log_pi + log_comp).softmax(-1)


def matched_accuracy(labels: object, assignments: object) -> float:
    """Accuracy of cluster assignments [N] under the best one-to-one cluster → class map."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics.cluster import contingency_matrix

    assignments = _checks.to_numpy(assignments)
    labels = _labels(labels, assignments.shape[0])
    table = contingency_matrix(labels, _labels(assignments, labels.shape[0], "assignments"))
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / labels.shape[0])


def cluster_metrics(labels: object, assignments: object) -> dict[str, float]:
    """``{"accuracy", "nmi", "ari"}`` of assignments [N] against class labels [N]."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    assignments = _checks.to_numpy(assignments)
    labels = _labels(labels, assignments.shape[0])
    assignments = _labels(assignments, labels.shape[0], "assignments")
    return {"accuracy": matched_accuracy(labels, assignments),
            "nmi": float(normalized_mutual_info_score(labels, assignments)),
            "ari": float(adjusted_rand_score(labels, assignments))}


def linear_probe_accuracy(z: object, labels: object, *, folds: int = 5, seed: int = 0) -> float:
    """Mean held-out accuracy of a logistic regression z → label over stratified folds.

    Codes are standardized inside each fold (sklearn Pipeline: StandardScaler, then
    LogisticRegression, lbfgs, max_iter 1000); ``folds`` stratified shuffled splits.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    z = _codes(z)
    labels = _labels(labels, z.shape[0])
    folds = _checks.positive_int("folds", folds)
    counts = np.unique(labels, return_counts=True)[1]
    if counts.shape[0] < 2:
        raise ValueError(f"labels: expected at least two classes, got only {labels[0]}")
    smallest = int(counts.min())
    if folds < 2 or smallest < folds:
        raise ValueError(f"folds: expected 2 <= folds <= the smallest class size ({smallest}), "
                         f"got {folds}")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(probe, z, labels, cv=split).mean())


def probe_folds(labels: object, folds: int = 5) -> int:
    """The folds the linear probe can use on labels [N]: min(folds, smallest class size).

    0 when there are fewer than two classes or a class has a single example (no stratified
    split into two folds exists); the caller then skips the probe and says why.
    """
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    counts = np.unique(labels, return_counts=True)[1]
    usable = min(_checks.positive_int("folds", folds), int(counts.min()) if counts.size else 0)
    return usable if counts.shape[0] >= 2 and usable >= 2 else 0


def assign_clusters(model: Any, z: torch.Tensor, *, method: str = "auto",
                    clusters: int | None = None, labels: np.ndarray | None = None,
                    seed: int = 0, prior_name: str | None = None, neighbours: int = 10,
                    dims: int | None = None,
                    note: Callable[[str], None] | None = None) -> tuple[str, int, np.ndarray]:
    """(how, number of clusters, assignments [N]) for the codes z [N, L] of ``model``'s run.

    ``method`` "auto" takes the prior's responsibilities when the prior's components are
    clusters (a mixture prior), else k-means with ``clusters`` (default: the number of classes
    in ``labels``, else 10); "prior", "kmeans" and "manifold" (:func:`manifold`, with
    ``neighbours`` and ``dims``; ``note`` receives its line about a graph in pieces) choose.
    Messages name the CLI flags (--method, --clusters),
    as ``vaelab cluster`` takes them; ``prior_name`` is the prior the run was trained with,
    for them.
    """
    if method == "auto":
        found = getattr(getattr(model, "prior_module", None), "clusters", False)
        method = "prior" if found else "kmeans"     # a prior whose components are clusters
    if method == "prior":
        prior = model.prior()
        if not is_mixture(prior):
            raise ValueError(f"--method prior: expected a run trained with --prior mog, got "
                             f"prior {prior_name!r}; use --method kmeans")
        resp = prior_responsibilities(prior, z)
        if clusters is not None and clusters != resp.shape[1]:
            raise ValueError(f"--clusters: the run's mixture prior has {resp.shape[1]} "
                             f"components, got {clusters}; drop --clusters")
        return "mixture prior p(c | z)", resp.shape[1], resp.argmax(1).cpu().numpy()
    k = clusters or (len(np.unique(labels)) if labels is not None else 10)
    # Named by the flag the user set: --embed-dim defaults to --clusters, so a --clusters
    # too large for the examples is told as --clusters, not as an --embed-dim never given.
    if k > z.shape[0] or (method == "manifold" and k == z.shape[0]):
        most = "fewer than" if method == "manifold" else "at most"
        raise ValueError(f"--clusters: expected {most} the {z.shape[0]} examples, got {k}")
    if method == "manifold":
        for flag, value in (("--neighbours", neighbours), ("--embed-dim", dims or k)):
            if value >= z.shape[0]:
                raise ValueError(f"{flag}: expected fewer than the {z.shape[0]} examples, "
                                 f"got {value}")
        found = manifold(z.cpu().numpy(), k, neighbours=neighbours, dims=dims, seed=seed,
                         note=note)
        return (f"GMM on the spectral embedding of the {neighbours}-nearest-neighbour graph",
                k, found)
    return "k-means", k, kmeans(z.cpu().numpy(), k, seed=seed)


def cluster_report(z: torch.Tensor, labels: np.ndarray, assignments: np.ndarray, *,
                   seed: int = 0) -> dict:
    """:func:`cluster_metrics` of ``assignments`` against ``labels`` [N], plus the linear-probe
    accuracy of the codes z [N, L] on as many folds as the smallest class allows (up to 5;
    ``probe_folds`` 0 and no accuracy when it cannot run)."""
    report: dict = {**cluster_metrics(labels, assignments), "probe_folds": probe_folds(labels)}
    if report["probe_folds"]:
        report["probe_accuracy"] = linear_probe_accuracy(
            z.cpu().numpy(), labels, folds=report["probe_folds"], seed=seed)
    return report
