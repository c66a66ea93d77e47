"""One latent layer vs hierarchies (bottom-up, ladder) on dynamically binarized Fashion-MNIST.

The hierarchies' quality benchmark, reduced to what a shared 2-core CPU finishes in ~30
minutes. Every
row is trained by ``vaelab.fit.train.train`` with the same data (the first ``--limit``
training images, dynamically binarized), optimizer, epochs and seed, then evaluated in this
process on the same fixed test subset (the first ``--n-test`` test images, one seeded static
binarization) with the same k: importance-sampled log p̂(x) per example with the encoder's q,
so rows are compared by *paired* differences (mean ± SE of the per-example difference against
the one-layer row). Also: ELBO, the rate of every layer (Monte Carlo), active units per layer
(Var_x of the plug-in mean of q > 0.01, Burda et al. 2016), parameter count and training
samples/s (from metrics.jsonl; the one-layer model takes the hand-derived fast path, the
hierarchies autograd, so speeds are indicative only on a shared machine).

    nohup nice -n 10 .venv/bin/python benchmarks/hierarchical.py > /tmp/hier.log 2>&1 &

Writes benchmarks/results/hierarchical.json and .txt (with the command line).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from vaelab import data
from vaelab.fit.train import train
from vaelab.measure.evaluate import active_units, log_likelihood
from vaelab.model.hierarchical import HierarchicalVAE

ROWS = {   # id: (latent sizes bottom → top, hierarchy)
    "one": ((32,), "bottom-up"),
    "bottom-up-2": ((64, 32), "bottom-up"),
    "ladder-2": ((64, 32), "ladder"),
    "ladder-3": ((64, 32, 16), "ladder"),
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=10_000, help="training images")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--hidden", default="256,128")
    p.add_argument("--n-test", type=int, default=500, help="fixed test subset size")
    p.add_argument("--k", type=int, default=500, help="importance samples for log p̂(x)")
    p.add_argument("--objectives", default="elbo", help="comma list: elbo,iwae")
    p.add_argument("--iwae-k", type=int, default=5)
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--out", default="benchmarks/results/hierarchical")
    p.add_argument("--runs", default="/tmp/vaelab-hier-runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads (1 when another process shares the 2 cores: "
                        "oversubscribed OpenMP threads slow training by 10x or more)")
    p.add_argument("--kl-warmup", type=float, default=0.0,
                   help="epochs of linear KL warm-up (0: none, the default configuration)")
    return p.parse_args()


def test_subset(n: int, seed: int) -> torch.Tensor:
    """The first n Fashion-MNIST test images, binarized once with a fixed seed, [n, 784]."""
    ds = data.load_dataset("fashion-mnist", "test")
    x = ds.x[:n].reshape(n, -1).float()
    g = torch.Generator().manual_seed(seed + 12345)
    return torch.bernoulli(x.clamp(0, 1), generator=g)


def layer_measures(model, q, x: torch.Tensor) -> dict:
    """Rates per layer (MC, 20 draws) and active units per layer for one batch's q."""
    if isinstance(model, HierarchicalVAE):
        rates = model.layer_rates(q, 20)
        means = q.layer_means()
    else:
        rates = torch.distributions.kl_divergence(q, model.prior())[:, None]
        means = [q.mean]
    return {"rates": rates, "means": means}


def evaluate(model, x: torch.Tensor, k: int, seed: int) -> dict:
    """Per-example log p̂(x) (k samples), ELBO (10 samples), rates and means, in batches."""
    torch.manual_seed(seed)
    model.eval()
    ll, el, rates, means = [], [], [], None
    from vaelab.infer.objectives import elbo_terms
    for xb in x.split(100):
        with torch.no_grad():
            q = model.encode(xb)
            ll.append(log_likelihood(model, q, xb, k).log_likelihood)
            el.append(elbo_terms(model, q, xb, 10).elbo)
            m = layer_measures(model, q, xb)
        rates.append(m["rates"])
        means = m["means"] if means is None else [
            torch.cat([a, b]) for a, b in zip(means, m["means"], strict=True)]
    rates = torch.cat(rates)
    return {"ll": torch.cat(ll).double(), "elbo": torch.cat(el).double(),
            "rate_per_layer": rates.mean(0).tolist(),
            "active_units_per_layer": [active_units(mu)[0] for mu in means],
            "units_per_layer": [mu.shape[1] for mu in means]}


