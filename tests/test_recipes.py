"""recipes/: every recipe file is a valid config that builds its model and gives a finite
bound, and each published row's recipe says the published protocol."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vaelab.config import RunConfig, load_config_file
from vaelab.infer.objectives import elbo
from vaelab.model.vae import build_vae

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*/*.toml"))


def test_there_are_recipes():
    assert {p.stem for p in RECIPES} >= {"vae", "vamp", "hvae", "hvae-vamp", "hvae3", "iwae",
                                         "iaf", "convhvae", "convhvae-vamp"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_builds_and_bounds(path):
    config = RunConfig.from_dict(load_config_file(path))
    assert config.train.data == "fashion-mnist" and config.train.binarize == "dynamic"
    assert round(config.train.val_fraction * 60_000) == 10_000          # 50k / 10k
    assert config.train.epochs <= 400
    model = build_vae(config.model.with_data(784, (1, 28, 28), "binary"))
    x = torch.bernoulli(torch.full((3, 784), 0.3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        bound = elbo(model, model.encode(x), x)
    assert bound.shape == (3,) and torch.isfinite(bound).all()
