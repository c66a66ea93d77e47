"""``vaelab train --classes / --background-of``, ``score``, ``encode`` and ``cluster`` end to end.

Tiny runs on real Fashion-MNIST (400 trouser images, one epoch, 32 hidden units) through
``cli.main`` in-process. The files written are checked against independent recomputations
(sklearn's roc_auc_score on the CSV's own columns, the reloaded encoder's means), and every
bad input must give one ``vaelab: error`` line naming the flag, a non-zero exit and no file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_fashion_mnist, run_cli
from sklearn.metrics import roc_auc_score

from vaelab import cli, data
from vaelab.use import scores
from vaelab.use.cluster import probe_folds
from vaelab.use.trained import load

pytestmark = needs_fashion_mnist

TINY = ["--limit", "400", "--epochs", "1", "--hidden", "32", "--latent-dim", "3", "--quiet",
        "--compile", "off", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("use")
    paths = {"run": folder / "run", "bg": folder / "bg", "mog": folder / "mog"}
    assert cli.main(["train", "--classes", "1", "--out", str(paths["run"]), *TINY]) == 0
    assert cli.main(["train", "--background-of", str(paths["run"]), "--out",
                     str(paths["bg"]), "--quiet"]) == 0
    assert cli.main(["train", "--prior", "mog", "--prior-components", "3", "--out",
                     str(paths["mog"]), *TINY]) == 0
    return paths


def test_classes_and_background_of_are_recorded(runs):
    config = json.loads((runs["run"] / "config.json").read_text())
    assert config["train"]["classes"] == [1] and config["train"]["perturb_fraction"] == 0
    assert config["dataset"]["num_train"] + config["dataset"]["num_val"] == 400
    background = json.loads((runs["bg"] / "config.json").read_text())
    assert background["train"]["perturb_fraction"] == 0.2
    for key in ("classes", "limit", "epochs", "seed"):
        assert background["train"][key] == config["train"][key]
    assert background["model"] == config["model"]


def test_train_classes_keeps_only_those_rows():
    train = data.load_dataset("fashion-mnist", "train")
    chosen = data.select_classes(train, [1, 7])
    assert set(chosen.labels.unique().tolist()) == {1, 7}
    assert len(chosen) == int(((train.labels == 1) | (train.labels == 7)).sum())
    with pytest.raises(ValueError, match=r"classes: expected labels present .* got \[11\]"):
        data.select_classes(train, [1, 11])


def test_perturb_replaces_about_mu_of_the_values_with_uniform_noise():
    x = 0.25 + 0.5 * torch.rand(200, 50, generator=torch.Generator().manual_seed(0))
    x[0, 0], x[0, 1] = 0.0, 1.0                        # the range [lo, hi] of x is [0, 1]
    ds = data.Dataset(x, None, None, "u")
    noisy = data.perturb(ds, 0.2, seed=3).x
    changed = noisy != x
    assert abs(changed.float().mean().item() - 0.2) < 0.015   # 10,000 draws: sd 0.004
    replaced = noisy[changed]                                  # U[0, 1]: a quarter below 0.25
    assert 0 <= replaced.min() and replaced.max() <= 1
    assert abs((replaced < 0.25).float().mean().item() - 0.25) < 0.04
    assert torch.equal(data.perturb(ds, 0.3, seed=1).x, data.perturb(ds, 0.3, seed=1).x)
    assert data.perturb(ds, 0.0, seed=1) is ds
    with pytest.raises(ValueError, match="perturb_fraction: expected a number in"):
        data.perturb(ds, 1.0, seed=1)


def test_score_writes_csv_metrics_and_roc(runs, tmp_path, capsys):
    out = tmp_path / "s.csv"
    code, stdout, err = run_cli(capsys, "score", runs["run"], "--limit", "200", "--k", "10",
                                "--regret-steps", "5", "--normal-classes", "1", "--background",
                                runs["bg"], "--out", out)
    assert code == 0, err
    table = np.genfromtxt(out, delimiter=",", names=True)
    assert table.shape == (200,)
    test = data.load_dataset("fashion-mnist", "test").labels[:200].numpy()
    np.testing.assert_array_equal(table["label"], (test != 1).astype(int))
    metrics = json.loads(out.with_suffix(".json").read_text())["metrics"]
    # every score but hierarchical-llr, skipped for a run with one latent layer (with a note)
    assert set(metrics) == set(scores.SCORE_NAMES) - {"hierarchical-llr"}
    assert "note: hierarchical-llr skipped: the run has one latent layer" in stdout
    for name in metrics:
        column = scores.SCORE_COLUMNS[name]
        assert metrics[name]["auroc"] == pytest.approx(roc_auc_score(table["label"],
                                                                     table[column]))
    assert (tmp_path / "s-roc.png").is_file()
    assert "likelihood-ratio  neg_llr" in stdout
    # a trouser model: inverted-looking classes aside, the ELBO alone separates classes well
    assert metrics["elbo"]["auroc"] > 0.7


def test_score_with_a_labels_file_and_a_subset_of_scores(runs, tmp_path, capsys):
    labels = np.r_[np.zeros(10), np.ones(10)].astype(np.int64)
    np.save(tmp_path / "l.npy", labels)
    code, stdout, err = run_cli(capsys, "score", runs["run"], "--limit", "20", "--k", "5",
                                "--score", "elbo", "--labels", tmp_path / "l.npy",
                                "--out", tmp_path / "t.csv")
    assert code == 0, err
    header = (tmp_path / "t.csv").read_text().splitlines()[0]
    assert header == "index,label,neg_elbo"


@pytest.mark.parametrize("extra, message, exit_code", [
    (["--score", "likelihood"], "argument --score: invalid choice: 'likelihood'", 2),
    (["--score", "likelihood-ratio"], "--score likelihood-ratio: needs --background", 1),
    (["--labels", "LABELS3"], "--labels: expected one label per example, shape (20,), got "
     "shape (3,)", 1),
    (["--labels", "LABELS2"], "--labels: expected 0 (normal) or 1 (anomalous)", 1),
    (["--labels", "LABELS2", "--normal-classes", "1"], "--labels and --normal-classes", 2),
    (["--normal-classes", "1,x"], "argument --normal-classes: expected comma-separated", 2),
    (["--out", "OUT.txt"], "--out: expected a .csv file name", 1),
])
def test_score_errors_name_the_flag_and_write_nothing(runs, tmp_path, capsys, extra, message,
                                                      exit_code):
    np.savetxt(tmp_path / "three.txt", [0, 1, 1])
    np.savetxt(tmp_path / "twos.csv", np.r_[np.zeros(10), 2 * np.ones(10)])
    swap = {"LABELS3": tmp_path / "three.txt", "LABELS2": tmp_path / "twos.csv",
            "OUT.txt": tmp_path / "o.txt"}
    extra = [swap.get(a, a) for a in extra]
    argv = ["score", runs["run"], "--limit", "20", "--k", "2", *extra]
    if "--out" not in extra:
        argv += ["--out", tmp_path / "never.csv"]
    code, _, err = run_cli(capsys, *argv)
    assert code == exit_code
    assert err.startswith("vaelab: error: ") and message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["three.txt", "twos.csv"]


def test_background_of_refuses_resume_and_a_missing_run(runs, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--background-of", runs["run"], "--resume",
                           runs["bg"])
    assert code == 2 and "--background-of and --resume" in err
    code, _, err = run_cli(capsys, "train", "--background-of", tmp_path / "none", "--out",
                           tmp_path / "x")
    assert code == 1 and "--background-of: expected a run directory" in err
    assert not (tmp_path / "x").exists()


def test_encode_writes_the_encoder_means_and_seeded_draws(runs, tmp_path, capsys):
    code, stdout, _ = run_cli(capsys, "encode", runs["run"], "--limit", "50", "--out",
                              tmp_path / "z.npy")
    assert code == 0 and "50 × 3 float32, posterior means" in stdout
    z = np.load(tmp_path / "z.npy")
    # each row binarized by its own draw (data.binarize_rows), as --stream-block does
    test = data.binarize_rows(data.load_dataset("fashion-mnist", "test").floats().x[:50], 0)
    expected = load(runs["run"]).encode(test).mean.numpy()
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-6)
    for name in ("a", "b"):
        assert run_cli(capsys, "encode", runs["run"], "--limit", "50", "--sample", "--seed",
                       "4", "--out", tmp_path / f"{name}.npy")[0] == 0
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert np.array_equal(a, b) and not np.allclose(a, z)
    code, _, err = run_cli(capsys, "encode", runs["run"], "--out", tmp_path / "z.txt")
    assert code == 1 and "--out: expected a .npy file name" in err


def test_cluster_kmeans_and_the_mixture_prior(runs, tmp_path, capsys):
    code, stdout, err = run_cli(capsys, "cluster", runs["run"], "--limit", "300", "--out",
                                tmp_path / "c.csv")
    assert code == 0, err
    assert "k-means: 10 clusters" in stdout and "NMI" in stdout and "linear-probe" in stdout
    table = np.genfromtxt(tmp_path / "c.csv", delimiter=",", names=True, dtype=np.int64)
    test = data.load_dataset("fashion-mnist", "test").labels[:300].numpy()
    assert (table["label"] == test).all() and set(table["cluster"]) <= set(range(10))
    code, stdout, err = run_cli(capsys, "cluster", runs["mog"], "--limit", "300")
    assert code == 0, err
    assert "mixture prior p(c | z): 3 clusters" in stdout
    code, _, err = run_cli(capsys, "cluster", runs["run"], "--method", "prior", "--limit", "30")
    assert code == 1 and "--method prior: expected a run trained with --prior mog" in err
    code, _, err = run_cli(capsys, "cluster", runs["mog"], "--clusters", "5", "--limit", "30")
    assert code == 1 and "--clusters: the run's mixture prior has 3 components, got 5" in err


def test_cluster_manifold_reports_and_names_its_flags(runs, capsys):
    code, stdout, err = run_cli(capsys, "cluster", runs["run"], "--method", "manifold",
                                "--neighbours", "8", "--limit", "300")
    assert code == 0, err
    assert "GMM on the spectral embedding of the 8-nearest-neighbour graph: 10 clusters" \
        in stdout and "NMI" in stdout
    code, _, err = run_cli(capsys, "cluster", runs["run"], "--method", "manifold",
                           "--neighbours", "40", "--limit", "40")
    assert code == 1 and "--neighbours: expected fewer than the 40 examples, got 40" in err


def test_cluster_manifold_says_what_a_graph_in_pieces_means_without_a_raw_warning(runs,
                                                                                  capsys):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, stdout, err = run_cli(capsys, "cluster", runs["run"], "--method", "manifold",
                                    "--neighbours", "2", "--limit", "100")
    assert code == 0, err
    assert not [str(w.message) for w in caught] and "Warning" not in err
    note = [line for line in stdout.splitlines() if line.startswith("note: ")]
    assert len(note) == 1 and "2-nearest-neighbour graph of the codes falls into" in note[0]
    assert "(--neighbours, now 2)" in note[0]


def test_cli_score_names_match_the_library():
    assert cli.use.SCORE_CHOICES == scores.SCORE_NAMES
    assert cli.use.REFERENCE_SCORES == scores.REFERENCE_SCORES


def test_reference_scores_read_the_runs_training_rows(runs, tmp_path, capsys):
    out = tmp_path / "r.csv"
    code, stdout, err = run_cli(capsys, "score", runs["run"], "--limit", "40", "--k", "5",
                                "--score", "typicality", "latent-density", "latent-knn",
                                "--reference-limit", "60", "--neighbours", "3",
                                "--typicality-batch", "4", "--out", out)
    assert code == 0, err
    assert "reference: 60 training rows of fashion-mnist" in stdout
    table = np.genfromtxt(out, delimiter=",", names=True)
    assert table.shape == (40,)
    typical = table["typicality"]
    assert (typical >= 0).all() and (table["latent_knn"] > 0).all()
    # batches of 4 share their statistic: ε̂ = |mean nll of the batch − Ĥ|, one Ĥ for all
    np.testing.assert_array_equal(typical.reshape(10, 4), typical[::4, None].repeat(4, 1))
    assert np.isfinite(table["latent_nll"]).all()
    # rows the user hands over are not called the run's training rows
    code, stdout, err = run_cli(capsys, "score", runs["run"], "--limit", "8", "--k", "5",
                                "--score", "latent-knn", "--reference", "fashion-mnist",
                                "--reference-limit", "60", "--neighbours", "3",
                                "--out", tmp_path / "r2.csv")
    assert code == 0, err
    assert "reference: 60 rows of fashion-mnist" in stdout and "training rows" not in stdout


def test_hierarchical_llr_needs_a_hierarchical_run(runs, tmp_path, capsys):
    code, _, err = run_cli(capsys, "score", runs["run"], "--score", "hierarchical-llr",
                           "--limit", "5", "--out", tmp_path / "h.csv")
    assert code == 1 and "--score hierarchical-llr: expected a hierarchical run" in err
    tiny = [a if a != "3" else "3,2" for a in TINY]
    assert cli.main(["train", "--classes", "1", "--out", str(tmp_path / "hvae"), *tiny,
                     "--hierarchy", "ladder"]) == 0
    code, stdout, err = run_cli(capsys, "score", tmp_path / "hvae", "--score",
                                "hierarchical-llr", "--llr-k", "1", "--limit", "10",
                                "--out", tmp_path / "h.csv")
    assert code == 0, err
    table = np.genfromtxt(tmp_path / "h.csv", delimiter=",", names=True)
    assert np.isfinite(table["hierarchical_llr"]).all()
    # k = 0 on two layers replaces none, the bounds agree and the column would be zeros
    for k in ("0", "3"):
        code, _, err = run_cli(capsys, "score", tmp_path / "hvae", "--score",
                               "hierarchical-llr", "--llr-k", k, "--limit", "10", "--out",
                               tmp_path / "h2.csv")
        assert code == 1 and len(err.strip().splitlines()) == 1, err
        assert (f"--llr-k: expected a layer index in 1..2 (the run has 2 latent layers; "
                f"k = 0 replaces none and scores every row 0), got {k}") in err
        assert not (tmp_path / "h2.csv").exists()


def test_hierarchical_llr_refuses_bottom_up_inference_or_skips_it_from_the_defaults(
        tmp_path, capsys):
    """Bottom-up q draws z_2 only through z_1, so L^{>1} (z_2 from q, z_1 from the prior)
    cannot be formed: one line when asked for, a note and the other scores by default."""
    tiny = [a if a != "3" else "3,2" for a in TINY]
    assert cli.main(["train", "--classes", "1", "--out", str(tmp_path / "up"), *tiny]) == 0
    code, _, err = run_cli(capsys, "score", tmp_path / "up", "--score", "hierarchical-llr",
                           "--limit", "5", "--out", tmp_path / "h.csv")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "expected a model with top-down or ladder inference" in err
    assert "--hierarchy top-down or ladder" in err and not (tmp_path / "h.csv").exists()
    code, stdout, err = run_cli(capsys, "score", tmp_path / "up", "--limit", "5", "--out",
                                tmp_path / "all.csv")
    assert code == 0, err
    assert "note: hierarchical-llr skipped: expected a model with top-down or ladder" in stdout
    assert "hierarchical_llr" not in (tmp_path / "all.csv").read_text().splitlines()[0]


def _printed(line: str, name: str) -> float:
    """The number printed after ``name`` (e.g. 'NMI 0.1234')."""
    import re

    match = re.search(re.escape(name) + r"\s+([0-9.]+)", line)
    assert match, (name, line)
    return float(match.group(1))


def test_cluster_assignments_and_printed_metrics_are_recomputed(runs, tmp_path, capsys):
    """k-means: the CSV's clusters are the library's k-means of the encoder means of the
    same 300 test images (binarized once with the seed); the printed accuracy, NMI, ARI and
    linear-probe accuracy equal scipy/sklearn's, recomputed from the CSV and the codes. The
    mixture prior: each cluster is argmax_c π_c N(z; μ_c, σ_c²) computed in numpy."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from vaelab.use import cluster

    code, stdout, err = run_cli(capsys, "cluster", runs["run"], "--limit", "300", "--seed",
                                "4", "--out", tmp_path / "c.csv")
    assert code == 0, err
    table = np.genfromtxt(tmp_path / "c.csv", delimiter=",", names=True, dtype=np.int64)
    trained = load(runs["run"])
    test = data.load_dataset("fashion-mnist", "test")
    x = data.static_binarize(test, 4).x[:300]
    assert trained.config.train.binarize != "none"
    with torch.no_grad():
        z = trained.encode(x).mean.numpy()
    assert np.array_equal(table["cluster"], cluster.kmeans(z, 10, seed=4))
    labels, assigned = table["label"], table["cluster"]
    counts = np.zeros((10, 10))
    np.add.at(counts, (labels, assigned), 1)
    rows, cols = linear_sum_assignment(-counts)
    line = next(line for line in stdout.splitlines() if "NMI" in line)
    assert _printed(line, "map)") == pytest.approx(counts[rows, cols].sum() / 300, abs=6e-5)
    assert _printed(line, "NMI") == pytest.approx(
        normalized_mutual_info_score(labels, assigned), abs=6e-5)
    assert _printed(line, "ARI") == pytest.approx(adjusted_rand_score(labels, assigned),
                                                  abs=6e-5)
    probe = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
                            z, labels, cv=StratifiedKFold(5, shuffle=True, random_state=4))
    assert _printed(line, "(5-fold)") == pytest.approx(probe.mean(), abs=6e-5)

    code, _, err = run_cli(capsys, "cluster", runs["mog"], "--limit", "300", "--seed", "4",
                           "--out", tmp_path / "m.csv")
    assert code == 0, err
    mog = load(runs["mog"])
    with torch.no_grad():
        z = mog.encode(x).mean.double().numpy()
    prior = mog.model.prior_module
    mu = prior.component_loc.detach().double().numpy()                      # [K, L]
    sigma = np.logaddexp(0, prior.raw_scale.detach().double().numpy())
    logits = prior.logits.detach().double().numpy()
    joint = (logits - np.logaddexp.reduce(logits)
             + (-0.5 * ((z[:, None] - mu) / sigma) ** 2 - np.log(sigma)).sum(-1))
    got = np.genfromtxt(tmp_path / "m.csv", delimiter=",", names=True, dtype=np.int64)
    assert np.array_equal(got["cluster"], joint.argmax(1))
    assert len(np.unique(got["cluster"])) > 1


