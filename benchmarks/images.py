"""Images benchmark: test bits/dim on 8-bit Fashion-MNIST against lossless codecs,
and conv training speed against a hand-written PyTorch conv VAE of the same architecture.

Rows (same fixed, seeded test subset, same k, paired standard errors between models):
  * MLP + discretized logistic, conv + discretized logistic mixture, MLP + Gaussian on
    uniformly dequantized data (a = 256; the reported number is a bound on the discrete
    probability);
  * PNG (Pillow, optimize=True) per image and as one stacked image, WebP lossless (stacked),
    and the best of gzip / bz2 / lzma on the raw bytes, all in bits per pixel.
Speed: samples/s of vaelab's TrainStep on the conv + mixture model against a hand-written
conv VAE (same layers, same initial weights, its own discretized-logistic-mixture loss),
interleaved in rounds in this one process; the ratio's median and its rounds are reported.

Sizes are reduced for the shared 2-core machine (see SIZES and the results file).

    nice -n 10 .venv/bin/python benchmarks/images.py [--quick]
"""

from __future__ import annotations

import argparse
import bz2
import io
import json
import lzma
import math
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vaelab import data as data_
from vaelab.config import ModelConfig
from vaelab.fit.step import TrainStep
from vaelab.infer.schemes import build_inference
from vaelab.measure.evaluate import evaluate_model
from vaelab.model.vae import build_vae

RESULTS = Path(__file__).parent / "results"
SIZES = {"train": 8000, "test": 500, "k": 200, "epochs": 8, "batch": 128, "latent": 16,
         "hidden": (256,), "channels": (16, 32), "components": 5, "speed_rounds": 10,
         "speed_steps": 5, "threads": 1}
QUICK = {"train": 600, "test": 40, "k": 10, "epochs": 1, "speed_rounds": 2, "speed_steps": 2}


def load(sizes: dict) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """uint8 train rows [N, 784] (first N); all 10,000 test rows as float k/255, the seeded
    subset of ``sizes["test"]`` first (evaluate's ``limit`` then takes it, and its standard
    error carries the subsampling term with the finite-population correction); the subset as
    uint8 [n, 28, 28]."""
    train = data_.load_dataset("fashion-mnist", "train", keep_uint8=True).x[:sizes["train"]]
    test = data_.load_dataset("fashion-mnist", "test", keep_uint8=True).x
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
    n = sizes["test"]
    order = torch.cat([order[:n].sort().values, order[n:]])
    return train, data_.to_unit(test[order]), test[order[:n]].numpy().reshape(-1, 28, 28)


# --------------------------------------------------------------------------- codecs


def codecs(images: np.ndarray) -> dict[str, float]:
    """Lossless sizes of the uint8 images [n, H, W] in bits per pixel."""
    pixels = images.size
    per_png = sum(len(_png(im)) for im in images)
    stacked = images.reshape(-1, images.shape[-1])
    raw = images.tobytes()
    general = {"gzip-9": len(zlib.compress(raw, 9)), "bz2-9": len(bz2.compress(raw, 9)),
               "lzma-9e": len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))}
    best = min(general, key=general.get)
    webp = io.BytesIO()
    Image.fromarray(stacked).save(webp, format="WEBP", lossless=True, quality=100, method=6)
    return {"png (one file per image)": 8 * per_png / pixels,
            "png (all images stacked)": 8 * len(_png(stacked)) / pixels,
            "webp lossless (stacked)": 8 * len(webp.getvalue()) / pixels,
            f"best general-purpose ({best})": 8 * general[best] / pixels,
            **{f"({k})": 8 * v / pixels for k, v in general.items()}}


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG", optimize=True)
    return out.getvalue()


# --------------------------------------------------------------------------- models


