"""Shared pieces of the benchmark: data, shapes, shared initial weights, timing, memory.

Nothing here imports vaelab or a peer, so the reference and the floor run in any environment
with torch alone.
"""

from __future__ import annotations

import gzip
import math
import os
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATA_DIRS = (os.environ.get("VAELAB_DATA", ""), "/usr/share/datasets/fashion-mnist",
             "/usr/share/datasets")
IDX = {"train": "train-images-idx3-ubyte.gz", "test": "t10k-images-idx3-ubyte.gz"}


@dataclass(frozen=True)
class Shapes:
    """The benchmarked model: D → H → 2L encoder, L → H → D Bernoulli decoder, batch B."""

    data_dim: int = 784
    hidden: int = 400
    latent: int = 20
    batch: int = 128
    lr: float = 1e-3
    min_scale: float = 1e-5   # DiagonalNormal's floor on softplus(raw scale)


def load_images(split: str) -> torch.Tensor:
    """Fashion-MNIST grey levels as float32 [N, 784] in [0, 1], read straight from IDX gz."""
    for d in DATA_DIRS:
        path = Path(d) / IDX[split] if d else None
        if path is not None and path.exists():
            raw = gzip.decompress(path.read_bytes())
            n = int.from_bytes(raw[4:8], "big")
            pixels = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 784)
            return torch.from_numpy(pixels.astype(np.float32) / 255.0)
    raise FileNotFoundError(f"Fashion-MNIST {IDX[split]} not found in {DATA_DIRS}; "
                            "apt-get install dataset-fashion-mnist or set VAELAB_DATA")


def initial_weights(s: Shapes, seed: int = 0) -> dict[str, torch.Tensor]:
    """One set of nn.Linear-style initial weights shared by every contender.

    Keys: enc1/enc2/dec1/dec2 . weight/bias, with torch's [out, in] layout; enc2 outputs
    [loc, raw scale] (2L numbers).
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (fan_in, fan_out) in {"enc1": (s.data_dim, s.hidden),
                                    "enc2": (s.hidden, 2 * s.latent),
                                    "dec1": (s.latent, s.hidden),
                                    "dec2": (s.hidden, s.data_dim)}.items():
        bound = 1.0 / math.sqrt(fan_in)
        out[f"{name}.weight"] = (torch.rand(fan_out, fan_in, generator=g) * 2 - 1) * bound
        out[f"{name}.bias"] = (torch.rand(fan_out, generator=g) * 2 - 1) * bound
    return out


def set_threads(threads: int) -> int:
    """The same intra-op thread count for every contender; returns it."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass
    return torch.get_num_threads()


class EpochOrder:
    """Seeded shuffled indices of N rows, handed out B at a time, epoch after epoch."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        self.n, self.batch = n, batch
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.randperm(n, generator=self.gen), 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch > self.n:
            self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.order[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return idx


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def rss_now_mb() -> float:
    """Current resident set size in MiB (VmRSS)."""
    return _status_mb("VmRSS")


def rss_peak_mb() -> float:
    """Peak resident set size in MiB (VmHWM, resettable; falls back to ru_maxrss)."""
    value = _status_mb("VmHWM")
    if math.isnan(value):
        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return value


def reset_rss_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_mb(key: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


class Stopwatch:
    """perf_counter seconds of a with-block: ``with Stopwatch() as sw: ...; sw.seconds``."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def command_line() -> str:
    """The command that ran this benchmark, shell-quoted."""
    import shlex
    import sys

    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def machine() -> str:
    """CPU, core count, torch version and threads, for a results header."""
    import platform

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads")