def test_score_warns_about_its_importance_sampling_as_evaluate_does(runs, tmp_path, capsys):
    """`score` writes nll_se and nll_ess; its warning lines are the ones evaluate's rule gives
    for those very columns, and with the same k on the same examples both commands print the
    same kind of line (tiny ESS here; the single-sample line at k = 1)."""
    import re

    from vaelab.measure import honest

    for k in ("30", "1"):
        code, out, err = run_cli(capsys, "score", runs["run"], "--limit", "100", "--k", k,
                                 "--score", "log-likelihood", "--out", tmp_path / "s.csv")
        assert code == 0, err
        table = np.genfromtxt(tmp_path / "s.csv", delimiter=",", names=True)
        want = honest.reliability_warnings(torch.tensor(table["nll_ess"]),
                                           torch.tensor(table["nll_se"]), int(k))
        assert want and [line for line in out.splitlines() if line.startswith("warning")] == want
        code, report, err = run_cli(capsys, "evaluate", runs["run"], "--limit", "100", "--k",
                                    k, "--quiet", "--out", tmp_path / "e.json")
        assert code == 0, err

        def kinds(text: str) -> set[str]:
            return {re.sub(r"for \d+ of|min ESS [\d.]+", "#", line)
                    for line in text.splitlines() if line.startswith("warning")}

        assert kinds("\n".join(want)) <= kinds(report)


