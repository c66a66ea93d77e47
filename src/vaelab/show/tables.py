"""Result tables: the plain-text tables and lines the ``vaelab`` commands print.

Role in vaelab: what a number means is said where it is printed. The evaluation table labels
log p̂(x) by what it is (a log-likelihood, a log density or an unnormalised score), shows every
standard error (an undefined one as "undefined", never 0) and the result's warnings; the
detection and clustering tables print the metrics of ``vaelab.use.detect`` and
``vaelab.use.cluster``. Functions here only format: they compute nothing.
"""

from __future__ import annotations


def meaning_labels(r: dict) -> tuple[str, str, str]:
    """The (log p̂, ELBO, gap) row labels of the evaluate table by what log p̂ means."""
    meaning = (r.get("likelihood_meaning") or {}).get("meaning")
    if meaning == "score":
        return "unnormalised score", "ELBO-score (nats)", "score − ELBO-score"
    if meaning == "density":
        return "log density (nats)", "ELBO (nats)", "log p(x) − ELBO (nats)"
    return "log p(x) (nats)", "ELBO (nats)", "log p(x) − ELBO (nats)"


def with_meaning(table: str, r: dict) -> str:
    """The table (already labelled by what log p̂ means), then that meaning in a line."""
    meaning = r.get("likelihood_meaning") or {}
    return table + (f"\nnote: {meaning['note']}" if meaning else "")


def estimator_lines(r: dict) -> str:
    """What estimated log p(x) (and, for bdmc, the sandwich), in one or two lines."""
    e = r["estimator"]
    cost = e["cost_per_example"]
    what, bound = e["summary"], e["gradient_bound"]
    quantity = {"score": "unnormalised score", "density": "log density"}.get(
        str((r.get("likelihood_meaning") or {}).get("meaning")), "log p(x)")   # a score or p
    lines = [f"{quantity} estimator: {what}; a stochastic lower bound on it; per example "
             f"{cost['forward']} log p(x,z) evaluations + {bound}{cost['gradient']} with "
             f"gradient"]
    if "bdmc" in r:
        b = r["bdmc"]
        lines.append(f"BDMC on {b['num_examples']} simulated examples: lower "
                     f"{b['lower']['mean']:.3f}, upper {b['upper']['mean']:.3f}, gap "
                     f"{b['gap']['mean']:.3f} nats (max {b['gap']['max']:.3f})")
    return "\n".join(lines)


def format_evaluation(r: dict) -> str:
    """A short plain-text table of an :func:`evaluate_model` result.

    An undefined statistic prints as "undefined" and a non-finite one as what it is (-inf,
    nan), never as a number it is not; the result's warnings follow the table.
    """
    from vaelab.measure.evaluate import se_rule_note
    from vaelab.measure.honest import cell

    ll, bpd, ess = r["log_likelihood"], r["nll_bits_per_dim"], r["ess"]
    ais = (r.get("estimator") or {}).get("unit") == "chain"   # AIS counts chains, not samples
    draws = f"C = {r['num_samples']} AIS chains" if ais else (
        f"k = {r['num_samples']} importance samples")
    lines = [f"{r.get('data', 'data')} {r.get('split', '')}: {r['num_examples']} of "
             f"{r['population_size']} examples, {draws}",
             f"{'quantity':<26}{'mean':>12}{'± SE':>10}"]
    ll_label, elbo_label, gap_label = meaning_labels(r)   # relabelled before padding
    for stats, label, fmt in ((r["elbo"], elbo_label, ".3f"),
                              (r["rate"], "rate KL(q‖p) (nats)", ".3f"),
                              (r["distortion"], "distortion (nats)", ".3f"),
                              (ll, ll_label, ".3f"), (bpd, "NLL (bits/dim)", ".4f"),
                              (r["gap"], gap_label, ".3f")):
        lines.append(f"{label:<26}{cell(stats, 'mean', fmt):>12}{_se_cell(stats, fmt):>10}")
    ess_label = "ESS (of C)" if ais else "ESS (of k)"
    lines.append(f"{ess_label:<26}{cell(ess, 'mean', '.1f'):>12}  min "
                 f"{cell(ess, 'min', '.3g')}, median {cell(ess, 'median', '.3g')}")
    units = "n/a" if r["active_units"] is None else str(r["active_units"])
    lines.append(f"{'active units':<26}{units:>12}  of {r['latent_dim']} "
                 f"(Var_x E[z_u|x] > {r['active_threshold']})")
    lines.append("note: " + se_rule_note(r))
    if ll.get("se") is None and (ll.get("se_data") or 0) > 0:
        lines.append(f"note: ≥: with one draw per example the Monte Carlo part of the ± of "
                     f"{ll_label.split(' (')[0]} (and bits/dim) is undefined; shown is its "
                     f"between-example part, a lower bound on the whole ±")
    return "\n".join(lines + _layer_lines(r) + list(r.get("warnings", ())))