def run_row(name: str, objective: str, args, x_test: torch.Tensor) -> dict:
    sizes, hierarchy = ROWS[name]
    latent = sizes[0] if len(sizes) == 1 else list(sizes)
    hidden = [int(h) for h in args.hidden.split(",")]
    train_cfg = {"data": "fashion-mnist", "limit": args.limit, "epochs": args.epochs,
                 "seed": args.seed, "val_fraction": 0.05, "device": "cpu", "compile": False,
                 "kl_warmup_epochs": args.kl_warmup}
    if objective == "iwae":
        train_cfg.update(objective="iwae", num_samples=args.iwae_k)
    config = {"model": {"latent_dim": latent, "hidden": hidden, "hierarchy": hierarchy},
              "train": train_cfg}
    out = Path(args.runs) / f"{name}-{objective}-warmup{args.kl_warmup:g}"
    start = time.perf_counter()
    result = train(config, out, overwrite=True, progress=False, log=lambda _s: None)
    seconds = time.perf_counter() - start
    ev = evaluate(result.model, x_test, args.k, args.seed)
    params = sum(p.numel() for p in result.model.parameters())
    speeds = [m["samples_per_s"] for m in result.metrics if m.get("samples_per_s")]
    label = f"{name} ({','.join(map(str, sizes))})"
    return {"row": label, "objective": objective, "latent_sizes": list(sizes),
            "hierarchy": hierarchy if len(sizes) > 1 else None, "parameters": params,
            "train_seconds": seconds, "train_samples_per_s": sum(speeds) / len(speeds),
            "final_train_elbo": result.metrics[-1]["train_elbo"],
            "final_val_elbo": result.metrics[-1]["val_elbo"], **ev}


def paired(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = a - b
    return float(d.mean()), float(d.std() / math.sqrt(d.numel()))


def table(rows: list[dict], args) -> str:
    lines = [f"{'row':<30}{'obj':>6}{'params':>10}{'log p̂(x)':>11}{'± SE':>7}"
             f"{'Δ vs 1 layer (paired)':>24}{'ELBO':>10}  rate per layer (nats)"
             f"      active units per layer   samples/s"]
    base = {r["objective"]: r for r in rows if len(r["latent_sizes"]) == 1}
    for r in rows:
        ll = r["ll"]
        se = float(ll.std() / math.sqrt(ll.numel()))
        ref = base.get(r["objective"])
        delta = "—" if ref is None or ref is r else "{:+.2f} ± {:.2f}".format(
            *paired(ll, ref["ll"]))
        rates = " / ".join(f"{v:.1f}" for v in r["rate_per_layer"])
        au = " / ".join(f"{a}/{u}" for a, u in zip(r["active_units_per_layer"],
                                                   r["units_per_layer"], strict=True))
        lines.append(f"{r['row']:<30}{r['objective']:>6}{r['parameters']:>10,}"
                     f"{float(ll.mean()):>11.2f}{se:>7.2f}{delta:>24}"
                     f"{float(r['elbo'].mean()):>10.2f}  {rates:<26}{au:<25}"
                     f"{r['train_samples_per_s']:>10.0f}")
    return "\n".join(lines)


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    x_test = test_subset(args.n_test, args.seed)
    rows = []
    for objective in args.objectives.split(","):
        for name in args.rows.split(","):
            rows.append(run_row(name, objective, args, x_test))
            print(table(rows, args), flush=True)
    text = table(rows, args)
    command = "nice -n 10 .venv/bin/python " + " ".join(sys.argv)
    header = (f"# {command}\n# Fashion-MNIST, dynamic binarization, first {args.limit} training "
              f"images, {args.epochs} epochs, batch 128, Adam 1e-3, hidden {args.hidden}, KL "
              f"warm-up {args.kl_warmup} epochs; "
              f"test: first {args.n_test} test images (one seeded binarization), log p̂ with "
              f"k = {args.k}; Δ = paired mean difference of per-example log p̂ ± its SE.\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".txt").write_text(header + text + "\n")
    dump = [{**{k: v for k, v in r.items() if k not in ("ll", "elbo")},
             "log_likelihood_mean": float(r["ll"].mean()),
             "log_likelihood_se": float(r["ll"].std() / math.sqrt(r["ll"].numel())),
             "elbo_mean": float(r["elbo"].mean()),
             "per_example_log_likelihood": r["ll"].tolist()} for r in rows]
    out.with_suffix(".json").write_text(json.dumps({"command": command, "args": vars(args),
                                                    "rows": dump}, indent=1))
    print(header + text)


if __name__ == "__main__":
    main()
