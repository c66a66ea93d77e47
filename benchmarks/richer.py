"""Richer posteriors, learned priors and tighter objectives against the plain VAE.

One architecture and budget for every row: MLP encoder D → hidden → q's parameters, MLP decoder
z → reversed hidden → Bernoulli logits, ``--latent`` latent units, batch 128, Adam lr 1e-3,
``--epochs`` epochs on the first ``--train-limit`` Fashion-MNIST training images, dynamically
binarized (a fresh Bernoulli draw per visit), seed 0, no validation split. Rows are trained
one after the other through ``vaelab.fit.train.train`` (the library's own loop, as a user
would run it).

Quality: test log p̂(x) by importance sampling with q as the proposal (k = ``--k``) on a fixed
seeded subset of ``--test`` test images, binarized once with a fixed seed (the same images and
pixels for every row), with its standard error as a sample of the test set (between-image
spread and Monte Carlo), and the true test ELBO. Each row is compared with the plain VAE on the
same images: the paired difference d_i = log p̂_row(x_i) − log p̂_VAE(x_i), its mean and its
standard error sqrt(sd(d)² / n + (Σ s_row,i² + Σ s_VAE,i²) / n²) (between-image spread of
the paired difference plus both rows' Monte Carlo errors). "> 3 SE" says whether the row beats
the VAE by more than three paired standard errors.

Speed: training samples/s, the median over epochs of the loop's own count (steps × batch /
wall time of the epoch, evaluation excluded), and its ratio to the VAE's in the same run. On a
shared machine compare ratios, not absolute numbers; the load average is recorded.

A row whose family/prior/objective this vaelab does not have yet is reported as missing.

Peers (``--peers``, needs pythae: run with benchmarks/setup.sh's .bench/venv): pythae's VAE,
IWAE K=5 and K=50, VAE_IAF (T=2) and VAMP (K=50) at the same architecture, data, epochs, batch
and lr, trained by pythae's BaseTrainer and evaluated by the same vaelab evaluator on the same
images (``peers_richer``: how, and which densities), in the same run as the vaelab rows. A
second table pairs each peer with vaelab's same model: paired Δ log p̂ (vaelab − pythae) and
the samples/s ratio vaelab / pythae; pythae's own ``get_nll`` is run on ``--nll-check`` images
as a cross-check of the evaluation adapter.

Run (writes benchmarks/results/richer-<tag>.{txt,json}):

    nohup nice -n 10 .venv/bin/python benchmarks/richer.py --tag cpu-2core > /tmp/richer.log 2>&1 &
    OMP_NUM_THREADS=1 nohup nice -n 10 .bench/venv/bin/python benchmarks/richer.py \
        --rows 'VAE,IWAE K=5,IAF q (T=2),VampPrior (K=50)' --peers --tag peers-cpu-2core \
        > /tmp/richer-peers.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import command_line, load_average, machine
from vaelab import data as data_
from vaelab.config import ModelConfig, RunConfig, TrainConfig
from vaelab.fit.train import train
from vaelab.measure.evaluate import evaluate_model

RESULTS = Path(__file__).resolve().parent / "results"

#: name → (model overrides, train overrides). The combination row was fixed before any result
#: was seen: the mixture q, the VampPrior and the (stratified) IWAE bound together. Not the IAF
#: q: with it the VampPrior's density is a mixture of 50 flows evaluated at points they did not
#: draw (each needs the flow's inverse, L sweeps of every MADE): 3 samples/s in a trial run.
ROWS: dict[str, tuple[dict, dict]] = {
    "VAE": ({}, {}),
    "IWAE K=5": ({}, {"objective": "iwae", "num_samples": 5}),
    "IWAE K=50": ({}, {"objective": "iwae", "num_samples": 50}),
    "IWAE-DReG K=50": ({}, {"objective": "iwae-dreg", "num_samples": 50}),
    "mixture q (K=4)": ({"family": "mixture", "q_components": 4}, {}),
    "IAF q (T=2)": ({"family": "iaf", "q_flow_steps": 2}, {}),
    "MoG prior (K=10)": ({"prior": "mog", "prior_components": 10}, {}),
    "VampPrior (K=50)": ({"prior": "vamp", "prior_components": 50}, {}),
    "flow prior (T=2)": ({"prior": "flow", "prior_flow_steps": 2}, {}),
    "mixture q + VampPrior + IWAE K=5": ({"family": "mixture", "q_components": 4,
                                          "prior": "vamp", "prior_components": 50},
                                         {"objective": "iwae", "num_samples": 5}),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-limit", type=int, default=6000, help="training images (first N)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--hidden", default="512,256")
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--test", type=int, default=300, help="test images (seeded subset)")
    p.add_argument("--k", type=int, default=500, help="importance samples for log p̂(x)")
    p.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="", help="results/richer-<tag>.{txt,json}; '' = no files")
    p.add_argument("--peers", nargs="?", const="all", default="",
                   help="pythae peer rows: comma-separated names from peers_richer.PEERS, or "
                        "'all' (the bare flag)")
    p.add_argument("--nll-check", type=int, default=10,
                   help="test images for the cross-check against pythae's own get_nll (0: none)")
    return p.parse_args(argv)


def config_for(name: str, args: argparse.Namespace) -> RunConfig | str:
    """The row's RunConfig, or why it cannot run in this vaelab (a missing name or option)."""
    model, trainer = ROWS[name]
    try:
        mc = ModelConfig(latent_dim=args.latent,
                         hidden=tuple(int(h) for h in args.hidden.split(",")), **model)
        tc = TrainConfig(data="fashion-mnist", epochs=args.epochs, batch_size=args.batch_size,
                         lr=1e-3, seed=args.seed, val_fraction=0.0, binarize="dynamic",
                         compile=False, **trainer)
        return RunConfig(mc, tc)
    except (TypeError, ValueError) as exc:
        return f"missing: {exc}"


