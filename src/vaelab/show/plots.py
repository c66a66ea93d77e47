"""Figures of a trained VAE as PNG files: samples, reconstructions, curves, latent space.

Role in vaelab: the pictures of a run — what p(x) = ∫ p(z) p_θ(x|z) dz generates (ancestral
samples, Kingma & Welling 2014), how well x → q(z|x) → E[x|z] reconstructs, how the ELBO, the
rate KL(q ‖ p(z)) and the distortion −E_q log p(x|z) evolved during training (Alemi et al.
2018), and where the encoder puts the data in latent space (a 2-D PCA view of E_q[z|x]).

Every figure is a bare ``matplotlib.figure.Figure`` rendered by the Agg canvas (no display and
no pyplot state, so importing this module changes no backend) and written
atomically: to a temporary file beside the target, then renamed, so an interrupted or failed
write leaves no half-written PNG. Non-image data (no ``image_shape``) gets scatter plots of
the first coordinates instead of image grids.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vaelab import _checks
from vaelab._files import save_figure
from vaelab._runtime import device_of
from vaelab.data.named import CLASS_NAMES, FASHION_MNIST_CLASSES  # noqa: F401  (re-exported)

CURVE_METRICS = (("elbo", "ELBO (nats)"), ("rate", "rate KL(q‖p) (nats)"),
                 ("distortion", "distortion −E log p(x|z) (nats)"))


# --------------------------------------------------------------------------- writing


# --------------------------------------------------------------------------- image grids


def display_range(images: np.ndarray,
                  value_range: tuple[float, float] | None) -> tuple[float, float]:
    """The (low, high) values shown as black and white.

    ``value_range`` (the data's range, e.g. (0, 1) for images) when given; else (0, 1) when
    every value lies in it, else the images' own min and max.
    """
    if value_range is not None:
        low, high = (float(v) for v in value_range)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"value_range: expected finite (low, high) with low < high, "
                             f"got {value_range!r}")
        return low, high
    finite = images[np.isfinite(images)]
    if finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1):
        return 0.0, 1.0
    return float(finite.min()), float(max(finite.max(), finite.min() + 1e-12))


def _to_hwc(images: np.ndarray, image_shape: Sequence[int],
            value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Rows [N, D] → displayable [N, H, W] (one channel) or [N, H, W, 3] in [0, 1].

    ``value_range`` = (low, high) maps to (0, 1), values beyond it are clipped, so the data's
    0 stays black whatever the images hold (a Gaussian decoder's means overshoot it).
    """
    c, h, w = image_shape
    low, high = value_range
    images = np.clip((images.reshape(-1, c, h, w) - low) / (high - low), 0.0, 1.0)
    if c == 3:
        return images.transpose(0, 2, 3, 1)
    return images[:, 0]                           # grey, or the first channel otherwise


def _tile(images: np.ndarray, nrow: int, pad: int = 2) -> np.ndarray:
    """[N, H, W(, 3)] → one mosaic with ``nrow`` images per row and ``pad`` pixels between."""
    n, h, w = images.shape[:3]
    rows = math.ceil(n / nrow)
    shape = (rows * (h + pad) + pad, nrow * (w + pad) + pad, *images.shape[3:])
    mosaic = np.ones(shape, dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, nrow)
        mosaic[pad + r * (h + pad):pad + r * (h + pad) + h,
               pad + c * (w + pad):pad + c * (w + pad) + w] = image
    return mosaic


def _check_images(images: object, image_shape: Sequence[int] | None
                  ) -> tuple[np.ndarray, tuple[int, ...]]:
    rows = _checks.tensor("images", torch.as_tensor(images, dtype=torch.float32))
    if image_shape is None or len(tuple(image_shape)) != 3:
        raise ValueError(f"image_shape: expected (C, H, W), got {image_shape!r}")
    shape = tuple(int(s) for s in image_shape)
    if rows.dim() != 2 or rows.shape[0] == 0 or rows.shape[1] != math.prod(shape):
        raise ValueError(f"images: expected shape [N >= 1, {math.prod(shape)}] for "
                         f"image_shape {shape}, got {list(rows.shape)}")
    return rows.detach().cpu().numpy(), shape


def image_grid(images: torch.Tensor, image_shape: Sequence[int], path: str | os.PathLike,
               nrow: int = 8, *, title: str | None = None,
               row_labels: Sequence[str] | None = None,
               value_range: tuple[float, float] | None = None) -> Path:
    """Write images [N, D] (rows of C·H·W values) as a grid PNG with ``nrow`` per row.

    ``value_range`` (low, high) is shown black to white, values beyond it clipped: pass the
    data's range so every grid of a run shares one scale (None: (0, 1) when the images lie in
    it, else their own min and max, said in the title). C = 3 is shown in colour, other C by
    the first channel in grey. ``row_labels`` name the rows on the left.
    """
    array, image_shape = _check_images(images, image_shape)
    nrow = min(_checks.positive_int("nrow", nrow), array.shape[0])
    shown = display_range(array, value_range)
    if value_range is None and shown != (0.0, 1.0):
        title = f"{title or ''} (black..white = {shown[0]:.3g}..{shown[1]:.3g})".strip()
    mosaic = _tile(_to_hwc(array, image_shape, shown), nrow)
    scale = max(1.0, 3.0 * 28 / image_shape[1])          # about 3 screen pixels per MNIST pixel
    height, width = mosaic.shape[0] * scale / 100, mosaic.shape[1] * scale / 100
    extra = 0.3 if title else 0.0
    left = 1.1 if row_labels else 0.05
    fig = Figure(figsize=(width + left + 0.05, height + extra + 0.05))
    ax = fig.add_axes((left / (width + left + 0.05), 0.05 / (height + extra + 0.05),
                       width / (width + left + 0.05), height / (height + extra + 0.05)))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if row_labels:
        _label_rows(ax, row_labels, image_shape[1])
    if title:
        fig.suptitle(title, y=1 - 0.04 / (height + extra + 0.05), va="top", fontsize=10)
    return save_figure(fig, path)


def _label_rows(ax: Axes, labels: Sequence[str], h: int, pad: int = 2) -> None:
    ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(len(labels))])
    ax.set_yticklabels(labels, fontsize=8)
    ax.tick_params(axis="y", length=0)


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(int(seed))


