"""Clusters and codes (vaelab.use.cluster, vaelab.use.encode).

Oracles: hand-counted matched accuracy, NMI and ARI on tiny labelings (permutation
invariance, the perfect and the independent cases, a value worked out by hand); mixture
responsibilities against Bayes' rule written with scipy's normal densities; k-means and the
linear probe on blobs whose answer is known; codes equal to the encoder's own means.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from vaelab.use.cluster import (
    cluster_metrics,
    kmeans,
    linear_probe_accuracy,
    matched_accuracy,
    prior_responsibilities,
)
from vaelab.use.encode import encode

pytestmark = pytest.mark.usefixtures("one_thread")


def test_matched_accuracy_uses_the_best_one_to_one_map():
    labels = [0, 0, 1, 1, 2, 2]
    # best map: cluster 1 → class 0 (2 right), then 0 → 1 and 2 → 2 (1 each), or the swap
    assert matched_accuracy(labels, [1, 1, 0, 2, 2, 0]) == pytest.approx(4 / 6)
    # cluster 1 → 0, 0 → 1 (2 right), 2 → 2 (1 right; the last 0 is class 2's error)
    assert matched_accuracy(labels, [1, 1, 0, 0, 2, 0]) == pytest.approx(5 / 6)
    # one-to-one: two clusters cannot both map to class 0
    assert matched_accuracy([0, 0, 0, 0], [0, 0, 1, 1]) == pytest.approx(0.5)
    # more clusters than classes: the unmatched cluster's examples are errors
    assert matched_accuracy([0, 0, 1, 1], [0, 1, 2, 2]) == pytest.approx(3 / 4)


def test_cluster_metrics_perfect_permuted_and_hand_computed():
    labels = np.repeat([0, 1, 2], 4)
    perfect = cluster_metrics(labels, (labels + 1) % 3)
    assert perfect == pytest.approx({"accuracy": 1.0, "nmi": 1.0, "ari": 1.0})
    # ARI of [0,0,1,1] vs [0,0,1,2]: pair counts Σ C(n_ij,2) = 1, rows 2, cols 1, C(4,2) = 6
    # → (1 − 2·1/6) / (½(2 + 1) − 2·1/6) = (2/3) / (7/6) = 4/7
    ari = cluster_metrics([0, 0, 1, 1], [0, 0, 1, 2])["ari"]
    assert ari == pytest.approx(4 / 7, abs=1e-12)
    # NMI (arithmetic mean): I = ln 2, H(labels) = ln 2, H(clusters) = 1.5 ln 2 → 2/2.5 = 0.8
    assert cluster_metrics([0, 0, 1, 1], [0, 0, 1, 2])["nmi"] == pytest.approx(0.8, abs=1e-12)
    # independent labelings: NMI 0, ARI ≤ 0
    independent = cluster_metrics([0, 0, 1, 1], [0, 1, 0, 1])
    assert independent["nmi"] == pytest.approx(0, abs=1e-12) and independent["ari"] <= 0


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="labels: expected 3 integer labels"):
        cluster_metrics([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="clusters: expected at most the number of examples"):
        kmeans(np.zeros((3, 2)), 5)
    with pytest.raises(ValueError, match="z: expected finite codes"):
        kmeans(np.array([[0.0, math.nan], [1.0, 1.0]]), 2)


def _blobs(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n // 3)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    return centers[labels] + rng.normal(size=(n, 2)), labels


def test_kmeans_recovers_separated_blobs_and_is_seeded():
    z, labels = _blobs()
    assignments = kmeans(z, 3, seed=0)
    assert cluster_metrics(labels, assignments)["accuracy"] == 1.0
    assert (kmeans(z, 3, seed=0) == assignments).all()


def test_linear_probe_separable_and_random_labels():
    z, labels = _blobs(90)
    assert linear_probe_accuracy(z, labels, folds=3) == 1.0
    shuffled = np.random.default_rng(1).permutation(labels)
    assert linear_probe_accuracy(z, shuffled, folds=3) < 0.6
    with pytest.raises(ValueError, match="folds: expected 2 <= folds <= the smallest class"):
        linear_probe_accuracy(z, labels, folds=40)


def test_responsibilities_follow_bayes_rule():
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    loc = torch.tensor([[-2.0, 0.0], [0.0, 1.0], [3.0, -1.0]], dtype=torch.float64)
    scale = torch.tensor([[1.0, 0.5], [2.0, 1.0], [0.7, 1.5]], dtype=torch.float64)
    prior = MixtureSameFamily(Categorical(probs=weights), Independent(Normal(loc, scale), 1))
    z = torch.tensor([[0.0, 0.0], [-2.0, 0.1], [2.5, -1.0], [10.0, 3.0]], dtype=torch.float64)
    got = prior_responsibilities(prior, z)
    joint = weights.numpy() * np.prod(norm.pdf(z.numpy()[:, None, :], loc.numpy(),
                                               scale.numpy()), axis=-1)
    np.testing.assert_allclose(got.numpy(), joint / joint.sum(1, keepdims=True), rtol=1e-10)
    with pytest.raises(ValueError, match="prior: expected a mixture prior"):
        prior_responsibilities(Independent(Normal(loc[0], scale[0]), 1), z)


def test_encode_gives_the_encoder_means_or_seeded_draws():
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 4)

    def infer(x):
        loc, raw = net(x).chunk(2, -1)
        return Independent(Normal(loc, torch.nn.functional.softplus(raw)), 1)

    x = torch.randn(7, 5)
    means = encode(infer, x, batch_size=3)
    torch.testing.assert_close(means, infer(x).mean)
    a = encode(infer, x, sample=True, generator=torch.Generator().manual_seed(1))
    b = encode(infer, x, sample=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, means)
    with pytest.raises(ValueError, match="x: expected at least one example"):
        encode(infer, x[:0])


def test_encode_a_hierarchical_model_gives_every_layer():
    from vaelab.config import ModelConfig
    from vaelab.model.vae import build_vae

    model = build_vae(ModelConfig(data_dim=20, latent_dim=(4, 2), hidden=(16,)))
    x = (torch.rand(5, 20, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    codes = encode(model.encoder, x, batch_size=2)
    assert codes.shape == (5, 6)
    torch.testing.assert_close(codes, model.encoder(x).mean)


def test_encode_hands_x_to_the_encoders_device_and_the_codes_back():
    """CPU data reach a GPU encoder on its device ('meta' stands for cuda here)."""
    from conftest import ArrivedOn, arrival

    class MetaEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(1, device="meta"))

        def forward(self, x):
            return arrival(x)

    with pytest.raises(ArrivedOn) as seen:
        encode(MetaEncoder(), torch.rand(3, 6))
    assert seen.value.device == torch.device("meta")
    q = lambda x: Independent(Normal(x[:, :2], 1.0), 1)  # noqa: E731  (a plain callable)
    x = torch.rand(3, 6)
    assert torch.equal(encode(q, x), x[:, :2])


def test_assign_clusters_auto_is_kmeans_with_one_cluster_per_class_for_a_normal_prior():
    """Without a mixture prior "auto" is k-means, as many clusters as label classes; two
    well separated blobs are recovered exactly (up to naming)."""
    from vaelab.use.cluster import assign_clusters

    class Model:               # a standard-normal prior: its components are not clusters
        prior_module = None

    z = torch.cat([torch.zeros(5, 2), torch.full((5, 2), 10.0)])
    z = z + 0.01 * torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    labels = np.array([0] * 5 + [1] * 5)
    how, k, assignments = assign_clusters(Model(), z, labels=labels, seed=0)
    assert (how, k) == ("k-means", 2)
    assert len(set(assignments[:5])) == 1 and len(set(assignments[5:])) == 1
    assert assignments[0] != assignments[5]
    with pytest.raises(ValueError, match="--method prior: expected a run trained with --prior"):
        assign_clusters(type("M", (), {"prior": lambda self: torch.distributions.Normal(0, 1)})(),
                        z, method="prior", prior_name="standard-normal")


def _rings(per_ring: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three concentric rings (radii 1, 2.5, 4; noise 0.05): curved clusters whose centroids
    all sit at the origin, so k-means cuts them into sectors."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1, 2], per_ring)
    angle = rng.uniform(0, 2 * math.pi, labels.shape[0])
    radius = np.array([1.0, 2.5, 4.0])[labels] + rng.normal(0, 0.05, labels.shape[0])
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1), labels


def test_manifold_recovers_rings_that_kmeans_cuts_into_sectors():
    from vaelab.use.cluster import manifold

    z, labels = _rings()
    assert matched_accuracy(labels, kmeans(z, 3, seed=0)) < 0.7     # the case is hard
    for seed in (0, 1):
        found = manifold(z, 3, neighbours=10, seed=seed)
        assert found.dtype == np.int64 and found.shape == labels.shape
        assert cluster_metrics(labels, found) == pytest.approx(
            {"accuracy": 1.0, "nmi": 1.0, "ari": 1.0})


def test_manifold_inputs_are_checked_and_assign_clusters_dispatches_to_it():
    from vaelab.use.cluster import assign_clusters, manifold

    z, labels = _rings(20)
    with pytest.raises(ValueError, match=r"neighbours: expected fewer than the number of "
                                         r"examples \(60\), got 60"):
        manifold(z, 3, neighbours=60)
    with pytest.raises(ValueError, match="dims: expected an integer >= 1, got 0"):
        manifold(z, 3, dims=0)
    with pytest.raises(ValueError, match="expected finite codes"):
        manifold(np.full((5, 2), np.nan), 2)
    # too many clusters for the examples is told as --clusters (which --embed-dim defaults
    # to), for both methods, not as an --embed-dim the user never gave nor a bare 'clusters'
    codes = torch.as_tensor(z)
    with pytest.raises(ValueError, match=r"^--clusters: expected fewer than the 60 examples, "
                                         r"got 60$"):
        assign_clusters(None, codes, method="manifold", clusters=60, neighbours=5)
    with pytest.raises(ValueError, match=r"^--clusters: expected at most the 60 examples, "
                                         r"got 61$"):
        assign_clusters(None, codes, method="kmeans", clusters=61)
    with pytest.raises(ValueError, match=r"^--embed-dim: expected fewer than the 60 examples, "
                                         r"got 60$"):
        assign_clusters(None, codes, method="manifold", clusters=3, dims=60)
    z, labels = _rings()
    how, k, found = assign_clusters(None, torch.as_tensor(z), method="manifold",
                                    labels=labels, neighbours=8, seed=0)
    assert k == 3 and "8-nearest-neighbour graph" in how
    assert matched_accuracy(labels, found) == 1.0


def test_manifold_says_what_a_graph_in_pieces_means_instead_of_sklearns_warning():
    import warnings

    from vaelab.use.cluster import DisconnectedGraphWarning, manifold

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2, 3], 50)         # four blobs 10 apart, sd 0.5: four pieces
    z = np.array([[0, 0], [10, 0], [0, 10], [30, 30]])[labels] + rng.normal(0, 0.5, (200, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifold(z, 2, seed=0)
    assert [w.category for w in caught] == [DisconnectedGraphWarning]     # not sklearn's
    assert str(caught[0].message).startswith(
        "the 10-nearest-neighbour graph of the codes falls into 4 separate pieces")
    assert "(some must: 4 pieces, 2 clusters)" in str(caught[0].message)
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # given a note, nothing is warned
        found = manifold(z, 4, seed=0, note=lines.append)
    assert len(lines) == 1 and "4 separate pieces" in lines[0] and "some must" not in lines[0]
    # the four blobs are the four clusters: no advice to join them, they are the answer
    assert "--neighbours" not in lines[0] and "can be the clusters themselves" in lines[0]
    assert "more neighbours per code (--neighbours, now 10) join them" in str(caught[0].message)
    assert cluster_metrics(labels, found)["ari"] == pytest.approx(1.0)
    with warnings.catch_warnings():               # one blob, one connected graph: no line
        warnings.simplefilter("error")
        manifold(rng.normal(0, 1, (200, 2)), 3, note=lines.append)
    assert len(lines) == 1