# ------------------------------------------------------------------------- small or non-image data
# The use-commands on small or non-image data: cluster with tiny classes, score
# on real-valued CSV data, undefined standard errors as empty cells, the --score help mapping.
#
# Tiny runs through ``cli.main`` in-process, on a seeded real-valued CSV and on Fashion-MNIST.


TINY_RUN = ["--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--quiet", "--compile", "off",
        "--device", "cpu"]
HAS_FASHION = any((d / "t10k-images-idx3-ubyte.gz").is_file()
                  or (d / "t10k-images-idx3-ubyte").is_file()
                  for d in data.search_dirs("fashion-mnist"))


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(0)
    csv = folder / "real.csv"
    np.savetxt(csv, rng.normal(5.0, 3.0, size=(60, 4)), delimiter=",",
               header="a,b,c,d", comments="")
    assert cli.main(["train", "--data", str(csv), "--binarize", "none", "--likelihood",
                     "gaussian", "--out", str(folder / "run"), *TINY_RUN]) == 0
    return folder / "run", csv


def test_probe_folds_shrink_to_the_smallest_class_and_zero_without_two_folds():
    assert probe_folds(np.r_[np.zeros(10), np.ones(10)]) == 5
    assert probe_folds(np.r_[np.zeros(10), np.ones(4)]) == 4
    assert probe_folds(np.r_[np.zeros(10), np.ones(1)]) == 0
    assert probe_folds(np.zeros(10)) == 0