def test_images(args: argparse.Namespace) -> torch.Tensor:
    """The fixed test subset: ``--test`` images chosen and binarized with fixed seeds."""
    test = data_.load_dataset("fashion-mnist", "test")
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(1234))
    subset = test.subset(order[:args.test].sort().values)
    return data_.static_binarize(subset, 4321).x.float()


def run_row(name: str, config: RunConfig, train_ds, x_test, args, workdir: Path) -> dict:
    start = time.perf_counter()
    result = train(config, workdir / name.replace(" ", "_").replace("/", "_"), progress=False,
                   dataset=train_ds, log=None)
    train_seconds = time.perf_counter() - start
    speeds = [row["samples_per_s"] for row in result.metrics]
    return {"name": name, "config": config.to_dict(),
            "samples_per_s": statistics.median(speeds), "samples_per_s_epochs": speeds,
            "train_seconds": round(train_seconds, 1),
            "train_elbo_last_epoch": result.metrics[-1]["train_elbo"],
            **evaluate_row(result.model.eval(), x_test, args)}


def evaluate_row(model, x_test, args) -> dict:
    """The row's test measures: vaelab's evaluator, the same images, k and seed for every row
    (a vaelab model or a pythae peer behind ``peers_richer.PythaeAsVaelab``)."""
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed + 99)
        report = evaluate_model(model, x_test, num_samples=args.k, batch_size=100,
                                per_example=True)
    eval_seconds = time.perf_counter() - start
    per, ll = report["per_example"], report["log_likelihood"]
    return {"eval_seconds": round(eval_seconds, 1),
            "test_elbo": report["elbo"]["mean"], "test_log_likelihood": ll["mean"],
            "test_log_likelihood_se": math.hypot(ll["std"] / math.sqrt(len(x_test)),
                                                 ll["se_mc"]),
            "ess_mean": report["ess"]["mean"],
            "active_units": report["active_units"],
            "per_example": {"log_likelihood": per["log_likelihood"],
                            "ll_stderr": per["ll_stderr"], "elbo": per["elbo"]}}


def run_peer(name: str, train_ds, x_test, args) -> dict:
    """A pythae peer row: pythae's model at this architecture, pythae's trainer, our evaluator."""
    import peers_richer

    hidden = [int(h) for h in args.hidden.split(",")]
    model, config = peers_richer.build_peer(name, x_test.shape[1], hidden, args.latent,
                                            args.seed)
    trained = peers_richer.train_peer(model, train_ds.x.float(), epochs=args.epochs,
                                      batch_size=args.batch_size, lr=1e-3, seed=args.seed)
    row = {"name": name, "peer": True, "same_model_as": peers_richer.SAME_MODEL[name],
           "config": {"class": type(model).__name__, **config.to_dict()}, **trained,
           **evaluate_row(peers_richer.PythaeAsVaelab(model), x_test, args)}
    if args.nll_check:
        n = min(args.nll_check, x_test.shape[0])
        row["get_nll_check"] = peers_richer.get_nll_check(model, x_test[:n], args.k)
    return row


