"""Exploration behind recipes/tables/*.toml: one imputation model on one (table, setting,
seed) of benchmarks/imputation.py (the same standardized table and mask, checked against the
committed rows' mean-imputer RMSE). Reports its RMSE on the hidden cells at checkpoints
(imputation K = --eval-k), of the average of the last two checkpoints' imputations
("snap-last2"), of an exponential moving average of the weights (--ema), and with --cover the
share of hidden values inside the central 90 % interval of 100 SIR draws (K = 1000), with the
one draw per z_k reused by every pick ("old") and with a fresh x ~ p(x | z_k) per pick ("new";
not-MIWAE keeps its weighted particles both ways).

    python benchmarks/imputation_explore.py JOBS.txt OUT.jsonl   # one argument line per job

The results in benchmarks/results/imputation-explore.jsonl came from job lines such as
``--table wine --setting mcar-20 --seed 0 --lopt '{"scale": "learned"}' --checks 500,900``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import imputation as bench
from vaelab import data as data_
from vaelab.config import ModelConfig, RunConfig, TrainConfig
from vaelab.fit.masked import MaskedTrainStep, build_masked_model
from vaelab.fit.step import TrainStep
from vaelab.infer.masked import masked_draws
from vaelab.infer.schemes import Amortized
from vaelab.use.impute import impute

ROWS = Path(__file__).parent / "results" / "imputation.rows.jsonl"


@torch.no_grad()
def coverage(model, xm, x, miss, k=1000, m=100, seed=0, level=0.9) -> dict:
    """Interval coverage of the hidden values, reused ("old") against fresh ("new") draws."""
    torch.manual_seed(seed)
    xt = torch.from_numpy(xm.astype(np.float32))
    out: dict[str, list] = {"old": [], "new": [], "ess": []}
    for part in xt.split(128):
        obs = ~torch.isnan(part)
        vals = torch.where(obs, part, torch.zeros_like(part))
        logits = model.missing_logits if model.missingness is not None else None
        d = masked_draws(model, model.encoder(part), vals, obs, k, missing_logits=logits,
                         want_imputations=True)
        w = d.log_weights.softmax(0)
        out["ess"].append(1 / w.square().sum(0))
        pick = torch.multinomial(w.T, m, replacement=True)
        rows = torch.arange(part.shape[0])
        out["old"].append(d.sample[pick.T, rows])
        fresh = logits is None
        out["new"].append(model.decode(d.z[pick.T, rows]).sample() if fresh
                          else d.sample[pick.T, rows])
    res = {"ess_median": float(torch.cat(out["ess"]).median())}
    for key in ("old", "new"):
        draws = torch.cat(out[key], 1).numpy()
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        res[key] = float(((x >= lo) & (x <= hi))[miss].mean())
        res[key + "_width"] = float((hi - lo)[miss].mean())
        cells = list(zip(*np.nonzero(miss), strict=True))[:2000]
        res[key + "_distinct"] = float(np.mean([len(np.unique(draws[:, i, j]))
                                                for i, j in cells]))
    return res


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table")
    ap.add_argument("--setting")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--mm", default="none", help="missing_model")
    ap.add_argument("--lik", default="gaussian")
    ap.add_argument("--lopt", default="{}", help="likelihood options, JSON")
    ap.add_argument("--hidden", default="128,128", help="'' for linear nets")
    ap.add_argument("--latent", type=int, default=0, help="0: columns - 1")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--checks", default="500,1000,2000,3000", help="steps")
    ap.add_argument("--eval-k", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.0)
    ap.add_argument("--act", default="tanh")
    ap.add_argument("--cover", action="store_true")
    return ap.parse_args(argv)


def run(argv: list[str], out_path: str) -> None:
    a = parse(argv)
    x = bench.TABLES[a.table]().data.astype(np.float64)
    x = (x - x.mean(0)) / x.std(0)
    rng = np.random.default_rng(1000 * a.seed + bench.SETTINGS.index(a.setting))
    miss = bench.make_missing(x, a.setting, rng)
    xm = np.where(miss, np.nan, x)
    ref = [json.loads(line) for line in ROWS.read_text().splitlines()]
    ref = [r for r in ref if (r["data"], r["setting"], r["seed"]) == (a.table, a.setting, a.seed)]
    mean_rmse = bench.rmse(np.where(miss, np.nanmean(xm, 0), x), x, miss)
    assert abs(mean_rmse - ref[0]["mean"]) < 1e-9, "not the committed mask"
    torch.manual_seed(a.seed)
    xt = torch.from_numpy(xm.astype(np.float32))
    hidden = tuple(int(h) for h in a.hidden.split(",") if h)
    mc = ModelConfig(data_dim=x.shape[1], latent_dim=a.latent or x.shape[1] - 1, hidden=hidden,
                     activation=a.act, likelihood=a.lik, likelihood_options=json.loads(a.lopt),
                     missing="mask", missing_model=a.mm)
    tc = TrainConfig(binarize="none", num_samples=a.k, objective="iwae", batch_size=64)
    model = build_masked_model(RunConfig(model=mc, train=tc), xt)
    step = MaskedTrainStep(TrainStep(model, Amortized(model.encoder), lr=a.lr, num_samples=a.k,
                                     compile=False), objective="iwae")
    batches = data_.Batches(xt, 64, seed=a.seed)
    checks = [int(c) for c in a.checks.split(",")]
    avg = copy.deepcopy(model) if a.ema else None
    peers = ("mean", "knn", "mice", "missforest", "miwae", "not-miwae")
    out: dict = {"args": vars(a), "ref": {m: ref[0][m] for m in peers}, "rmse": {}}
    fills, done, epoch, start = [], 0, 0, time.perf_counter()
    while done < checks[-1]:
        for xb, index in batches.epoch(epoch):
            step(xb, index)
            done += 1
            if avg is not None:
                with torch.no_grad():
                    d = min(a.ema, (1 + done) / (10 + done))
                    for pa, pm in zip(avg.parameters(), model.parameters(), strict=True):
                        pa.lerp_(pm, 1 - d)
            if done in checks:
                model.eval()
                fills.append(impute(model, xm, num_samples=a.eval_k, seed=a.seed))
                out["rmse"][done] = bench.rmse(fills[-1], x, miss)
                if avg is not None:
                    out["rmse"][f"ema{done}"] = bench.rmse(
                        impute(avg.eval(), xm, num_samples=a.eval_k, seed=a.seed), x, miss)
                model.train()
            if done >= checks[-1]:
                break
        epoch += 1
    out["rmse"]["snap-last2"] = bench.rmse(np.mean(fills[-2:], 0), x, miss)
    out["s"] = time.perf_counter() - start
    if a.cover:
        out["cover"] = coverage(model.eval(), xm, x, miss, seed=a.seed)
    print(json.dumps(out), flush=True)
    with open(out_path, "a") as fh:
        fh.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(1)
    for line in Path(sys.argv[1]).read_text().splitlines():
        if line.strip():
            run(shlex.split(line), sys.argv[2])
