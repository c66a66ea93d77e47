"""vaelab speed benchmark: training and log-likelihood evaluation side by side with a
hand-written PyTorch reference, the matrix-product floor and the peers (pythae, Pyro).

Run it through ``bash benchmarks/run.sh`` (creates .bench/venv with the peers first), or
directly with any Python that has torch and vaelab: ``python benchmarks/bench.py``.

Method: every contender runs in this one process with the same thread settings, from the same
initial weights on the same Fashion-MNIST data. After a warm-up, the training contenders run
``--steps`` steps each in ``--rounds`` interleaved rounds (the order rotates every round), so
a burst of load elsewhere on the machine hits every contender alike; the reported figure is
the median over rounds, and each ratio is the median of the per-round ratios. Peak memory is
measured in a fresh child process per contender (``--probe``), as the rise of the peak
resident set size over the child's footprint just before the contender starts.
Output: a table, a JSON file (``--out``), and a last line with every target ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import peers  # noqa: E402
import reference  # noqa: E402
from common import Shapes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRAIN_TARGETS = {"reference": 1.2, "gemm_floor": 0.85, "pythae": 2.0, "pyro_trace": 2.0,
                 "pyro_tmf": 2.0}
EVAL_TARGETS = {"reference": 1.5, "pythae": 10.0}
LABELS = {"gemm_floor": "GEMM floor (matmuls only)", "reference": "hand-written PyTorch",
          "vaelab": "vaelab TrainStep + Batches",
          "pythae": "pythae BaseTrainer",
          "pyro_trace": "Pyro SVI Trace_ELBO", "pyro_tmf": "Pyro SVI TraceMeanField_ELBO"}
EVAL_LABELS = {"gemm_floor": "GEMM floor (decoder matmuls only)",
               "reference": "hand-written IS loop", "vaelab": "vaelab.log_likelihood",
               "pythae": "pythae VAE.get_nll"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100, help="training steps per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--warmup", type=int, default=30, help="warm-up steps per contender")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--eval-points", type=int, nargs=2, default=(32, 8), metavar=("P1000", "P5000"),
                   help="test points evaluated at k=1000 and k=5000")
    p.add_argument("--eval-repeats", type=int, default=3)
    p.add_argument("--compile", default="auto", help="TrainStep(compile=...): auto, true, false")
    p.add_argument("--only", nargs="*", default=None, help="contender names to run")
    p.add_argument("--no-memory", action="store_true", help="skip the per-contender RSS probes")
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / ".bench" / "latest.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.compile = {"true": True, "false": False}.get(str(args.compile).lower(), args.compile)
    return args


# --------------------------------------------------------------------------- contenders


def make_trainer(name: str, s: Shapes, data, weights, seed: int, compile_mode):
    if name == "gemm_floor":
        return reference.GemmFloor(s, data, weights, seed)
    if name == "reference":
        return reference.ReferenceTrainer(s, data, weights, seed)
    if name == "vaelab":
        from vaelab_contender import VaelabTrainer

        return VaelabTrainer(s, data, weights, seed, compile=compile_mode)
    if name == "pythae":
        return peers.PythaeTrainer(s, data, weights, seed)
    if name in ("pyro_trace", "pyro_tmf"):
        elbo = "TraceMeanField_ELBO" if name == "pyro_tmf" else "Trace_ELBO"
        return peers.PyroTrainer(s, data, weights, seed, elbo=elbo)
    raise ValueError(f"unknown contender {name!r}")


def available_trainers(only, status: dict) -> tuple[list[str], dict[str, str]]:
    names = ["gemm_floor", "reference", "vaelab", "pythae", "pyro_trace", "pyro_tmf"]
    missing = {}
    for name in names:
        if name.startswith("pyro") and status["pyro"].startswith("missing"):
            missing[name] = status["pyro"]
        if name == "pythae" and status["pythae"].startswith("missing"):
            missing[name] = status["pythae"]
        if name.startswith("vaelab") and status["vaelab"].startswith("missing"):
            missing[name] = status["vaelab"]
    chosen = [n for n in names if n not in missing and (only is None or n in only)]
    return chosen, missing


def run_training(args, s: Shapes, data, weights, names: list[str]) -> dict:
    """Warm-up, then interleaved timed rounds; → per-contender results."""
    trainers, results = {}, {}
    for name in names:
        try:
            with common.Stopwatch() as setup:
                t = make_trainer(name, s, data, weights, args.seed, args.compile)
                _prepare(t, args.warmup)
            with common.Stopwatch() as warm:
                t.run(args.warmup)
            trainers[name] = t
            results[name] = {"setup_s": setup.seconds, "warmup_s": warm.seconds,
                             "samples_per_s_rounds": []}
        except Exception as exc:  # a peer that breaks is reported, not fatal
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"[bench] {name} failed to start: {exc}", file=sys.stderr)
    active = list(trainers)
    for r in range(args.rounds):
        order = active[r % len(active):] + active[: r % len(active)] if active else []
        for name in order:
            t = trainers[name]
            _prepare(t, args.steps)
            try:
                with common.Stopwatch() as sw:
                    t.run(args.steps)
            except Exception as exc:
                results[name]["error"] = f"{type(exc).__name__}: {exc}"
                active.remove(name)
                continue
            results[name]["samples_per_s_rounds"].append(args.steps * s.batch / sw.seconds)
        print(f"[bench] training round {r + 1}/{args.rounds} done", file=sys.stderr)
    for name, t in trainers.items():
        rounds = results[name]["samples_per_s_rounds"]
        results[name]["samples_per_s"] = common.median(rounds)
        results[name]["samples_per_s_best"] = max(rounds) if rounds else math.nan
        losses = [v for v in getattr(t, "losses", [])[-args.steps:] if math.isfinite(v)]
        results[name]["final_loss"] = sum(losses) / len(losses) if losses else None
        if hasattr(t, "skipped"):
            results[name]["skipped_steps"] = t.skipped
    results["_trainers"] = trainers
    return results


def _prepare(trainer, steps: int) -> None:
    if hasattr(trainer, "prepare"):
        trainer.prepare(steps)


def paired_ratios(results: dict, base: str = "vaelab") -> dict[str, float]:
    """Median over rounds of samples/s(base) / samples/s(other), rounds paired by index."""
    out = {}
    mine = results.get(base, {}).get("samples_per_s_rounds", [])
    for name, res in results.items():
        if name.startswith("_") or name == base or "samples_per_s_rounds" not in res:
            continue
        pairs = [a / b for a, b in zip(mine, res["samples_per_s_rounds"], strict=False) if b > 0]
        out[name] = common.median(pairs)
    return out


# --------------------------------------------------------------------------- evaluation


def run_evaluation(args, s: Shapes, test_x, trained, status: dict) -> dict:
    """Points/s of each log-likelihood estimator at k=1000 and 5000, same model and points."""
    from vaelab_contender import log_likelihood as vaelab_ll

    hand = reference.HandVAE(s)
    hand.load_state_dict(_hand_state(trained))
    fns = {"gemm_floor": lambda x, k: reference.decoder_gemm_floor(hand, x, k),
           "reference": lambda x, k: reference.reference_log_likelihood(hand, x, k),
           "vaelab": lambda x, k: vaelab_ll(trained, x, k)}
    if not status["pythae"].startswith("missing"):
        pyt = peers.build_pythae(s, _hand_state(trained))
        fns["pythae"] = lambda x, k: torch.tensor(peers.pythae_log_likelihood(pyt, x, k, 100))
    out = {}
    for k, points in zip((1000, 5000), args.eval_points, strict=True):
        x = test_x[:points]
        res = {name: {"seconds": []} for name in fns}
        for fn in fns.values():  # warm-up on one point
            fn(x[:1], k)
        for r in range(args.eval_repeats):
            names = list(fns)
            for name in names[r % len(names):] + names[: r % len(names)]:
                torch.manual_seed(args.seed + r)
                with common.Stopwatch() as sw:
                    value = fns[name](x, k)
                res[name]["seconds"].append(sw.seconds)
                res[name]["mean_log_likelihood"] = float(value.double().mean())
        for name in fns:
            secs = res[name]["seconds"]
            res[name]["points_per_s"] = points / common.median(secs)
            res[name]["points_per_s_rounds"] = [points / t for t in secs]
        out[str(k)] = {"points": points, "contenders": res}
        print(f"[bench] evaluation k={k} done", file=sys.stderr)
    return out


def _hand_state(model) -> dict:
    """vaelab model → the shared weight naming (enc1, enc2, dec1, dec2)."""
    sd = model.state_dict()
    names = {"enc1": "encoder.net.0", "enc2": "encoder.net.2",
             "dec1": "decoder.net.0", "dec2": "decoder.net.2"}
    return {f"{a}.{kind}": sd[f"{b}.{kind}"].detach().clone()
            for a, b in names.items() for kind in ("weight", "bias")}


def eval_ratios(evaluation: dict) -> dict[str, dict[str, float]]:
    out = {}
    for k, block in evaluation.items():
        res = block["contenders"]
        mine = res.get("vaelab", {}).get("points_per_s_rounds", [])
        out[k] = {}
        for name, r in res.items():
            if name == "vaelab":
                continue
            pairs = [a / b for a, b in zip(mine, r["points_per_s_rounds"], strict=False)]
            out[k][name] = common.median(pairs)
    return out


# --------------------------------------------------------------------------- memory probes


def probe(args) -> None:
    """Child process: run one contender briefly, print {"base_mb", "peak_mb"} as JSON."""
    kind, name, *rest = args.probe.split(":")
    common.set_threads(args.threads)
    s = Shapes()
    weights = common.initial_weights(s, args.seed)
    if kind == "train":
        data = common.load_images("train")
        t = make_trainer(name, s, data, weights, args.seed, args.compile)
        _prepare(t, args.warmup)
        base = common.rss_now_mb()
        common.reset_rss_peak()
        t.run(args.warmup)
    else:
        from vaelab_contender import build_model
        from vaelab_contender import log_likelihood as vaelab_ll

        k, points = int(rest[0]), int(rest[1])
        x = torch.bernoulli(common.load_images("test")[:points],
                            generator=torch.Generator().manual_seed(args.seed))
        model = build_model(s, weights)
        hand = reference.HandVAE(s)
        hand.load_state_dict(weights)
        fn = {"reference": lambda: reference.reference_log_likelihood(hand, x, k),
              "vaelab": lambda: vaelab_ll(model, x, k)}
        if name == "pythae":
            pyt = peers.build_pythae(s, weights)
            fn["pythae"] = lambda: peers.pythae_log_likelihood(pyt, x, k, 100)
        base = common.rss_now_mb()
        common.reset_rss_peak()
        fn[name]()
    print(json.dumps({"base_mb": base, "peak_mb": common.rss_peak_mb()}))


def run_probe(args, spec: str) -> dict:
    cmd = [sys.executable, __file__, "--probe", spec, "--threads", str(args.threads),
           "--warmup", str(max(args.warmup, 20)), "--compile", str(args.compile).lower(),
           "--seed", str(args.seed)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        res["delta_mb"] = res["peak_mb"] - res["base_mb"]
        return res
    except Exception as exc:
        detail = getattr(exc, "stderr", "") or ""
        return {"error": f"{type(exc).__name__}: {str(detail).strip()[-300:] or exc}"}


# --------------------------------------------------------------------------- report


def environment(args, status: dict) -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu": cpu, "cores": os.cpu_count(),
            "versions": status, "steps_per_round": args.steps, "rounds": args.rounds,
            "warmup_steps": args.warmup, "compile": args.compile,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_average_start": common.load_average()}


def fmt(v, spec=",.0f", none="—") -> str:
    return none if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def table(report: dict) -> list[str]:
    env, s = report["environment"], report["shapes"]
    lines = [f"vaelab benchmark: {s['data_dim']}-{s['hidden']}-{s['latent']} Bernoulli VAE, "
             f"batch {s['batch']}, {env['threads']} threads, torch {env['torch']}, "
             f"{env['cpu']} ({env['cores']} cores), load avg {env['load_average_start']} → "
             f"{env.get('load_average_end')}",
             f"training: {env['rounds']} rounds × {env['steps_per_round']} steps per contender "
             f"(after {env['warmup_steps']} warm-up), median samples/s",
             f"  {'contender':34s} {'samples/s':>10s} {'best':>9s} {'vaelab ×':>9s} "
             f"{'-ELBO':>8s} {'peak RSS Δ MiB':>15s}"]
    tr, ratios, mem = report["training"], report["training_ratios"], report.get("memory", {})
    for name, res in tr.items():
        label = LABELS.get(name, name)
        if "error" in res and "samples_per_s" not in res:
            lines.append(f"  {label:34s} {'failed: ' + res['error'][:60]}")
            continue
        m = mem.get(f"train:{name}", {})
        lines.append(f"  {label:34s} {fmt(res['samples_per_s']):>10s} "
                     f"{fmt(res['samples_per_s_best']):>9s} "
                     f"{fmt(ratios.get(name), '.2f') + '×' if name in ratios else '':>9s} "
                     f"{fmt(res.get('final_loss'), '.1f'):>8s} "
                     f"{fmt(m.get('delta_mb'), '.0f'):>15s}")
    for name, why in report["missing"].items():
        lines.append(f"  {LABELS.get(name, name):34s} missing ({why[:70]})")
    for k, block in report.get("evaluation", {}).items():
        lines.append(f"evaluation k={k}: {block['points']} test points, median of "
                     f"{report['environment']['eval_repeats']} runs")
        lines.append(f"  {'contender':34s} {'points/s':>10s} {'vaelab ×':>9s} "
                     f"{'mean log p̂':>11s} {'peak RSS Δ MiB':>15s}")
        eratios = report["evaluation_ratios"][k]
        for name, res in block["contenders"].items():
            m = mem.get(f"eval:{name}:{k}", {})
            r = eratios.get(name)
            lines.append(f"  {EVAL_LABELS[name]:34s} {fmt(res['points_per_s'], ',.1f'):>10s} "
                         f"{fmt(r, '.2f') + '×' if r is not None else '':>9s} "
                         f"{fmt(res.get('mean_log_likelihood'), '.2f'):>11s} "
                         f"{fmt(m.get('delta_mb'), '.0f'):>15s}")
    return lines


def ratio_line(report: dict) -> str:
    parts = []
    for name, target in TRAIN_TARGETS.items():
        r = report["training_ratios"].get(name)
        if r is None:
            parts.append(f"train vaelab/{name}=missing")
        else:
            verdict = "ok" if r >= target else "MISS"
            parts.append(f"train vaelab/{name}={r:.2f}x (>= {target} {verdict})")
    for k, ratios in report.get("evaluation_ratios", {}).items():
        for name, target in EVAL_TARGETS.items():
            r = ratios.get(name)
            if r is None:
                parts.append(f"eval k={k} vaelab/{name}=missing")
            else:
                parts.append(f"eval k={k} vaelab/{name}={r:.2f}x "
                             f"(>= {target} {'ok' if r >= target else 'MISS'})")
    return "RATIOS: " + "; ".join(parts)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.probe:
        probe(args)
        return 0
    common.set_threads(args.threads)
    s = Shapes()
    status = peers.availability()
    try:
        import vaelab

        status["vaelab"] = vaelab.__version__
    except Exception as exc:
        status["vaelab"] = f"missing: {exc}"
    report = {"environment": environment(args, status), "shapes": s.__dict__}
    report["environment"]["eval_repeats"] = args.eval_repeats
    data = common.load_images("train")
    weights = common.initial_weights(s, args.seed)
    names, missing = available_trainers(args.only, status)
    report["missing"] = missing
    training = run_training(args, s, data, weights, names)
    trainers = training.pop("_trainers")
    report["training"] = training
    report["training_ratios"] = paired_ratios(training)
    best = training.get("vaelab", {}).get("samples_per_s_best", math.nan)
    report["training_ratios_of_best_rounds"] = {
        n: best / r["samples_per_s_best"] for n, r in training.items()
        if n != "vaelab" and r.get("samples_per_s_best")}
    report["gemm_floor_gflops"] = reference.GemmFloor.flops(s) * (
        training.get("gemm_floor", {}).get("samples_per_s", math.nan) / s.batch) / 1e9
    if not args.no_eval and "vaelab" in trainers:
        test_x = torch.bernoulli(common.load_images("test"),
                                 generator=torch.Generator().manual_seed(args.seed))
        trained = trainers["vaelab"].model.eval()
        report["evaluation"] = run_evaluation(args, s, test_x, trained, status)
        report["evaluation_ratios"] = eval_ratios(report["evaluation"])
    if not args.no_memory:
        report["memory"] = {}
        for name in names:
            if name != "gemm_floor":
                report["memory"][f"train:{name}"] = run_probe(args, f"train:{name}")
        for k, points in zip((1000, 5000), args.eval_points, strict=True):
            for name in report.get("evaluation", {}).get(str(k), {}).get("contenders", {}):
                if name == "gemm_floor":
                    continue
                # the per-point loops peak on one point; the batched ones on all of them
                n = min(points, 2) if name in ("reference", "pythae") else points
                report["memory"][f"eval:{name}:{k}"] = run_probe(args, f"eval:{name}:{k}:{n}")
        print("[bench] memory probes done", file=sys.stderr)
    report["environment"]["load_average_end"] = common.load_average()
    lines = table(report)
    report["ratio_line"] = ratio_line(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print("\n".join(lines))
    print(f"JSON: {args.out}")
    print(report["ratio_line"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
