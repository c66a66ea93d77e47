"""Image grids say what they show and keep the data's colour scale.

* A Gaussian decoder's means overshoot [0, 1] a little; rescaling each grid to its own min and
  max showed the data's black 0 as grey (38/255). With the data's range pinned, 0 is black
  (0/255) and 1 white (255/255) in the PNG, whatever the images hold.
* reconstructions.png of a binarized run shows one binarized draw as the input; its rows and
  title must say so.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab import data
from vaelab.config import ModelConfig
from vaelab.model.vae import build_vae
from vaelab.show import plots


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
