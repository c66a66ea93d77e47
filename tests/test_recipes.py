"""recipes/: every recipe file is a valid config that builds its model and gives a finite
bound, and each published row's recipe says the published protocol."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from vaelab.config import RunConfig, load_config_file
from vaelab.infer.objectives import elbo
from vaelab.model.vae import build_vae

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*/*.toml"))


def _published_rows() -> set[str]:
    """The rows of the published table, from the one list of them (the table's benchmark)."""
    spec = importlib.util.spec_from_file_location("published", ROOT / "benchmarks" /
                                                  "published.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = list(sys.path)             # the script puts benchmarks/ on the path: undo it
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return set(module.PUBLISHED)


PUBLISHED_ROWS = _published_rows()


def test_every_published_row_has_a_recipe():
    assert {"vae", "vamp", "hvae", "hvae-vamp", "convhvae", "convhvae-vamp"} <= PUBLISHED_ROWS
    assert {p.stem for p in RECIPES if p.parent.name == "fashion-mnist"} >= PUBLISHED_ROWS


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_builds_and_bounds(path):
    """Every recipe builds and bounds; a published row's recipe also says the protocol (the
    recipes of the uses, e.g. cluster.toml, train on the data as they need it)."""
    config = RunConfig.from_dict(load_config_file(path))
    if path.parent.name == "fashion-mnist" and path.stem in PUBLISHED_ROWS:
        assert config.train.data == "fashion-mnist" and config.train.binarize == "dynamic"
        assert round(config.train.val_fraction * 60_000) == 10_000          # 50k / 10k
        assert config.train.epochs <= 400
    model = build_vae(config.model.with_data(784, (1, 28, 28), "binary"))
    x = torch.bernoulli(torch.full((3, 784), 0.3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        bound = elbo(model, model.encode(x), x)
    assert bound.shape == (3,) and torch.isfinite(bound).all()
