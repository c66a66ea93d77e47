"""Transforms of a dataset: binarization, the train/validation split, class selection, noise.

Role in vaelab: binary-data models (a Bernoulli decoder p(x|z)) are trained on grey levels
turned into {0, 1} by a Bernoulli draw, either once ("static" binarization,
:func:`static_binarize`) or afresh every time an example is seen ("dynamic" binarization,
:class:`vaelab.data.Batches`). Every transform is seeded: the same seed gives the same result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from numbers import Real

import numpy as np
import torch

from vaelab import _checks
from vaelab.data.kinds import Dataset, _describe, to_unit

BINARIZE_MODES = ("dynamic", "static", "none")


def _check_probabilities(name: str, x: torch.Tensor) -> None:
    """Raise ValueError unless every value of ``x`` lies in [0, 1]."""
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x.detach())
    if not (bool(lo >= 0) and bool(hi <= 1)):
        raise ValueError(f"{name}: expected Bernoulli probabilities in [0, 1] to binarize, got "
                         f"values in [{lo.item():g}, {hi.item():g}]")


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Bernoulli(x) draw per entry: x [...] in [0, 1] → float32 {0, 1} tensor [...]."""
    x = _checks.tensor("x", x)
    _check_probabilities("x", x)
    return torch.bernoulli(x.to(torch.float32), generator=generator)


#: SplitMix64's increment and output mix (Steele, Lea & Flood 2014).
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _splitmix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function of each uint64 state (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


def binarize_rows(x: torch.Tensor, seed: int, first_row: int = 0) -> torch.Tensor:
    """One Bernoulli(x) draw per entry whose randomness belongs to the entry: x [N, D] in
    [0, 1] (NaN kept, a missing entry) → float32 [N, D].

    Entry (i, j) is 1 when u < x, u uniform from the SplitMix64 output number
    ``(first_row + i) · D + j`` of the stream seeded by ``seed``. So a row's draw is the same
    whichever rows are read with it: a file read in blocks of any size (``first_row`` = the
    block's first row) gives what reading it whole gives, unlike one generator over the
    whole tensor (:func:`static_binarize`), whose draw of a row depends on the rows before it.
    """
    x = _checks.tensor("x", x)
    if x.dim() != 2:
        raise ValueError(f"x: expected rows [N, D], got shape {list(x.shape)}")
    seed = _checks.non_negative_int("seed", seed)
    first_row = _checks.non_negative_int("first_row", first_row)
    x = x.to(torch.float32)
    observed = x.nan_to_num(0.0)
    _check_probabilities("x", observed)
    n, d = x.shape
    with np.errstate(over="ignore"):
        start = _splitmix(np.array([seed], dtype=np.uint64))[0]
        out = torch.empty_like(x)
        for lo in range(0, n, 4096):         # bounded memory for a whole data set
            hi = min(lo + 4096, n)
            counter = (np.arange(first_row + lo, first_row + hi, dtype=np.uint64)[:, None]
                       * np.uint64(d) + np.arange(d, dtype=np.uint64)[None, :])
            u = (_splitmix(start + (counter + np.uint64(1)) * np.uint64(_GOLDEN))
                 >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
            out[lo:hi] = (torch.from_numpy(u) < observed[lo:hi].double()).to(torch.float32)
    return torch.where(x.isnan(), x, out)


def static_binarize(ds: Dataset, seed: int) -> Dataset:
    """``ds`` with x replaced by one Bernoulli draw seeded by ``seed`` (same seed, same draw)."""
    seed = _checks.non_negative_int("seed", seed)
    return replace(ds, x=binarize(to_unit(ds.x), torch.Generator().manual_seed(seed)),
                   kind="binary")


def train_val_split(ds: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split ``ds`` by a permutation seeded by ``seed`` into (train, validation).

    The validation part has round(val_fraction * N) examples; each part keeps the original
    order of its rows.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, Real):
        raise TypeError(f"val_fraction: expected a number in (0, 1), got "
                        f"{_describe(val_fraction)}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction: expected a number in (0, 1), got {val_fraction}")
    seed = _checks.non_negative_int("seed", seed)
    n = len(ds)
    n_val = round(val_fraction * n)
    if not 1 <= n_val <= n - 1:
        raise ValueError(f"val_fraction: expected at least one of the {n} examples in each "
                         f"part, got {val_fraction}, which puts {n_val} in validation (set "
                         f"--val-fraction; 0 turns validation off)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return ds.subset(perm[n_val:].sort().values), ds.subset(perm[:n_val].sort().values)


def select_classes(ds: Dataset, classes: Sequence[int] | None) -> Dataset:
    """The rows of ``ds`` whose label is in ``classes`` (None: ``ds`` itself), order kept.

    The one-class protocol of anomaly detection trains on the "normal" classes only. Raises
    ValueError naming ``classes`` when ``ds`` has no labels or a class has no example.
    """
    if classes is None:
        return ds
    if ds.labels is None:
        raise ValueError(f"classes: expected a dataset with class labels, got {ds.name!r}, "
                         f"which has none")
    wanted = torch.tensor(sorted(set(classes)), dtype=torch.int64)
    missing = [int(c) for c in wanted if not bool((ds.labels == c).any())]
    if missing:
        present = sorted(int(c) for c in ds.labels.unique())
        raise ValueError(f"classes: expected labels present in {ds.name!r} ({present}), got "
                         f"{missing} with no example")
    return ds.subset(torch.isin(ds.labels, wanted))


def perturb(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """Replace a random ``fraction`` μ of the entries of x by uniform noise (one seeded draw).

    The background model of Ren et al. (2019, "Likelihood Ratios for Out-of-Distribution
    Detection") is trained on inputs where each value is, with probability μ, replaced by a
    draw from U[lo, hi], the range of x ([0, 1] for images). μ = 0 returns ``ds`` itself.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 <= fraction < 1:
        raise ValueError(f"perturb_fraction: expected a number in [0, 1), got {fraction!r}")
    if fraction == 0:
        return ds
    generator = torch.Generator().manual_seed(_checks.non_negative_int("seed", seed))
    x = ds.x
    lo, hi = float(x.min()), float(x.max())
    hit = torch.rand(x.shape, generator=generator) < fraction
    noise = lo + (hi - lo) * torch.rand(x.shape, generator=generator)
    return replace(ds, x=torch.where(hit.to(x.device), noise.to(x), x))
