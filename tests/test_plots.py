"""``vaelab.show.plots``: valid PNGs with the right content, written atomically; PCA oracle."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab import data
from vaelab.config import ModelConfig
from vaelab.data import Dataset
from vaelab.model.vae import build_vae
from vaelab.show import plots


def png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("L"), dtype=np.float64) / 255


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def vae():
    torch.manual_seed(0)
    return build_vae(ModelConfig(data_dim=36, latent_dim=3, hidden=(16,),
                                 image_shape=(1, 6, 6)))


def test_image_grid_places_images_in_rows(tmp_path):
    """Tile 0 white, the rest black: the bright pixels sit in the top-left of the mosaic."""
    images = torch.zeros(6, 16)
    images[0] = 1.0
    mosaic = plots._tile(plots._to_hwc(images.numpy(), (1, 4, 4)), nrow=3, pad=2)
    assert mosaic.shape == (2 * 6 + 2, 3 * 6 + 2)
    assert (mosaic[2:6, 2:6] == 1).all() and (mosaic[2:6, 8:12] == 0).all()
    assert (mosaic[8:12, 2:6] == 0).all() and (mosaic[0, :] == 1).all()   # padding is white
    path = plots.image_grid(images, (1, 4, 4), tmp_path / "grid.png", nrow=3, title="t")
    pixels = png(path)
    assert pixels.shape[0] > 10 and pixels.shape[1] > 10
    assert pixels.max() == 1.0 and pixels.min() == 0.0
    assert leftovers(tmp_path) == []


def test_image_grid_shows_colour_and_rescales_out_of_range_values(tmp_path):
    rgb = torch.rand(4, 3 * 5 * 5) * 10 - 5                      # Gaussian-like data
    hwc = plots._to_hwc(rgb.numpy(), (3, 5, 5))
    assert hwc.shape == (4, 5, 5, 3) and hwc.min() == 0 and hwc.max() == 1
    with Image.open(plots.image_grid(rgb, (3, 5, 5), tmp_path / "rgb.png")) as image:
        assert image.mode in ("RGB", "RGBA")


@pytest.mark.parametrize("images, shape, message", [
    (torch.zeros(4, 10), (1, 3, 3), r"images: expected shape \[N >= 1, 9\]"),
    (torch.zeros(0, 9), (1, 3, 3), "images: expected shape"),
    (torch.zeros(4, 9), (3, 3), "image_shape: expected"),
])
def test_image_grid_rejects_bad_shapes_and_writes_nothing(tmp_path, images, shape, message):
    with pytest.raises(ValueError, match=message):
        plots.image_grid(images, shape, tmp_path / "grid.png")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "grid.png"
    target.write_bytes(b"old picture")

    def broken_savefig(*args, **kwargs):
        raise RuntimeError("disk full")

    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.image_grid(torch.rand(2, 4), (1, 2, 2), target)
    assert target.read_bytes() == b"old picture"
    assert leftovers(tmp_path) == []


def test_unwritable_destination_raises_oserror(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        plots.image_grid(torch.rand(2, 4), (1, 2, 2), tmp_path / "file" / "grid.png")


def test_samples_are_decoder_means_and_seeded(tmp_path, vae):
    a = plots.write_samples(vae, tmp_path / "a.png", 9, (1, 6, 6), seed=3)
    b = plots.write_samples(vae, tmp_path / "b.png", 9, (1, 6, 6), seed=3)
    assert a.read_bytes() == b.read_bytes()
    c = plots.write_samples(vae, tmp_path / "c.png", 9, (1, 6, 6), seed=4)
    assert c.read_bytes() != a.read_bytes()


def test_reconstructions_put_originals_above_reconstructions(tmp_path, monkeypatch, vae):
    seen = {}

    def capture(images, image_shape, path, nrow, **kwargs):
        seen.update(images=images, nrow=nrow, **kwargs)
        return path

    monkeypatch.setattr(plots, "image_grid", capture)
    x = torch.rand(10, 36)
    plots.write_reconstructions(vae, x, tmp_path / "r.png", (1, 6, 6), ncol=4)
    rows = seen["images"].reshape(-1, 4, 36)                     # 3 pairs of rows of 4
    assert seen["nrow"] == 4 and rows.shape[0] == 6
    assert seen["row_labels"] == ["original", "reconstruction"] * 3
    recon = vae.reconstruct(x)
    assert torch.equal(rows[0], x[:4]) and torch.allclose(rows[1], recon[:4])
    assert torch.equal(rows[4, :2], x[8:]) and (rows[4, 2:] == 1).all()  # blank padding


def test_curves_accept_the_training_metric_keys(tmp_path):
    metrics = [{"epoch": e, "train_elbo": -300.0 + 10 * e, "val_elbo": -305.0 + 10 * e,
                "train_rate": 10.0 + e, "val_rate": None, "train_distortion": 290.0 - 9 * e}
               for e in range(1, 5)]
    assert plots._curve(metrics, "train", "elbo") == ([1.0, 2.0, 3.0, 4.0],
                                                       [-290.0, -280.0, -270.0, -260.0])
    assert plots._curve(metrics, "val", "rate") == ([], [])
    nested = [{"epoch": 1, "train": {"elbo": -5.0}}, {"epoch": 2, "train/elbo": -4.0}]
    assert plots._curve(nested, "train", "elbo") == ([1.0, 2.0], [-5.0, -4.0])
    png(plots.write_curves(metrics, tmp_path / "curves.png"))
    png(plots.write_curves([], tmp_path / "empty.png"))
    with pytest.raises(TypeError, match="metrics: expected a list of dicts"):
        plots.write_curves({"epoch": 1}, tmp_path / "bad.png")


def test_pca_recovers_the_principal_axes():
    g = torch.Generator().manual_seed(0)
    coords = torch.randn(500, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [5.0, 2.0, 0.1], dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    projected, fractions = plots.pca_2d(coords @ rotation.T + 7.0)
    var = coords.var(0)
    assert fractions == pytest.approx((var[:2] / var.sum()).tolist(), rel=0.05)
    assert projected.var(0).tolist() == pytest.approx(var[:2].tolist(), rel=0.05)
    assert abs(torch.corrcoef(torch.stack([projected[:, 0].double(), coords[:, 0]]))[0, 1]) > 0.99


@pytest.mark.parametrize("latent_dim", [1, 2, 5])
def test_latent_plot_for_any_latent_dim(tmp_path, latent_dim):
    vae = build_vae(ModelConfig(data_dim=8, latent_dim=latent_dim, hidden=(8,)))
    x, labels = torch.rand(60, 8), torch.arange(60) % 3
    png(plots.write_latent(vae, x, labels, tmp_path / "a.png", class_names=["a", "b", "c"]))
    png(plots.write_latent(vae, x, None, tmp_path / "b.png"))


def test_run_figures_for_image_data(tmp_path, vae):
    ds = Dataset(torch.rand(40, 36), torch.arange(40) % 10, (1, 6, 6), "fashion-mnist")
    metrics = [{"epoch": 1, "train_elbo": -30.0, "val_elbo": -31.0}]
    paths = plots.write_run_figures(tmp_path, vae, ds, metrics)
    assert [p.name for p in paths] == ["samples.png", "reconstructions.png", "curves.png",
                                       "latent.png"]
    for path in paths:
        png(path)
    assert leftovers(tmp_path) == []


def test_run_figures_for_vectors_without_labels(tmp_path):
    vae = build_vae(ModelConfig(data_dim=2, latent_dim=2, hidden=(8,), likelihood="gaussian"))
    ds = Dataset(torch.randn(50, 2), None, None, "points")
    notes = []
    paths = plots.write_run_figures(tmp_path, vae, ds, [], log=notes.append)
    assert [p.name for p in paths] == ["samples.png", "reconstructions.png", "curves.png"]
    assert any("not images" in n for n in notes) and any("latent.png" in n for n in notes)
    for path in paths:
        assert png(path).std() > 0


def test_run_figures_skip_the_encoder_of_a_per_datapoint_run(tmp_path, vae):
    (tmp_path / "config.json").write_text('{"train": {"inference": "per-datapoint"}}')
    ds = Dataset(torch.rand(20, 36), torch.arange(20) % 2, (1, 6, 6), "mnist")
    notes = []
    paths = plots.write_run_figures(tmp_path, vae, ds, [], log=notes.append)
    assert [p.name for p in paths] == ["samples.png", "curves.png"]
    assert any("no encoder" in n for n in notes)
    assert not math.isnan(png(paths[0]).mean())


class _DeviceRecorder(torch.nn.Module):
    """A model whose weights sit on the 'meta' device; it records where its inputs arrive."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(2, device="meta"))
        self.seen: list[torch.device] = []

    def reconstruct(self, x):
        self.seen.append(x.device)
        return torch.zeros(x.shape)

    def encode(self, x):
        self.seen.append(x.device)
        return torch.distributions.Normal(torch.zeros(x.shape[0], 2), 1.0)