def configs(sizes: dict) -> dict[str, ModelConfig]:
    common = {"data_dim": 784, "image_shape": (1, 28, 28), "latent_dim": sizes["latent"],
              "data_kind": "8-bit"}
    return {
        "mlp + discretized logistic": ModelConfig(
            **common, hidden=sizes["hidden"], likelihood="discretized-logistic"),
        "conv + discretized logistic mixture": ModelConfig(
            **common, net="conv", conv_channels=sizes["channels"],
            likelihood="discretized-logistic-mixture",
            likelihood_components=sizes["components"]),
        "mlp + gaussian (dequantized)": ModelConfig(
            **common, hidden=sizes["hidden"], likelihood="gaussian"),
    }


def train_model(config: ModelConfig, train: torch.Tensor, sizes: dict) -> tuple[nn.Module, float]:
    """Train with vaelab's TrainStep; uint8 batches converted per batch. → (model, seconds)."""
    torch.manual_seed(0)
    model = build_vae(config)
    step = TrainStep(model, build_inference("amortized", model, len(train)), lr=1e-3)
    batches = data_.Batches(train, sizes["batch"], seed=0)
    start = time.perf_counter()
    for epoch in range(sizes["epochs"]):
        last = None
        for x, index in batches.epoch(epoch):
            last = step(x, index, 1.0)
        print(f"  epoch {epoch + 1}: elbo {last.elbo:.1f} ({time.perf_counter() - start:.0f} s)",
              flush=True)
    return model, time.perf_counter() - start


def quality(sizes: dict, train: torch.Tensor, test: torch.Tensor) -> dict:
    rows, per = {}, {}
    for name, config in configs(sizes).items():
        print(name, flush=True)
        model, seconds = train_model(config, train, sizes)
        model.eval()
        torch.manual_seed(1)
        r = evaluate_model(model, test, num_samples=sizes["k"], batch_size=50,
                           limit=sizes["test"], per_example=True, data_kind="8-bit")
        ll = torch.tensor(r["per_example"]["log_likelihood"], dtype=torch.float64)
        per[name] = -ll / (784 * math.log(2))
        rows[name] = {"bits_per_dim": r["nll_bits_per_dim"]["mean"],
                      "se": r["nll_bits_per_dim"]["se"],
                      "neg_elbo_bits_per_dim": r["neg_elbo_bits_per_dim"],
                      "meaning": r["likelihood_meaning"]["meaning"],
                      "train_seconds": round(seconds, 1),
                      "parameters": sum(p.numel() for p in model.parameters())}
        print(f"  {rows[name]}", flush=True)
    names = list(per)
    paired = {}
    for a in names:
        for b in names:
            if a < b:
                d = per[a] - per[b]
                paired[f"{a} − {b}"] = {"mean": float(d.mean()),
                                        "se": float(d.std() / math.sqrt(len(d)))}
    return {"models": rows, "paired_differences_bits_per_dim": paired}


# --------------------------------------------------------------------------- speed