def _se_cell(stats: dict, fmt: str) -> str:
    """The ± cell: the standard error, or "≥" its between-example part when only that is
    defined (k = 1), else what :func:`honest.cell` says (undefined, non-finite)."""
    from vaelab.measure.honest import cell

    part = stats.get("se_data")
    if stats.get("se") is None and isinstance(part, (int, float)) and part > 0:
        return "≥" + format(part, fmt)
    return cell(stats, "se", fmt)


def _layer_lines(r: dict) -> list[str]:
    """A hierarchical model's rate and active units per latent layer."""
    if "rate_per_layer" not in r:
        return []
    lines = []
    for i, (rate, au, size) in enumerate(zip(r["rate_per_layer"], r["active_units_per_layer"],
                                             r["units_per_layer"], strict=True)):
        se = "undefined" if rate["se"] is None else f"{rate['se']:.3f}"
        lines.append(f"{f'  layer {i + 1} rate (nats)':<26}{rate['mean']:>12.3f}{se:>10}  "
                     f"active units {'n/a' if au is None else au} of {size}")
    return lines        # the collapse / zero-rate warning is in r["warnings"] (eval.json)


def trained_with_line(r: dict) -> str:
    """The line saying what objective trained the run (eval.json's ``trained_with``)."""
    tw = r["trained_with"]
    return (f"trained with: objective {tw['objective']} (K = {tw['num_samples']}), β "
            f"{tw['beta']:g} ({tw['kl_schedule']}), free bits {tw['free_bits']:g}; the ELBO "
            f"above is the true one (β = 1, no free bits)")


def training_lines(r: dict) -> list[str]:
    """Notes on how far the evaluated run's training got (eval.json's ``training``): nothing
    for a finished run; an unfinished one says its epochs and how to continue, and one that
    stopped inside its KL warm-up says the KL weight it was trained at."""
    t = r.get("training")
    if not t or t["finished"]:
        return []
    lines = [f"note: unfinished run: {t['epochs_done']} of {t['epochs']} epochs trained; "
             f"continue with `vaelab train --resume {r['run']}`"]
    if t["in_warmup"]:
        beta = r["trained_with"]["beta"]
        lines.append(f"note: its training stopped inside the KL warm-up (KL weight "
                     f"{t['last_kl_weight']:.3g} of β = {beta:g} at epoch {t['epochs_done']}, "
                     f"warm-up {r['trained_with']['kl_warmup_epochs']:g} epochs): the model "
                     f"was fitted to a down-weighted KL, so its bound is not yet what the "
                     f"recipe trains for")
    return lines


def format_detection(results: dict[str, dict], labels) -> str:
    """The table of each score's AUROC, AUPRC and FPR at 95% TPR (an undefined score says
    why), then the count of anomalous and normal examples in ``labels`` (0/1 array [N])."""
    from vaelab.use.scores import SCORE_COLUMNS

    lines = [f"{'score':<18}{'column':<18}{'AUROC':>8}{'AUPRC':>8}{'FPR@95%TPR':>12}"]
    for name, m in results.items():
        column = SCORE_COLUMNS[name]
        if "undefined" in m:
            lines.append(f"{name:<18}{column:<18}{'undefined':>8}  ({m['undefined']})")
        else:
            lines.append(f"{name:<18}{column:<18}{m['auroc']:>8.3f}{m['auprc']:>8.3f}"
                         f"{m['fpr_at_95_tpr']:>12.3f}")
    lines.append(f"{int(labels.sum())} anomalous and {int((labels == 0).sum())} normal examples")
    return "\n".join(lines)


def format_clusters(report: dict) -> str:
    """The clustering metrics of :func:`vaelab.use.cluster.cluster_report` in one line, and a
    note when the linear probe was skipped or ran on fewer than 5 folds."""
    line = (f"accuracy (best one-to-one map) {report['accuracy']:.4f}  NMI {report['nmi']:.4f}"
            f"  ARI {report['ari']:.4f}")
    folds = report["probe_folds"]
    if folds:
        line += f"  linear-probe accuracy ({folds}-fold) {report['probe_accuracy']:.4f}"
    if not folds:
        line += ("\nnote: linear probe skipped: it needs two classes with at least 2 examples "
                 "each (stratified 2-fold); use a larger --limit")
    elif folds < 5:
        line += (f"\nnote: linear probe on {folds} folds, not 5: the smallest class has "
                 f"{folds} examples")
    return line
