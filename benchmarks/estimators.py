"""log p(x) estimators: estimate vs cost, against a BDMC-checked AIS reference.

On a Fashion-MNIST VAE (the default 784-512-256-20 Bernoulli model, trained briefly here, or
a run given with --run) and a fixed, seeded subset of statically binarized test images, run
side by side in one process:

* IS with the encoder's q, k = 10 … 5000;
* IS with the refined q* (per-example Adam on the ELBO) and with the defensive mixture
  ½ q* + ½ q_φ, several k;
* forward AIS from q with HMC, several schedule lengths T (C chains, L leapfrog steps);
* the reference: the longest forward AIS; its trust comes from BDMC on data simulated from the
  model at the same schedule (forward lower, reverse upper bound, the gap).

Per row: mean log p̂ over the images, the paired difference to the reference ± its standard
error across images, the cost per image (evaluations of log p(x, z), forward and with gradient,
a gradient evaluation being about 3x a forward one) and wall seconds on this machine. Then the
goal: the cheapest estimator within 0.2 nat of the reference (mean paired difference)
against the cheapest encoder-q IS that gets as close.

    nohup nice -n 10 .venv/bin/python benchmarks/estimators.py \
        --out benchmarks/results/estimators > /tmp/estimators.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from vaelab import data
from vaelab.measure import ais, bdmc
from vaelab.measure.evaluate import log_likelihood
from vaelab.measure.proposals import build_proposal


def get_model(run: Path | None, work: Path, epochs: int):
    """A trained model: ``run`` if given, else the default model trained ``epochs`` epochs."""
    from vaelab.fit.train import train
    from vaelab.use.trained import load

    if run is None:
        run = work / "model"
        if not (run / "model.safetensors").exists():
            config = {"train": {"data": "fashion-mnist", "epochs": epochs, "seed": 0}}
            t = time.perf_counter()
            train(config, run, overwrite=True, progress=False, log=None)
            print(f"trained {epochs} epochs in {time.perf_counter() - t:.0f} s", flush=True)
    return load(run).model.eval(), str(run)


def test_images(n: int, seed: int) -> torch.Tensor:
    """n test images chosen by a seeded permutation, statically binarized with the seed."""
    ds = data.static_binarize(data.load_dataset("fashion-mnist", "test"), seed)
    idx = torch.randperm(ds.x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return ds.x[idx]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def is_row(model, x, k: int, proposal: str, steps: int = 100, samples: int = 8) -> dict:
    """IS with ``proposal``; refined/mixture proposals spend at most ``steps`` Adam steps of
    ``samples`` draws each (``steps`` × ``samples`` gradient evaluations) per example."""
    torch.manual_seed(k)

    def run():
        with torch.no_grad():
            q = model.encode(x)
        prop, grads = build_proposal(proposal, model, q, x, steps=steps,
                                     optimizer_samples=samples)
        with torch.no_grad():
            return log_likelihood(model, prop, x, k).log_likelihood, grads

    (est, grads), sec = timed(run)
    row = {"estimator": f"IS {proposal}", "k": k, "values": est, "forward": k,
           "gradient": grads, "seconds": sec}
    if proposal != "encoder":
        row["refine"] = f"{steps}x{samples}"
    return row


def ais_row(model, x, steps: int, chains: int, leapfrog: int) -> dict:
    torch.manual_seed(steps)

    def run():
        with torch.no_grad():
            q = model.encode(x)
        return ais.ais(model, x, init=q, steps=steps, chains=chains, leapfrog=leapfrog)

    r, sec = timed(run)
    return {"estimator": "AIS from q", "T": steps, "C": chains, "L": leapfrog,
            "values": r.log_likelihood, "forward": 0, "gradient": r.gradient_evaluations,
            "seconds": sec, "acceptance": float(r.acceptance.mean())}


def sandwich(model, n: int, steps: int, chains: int, leapfrog: int, seed: int) -> dict:
    x, z = bdmc.simulate(model, n, torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    r, sec = timed(lambda: bdmc.bdmc(model, x, z, init=model.encode, chains=chains,
                                     steps=steps, leapfrog=leapfrog))
    return {**r.summary(), "seconds": sec}


def summarize(row: dict, reference: torch.Tensor) -> dict:
    v = row.pop("values").double()
    d = v - reference
    n = v.numel()
    return {**row, "mean": float(v.mean()), "diff_to_reference": float(d.mean()),
            "diff_se": float(d.std() / math.sqrt(n)), "diff_min": float(d.min()),
            "evaluations": row["forward"] + row["gradient"],
            "forward_equivalents": row["forward"] + GRADIENT_COST * row["gradient"]}


#: A gradient evaluation of log p(x, z) costs about this many forward ones (forward + backward).
GRADIENT_COST = 3


def target(rows: list[dict], tol: float) -> dict:
    """Cheapest row within ``tol`` nat of the reference vs cheapest encoder-q IS row."""
    close = [r for r in rows if abs(r["diff_to_reference"]) <= tol and not r.get("reference")]
    enc = [r for r in rows if r["estimator"] == "IS encoder"]
    enc_close = [r for r in enc if abs(r["diff_to_reference"]) <= tol]
    best = min(close, key=lambda r: r["evaluations"], default=None)
    best_is = min(enc_close, key=lambda r: r["evaluations"], default=None)
    out = {"tolerance_nats": tol, "cheapest_within": best, "cheapest_encoder_is_within":
           best_is, "closest_encoder_is": max(enc, key=lambda r: r["diff_to_reference"])}
    if best and best_is:
        out["evaluation_ratio"] = best_is["evaluations"] / best["evaluations"]
        cheapest = min(close, key=lambda r: r["forward_equivalents"])
        out["cheapest_within_forward_equivalents"] = cheapest
        out["forward_equivalent_ratio"] = (best_is["forward_equivalents"]
                                           / cheapest["forward_equivalents"])
    return out


def table(rows: list[dict]) -> str:
    head = (f"{'estimator':<14}{'setting':<18}{'mean log p':>11}{'- ref':>9}{'± se':>7}"
            f"{'fwd evals':>10}{'grad evals':>11}{'seconds':>9}")
    lines = [head]
    for r in rows:
        setting = (f"k={r['k']}" if "k" in r else f"T={r['T']} C={r['C']} L={r['L']}")
        if "refine" in r:
            setting += f" ({r['refine']})"
        lines.append(f"{r['estimator']:<14}{setting:<18}{r['mean']:>11.3f}"
                     f"{r['diff_to_reference']:>9.3f}{r['diff_se']:>7.3f}{r['forward']:>10}"
                     f"{r['gradient']:>11}{r['seconds']:>9.1f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="a trained run (default: train one here)")
    p.add_argument("--work", type=Path, default=Path("/tmp/vaelab-bench-estimators"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n", type=int, default=40, help="test images")
    p.add_argument("--ks", default="10,50,100,500,1000,5000")
    p.add_argument("--refined-ks", default="10,100,1000")
    p.add_argument("--refine-budgets", default="100x8",
                   help="refinement budgets STEPSxDRAWS for the refined/mixture rows, comma "
                        "list (each costs at most STEPS*DRAWS gradient evaluations)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--ais-steps", default="10,30,100,300")
    p.add_argument("--reference-steps", type=int, default=1000)
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--leapfrog", type=int, default=5)
    p.add_argument("--bdmc-n", type=int, default=10, help="simulated examples for BDMC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="results prefix (.json, .txt)")
    args = p.parse_args()
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    torch.set_num_threads(args.threads)
    model, run = get_model(args.run, args.work, args.epochs)
    model.requires_grad_(False)
    x = test_images(args.n, args.seed)
    start = time.perf_counter()
    rows = []
    for k in ints(args.ks):
        rows.append(is_row(model, x, k, "encoder"))
        print(rows[-1]["estimator"], k, f"{rows[-1]['seconds']:.1f}s", flush=True)
    budgets = [tuple(int(v) for v in b.split("x")) for b in args.refine_budgets.split(",")]
    for steps, samples in budgets:
        for proposal in ("refined", "mixture"):
            for k in ints(args.refined_ks):
                rows.append(is_row(model, x, k, proposal, steps, samples))
                print(proposal, k, steps, samples, f"{rows[-1]['seconds']:.1f}s", flush=True)
    for steps in [*ints(args.ais_steps), args.reference_steps]:
        rows.append(ais_row(model, x, steps, args.chains, args.leapfrog))
        print("AIS", steps, f"{rows[-1]['seconds']:.1f}s", flush=True)
    rows[-1]["reference"] = True
    reference = rows[-1]["values"].double()
    sandwiches = {}
    for steps in (ints(args.ais_steps)[-1], args.reference_steps):
        sandwiches[str(steps)] = sandwich(model, args.bdmc_n, steps, args.chains,
                                          args.leapfrog, args.seed)
        print("BDMC", steps, sandwiches[str(steps)]["gap"], flush=True)
    rows = [summarize(r, reference) for r in rows]
    result = {"command": "python benchmarks/estimators.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                  if v is not None and k not in ("work",)),
              "model": run, "images": args.n, "machine": platform.processor() or
              platform.machine(), "threads": torch.get_num_threads(), "rows": rows,
              "bdmc": sandwiches, "target_0.2": target(rows, 0.2),
              "total_seconds": time.perf_counter() - start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1))
    text = [table(rows), "", "BDMC on simulated data (nats): " + json.dumps(sandwiches),
            "", "target: " + json.dumps(result["target_0.2"]), "", result["command"]]
    Path(f"{args.out}.txt").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