def paired(row: dict, ref: dict) -> tuple[float, float]:
    """Mean paired difference of log p̂ (row − reference) and its standard error."""
    a = torch.tensor(row["per_example"]["log_likelihood"], dtype=torch.float64)
    b = torch.tensor(ref["per_example"]["log_likelihood"], dtype=torch.float64)
    sa = torch.tensor(row["per_example"]["ll_stderr"], dtype=torch.float64).nan_to_num(0)
    sb = torch.tensor(ref["per_example"]["ll_stderr"], dtype=torch.float64).nan_to_num(0)
    d, n = a - b, a.numel()
    se_data = float(d.std()) / math.sqrt(n)
    se_mc = float((sa.square().sum() + sb.square().sum()).sqrt()) / n
    return float(d.mean()), math.hypot(se_data, se_mc)


def table(rows: list[dict], missing: dict[str, str]) -> str:
    ref = next((r for r in rows if r["name"] == "VAE"), None)
    w = max([28, *(len(r["name"]) + 2 for r in rows)])
    head = (f"{'row':<{w}}{'log p̂(x)':>10}{'± SE':>7}{'Δ vs VAE':>10}{'± paired':>10}"
            f"{'> 3 SE':>8}{'ELBO':>10}{'samples/s':>11}{'× VAE':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        delta, se = paired(r, ref) if ref is not None and r is not ref else (math.nan, math.nan)
        beats = "" if math.isnan(delta) else ("yes" if delta > 3 * se else "no")
        speed = r["samples_per_s"] / ref["samples_per_s"] if ref is not None else math.nan
        r.update(delta_vs_vae=delta, delta_se=se, beats_vae_by_3se=beats or None,
                 speed_ratio_vs_vae=speed)
        lines.append(f"{r['name']:<{w}}{r['test_log_likelihood']:>10.2f}"
                     f"{r['test_log_likelihood_se']:>7.2f}"
                     + (f"{'':>10}{'':>10}{'':>8}" if math.isnan(delta) else
                        f"{delta:>+10.2f}{se:>10.2f}{beats:>8}")
                     + f"{r['test_elbo']:>10.2f}{r['samples_per_s']:>11.0f}{speed:>7.2f}")
    for name, why in missing.items():
        lines.append(f"{name:<{w}}  {why}")
    if any(r.get("peer") for r in rows):
        lines += ["", peer_table(rows)]
    return "\n".join(lines)


def peer_table(rows: list[dict]) -> str:
    """Each pythae peer against vaelab's same model: paired Δ log p̂ (vaelab − pythae) ± SE,
    samples/s of both and the ratio (target: Δ > 0, ratio ≥ 1.5), and the get_nll check."""
    by_name = {r["name"]: r for r in rows}
    head = (f"{'vaelab row vs pythae peer':<44}{'Δ log p̂':>9}{'± SE':>7}{'> 3 SE':>8}"
            f"{'vaelab/s':>10}{'pythae/s':>10}{'ratio':>7}{'≥ 1.5':>7}")
    lines = ["Same model, vaelab − pythae (paired on the same images):", head,
             "-" * len(head)]
    checks = []
    for peer in (r for r in rows if r.get("peer")):
        c = peer.get("get_nll_check")
        if c:
            checks.append(f"  {peer['name']}: adapter {c['adapter']:.3f}, pythae get_nll "
                          f"{c['pythae_get_nll']:.3f}, max |difference| per image "
                          f"{c['max_abs_difference']:.1e}; {c['images']} images, k = {c['k']}")
        mine = by_name.get(peer["same_model_as"])
        if mine is None:
            lines.append(f"{peer['same_model_as'] + ' vs ' + peer['name']:<44}"
                         "  (vaelab row not in this run)")
            continue
        delta, se = paired(mine, peer)
        ratio = mine["samples_per_s"] / peer["samples_per_s"]
        sig = "yes" if delta > 3 * se else ("worse" if delta < -3 * se else "no")
        peer.update(vaelab_minus_pythae=delta, vaelab_minus_pythae_se=se,
                    speed_ratio_vaelab_over_pythae=ratio)
        lines.append(f"{mine['name'] + ' vs ' + peer['name']:<44}{delta:>+9.2f}{se:>7.2f}"
                     f"{sig:>8}{mine['samples_per_s']:>10.0f}{peer['samples_per_s']:>10.0f}"
                     f"{ratio:>7.2f}{'yes' if ratio >= 1.5 else 'no':>7}")
    if checks:
        lines += ["Cross-check of the evaluation adapter against pythae's own get_nll (mean "
                  "log p̂ over the first test images, both seeded alike per image so they "
                  "weigh the same draws):", *checks]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.rows.split(",") if n.strip()] or list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"--rows: unknown {unknown}; expected names from {list(ROWS)}")
    peer_names = _peer_names(args.peers)
    started, load_start = time.time(), load_average()
    train_ds = data_.load_dataset("fashion-mnist", "train", limit=args.train_limit)
    x_test = test_images(args)
    rows, missing = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, is_peer in _schedule(names, peer_names):
            config = None if is_peer else config_for(name, args)
            if isinstance(config, str):
                missing[name] = config
                print(f"[richer] {name}: {config}", flush=True)
                continue
            try:
                rows.append(run_peer(name, train_ds, x_test, args) if is_peer else
                            run_row(name, config, train_ds, x_test, args, Path(tmp)))
            except Exception as exc:   # one broken row (or a missing pythae) is reported
                missing[name] = f"failed: {type(exc).__name__}: {exc}"
                print(f"[richer] {name}: {missing[name]}", flush=True)
                continue
            r = rows[-1]
            print(f"[richer] {name}: log p̂ {r['test_log_likelihood']:.2f}, ELBO "
                  f"{r['test_elbo']:.2f}, {r['samples_per_s']:.0f} samples/s, train "
                  f"{r['train_seconds']:.0f} s, eval {r['eval_seconds']:.0f} s", flush=True)
            write(args, rows, missing, started, load_start, done=False)
    print(write(args, rows, missing, started, load_start, done=True))
    return 0