class HandConvVAE(nn.Module):
    """The conv + mixture model written out by hand: same layers as vaelab's ConvEncoder /
    ConvDecoder with channels (c1, c2), a diagonal-Normal q, N(0, I) prior, and its own
    discretized-logistic-mixture log-likelihood."""

    def __init__(self, latent: int, channels: tuple[int, int], k: int) -> None:
        super().__init__()
        c1, c2 = channels
        self.k = k

        def res(c: int) -> nn.Module:
            return nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(c, c, 3, padding=1))
        self.e_stem = nn.Conv2d(1, c1, 3, padding=1)
        self.e_down1, self.e_res1 = nn.Conv2d(c1, c1, 3, stride=2, padding=1), res(c1)
        self.e_down2, self.e_res2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1), res(c2)
        self.e_head = nn.Linear(c2 * 49, 2 * latent)
        self.d_head = nn.Linear(latent, c2 * 49)
        self.d_res2, self.d_conv2 = res(c2), nn.Conv2d(c2, c1, 3, padding=1)
        self.d_res1, self.d_conv1 = res(c1), nn.Conv2d(c1, c1, 3, padding=1)
        self.d_out = nn.Conv2d(c1, 3 * k, 3, padding=1)
        self.c2 = c2

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """−ELBO per example, mean over the batch; x [B, 784] in k/255."""
        h = self.e_stem(x.view(-1, 1, 28, 28))
        h = self.e_down1(F.relu(h))
        h = h + self.e_res1(h)
        h = self.e_down2(F.relu(h))
        h = h + self.e_res2(h)
        loc, raw = self.e_head(F.relu(h).flatten(1)).chunk(2, -1)
        scale = F.softplus(raw) + 1e-5
        z = loc + scale * torch.randn_like(loc)
        kl = (0.5 * (loc ** 2 + scale ** 2) - torch.log(scale) - 0.5).sum(-1)
        y = self.d_head(z).view(-1, self.c2, 7, 7)
        y = y + self.d_res2(y)
        y = self.d_conv2(F.relu(F.interpolate(y, size=(14, 14))))
        y = y + self.d_res1(y)
        y = self.d_conv1(F.relu(F.interpolate(y, size=(28, 28))))
        out = self.d_out(F.relu(y)).view(-1, 3, self.k, 784).transpose(-1, -2)
        logits, mu, s = out[:, 0], out[:, 1], F.softplus(out[:, 2]) + 1e-4
        xx = x.unsqueeze(-1)
        up, lo = (xx + 0.5 / 255 - mu) / s, (xx - 0.5 / 255 - mu) / s
        mid = F.logsigmoid(up) + F.logsigmoid(-lo) + torch.log(-torch.expm1(lo - up))
        lp = torch.where(xx < 0.5 / 255, F.logsigmoid(up),
                         torch.where(xx > 1 - 0.5 / 255, F.logsigmoid(-lo), mid))
        ll = (lp + logits.log_softmax(-1)).logsumexp(-1).sum(-1)
        return (kl - ll).mean()


def _copy_weights(hand: HandConvVAE, model: nn.Module) -> None:
    """Give the hand-written model vaelab's initial weights (same layers, same order)."""
    ours = [*model.encoder.net.parameters(), *model.decoder.net.parameters()]
    theirs = [hand.e_stem, hand.e_down1, hand.e_res1[1], hand.e_res1[3], hand.e_down2,
              hand.e_res2[1], hand.e_res2[3], hand.e_head, hand.d_head, hand.d_res2[1],
              hand.d_res2[3], hand.d_res1[1], hand.d_res1[3], hand.d_conv2, hand.d_conv1,
              hand.d_out]
    flat = [p for m in theirs for p in (m.weight, m.bias)]
    if [p.shape for p in flat] != [p.shape for p in ours]:
        raise RuntimeError("hand-written model does not match vaelab's layers")
    with torch.no_grad():
        for a, b in zip(flat, ours, strict=True):
            a.copy_(b)


def contenders(sizes: dict, train: torch.Tensor) -> dict:
    """name → one training step on the same batch: vaelab's TrainStep on the conv + mixture
    model, and the hand-written model from the same initial weights with Adam."""
    config = configs(sizes)["conv + discretized logistic mixture"]
    torch.manual_seed(0)
    model = build_vae(config)
    hand = HandConvVAE(sizes["latent"], sizes["channels"], sizes["components"])
    _copy_weights(hand, model)
    step = TrainStep(model, build_inference("amortized", model, len(train)), lr=1e-3)
    opt = torch.optim.Adam(hand.parameters(), lr=1e-3)
    x = data_.to_unit(train[:sizes["batch"]])
    index = torch.arange(sizes["batch"])

    def ours() -> None:
        step(x, index, 1.0)

    def theirs() -> None:
        opt.zero_grad(set_to_none=True)
        hand.loss(x).backward()
        opt.step()

    for f in (ours, theirs):
        f()
    return {"vaelab": ours, "hand": theirs}


#: Where a conv step's time goes: profiler op names → category (the first match wins).
CATEGORIES = (("convolution", ("conv", "mkldnn")), ("linear", ("addmm", "mm", "linear")),
              ("optimizer", ("adam", "_foreach", "lerp", "addcdiv")),
              ("upsample", ("upsample", "interpolate")))