def test_figures_hand_the_model_its_own_device(tmp_path):
    """The end-of-training figures get the data on the CPU; a GPU model must receive it on
    its own device (here 'meta' stands for cuda), or every GPU run crashes at its end."""
    model, x = _DeviceRecorder(), torch.rand(4, 4)
    plots.write_reconstructions(model, x, tmp_path / "r.png", (1, 2, 2))
    plots.write_latent(model, x, torch.tensor([0, 1, 0, 1]), tmp_path / "l.png")
    assert model.seen == [torch.device("meta")] * 2


def test_the_scatter_legend_names_the_diagonal_only_when_it_is_drawn():
    from vaelab.show.plots import recon_scatter

    x = torch.tensor([[0.5, 3.0], [-2.0, 1.0]])
    recon = torch.tensor([[0.4, 2.5], [float("nan"), float("inf")]])
    ax = recon_scatter(x, recon).axes[0]
    (line,) = ax.get_lines()
    finite = np.array([0.5, 3.0, -2.0, 1.0, 0.4, 2.5])     # NaN and inf are not drawn
    assert list(line.get_xdata()) == [finite.min(), finite.max()]
    assert list(line.get_ydata()) == [finite.min(), finite.max()]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["perfect"]
    assert "2 non-finite reconstructed values not drawn" in ax.get_title()
    nothing = recon_scatter(torch.full((2, 2), float("nan")),
                            torch.full((2, 2), float("nan"))).axes[0]
    assert nothing.get_lines() == [] and nothing.get_legend() is None