def _schedule(names: list[str], peer_names: list[str]) -> list[tuple[str, bool]]:
    """(name, is_peer) in run order: each vaelab row followed at once by its pythae peer (so
    the pair trains under the same machine load), then any peer whose row is not run."""
    from_peer = {}
    if peer_names:
        from peers_richer import SAME_MODEL

        from_peer = {p: SAME_MODEL[p] for p in peer_names}
    order: list[tuple[str, bool]] = []
    for name in names:
        order.append((name, False))
        order += [(p, True) for p, row in from_peer.items() if row == name]
    return order + [(p, True) for p, row in from_peer.items() if row not in names]


def _peer_names(spec: str) -> list[str]:
    """--peers: '' → none, 'all' → every peer, else the comma-separated names (checked)."""
    if not spec:
        return []
    from peers_richer import PEERS

    names = list(PEERS) if spec == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise SystemExit(f"--peers: unknown {unknown}; expected names from {list(PEERS)}")
    return names


def write(args, rows: list[dict], missing: dict[str, str], started: float,
          load_start: list[float], *, done: bool) -> str:
    """The table (and, with --tag, the results files, rewritten after every row)."""
    text = _header(args, started, load_start) + "\n\n" + table(rows, missing)
    if not done:
        text += "\n(partial: the run is still going)"
    if args.tag:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"richer-{args.tag}.txt").write_text(text + "\n")
        payload = {"settings": vars(args), "command": command_line(), "machine": machine(),
                   "load_average_start": load_start, "load_average_end": load_average(),
                   "minutes": round((time.time() - started) / 60, 1), "complete": done,
                   "rows": rows, "missing": missing}
        (RESULTS / f"richer-{args.tag}.json").write_text(json.dumps(payload, indent=1) + "\n")
    return text


def _header(args, started: float, load_start: list[float]) -> str:
    peers = (f"peers: {args.peers} (pythae {_pythae_version()}; pythae's BaseTrainer, same "
             f"data/epochs/batch/lr; evaluated by vaelab's evaluator through "
             f"peers_richer.PythaeAsVaelab)\n") if args.peers else ""
    return (f"vaelab richer-models benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
            f", {round((time.time() - started) / 60, 1)} min)\n"
            f"command: {command_line()}\nmachine: {machine()}; load average start {load_start}, "
            f"end {load_average()}\n"
            f"sizes (reduced from the published protocol's 784-512-256, 32 latents, k = 5000 on "
            f"2,000 images,"
            f" many epochs): MLP {args.hidden}, {args.latent} latents, {args.train_limit} "
            f"training images, {args.epochs} epochs, batch {args.batch_size}, Adam 1e-3; test "
            f"log p̂ with k = {args.k} on {args.test} seeded test images (binarized once)\n"
            f"{peers}Δ vs VAE: paired difference of log p̂ on the same images, ± its standard "
            f"error (between-image + Monte Carlo); '> 3 SE': Δ > 3 paired SE")


def _pythae_version() -> str:
    from peers import availability

    return availability()["pythae"]


if __name__ == "__main__":
    raise SystemExit(main())