def write_samples(model, path: str | os.PathLike, n: int = 64,
                  image_shape: Sequence[int] | None = None, *, seed: int | None = None,
                  nrow: int | None = None, value_range: tuple[float, float] | None = None
                  ) -> Path:
    """Draw n samples z ~ p(z) and write the grid of E[x | z] (the decoder's mean) to path.

    ``value_range``: the data's range, shown black to white (see :func:`image_grid`).
    Non-image data (``image_shape`` None): a scatter of the first two coordinates of the
    samples (a histogram when D = 1).
    """
    n = _checks.positive_int("n", n)
    with torch.inference_mode():
        x = model.sample(n, mean=True, generator=_generator(seed)).cpu()
    title = f"{n} samples: z ~ p(z), shown E[x|z]"
    if image_shape is None:
        return scatter_points({"samples E[x|z]": x}, path, title=title)
    nrow = nrow or max(1, round(math.sqrt(n)))
    return image_grid(x, image_shape, path, nrow, title=title, value_range=value_range)


def write_reconstructions(model, x: torch.Tensor, path: str | os.PathLike,
                          image_shape: Sequence[int] | None = None, *, ncol: int = 8,
                          binarized: bool = False,
                          value_range: tuple[float, float] | None = None) -> Path:
    """Write originals x [N, D] with their reconstructions E[x | z = E_q z] below them.

    Rows alternate: ``ncol`` originals, then their reconstructions. ``binarized``: x is one
    binarized draw of the data (as the model saw it), and the rows and title say so.
    ``value_range``: the data's range, shown black to white. Non-image data: a scatter
    of reconstructed against original values (on the diagonal when perfect).
    """
    x = _checks.tensor("x", x)
    with torch.inference_mode():     # the data may sit on the CPU while the model is on a GPU
        recon = model.reconstruct(x.to(device_of(model))).cpu()
    x = x.detach().cpu()
    if image_shape is None:
        return _write_recon_scatter(x, recon, path)
    ncol = min(_checks.positive_int("ncol", ncol), x.shape[0])
    rows, labels = [], []
    for start in range(0, x.shape[0], ncol):
        orig, rec = x[start:start + ncol], recon[start:start + ncol]
        blank = torch.ones(ncol - orig.shape[0], x.shape[1])
        rows += [torch.cat([orig, blank]), torch.cat([rec, blank])]
        labels += ["input (binarized)" if binarized else "original", "reconstruction"]
    title = ("inputs (one binarized draw of each image, as the model sees them) above their "
             "reconstructions E[x|z] at z = E_q[z|x]" if binarized else
             "originals above their reconstructions E[x|z] at z = E_q[z|x]")
    return image_grid(torch.cat(rows), image_shape, path, ncol, title=title, row_labels=labels,
                      value_range=value_range)


