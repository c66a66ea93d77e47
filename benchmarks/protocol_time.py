"""Time of the standard log p(x) protocol, vaelab vs pythae's get_nll, same model.

The standard protocol: importance sampling with the encoder's q, k = 5000, per test image. On
the same model weights (the estimators benchmark's model: default 784-512-256-20 Bernoulli VAE,
trained ``--epochs`` here, or ``--run``) and the same N seeded, statically binarized test
images, one process, ``--threads`` torch threads:

* vaelab: ``vaelab.measure.evaluate.evaluate_model`` (what ``vaelab evaluate`` runs: ELBO, rate,
  distortion and log p̂ with k samples, ``--batch-size`` images per batch);
* pythae: ``VAE.get_nll(x, n_samples=k, batch_size=b)`` on a pythae VAE holding copies of the
  same networks (``peers.pythae_vae_from_vaelab``: the same q, prior and decoder), for each
  ``--pythae-batch`` b (pythae's samples per pass; its default is 100). get_nll loops over the
  images one at a time and returns their mean; it is called per image here (the same work) to
  get per-image values for the paired check.

Reported: seconds per image for each (median of ``--repeats`` interleaved repetitions), the
ratio pythae / vaelab, both mean estimates and their paired difference ± its standard error
(from vaelab's per-image delta-method standard errors, ×√2 for pythae's independent draws),
and the extrapolation of both to all 10,000 test images, labelled as an extrapolation.

    OMP_NUM_THREADS=1 nohup nice -n 10 .bench/venv/bin/python benchmarks/protocol_time.py \\
        --out benchmarks/results/protocol-time-pythae > /tmp/protocol.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from common import command_line, load_average, machine
from estimators import get_model, test_images
from peers import _quiet, availability, pythae_log_likelihood, pythae_vae_from_vaelab
from vaelab.measure.evaluate import evaluate_model

FULL_TEST_SET = 10_000


def time_vaelab(model, x: torch.Tensor, k: int, batch_size: int, seed: int) -> dict:
    torch.manual_seed(seed)
    t = time.perf_counter()
    report = evaluate_model(model, x, num_samples=k, batch_size=batch_size, per_example=True)
    seconds = time.perf_counter() - t
    per = report["per_example"]
    return {"seconds": seconds, "log_likelihood": per["log_likelihood"],
            "ll_stderr": per["ll_stderr"]}


def time_pythae(model, x: torch.Tensor, k: int, batch_size: int, seed: int) -> dict:
    torch.manual_seed(seed)
    values = []
    t = time.perf_counter()
    with _quiet():
        for i in range(x.shape[0]):
            values.append(pythae_log_likelihood(model, x[i:i + 1], k, batch_size))
    return {"seconds": time.perf_counter() - t, "log_likelihood": values}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="a trained run (default: train one here)")
    p.add_argument("--work", type=Path, default=Path("/tmp/vaelab-bench-estimators"))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--n", type=int, default=20, help="test images")
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=10, help="vaelab's images per batch")
    p.add_argument("--pythae-batch", default="100,1000", help="get_nll batch_size values")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="results prefix (.json, .txt)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = load_average()
    model, run = get_model(args.run, args.work, args.epochs)
    x = test_images(args.n, args.seed).float()
    pyt = pythae_vae_from_vaelab(model)
    batches = [int(b) for b in args.pythae_batch.split(",")]
    contenders = {"vaelab": lambda s: time_vaelab(model, x, args.k, args.batch_size, s)}
    for b in batches:
        contenders[f"pythae get_nll batch_size={b}"] = (
            lambda s, b=b: time_pythae(pyt, x, args.k, b, s))
    # warm-up on one image each, then interleaved repetitions
    time_vaelab(model, x[:1], args.k, 1, 0)
    time_pythae(pyt, x[:1], args.k, batches[0], 0)
    results = {name: [] for name in contenders}
    for r in range(args.repeats):
        names = list(contenders)
        for name in names[r % len(names):] + names[:r % len(names)]:
            results[name].append(contenders[name](args.seed + 100 + r))
            print(f"[protocol] {name} rep {r}: {results[name][-1]['seconds']:.1f} s", flush=True)
    summary = summarize(results, args.n)
    text = report(args, summary, run, load_start)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".txt").write_text(text + "\n")
        payload = {"settings": {k: str(v) for k, v in vars(args).items()},
                   "command": command_line(),
                   "machine": machine(), "peers": availability(), "run": run,
                   "load_average_start": load_start, "load_average_end": load_average(),
                   "summary": summary, "results": results}
        args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    return 0


def summarize(results: dict, n: int) -> dict:
    mine = results["vaelab"]
    se = torch.tensor(mine[0]["ll_stderr"], dtype=torch.float64).nan_to_num(0)
    out = {}
    for name, reps in results.items():
        secs = [r["seconds"] for r in reps]
        per_image = statistics.median(secs) / n
        values = torch.tensor(reps[0]["log_likelihood"], dtype=torch.float64)
        row = {"seconds_per_image": per_image, "seconds_reps": secs,
               "mean_log_likelihood": float(values.mean()),
               "extrapolated_full_test_set_s": per_image * FULL_TEST_SET}
        if name != "vaelab":
            d = values - torch.tensor(mine[0]["log_likelihood"], dtype=torch.float64)
            se_d = math.hypot(float(d.std()) / math.sqrt(n),
                              math.sqrt(2) * float(se.square().sum().sqrt()) / n)
            row.update(ratio_seconds_vs_vaelab=per_image / out["vaelab"]["seconds_per_image"],
                       difference_vs_vaelab=float(d.mean()), difference_se=se_d)
        out[name] = row
    return out


def report(args, summary: dict, run: str, load_start: list[float]) -> str:
    lines = [f"Standard protocol time, vaelab evaluate vs pythae get_nll, same weights "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
             f"command: {command_line()}", f"machine: {machine()}; load average start "
             f"{load_start}, end {load_average()}",
             f"model: {run} (default 784-512-256-20 Bernoulli VAE, {args.epochs} epoch(s)); "
             f"{args.n} seeded test images (statically binarized), k = {args.k}; vaelab batch "
             f"{args.batch_size} images; median of {args.repeats} interleaved repetitions", "",
             f"{'contender':<32}{'s/image':>9}{'× vaelab':>10}{'mean log p̂':>13}"
             f"{'Δ vs vaelab':>13}{'± SE':>7}{'10,000 images (extrap.)':>26}"]
    lines.append("-" * len(lines[-1]))
    for name, r in summary.items():
        ratio = r.get("ratio_seconds_vs_vaelab")
        diff, se = r.get("difference_vs_vaelab"), r.get("difference_se")
        full = r["extrapolated_full_test_set_s"]
        ratio_s = "" if ratio is None else f"{ratio:.2f}"
        diff_s = "" if diff is None else f"{diff:+.3f}"
        se_s = "" if se is None else f"{se:.3f}"
        full_s = f"{full:.0f} s ({full / 60:.0f} min)"
        lines.append(f"{name:<32}{r['seconds_per_image']:>9.3f}{ratio_s:>10}"
                     f"{r['mean_log_likelihood']:>13.2f}{diff_s:>13}{se_s:>7}{full_s:>26}")
    lines.append("The last column is an extrapolation (s/image × 10,000), not a measurement.")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