def test_default_scores_skip_input_complexity_on_real_valued_data(real_run, tmp_path, capsys):
    run, csv = real_run
    out = tmp_path / "s.csv"
    code, stdout, err = run_cli(capsys, "score", run, "--data", csv, "--k", "2",
                                "--regret-steps", "2", "--quiet", "--out", out)
    assert code == 0, err
    assert "input-complexity skipped: it needs 8-bit or binary data" in err + stdout
    header = out.read_text().splitlines()[0].split(",")
    assert "input_complexity" not in header and {"neg_elbo", "nll", "regret"} <= set(header)
    code, _, err = run_cli(capsys, "score", run, "--data", csv, "--score", "input-complexity",
                           "--quiet", "--out", tmp_path / "never.csv")
    assert code == 1 and err.count("\n") == 1
    assert "--score input-complexity: expected 8-bit or binary data" in err
    assert not (tmp_path / "never.csv").exists()


def test_undefined_nll_se_is_an_empty_cell(real_run, tmp_path, capsys):
    run, csv = real_run
    out = tmp_path / "s.csv"
    code, _, err = run_cli(capsys, "score", run, "--data", csv, "--limit", "1", "--k", "1",
                           "--score", "log-likelihood", "--quiet", "--out", out)
    assert code == 0, err
    header, row = out.read_text().splitlines()
    cells = dict(zip(header.split(","), row.split(","), strict=True))
    assert cells["nll_se"] == "" and np.isfinite(float(cells["nll"]))
    assert "nan" not in out.read_text()