# ------------------------------------------------------------------------------------- image grids
# Image grids say what they show and keep the data's colour scale.
#
# * A Gaussian decoder's means overshoot [0, 1] a little; rescaling each grid to its own min and
#   max showed the data's black 0 as grey (38/255). With the data's range pinned, 0 is black
#   (0/255) and 1 white (255/255) in the PNG, whatever the images hold.
# * reconstructions.png of a binarized run shows one binarized draw as the input; its rows and
#   title must say so.


def pixel(path, row: int, col: int) -> int:
    with Image.open(path) as image:
        return int(np.asarray(image.convert("L"))[row, col])


def tile_centre(path, index: int, *, n: int, size: int = 6, pad: int = 2) -> tuple[int, int]:
    """(row, col) in the PNG of the centre of tile ``index`` of a one-row grid of n tiles."""
    with Image.open(path) as image:
        width, height = image.size
    scale_x = width / (n * (size + pad) + pad)
    scale_y = height / (size + 2 * pad)
    col = (pad + index * (size + pad) + size / 2) * scale_x
    return int((pad + size / 2) * scale_y), int(col)


def test_pinned_range_keeps_zero_black_and_one_white(tmp_path):
    black = torch.zeros(1, 36)
    overshoot = torch.full((1, 36), -0.05)
    overshoot[0, :18] = 1.3                  # a Gaussian mean beyond both ends
    white = torch.ones(1, 36)
    images = torch.cat([black, overshoot, white])
    path = plots.image_grid(images, (1, 6, 6), tmp_path / "g.png", nrow=3,
                            value_range=(0.0, 1.0))
    assert pixel(path, *tile_centre(path, 0, n=3)) == 0
    assert pixel(path, *tile_centre(path, 2, n=3)) == 255
    shown = plots._to_hwc(images.numpy(), (1, 6, 6), (0.0, 1.0))
    assert shown[0].max() == 0.0 and shown[1].min() == 0.0 and shown[1].max() == 1.0


def test_default_range_is_zero_one_for_data_in_it_and_said_otherwise():
    inside = np.array([[0.0, 0.5, 1.0]])
    assert plots.display_range(inside, None) == (0.0, 1.0)
    assert plots.display_range(np.array([[0.2, 0.4]]), None) == (0.0, 1.0)   # not 0.2..0.4
    assert plots.display_range(np.array([[-2.0, 3.0]]), None) == (-2.0, 3.0)
    assert plots.display_range(inside, (-1.0, 2.0)) == (-1.0, 2.0)
    with pytest.raises(ValueError, match="value_range"):
        plots.display_range(inside, (1.0, 1.0))
    assert plots.data_range(data.Dataset(torch.rand(5, 4), None, None, "u")) == (0.0, 1.0)
    assert plots.data_range(data.Dataset(torch.tensor([[-3.0, 2.0]]), None, None, "z")) == (
        -3.0, 2.0)


@pytest.mark.parametrize("binarize", ["dynamic", "none"])
def test_run_reconstructions_say_when_inputs_are_binarized_draws(tmp_path, monkeypatch,
                                                                 binarize):
    torch.manual_seed(0)
    model = build_vae(ModelConfig(data_dim=36, latent_dim=2, hidden=(8,),
                                  image_shape=(1, 6, 6)))
    (tmp_path / "config.json").write_text(json.dumps(
        {"model": {}, "train": {"binarize": binarize, "inference": "amortized"}}))
    dataset = data.Dataset(torch.rand(20, 36).round(), torch.arange(20) % 2, (1, 6, 6), "toy")
    grids = []

    def capture(images, image_shape, path, nrow=8, **kwargs):
        grids.append((str(path), kwargs))
        return path

    monkeypatch.setattr(plots, "image_grid", capture)
    plots.write_run_figures(tmp_path, model, dataset, [])
    options = dict(grids)
    recon = options[str(tmp_path / "reconstructions.png")]
    assert all(kw["value_range"] == (0.0, 1.0) for kw in options.values())
    if binarize == "none":
        assert recon["row_labels"][0] == "original" and "binarized" not in recon["title"]
    else:
        assert recon["row_labels"][0] == "input (binarized)"
        assert "one binarized draw" in recon["title"]