def _write_recon_scatter(x: torch.Tensor, recon: torch.Tensor, path) -> Path:
    return save_figure(recon_scatter(x, recon), path)


def recon_scatter(x: torch.Tensor, recon: torch.Tensor) -> Figure:
    """Reconstructed against original values, x and recon [N, D], with the diagonal a
    perfect reconstruction would lie on (drawn, and in the legend, only when some value is
    finite and they are not all equal)."""
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.scatter(x.flatten().numpy(), recon.flatten().numpy(), s=4, alpha=0.4)
    values = torch.cat([x.flatten(), recon.flatten()]).double()
    values = values[torch.isfinite(values)]     # a diverged model: NaN/inf are not drawn
    title = f"reconstructions of {x.shape[0]} examples (all {x.shape[1]} dims)"
    missing = int((~torch.isfinite(recon)).sum())
    if missing:
        title += f"\n{missing} non-finite reconstructed values not drawn"
    ax.set(xlabel="original value", ylabel="reconstructed value E[x|z]", title=title)
    low, high = (float(values.min()), float(values.max())) if values.numel() else (0.0, 0.0)
    if low < high:               # the diagonal is in the legend only when it is drawn
        ax.plot([low, high], [low, high], color="black", lw=0.8, ls="--", label="perfect")
        ax.legend(loc="upper left")
    return fig


def scatter_points(groups: dict[str, torch.Tensor], path: str | os.PathLike, *,
                   title: str = "") -> Path:
    """Scatter the first two coordinates of each group [N, D] (histograms when D = 1)."""
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, group in groups.items():
        points = group.detach().cpu().numpy()
        if points.shape[1] == 1:
            ax.hist(points[:, 0], bins=40, alpha=0.5, label=name)
            ax.set(xlabel="x[0]", ylabel="count")
        else:
            ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.5, label=name)
            ax.set(xlabel="x[0]", ylabel="x[1]")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- curves