def profile(sizes: dict, train: torch.Tensor) -> dict:
    """Self CPU time by op category over ``speed_steps`` steps of each contender
    (torch.profiler): how much of a step any implementation of these layers must spend in
    the convolutions, forward and backward."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as run_profile

    out = {}
    for name, f in contenders(sizes, train).items():
        with run_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(sizes["speed_steps"]):
                f()
        totals: dict[str, float] = {}
        for event in prof.key_averages():
            key = event.key.lower()
            category = next((c for c, words in CATEGORIES if any(w in key for w in words)),
                            "other (elementwise, likelihood, autograd)")
            totals[category] = totals.get(category, 0.0) + event.self_cpu_time_total
        whole = sum(totals.values())
        out[name] = {"ms_per_step": whole / 1e3 / sizes["speed_steps"],
                     "share": {c: t / whole for c, t in sorted(totals.items(),
                                                               key=lambda kv: -kv[1])},
                     "top_ops": [(e.key, e.self_cpu_time_total / 1e3 / sizes["speed_steps"])
                                 for e in sorted(prof.key_averages(),
                                                 key=lambda e: -e.self_cpu_time_total)[:12]]}
        print(f"  {name}: {out[name]['ms_per_step']:.1f} ms/step, "
              + ", ".join(f"{c} {v:.0%}" for c, v in out[name]["share"].items()), flush=True)
    return out


def speed(sizes: dict, train: torch.Tensor) -> dict:
    steps = contenders(sizes, train)
    ours, theirs = steps["vaelab"], steps["hand"]
    rounds = []
    for r in range(sizes["speed_rounds"]):
        times = {}
        for name, f in ((("vaelab", ours), ("hand", theirs)) if r % 2 == 0
                        else (("hand", theirs), ("vaelab", ours))):
            start = time.perf_counter()
            for _ in range(sizes["speed_steps"]):
                f()
            times[name] = sizes["speed_steps"] * sizes["batch"] / (time.perf_counter() - start)
        rounds.append(times)
        print(f"  round {r}: {times}", flush=True)
    ratios = [t["vaelab"] / t["hand"] for t in rounds]
    return {"vaelab_samples_per_s": statistics.median(t["vaelab"] for t in rounds),
            "hand_samples_per_s": statistics.median(t["hand"] for t in rounds),
            "ratio_median": statistics.median(ratios),
            "ratio_mean": statistics.mean(ratios),
            "ratio_se": statistics.stdev(ratios) / math.sqrt(len(ratios)),
            "ratio_rounds": ratios}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--part", choices=("all", "quality", "speed", "profile"),
                        default="all", help="quality: codecs and models; speed: training "
                        "samples/s; profile: where a conv step's time goes")
    parser.add_argument("--train", type=int, help=f"training images (default {SIZES['train']})")
    parser.add_argument("--epochs", type=int, help=f"epochs (default {SIZES['epochs']})")
    args = parser.parse_args()
    sizes = {**SIZES, **(QUICK if args.quick else {})}
    sizes.update({k: v for k, v in (("train", args.train), ("epochs", args.epochs)) if v})
    torch.set_num_threads(sizes["threads"])   # 2 threads ran 4-9× slower on the shared machine
    train, test, test_u8 = load(sizes)
    tag = "".join(f" --{k} {getattr(args, k)}" for k in ("train", "epochs") if getattr(args, k))
    result = {"command": f"nice -n 10 .venv/bin/python benchmarks/images.py --part {args.part}"
              + (" --quick" if args.quick else "") + tag, "sizes": sizes,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.part in ("all", "quality"):
        result["codecs_bits_per_pixel"] = codecs(test_u8)
        print(json.dumps(result["codecs_bits_per_pixel"], indent=1), flush=True)
    if args.part in ("all", "speed"):
        result["speed"] = speed(sizes, train)
    if args.part == "profile":
        result["profile"] = profile(sizes, train)
    if args.part in ("all", "quality"):
        result["quality"] = quality(sizes, train, test)
    name = (f"images-{args.part}{'-quick' if args.quick else ''}"
            f"{tag.replace(' --', '-').replace(' ', '')}.json")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / name).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS / name}", file=sys.stderr)


if __name__ == "__main__":
    main()