def test_score_help_maps_each_choice_to_its_column(capsys):
    assert cli.main(["score", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for choice, column in (("elbo", "neg_elbo"), ("log-likelihood", "nll"),
                           ("input-complexity", "input_complexity"),
                           ("likelihood-ratio", "neg_llr"), ("regret", "regret")):
        assert f"{choice} → {column}" in text.replace("- ", "-")


@pytest.mark.skipif(not HAS_FASHION, reason="Fashion-MNIST is not installed")
def test_cluster_on_few_examples_reduces_or_skips_the_probe(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--limit", "300", "--out", str(run), *TINY_RUN]) == 0
    labels = data.load_dataset("fashion-mnist", "test").labels.numpy()
    for limit in (60, 20):
        code, stdout, err = run_cli(capsys, "cluster", run, "--limit", limit)
        assert code == 0, err
        assert "NMI" in stdout
        folds = probe_folds(labels[:limit])
        if folds:
            assert f"linear-probe accuracy ({folds}-fold)" in stdout
        else:
            assert "linear probe skipped" in stdout
    assert probe_folds(labels[:60]) == 4


def test_cluster_vade_fine_tunes_a_gmm_prior_and_reports(runs, capsys):
    code, stdout, err = run_cli(capsys, "cluster", runs["mog"], "--method", "vade",
                                "--clusters", "4", "--vade-epochs", "1", "--train-limit", "150",
                                "--limit", "60")
    assert code == 0, err
    assert "VaDE: mixture prior from a GMM on 150 training codes, 1 epochs" in stdout
    assert "VaDE epoch 1/1: ELBO" in stdout
    line = next(row for row in stdout.splitlines() if "NMI" in row)
    assert 0 <= _printed(line, "NMI") <= 1


# --------------------------------------------------------------------------- encode, streamed


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    """A tiny run trained on a file of 0/255 bytes (binary images: binarizing changes
    nothing, so streamed and in-memory codes must agree), and that file."""
    from vaelab.fit.train import train

    where = tmp_path_factory.mktemp("streamed-encode")
    images = where / "x.npy"
    rng = np.random.default_rng(0)
    np.save(images, (rng.random((230, 4, 5)) < 0.4).astype(np.uint8) * 255)
    train({"model": {"hidden": [8], "latent_dim": 3},
           "train": {"data": str(images), "epochs": 1, "batch_size": 50, "compile": False}},
          where / "run", log=None, progress=False)
    return where / "run", images


def test_streamed_encode_writes_the_codes_in_input_order(binary_run, tmp_path, capsys):
    run, images = binary_run
    out = tmp_path / "z.npy"
    code, stdout, _ = run_cli(capsys, "encode", str(run), "--data", str(images), "--out",
                              str(out), "--stream-block", "64")
    assert code == 0 and "230 × 3" in stdout
    trained = load(run)
    x = torch.from_numpy(np.load(images).reshape(230, -1)).float() / 255
    expected = trained.encode(x).mean.detach().numpy()
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.npy"]


def test_streamed_encode_defaults_to_the_runs_data_and_exits_like_train(binary_run, runs,
                                                                         tmp_path, capsys):
    """Without --data, --stream-block reads the run's own file, as plain encode does; its
    refusals exit 1 in one line, as train's refusal of the same --limit does."""
    run, images = binary_run
    code, stdout, err = run_cli(capsys, "encode", str(run), "--out", str(tmp_path / "z.npy"),
                                "--stream-block", "64")
    assert code == 0, err
    assert "230 × 3" in stdout and "is the run's training data" in stdout
    x = torch.from_numpy(np.load(images).reshape(230, -1)).float() / 255
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"),
                               load(run).encode(x).mean.detach().numpy(), rtol=1e-5, atol=1e-6)
    train_code, _, train_err = run_cli(capsys, "train", "--data", str(images), "--out",
                                       str(tmp_path / "t"), "--stream-block", "64", "--limit",
                                       "5", "--epochs", "1")
    code, _, err = run_cli(capsys, "encode", str(run), "--out", str(tmp_path / "l.npy"),
                           "--stream-block", "64", "--limit", "5")
    assert "--limit" in train_err and code == train_code == 1
    assert err.count("\n") == 1 and "--limit: --stream-block encodes every row" in err
    code, _, err = run_cli(capsys, "encode", str(runs["run"]), "--out",
                           str(tmp_path / "n.npy"), "--stream-block", "64")
    assert code == 1 and err.count("\n") == 1
    assert "the named dataset 'fashion-mnist'; expected --data FILE.npy" in err


def test_streamed_encode_killed_continues_to_the_same_codes(binary_run, tmp_path, capsys,
                                                            monkeypatch):
    """Interrupted after two blocks of draws (--sample), started again: the remaining blocks
    only are encoded, and the file equals an uninterrupted run's, bit for bit."""
    import vaelab.use.encode as encode_mod

    run, images = binary_run
    flags = ["encode", str(run), "--data", str(images), "--stream-block", "64", "--sample"]
    assert run_cli(capsys, *flags, "--out", str(tmp_path / "whole.npy"))[0] == 0
    real, calls = encode_mod.encode, []

    def interrupted(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 4:          # the first call measures the width; then 3 blocks
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(encode_mod, "encode", interrupted)
    out = tmp_path / "z.npy"
    assert run_cli(capsys, *flags, "--out", str(out))[0] != 0
    assert not out.exists() and (tmp_path / "z.npy.progress").read_text() == "128"
    calls.clear()
    assert run_cli(capsys, *flags, "--out", str(out))[0] == 0
    assert calls == [1, 64, 38]        # the width, then rows 128-191 and 192-229 only
    np.testing.assert_array_equal(np.load(out), np.load(tmp_path / "whole.npy"))


def test_streamed_encode_names_a_bad_value_by_its_row_in_the_file(binary_run, tmp_path,
                                                                  capsys):
    """A NaN in row 150 of a float file read in blocks of 64: the error names row 150 (not
    its place in the block) and the rows kept; the fixed file continues to the full codes."""
    run, images = binary_run
    x = np.load(images).astype(np.float32) / 255            # grey levels in [0, 1]
    bad = x.copy()
    bad.reshape(len(x), -1)[150, 3] = np.nan
    np.save(tmp_path / "x.npy", bad)
    out = tmp_path / "z.npy"
    flags = ["encode", str(run), "--data", str(tmp_path / "x.npy"), "--stream-block", "64",
             "--out", str(out)]
    code, _, err = run_cli(capsys, *flags)
    assert code == 1 and err.count("\n") == 1, err
    assert "expected finite values, got nan at index (150, 3)" in err
    assert f"kept in {out}.partial" in err and "the same command continues" in err
    np.save(tmp_path / "x.npy", x)                       # fixed: the same command goes on
    assert run_cli(capsys, *flags)[0] == 0
    trained = load(run)
    expected = trained.encode(torch.from_numpy(x.reshape(len(x), -1))).mean
    np.testing.assert_allclose(np.load(out), expected.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_score_a_run_trained_with_missing_mask_on_complete_and_incomplete_rows(tmp_path,
                                                                                capsys):
    """A --missing mask run of a mixed table: score takes its incomplete training rows as
    the reference and scores complete and incomplete rows (log p̂(x_obs)); the scores of the
    whole x are skipped on incomplete rows; evaluate refuses incomplete rows in one line that
    does not tell to pass --missing mask (the run has it)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 120
    full = pd.DataFrame({"city": rng.choice(["Lyon", "Nice"], n), "kids": rng.poisson(1.5, n),
                         "income": np.round(rng.normal(40000, 5000, n), 2)})
    holes = full.astype(object).mask(rng.random(full.shape) < 0.2)
    holes["income"] = full["income"]              # no row without an observed cell
    full.to_csv(tmp_path / "full.csv", index=False)
    holes.to_csv(tmp_path / "holes.csv", index=False)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "holes.csv", "--likelihood",
                           "mixed", "--binarize", "none", "--missing", "mask", "--epochs", "1",
                           "--latent-dim", "2", "--hidden", "8", "--quiet", "--out", run)
    assert code == 0, err
    for name, complete in (("full", True), ("holes", False)):
        out = tmp_path / f"{name}-scores.csv"
        code, stdout, err = run_cli(capsys, "score", run, "--data", tmp_path / f"{name}.csv",
                                    "--k", "8", "--quiet", "--out", out)
        assert code == 0, err
        table = pd.read_csv(out)
        assert len(table) == n and np.isfinite(table[["neg_elbo", "nll", "typicality",
                                                      "latent_knn"]].to_numpy()).all()
        assert ("regret" in table) == complete
        assert complete or "regret skipped: defined on complete rows only" in stdout
    # asked for by name, a score of complete rows is refused in one line naming the flags
    incomplete = int(holes.isna().any(axis=1).sum())
    code, _, err = run_cli(capsys, "score", run, "--data", tmp_path / "holes.csv", "--k", "8",
                           "--score", "regret", "--quiet", "--out", tmp_path / "regret.csv")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert (f"--score regret: defined on complete rows only, got {incomplete} rows with "
            f"missing cells in --data {tmp_path / 'holes.csv'}") in err
    assert "x:" not in err and not (tmp_path / "regret.csv").exists()
    code, _, err = run_cli(capsys, "evaluate", run, "--data", tmp_path / "holes.csv")
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "pass --missing mask" not in err and "expected complete rows" in err
    assert "vaelab score RUN" in err