def _value(record: dict, split: str, name: str) -> float | None:
    """record[split_name], record[split/name] or record[split][name]; None if absent."""
    for key in (f"{split}_{name}", f"{split}/{name}"):
        if key in record:
            value = record[key]
            break
    else:
        nested = record.get(split)
        value = nested.get(name) if isinstance(nested, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def _curve(metrics: Sequence[dict], split: str, name: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of metric ``name`` of ``split`` over the per-epoch records."""
    xs, ys = [], []
    for record in metrics:
        epoch, value = record.get("epoch"), _value(record, split, name)
        if isinstance(epoch, (int, float)) and value is not None and math.isfinite(value):
            xs.append(float(epoch))
            ys.append(value)
    return xs, ys


def write_curves(metrics: Sequence[dict], path: str | os.PathLike) -> Path:
    """Plot train/validation ELBO, rate and distortion against the epoch.

    ``metrics`` are the records of ``metrics.jsonl``, one per epoch, with an ``"epoch"`` key
    and values under ``"train_elbo"`` / ``"val_elbo"`` (or ``"train/elbo"``, or nested
    ``{"train": {"elbo": …}}``), likewise for ``rate`` and ``distortion``. A metric with no
    value shows an empty panel saying so.
    """
    if isinstance(metrics, (str, bytes, dict)) or not isinstance(metrics, Sequence):
        raise TypeError(f"metrics: expected a list of dicts, got {type(metrics).__name__}")
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (name, label) in zip(axes, CURVE_METRICS, strict=True):
        drawn = False
        for split, style in (("train", "-"), ("val", "--")):
            xs, ys = _curve(metrics, split, name)
            if xs:
                ax.plot(xs, ys, style, marker="o" if len(xs) < 30 else None, ms=3,
                        label="train (mean over the epoch)" if split == "train"
                        else "validation (end of epoch)")
                drawn = True
        if name == "rate":       # a hierarchy: the validation rate of every latent layer
            drawn = _layer_rate_curves(ax, metrics) or drawn
        ax.set(xlabel="epoch", title=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _layer_rate_curves(ax: Axes, metrics: Sequence[dict]) -> bool:
    """Dotted validation-rate curves per latent layer (``val_rate_per_layer``); → drawn."""
    rows = [(m["epoch"], m["val_rate_per_layer"]) for m in metrics
            if isinstance(m, dict) and m.get("val_rate_per_layer") and "epoch" in m]
    if not rows:
        return False
    for i in range(len(rows[0][1])):
        ax.plot([e for e, _ in rows], [r[i] for _, r in rows], ":", marker="." if
                len(rows) < 30 else None, label=f"validation, layer {i + 1}")
    return True


# --------------------------------------------------------------------------- latent space


def pca_2d(points: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Project points [N, L] on their first two principal axes → ([N, 2], explained fractions)."""
    centred = points.double() - points.double().mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    var = s.square()
    fractions = (var[:2] / var.sum().clamp_min(1e-300)).tolist()
    return (centred @ vh[:2].T).float(), fractions


def _latent_coords(means: torch.Tensor) -> tuple[np.ndarray, tuple[str, str]]:
    latent_dim = means.shape[1]
    if latent_dim == 1:
        return means.numpy(), ("z[0] (encoder mean)", "")
    if latent_dim == 2:
        return means.numpy(), ("z[0] (encoder mean)", "z[1] (encoder mean)")
    coords, frac = pca_2d(means)
    return coords.numpy(), (f"PC 1 of E_q[z|x] ({100 * frac[0]:.0f}% of variance)",
                            f"PC 2 ({100 * frac[1]:.0f}% of variance)")


def write_latent(model, x: torch.Tensor, labels: torch.Tensor | None,
                 path: str | os.PathLike, *, class_names: Sequence[str] | None = None,
                 encode: Callable | None = None) -> Path:
    """Scatter the encoder means E_q[z | x] of x [N, D] in 2-D, coloured by labels [N].

    L = 2 is shown as is, L > 2 by PCA onto two axes, L = 1 against the label (or jittered).
    ``class_names[label]`` names the legend entries.
    """
    x = _checks.tensor("x", x)
    encode = model.encode if encode is None else encode
    with torch.inference_mode():
        means = encode(x.to(device_of(model))).mean.detach().cpu()
    coords, (xlabel, ylabel) = _latent_coords(means)
    if coords.shape[1] == 1:
        extra = labels.numpy() if labels is not None else np.random.default_rng(0).uniform(
            -1, 1, len(coords))
        coords = np.stack([coords[:, 0], extra + np.random.default_rng(1).uniform(
            -0.3, 0.3, len(coords))], 1)
        ylabel = "label (jittered)" if labels is not None else "jitter"
    fig = Figure(figsize=(7.5, 6), layout="constrained")
    ax = fig.subplots()
    _scatter_by_label(ax, coords, labels, class_names)
    ax.set(xlabel=xlabel, ylabel=ylabel,
           title=f"latent space: encoder means of {len(coords)} examples (L = {means.shape[1]})")
    return save_figure(fig, path)


def _scatter_by_label(ax: Axes, coords: np.ndarray, labels: torch.Tensor | None,
                      class_names: Sequence[str] | None) -> None:
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=5, alpha=0.6)
        return
    label_array = labels.detach().cpu().numpy()
    classes = np.unique(label_array)
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for i, label in enumerate(classes):
        mask = label_array == label
        name = (class_names[label] if class_names is not None and 0 <= label < len(class_names)
                else str(label))
        ax.scatter(coords[mask, 0], coords[mask, 1], s=5, alpha=0.6,
                   color=cmap(i % cmap.N), label=name)
    if len(classes) <= 20:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=3, fontsize=8,
                  frameon=False)


