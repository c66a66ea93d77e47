"""``vaelab score``, ``encode``, ``cluster``, ``complete`` and ``impute``: what a model is for.

Role in vaelab: each command loads a run and the data it works on (:mod:`vaelab.cli.inputs`),
checks its outputs are writable, calls the library (:mod:`vaelab.use.scores`,
:mod:`vaelab.use.encode`, :mod:`vaelab.use.cluster`, :mod:`vaelab.use.complete`,
:mod:`vaelab.use.impute`; files through :mod:`vaelab.use.outputs`) and prints what it found
(:mod:`vaelab.show.tables`) and where it wrote it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from vaelab import catalogue
from vaelab.cli.common import UsageError, add_run_data, class_list, non_negative_int, positive_int
from vaelab.cli.components import dest
from vaelab.cli.inputs import (
    claim,
    examples,
    held_out,
    inference_of,
    load_run,
    masked_run,
    out_path,
    png_path,
    printer,
    progress_bar,
    read_labels,
    streamed_source,
)

SCORE_CHOICES = catalogue.names("score")
#: The scores that compare with the training rows (``vaelab.use.scores.REFERENCE_SCORES``,
#: written out here so that --help imports no torch; a test pins the two equal).
REFERENCE_SCORES = ("typicality", "latent-density", "latent-knn")


def add_score(commands) -> None:
    p = commands.add_parser(
        "score", help="anomaly / out-of-distribution scores, one row per example",
        description="Score every example for anomaly (higher = more anomalous); --score NAME "
        "→ CSV column: elbo → neg_elbo; log-likelihood → nll (−log p̂(x), importance sampled) "
        "and nll_se (its SE, an empty cell where undefined, e.g. --k 1); input-complexity → "
        "input_complexity (−log₂ p̂(x) minus the PNG/zlib length in bits, Serrà et al. 2020; "
        "8-bit or binary data only); likelihood-ratio → neg_llr (log p̂_background − log p̂, "
        "Ren et al. 2019; needs --background); regret → regret (ELBO gain of re-fitting q to "
        "the example, Xiao et al. 2020); typicality → typicality (|mean −log p̂ of M examples − "
        "the training rows'|, Nalisnick et al. 2019); hierarchical-llr → hierarchical_llr "
        "(ELBO − the bound with the --llr-k lowest layers drawn from the conditional prior "
        "given q's layers above, Havtorn et al. 2021; hierarchical runs with top-down or "
        "ladder inference); latent-density → latent_nll (−log of the code under "
        "the training rows' aggregate posterior); latent-knn → latent_knn (mean distance to "
        "the --neighbours nearest training codes). Writes a CSV; with labels (1 = anomalous) "
        "also AUROC, AUPRC, FPR at 95% TPR (a JSON beside the CSV) and an ROC figure. Which "
        "score to trust is chosen on held-out normal rows against letters (outlier exposure): for "
        "28x28 grey images, recipes/fashion-mnist/one-class.toml (one normal class) and "
        "recipes/fashion-mnist/ood.toml (a whole data set) train the model and name the score "
        "chosen that way; see docs/benchmarks/anomaly.md.")
    p.add_argument("run", type=Path, metavar="RUN")
    add_run_data(p)
    p.add_argument("--score", nargs="+", choices=SCORE_CHOICES, metavar="NAME",
                   help="scores to compute (NAME → CSV column): elbo → neg_elbo, "
                        "log-likelihood → nll and nll_se, input-complexity → "
                        "input_complexity, likelihood-ratio → neg_llr, regret → regret, "
                        "typicality, hierarchical-llr → hierarchical_llr, latent-density → "
                        "latent_nll, latent-knn → latent_knn (default: all; likelihood-ratio "
                        "only with --background, input-complexity only on 8-bit or binary "
                        "data, hierarchical-llr only for a hierarchical run)")
    p.add_argument("--out", type=Path, metavar="FILE.csv", help="default: RUN/scores.csv")
    p.add_argument("--roc", type=Path, metavar="FILE.png",
                   help="ROC figure with labels (default: <out>-roc.png)")
    _add_score_flags(p)
    p.set_defaults(func=cmd_score)


def _add_score_flags(p: argparse.ArgumentParser) -> None:
    """Where labels and the background come from; how much sampling each score gets."""
    p.add_argument("--labels", type=Path, metavar="FILE", help="0 (normal) or 1 (anomalous) "
                   "per example, in a .npy, .txt or .csv file")
    p.add_argument("--normal-classes", type=class_list, metavar="C,C,...", help="labels from "
                   "the data's own classes: 0 for these classes, 1 for every other")
    p.add_argument("--background", type=Path, metavar="RUN", help="the background model of "
                   "likelihood-ratio (trained by `vaelab train --background-of RUN`)")
    p.add_argument("--k", type=positive_int, metavar="K", default=100,
                   help="importance samples per example (default 100)")
    p.add_argument("--regret-steps", type=positive_int, metavar="N", default=100,
                   help="most Adam steps re-fitting q for regret (default 100)")
    p.add_argument("--limit", type=non_negative_int, metavar="N", default=0,
                   help="score the first N examples, 0 = all (default 0)")
    p.add_argument("--seed", type=non_negative_int, metavar="N", default=0,
                   help="seeds the binarization of the data and the sampling")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--reference", metavar="DATA", help="the rows typicality and the latent "
                   "scores compare with (a name or file; default: the run's training rows)")
    p.add_argument("--reference-limit", type=positive_int, metavar="N", default=5000,
                   help="the first N reference rows (default 5000)")
    for flag, (option, _owners) in catalogue.flags("score").items():
        p.add_argument(flag, type=positive_int if option.check == "int>=1" else
                       non_negative_int, metavar=option.metavar, default=option.default,
                       help=f"{option.help} (default {option.default})")


def cmd_score(args: argparse.Namespace) -> int:
    """``vaelab score``: anomaly scores per example → CSV; metrics and ROC with labels."""
    from vaelab._runtime import isolated_rng
    from vaelab.use import outputs
    from vaelab.use import scores as scores_

    note = printer(False)
    trained = load_run(args.run, args.device)
    inference_of(trained)
    names = _score_names(args)
    out = out_path(args.out or args.run / "scores.csv", ".csv", "--out")
    roc = out_path(args.roc or out.with_name(out.stem + "-roc.png"), ".png", "--roc")
    claim(out, roc)
    background = (scores_.background_model(load_run(args.background, args.device), trained,
                                           source=str(args.background), note=note)
                  if "likelihood-ratio" in names else None)
    dataset, _ = examples(args, trained, allow_missing=masked_run(trained))
    names = _names_for_model(args, _names_for_data(args, names, dataset, note), trained, note)
    names = _names_for_missing(args, names, dataset, note)
    names = _check_llr_k(args, names, trained, dataset, note)
    labels = _anomaly_labels(args, dataset)
    reference = (_reference_rows(args, trained, note) if set(names) & set(REFERENCE_SCORES)
                 else None)
    options = scores_.ScoreOptions(
        num_samples=args.k, regret_steps=args.regret_steps,
        **{field: getattr(args, dest(flag)) for field, flag in (
            ("typicality_batch", "--typicality-batch"), ("llr_k", "--llr-k"),
            ("neighbours", "--neighbours"))})
    with isolated_rng(args.seed):
        columns = scores_.anomaly_scores(
            trained.model, dataset.x.to(trained.device), names, background=background,
            image_shape=trained.config.model.image_shape, options=options,
            progress=None if args.quiet or not sys.stderr.isatty() else progress_bar("score"),
            reference=reference)
    outputs.write_scores_csv(out, columns, labels)
    print(f"wrote {out}: {len(dataset)} rows, columns {', '.join(columns)} "
          "(higher = more anomalous)")
    complete = dataset.x[~dataset.x.isnan().any(1)]     # the kind of data: observed rows
    meaning = _likelihood_note(trained, complete if len(complete) else
                               dataset.x.nan_to_num(0.0), note)
    for line in scores_.sampling_warnings(columns, args.k, meaning):   # as evaluate warns
        print(line)
    if labels is not None:
        _report_detection(out, roc, names, columns, labels, dataset.name)
    return 0


def _score_names(args: argparse.Namespace) -> tuple[str, ...]:
    if args.score is None:
        names = [n for n in SCORE_CHOICES if n != "likelihood-ratio" or args.background]
        return tuple(names)
    if "likelihood-ratio" in args.score and args.background is None:
        raise ValueError("--score likelihood-ratio: needs --background RUN (a model trained "
                         "by `vaelab train --background-of RUN`), got none")
    return tuple(dict.fromkeys(args.score))


def _names_for_data(args: argparse.Namespace, names, dataset, note: Callable):
    """``names`` without input-complexity when the data are not 8-bit or binary values (it
    compares with a compressor of discrete values)."""
    from vaelab.data import kind_of

    kind = kind_of(dataset)
    if "input-complexity" not in names or kind in ("8-bit", "binary"):
        return names
    if args.score is not None:
        raise ValueError(f"--score input-complexity: expected 8-bit or binary data (it "
                         f"compresses them as 8-bit images), got {kind} data; drop it")
    note(f"note: input-complexity skipped: it needs 8-bit or binary data (it compresses them "
         f"as 8-bit images), got {kind} data")
    return tuple(n for n in names if n != "input-complexity")


def _names_for_missing(args: argparse.Namespace, names, dataset, note: Callable):
    """``names`` without the scores of complete rows when rows have missing cells (a run
    trained with --missing mask): a note when they came from the default set; asked for,
    one line naming --score and --data (the library's own refusal names its argument x)."""
    from vaelab.use.scores import COMPLETE_ONLY

    incomplete = int(dataset.x.isnan().any(1).sum())
    skipped = [n for n in names if n in COMPLETE_ONLY]
    if not incomplete or not skipped:
        return names
    if args.score is not None:
        source = (f"--data {args.data}" if args.data is not None
                  else "the run's training data (no --data)")
        raise ValueError(f"--score {' '.join(skipped)}: defined on complete rows only, got "
                         f"{incomplete} rows with missing cells in {source}; drop "
                         f"{'it' if len(skipped) == 1 else 'them'}, or "
                         f"score complete rows")
    note(f"note: {', '.join(skipped)} skipped: defined on complete rows only, and "
         f"{incomplete} rows have missing cells (the other scores use log p̂(x_obs), the "
         f"likelihood of the observed cells)")
    return tuple(n for n in names if n not in COMPLETE_ONLY)


def _names_for_model(args: argparse.Namespace, names, trained, note: Callable):
    """``names`` without hierarchical-llr for a run with one latent layer (it compares bounds
    across layers): a note when it came from the default set, one line when asked for."""
    if "hierarchical-llr" not in names or isinstance(trained.config.model.latent_dim, tuple):
        return names
    if args.score is not None:
        raise ValueError(f"--score hierarchical-llr: expected a hierarchical run (trained with "
                         f"--latent-dim L1,L2,...), got one latent layer of "
                         f"{trained.config.model.latent_dim} units; drop it")
    note("note: hierarchical-llr skipped: the run has one latent layer")
    return tuple(n for n in names if n != "hierarchical-llr")


def _check_llr_k(args: argparse.Namespace, names, trained, dataset, note: Callable):
    """``names`` checked for hierarchical-llr's --llr-k: one line for k outside 1..n (k = 0
    replaces no layer, so the two bounds are the same and the column is zeros: the library
    allows it as the limit case; a user asking for it gets nothing to read), and for a run
    whose q cannot give L^{>k} (bottom-up inference), which drops it with a note when it came
    from the default set."""
    layers = trained.config.model.latent_dim
    if "hierarchical-llr" not in names or not isinstance(layers, tuple):
        return names
    llr_k = getattr(args, dest("--llr-k"))
    if not 1 <= llr_k <= len(layers):
        raise ValueError(f"--llr-k: expected a layer index in 1..{len(layers)} (the run has "
                         f"{len(layers)} latent layers; k = 0 replaces none and scores every "
                         f"row 0), got {llr_k}")
    import torch

    from vaelab.use.hierarchical_llr import refusal

    with torch.no_grad():
        q = trained.model.encode(dataset.x[:1].to(trained.device))
    reason = refusal(q, llr_k)
    if reason is None:
        return names
    if args.score is not None:
        raise ValueError(f"--score {reason}")
    note(f"note: hierarchical-llr skipped: {reason.removeprefix('hierarchical-llr: ')}")
    return tuple(n for n in names if n != "hierarchical-llr")


def _reference_rows(args: argparse.Namespace, trained, note: Callable):
    """The rows typicality and the latent scores compare with: the first --reference-limit
    rows of --reference DATA, else of the run's training rows."""
    rows, source = _training_rows(trained, args.reference, args.reference_limit, args.seed,
                                  "--reference")
    what = "training rows" if args.reference is None else "rows"   # --reference: the user's
    note(f"reference: {len(rows)} {what} of {source} (typicality's entropy, the "
         f"latent scores' aggregate posterior and neighbours)")
    return rows


def _training_rows(trained, source: str | None, limit: int, seed: int, flag: str):
    """(the first ``limit`` rows of ``source``, else of the run's training rows — its classes,
    limit and validation split as trained — binarized once (seeded) as the run's data are,
    on the run's device; where they came from)."""
    from vaelab import data

    if source is not None:
        rows, _ = held_out(trained, source, "train", seed, lambda _line: None, flag=flag)
    else:
        from vaelab.fit.train_data import _load_data

        if trained.config.train.data == "in-memory":
            raise ValueError(f"{flag}: the run was trained on data handed over in memory, "
                             f"which no name or path finds again; pass {flag} DATA")
        loaded = _load_data(trained.config, None)
        rows, source = loaded.train, trained.config.train.data
        if trained.config.train.binarize == "dynamic":
            rows = data.static_binarize(rows, seed)
        if loaded.c_train is not None:        # a conditional run's rows are [x | c]
            from vaelab.data.condition import packed

            rows = packed(rows, loaded.c_train)
    rows = rows.subset(slice(0, limit)).floats()
    return rows.x.to(trained.device), source


def _anomaly_labels(args: argparse.Namespace, dataset):
    """0/1 labels from --labels or --normal-classes (None without either), checked."""
    from vaelab.use.detect import check_labels

    if args.labels is not None and args.normal_classes is not None:
        raise UsageError("--labels and --normal-classes: expected at most one, got both")
    if args.labels is not None:
        values = read_labels(args.labels, "--labels")
        return check_labels(values, len(dataset), "--labels")
    if args.normal_classes is None:
        return None
    if dataset.labels is None:
        raise ValueError(f"--normal-classes: expected data with class labels, got "
                         f"{dataset.name!r}, which has none; pass --labels FILE")
    import torch

    normal = torch.isin(dataset.labels, torch.tensor(args.normal_classes))
    return check_labels((~normal).long().numpy(), len(dataset), "--normal-classes")


def _likelihood_note(trained, x, note: Callable) -> str:
    """Note when nll is only a score; → the likelihood's meaning on x."""
    from vaelab.measure.evaluate import likelihood_meaning

    meaning = likelihood_meaning(trained.model, x)
    if meaning["meaning"] == "score":
        note(f"note: nll is not −log p(x) here: {meaning['note']}")
    return meaning["meaning"]


def _report_detection(out: Path, roc: Path, names, columns: dict, labels, data: str) -> None:
    """Print and write (JSON beside the CSV) each score's metrics; draw the ROC figure."""
    from vaelab._files import atomic_write_json
    from vaelab.show.roc import write_roc
    from vaelab.show.tables import format_detection
    from vaelab.use.detect import detection_results

    results, curves = detection_results(names, columns, labels)
    print(format_detection(results, labels))
    metrics = atomic_write_json(out.with_suffix(".json"), {"data": data, "metrics": results})
    written = [str(metrics)]
    if curves:
        written.append(str(write_roc(roc, curves, f"ROC on {data}")))
    print("wrote " + "  ".join(written))


def add_encode(commands) -> None:
    p = commands.add_parser("encode", help="latent codes of data as a .npy array",
                            description="Encode data with the run's q(z | x) and write an N × L "
                            "float32 array: posterior means E_q[z | x], or one draw each with "
                            "--sample (a hierarchical run: every layer, concatenated bottom "
                            "to top).")
    p.add_argument("run", type=Path, metavar="RUN")
    add_run_data(p)
    p.add_argument("--out", type=Path, required=True, metavar="FILE.npy")
    p.add_argument("--sample", action="store_true", help="draw z ~ q(z | x) instead of its mean")
    p.add_argument("--condition", metavar="VALUE", help="a conditional run: encode every "
                   "example under this c (default: each example's own c from the data)")
    p.add_argument("--limit", type=non_negative_int, metavar="N", default=0,
                   help="encode the first N examples, 0 = all (default 0)")
    p.add_argument("--seed", type=non_negative_int, metavar="N", default=0)
    p.add_argument("--stream-block", type=positive_int, metavar="ROWS",
                   help="encode a .npy file (--data, default: the run's) ROWS rows at a "
                        "time, each block's codes "
                        "written to --out as they come (memory for one block, whatever the "
                        "file's size); started again after a kill, it continues. The means "
                        "equal the in-memory ones for any ROWS (a binarized run binarizes "
                        "each row by its own --seed draw); a conditional run needs "
                        "--condition VALUE (a .npy file has no labels)")
    p.set_defaults(func=cmd_encode)


def cmd_encode(args: argparse.Namespace) -> int:
    """``vaelab encode``: codes E_q[z | x] (or draws) of the data → an N × L .npy array."""
    import torch

    from vaelab.use.encode import encode
    from vaelab.use.outputs import write_codes

    trained = load_run(args.run, args.device)
    inference_of(trained)
    out = out_path(args.out, ".npy", "--out")
    claim(out)
    if args.stream_block is not None:
        return _encode_streamed(args, trained, out)
    masked = masked_run(trained)       # its encoder reads NaN as missing
    # each row binarized by its own seeded draw: the codes --stream-block gives, any block
    dataset, _ = examples(args, trained, allow_missing=masked, per_row=True)
    encoder = trained.encode if not masked else (
        lambda x: trained.model.encode(x.to(trained.device, torch.float32)))
    z = encode(encoder, dataset.x, sample=args.sample,
               generator=torch.Generator().manual_seed(args.seed))
    write_codes(out, z)
    what = "one draw z ~ q(z | x)" if args.sample else "posterior means E_q[z | x]"
    layers = trained.config.model.latent_dim
    layers = f" (layers {list(layers)}, bottom first)" if isinstance(layers, tuple) else ""
    print(f"wrote {out}: {z.shape[0]} × {z.shape[1]} float32, {what}{layers}")
    return 0


def _encode_streamed(args: argparse.Namespace, trained, out: Path) -> int:
    """``encode --stream-block``: the file's codes block by block, the same for any block
    size as the in-memory codes (``vaelab.use.streamed.encode_file``)."""
    from vaelab.use.streamed import encode_file

    source = streamed_source(trained, args.data, args.limit, printer(False))
    try:
        n, width = encode_file(trained, source, out, block_rows=args.stream_block,
                               seed=args.seed, sample=args.sample, condition=args.condition)
    except (ValueError, KeyboardInterrupt) as exc:     # say what was kept, and how to go on
        partial = out.with_name(out.name + ".partial")
        if not partial.exists():
            raise
        kept = (f"the rows encoded so far are kept in {partial} (with {out.name}.progress); "
                f"the same command continues from them")
        if isinstance(exc, ValueError):
            raise ValueError(f"{exc}; {kept}") from None
        print(f"vaelab: {kept}", file=sys.stderr)
        raise
    what = "one draw z ~ q(z | x)" if args.sample else "posterior means E_q[z | x]"
    print(f"wrote {out}: {n} × {width} float32, {what}")
    return 0


def add_cluster(commands) -> None:
    p = commands.add_parser(
        "cluster", help="clusters in latent space, scored against class labels",
        description="Cluster the codes E_q[z | x]: k-means (scikit-learn), the mixture "
        "prior's responsibilities p(c | z) for a run trained with --prior mog, VaDE "
        "(--method vade: a GMM fitted to the training rows' codes becomes the prior, the "
        "model is fine-tuned with the ELBO, then p(c | z); Jiang et al. 2017), or a GMM on "
        "the spectral embedding of the codes' nearest-neighbour graph (--method manifold, as "
        "N2D; McConville et al. 2020). With labels "
        "(--labels, else the data's own) prints accuracy under the best one-to-one cluster → "
        "class map, NMI, ARI and the linear-probe accuracy of the codes. A model trained for "
        "clustering Fashion-MNIST: recipes/fashion-mnist/cluster.toml.")
    p.add_argument("run", type=Path, metavar="RUN")
    add_run_data(p)
    p.add_argument("--labels", type=Path, metavar="FILE",
                   help="integer class per example (.npy, .txt, .csv); default: the data's own")
    p.add_argument("--clusters", type=positive_int, metavar="K",
                   help="k-means clusters (default: the number of classes, else 10)")
    p.add_argument("--method", choices=("auto", "kmeans", "prior", "vade", "manifold"),
                   default="auto", help="auto: prior for a --prior mog run, else kmeans")
    p.add_argument("--neighbours", type=positive_int, metavar="K", default=10,
                   help="--method manifold: neighbours per code in the graph (default 10)")
    p.add_argument("--embed-dim", type=positive_int, metavar="D",
                   help="--method manifold: embedding dimensions (default: --clusters)")
    p.add_argument("--vade-epochs", type=non_negative_int, metavar="N", default=10,
                   help="--method vade: epochs of ELBO fine-tuning (default 10; 0: the GMM "
                        "prior alone)")
    p.add_argument("--train-limit", type=positive_int, metavar="N", default=10000,
                   help="--method vade: the first N training rows it fits (default 10000)")
    p.add_argument("--limit", type=non_negative_int, metavar="N", default=0,
                   help="the first N examples, 0 = all (default 0)")
    p.add_argument("--seed", type=non_negative_int, metavar="N", default=0)
    p.add_argument("--out", type=Path, metavar="FILE.csv",
                   help="also write each example's cluster (and label)")
    p.set_defaults(func=cmd_cluster)


def cmd_cluster(args: argparse.Namespace) -> int:
    """``vaelab cluster``: clusters of E_q[z | x]; metrics against class labels."""
    import numpy as np

    from vaelab.show.tables import format_clusters
    from vaelab.use import cluster, outputs
    from vaelab.use.encode import encode

    trained = load_run(args.run, args.device)
    inference_of(trained)
    out = None if args.out is None else out_path(args.out, ".csv", "--out")
    if out is not None:
        claim(out)
    dataset, _ = examples(args, trained)
    labels = _cluster_labels(args, dataset)
    if args.method == "vade":
        from vaelab.use.vade import VadeOptions, vade_clusters

        k = args.clusters or (len(np.unique(labels)) if labels is not None else 10)
        train, _ = _training_rows(trained, None, args.train_limit, args.seed, "--data")
        method, z, assignments = vade_clusters(
            trained.model, train, dataset.x, k, options=VadeOptions(epochs=args.vade_epochs),
            seed=args.seed, progress=printer(False))
    else:
        z = encode(trained.encode, dataset.x)
        method, k, assignments = cluster.assign_clusters(
            trained.model, z, method=args.method, clusters=args.clusters, labels=labels,
            seed=args.seed, prior_name=trained.config.model.prior,
            neighbours=args.neighbours, dims=args.embed_dim,
            note=lambda line: print(f"note: {line}", flush=True))
    print(f"{len(dataset)} examples of {dataset.name}, {method}: {k} clusters, "
          f"{len(np.unique(assignments))} used")
    if labels is not None:
        print(format_clusters(cluster.cluster_report(z, labels, assignments, seed=args.seed)))
    if out is not None:
        outputs.write_assignments_csv(out, assignments, labels)
        print(f"wrote {out}")
    return 0


def _cluster_labels(args: argparse.Namespace, dataset):
    if args.labels is None:
        return None if dataset.labels is None else dataset.labels.numpy()
    values = read_labels(args.labels, "--labels")
    if values.shape[0] != len(dataset) or not (values == values.round()).all():
        raise ValueError(f"--labels: expected {len(dataset)} integer class labels, one per "
                         f"example, got {values.shape[0]} values from {str(args.labels)!r}")
    return values.astype("int64")


def add_complete(commands) -> None:
    p = commands.add_parser("complete", help="fill in the hidden top half of images",
                            description="Hide the top half of n binary held-out images and "
                            "fill it in with a per-image q(h) fitted to the run's ELBO; writes "
                            "a PNG (visible half, q's means, samples, truth) and prints the "
                            "accuracy on the hidden pixels.")
    p.add_argument("run", type=Path, metavar="RUN")
    add_run_data(p)
    p.add_argument("-n", type=positive_int, metavar="N", default=8,
                   help="number of images (default 8)")
    p.add_argument("--steps", type=positive_int, metavar="N", default=300,
                   help="Adam steps fitting q(h) (default 300)")
    p.add_argument("--samples", type=positive_int, metavar="S", default=16,
                   help="samples of h per gradient (default 16)")
    p.add_argument("--seed", type=non_negative_int, metavar="N", default=0)
    p.add_argument("--out", type=Path, metavar="FILE.png", help="default: RUN/completions.png")
    p.set_defaults(func=cmd_complete)


def cmd_complete(args: argparse.Namespace) -> int:
    """``vaelab complete``: fill in the hidden top half of n held-out images."""
    from vaelab.use import complete as missing

    trained = load_run(args.run, args.device)
    inference_of(trained)
    if trained.config.model.image_shape is None:
        raise ValueError("RUN: `complete` needs a run trained on images (image_shape is None)")
    out = png_path(args.out or args.run / "completions.png", "--out")
    claim(out)
    dataset, _ = held_out(trained, args.data, args.split, args.seed, printer(False))
    x = dataset.x[:args.n].to(trained.device)
    result = missing.complete_top_half(trained.model, x, out, steps=args.steps,
                                       samples=args.samples, seed=args.seed,
                                       image_shape=trained.config.model.image_shape)
    print(f"accuracy on the hidden half: {result['accuracy']:.3f} (marginal guess "
          f"{result['baseline_accuracy']:.3f}, another image's completion "
          f"{result['mismatched_accuracy']:.3f}; {result['num_images']} images)")
    print(f"wrote {out}")
    return 0


def add_impute(commands) -> None:
    p = commands.add_parser("impute", help="fill in missing entries (a run trained with "
                            "--missing mask)", description="Fill in the NaN / empty entries "
                            "of a .npy or .csv file: the importance-weighted conditional mean "
                            "(the mode for binary data), or with --draws M, M imputations by "
                            "sampling importance resampling ([M, N, D], .npy only). Observed "
                            "entries are copied unchanged. Training settings measured on "
                            "tables: recipes/tables/impute.toml (cells missing at random), "
                            "recipes/tables/impute-mnar.toml (cells missing because of their "
                            "values), with --latent-dim set to the number of columns minus "
                            "one; see docs/benchmarks/imputation.md.")
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("--data", type=Path, required=True, metavar="FILE",
                   help=".npy or .csv with NaN (or empty cells) marking missing entries")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.npy|FILE.csv")
    p.add_argument("--draws", type=positive_int, metavar="M",
                   help="M multiple imputations instead of one")
    p.add_argument("--k", type=positive_int, metavar="K", default=1000,
                   help="importance samples per row (default 1000)")
    p.add_argument("--seed", type=non_negative_int, metavar="N", default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.set_defaults(func=cmd_impute)


def cmd_impute(args: argparse.Namespace) -> int:
    """``vaelab impute``: fill in the missing entries of a table."""
    from vaelab.use import impute

    trained = load_run(args.run, args.device)
    if not masked_run(trained):
        raise ValueError(f"RUN: `impute` needs a run trained with --missing mask, got "
                         f"{str(args.run)!r} (trained on complete data; for images see "
                         f"`vaelab complete`)")
    claim(args.out)
    result = impute.impute_file(trained, args.data, args.out, draws=args.draws,
                                num_samples=args.k, seed=args.seed)
    print(f"imputed {result['missing']} missing entries in {result['rows']} rows; wrote "
          f"{result['out']} (shape {result['shape']})")
    for line in result["warnings"]:          # importance sampling, as evaluate warns
        print(line)
    return 0