# --------------------------------------------------------------------------- a run's figures


def _write_vector_samples(model, dataset, path: Path, n: int = 500) -> Path:
    """Non-image data: draws x ~ p(x) over the data, first two coordinates."""
    with torch.inference_mode():
        samples = model.sample(n, generator=_generator(0)).cpu()
    data = _pick_rows(dataset, n).x
    return scatter_points({"data": data, "samples x ~ p(x)": samples}, path,
                          title=f"{n} samples from the model and {len(data)} data points")


def _pick_rows(dataset, n: int, seed: int = 0):
    """A seeded random subset of at most n rows of ``dataset``."""
    total = len(dataset)
    if total <= n:
        return dataset
    index = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]
    return dataset.subset(index.sort().values)


def _trained_encoder(run_dir: Path, model, encode: Callable | None) -> bool:
    """Whether the run has a trained q(z|x): not when config.json says per-datapoint."""
    if encode is not None:
        return True
    if getattr(model, "encoder", None) is None:
        return False
    return _run_setting(run_dir, "inference", "amortized") != "per-datapoint"


def _run_setting(run_dir: Path, key: str, default: object) -> object:
    """config.json's train.<key> (``default`` when the file or the key is missing)."""
    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        return config["train"][key]
    except (OSError, ValueError, KeyError, TypeError):
        return default


def data_range(dataset) -> tuple[float, float]:
    """The range shown black to white: (0, 1) for data in it, else the data's min and max."""
    x = dataset.x
    low, high = float(x.min()), float(x.max())
    if low >= 0 and high <= 1 or not (math.isfinite(low) and math.isfinite(high)) or low == high:
        return 0.0, 1.0
    return low, high


def write_run_figures(run_dir: str | os.PathLike, model, dataset, metrics: Sequence[dict], *,
                      log: Callable[[str], object] | None = None,
                      encode: Callable | None = None) -> list[Path]:
    """Write samples.png, reconstructions.png, curves.png and latent.png into ``run_dir``.

    ``dataset`` is a ``vaelab.data.Dataset`` (e.g. the validation split). Reconstructions and
    latent.png need a trained encoder (``encode``, else ``model.encoder`` unless the run's
    config.json says ``inference = "per-datapoint"``); latent.png also needs labels. Skipped
    figures and non-image data (scatter plots instead of grids) are noted to ``log``.
    Returns the written paths.
    """
    run_dir = Path(run_dir)
    log = log or (lambda _line: None)
    image_shape = getattr(dataset, "image_shape", None)
    shown = data_range(dataset)
    if image_shape is None:
        written = [_write_vector_samples(model, dataset, run_dir / "samples.png")]
        log("figures: the data are not images; samples/reconstructions are scatter plots")
    else:
        written = [write_samples(model, run_dir / "samples.png", 64, image_shape, seed=0,
                                 value_range=shown)]
    has_encoder = _trained_encoder(run_dir, model, encode)
    if has_encoder:
        x = _pick_rows(dataset, 16).x
        binarized = _run_setting(run_dir, "binarize", "none") != "none"
        written.append(write_reconstructions(model, x, run_dir / "reconstructions.png",
                                             image_shape, binarized=binarized,
                                             value_range=shown))
    else:
        log("figures: reconstructions.png and latent.png skipped (the run has no encoder)")
    written.append(write_curves(list(metrics), run_dir / "curves.png"))
    if dataset.labels is not None and has_encoder:
        some = _pick_rows(dataset, 2000)
        written.append(write_latent(model, some.x, some.labels, run_dir / "latent.png",
                                    class_names=CLASS_NAMES.get(dataset.name), encode=encode))
    elif has_encoder:
        log("figures: latent.png skipped (the data have no labels)")
    return written
