"""recipes/: every recipe file is a valid config that builds its model and gives a finite
bound, and each published row's recipe says the published protocol."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from vaelab.config import RunConfig, load_config_file
from vaelab.fit.masked import MaskedTrainStep, build_masked_model
from vaelab.fit.step import TrainStep
from vaelab.infer.masked import masked_iwae_bound
from vaelab.infer.objectives import elbo
from vaelab.infer.schemes import Amortized
from vaelab.model.vae import build_vae

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*/*.toml"))
#: Recipes for tables with missing cells (MIWAE / not-MIWAE), built on a small table below.
TABLE_RECIPES = [p for p in RECIPES if p.parent.name == "tables"]


def _load_benchmark(name: str):
    """benchmarks/<name>.py as a module (the one list of its rows or variants lives there)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = list(sys.path)             # the script puts benchmarks/ on the path: undo it
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


#: The rows of the published table, from the one list of them (the table's benchmark).
PUBLISHED_ROWS = set(_load_benchmark("published").PUBLISHED)


def test_every_published_row_has_a_recipe():
    assert {"vae", "vamp", "hvae", "hvae-vamp", "convhvae", "convhvae-vamp"} <= PUBLISHED_ROWS
    assert {p.stem for p in RECIPES if p.parent.name == "fashion-mnist"} >= PUBLISHED_ROWS


@pytest.mark.parametrize("path", [p for p in RECIPES if p not in TABLE_RECIPES],
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
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


def test_the_imputation_recipes_exist():
    assert {p.stem for p in TABLE_RECIPES} >= {"impute", "impute-mnar"}


@pytest.mark.parametrize("path", TABLE_RECIPES, ids=lambda p: f"tables/{p.stem}")
def test_table_recipe_trains_on_incomplete_rows_and_bounds(path):
    """A table recipe is a masked model (NaN = missing) that takes a step on a small table with
    holes and gives a finite MIWAE bound on its observed cells (the latent size is the
    table's, --latent-dim D - 1, as the recipe says)."""
    config = RunConfig.from_dict(load_config_file(path))
    assert config.model.missing == "mask" and config.train.val_fraction == 0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g) @ torch.randn(5, 5, generator=g)
    x[torch.rand(40, 5, generator=g) < 0.2] = float("nan")
    x[:, 0] = torch.where(torch.isnan(x[:, 0]), 0.0, x[:, 0])     # no row left empty
    model_config = dataclasses.replace(config.model, data_dim=5, latent_dim=4)
    model = build_masked_model(dataclasses.replace(config, model=model_config), x)
    step = MaskedTrainStep(TrainStep(model, Amortized(model.encoder), lr=config.train.lr,
                                     num_samples=config.train.num_samples, compile=False),
                           objective=config.train.objective)
    assert not step(x[:16], None).skipped
    mask = ~torch.isnan(x)
    with torch.no_grad():
        bound = masked_iwae_bound(model, model.encoder(x), torch.where(mask, x, 0.0), mask,
                                  8, missing_logits=(model.missing_logits
                                                     if model.missingness is not None else None))
    assert bound.shape == (40,) and torch.isfinite(bound).all()


def test_every_ablation_variant_is_a_valid_config_that_changes_the_recipe():
    """benchmarks/ablation.py's variants: each is a valid run config, and each changes the
    short-budget recipe (a misspelt setting would otherwise be dropped or refused unseen, and
    the variant would measure the recipe against itself)."""
    ablation = _load_benchmark("ablation")
    for recipe, variants in ablation.VARIANTS.items():
        base = RunConfig.from_dict(ablation.variant_config(recipe, {}, 50))
        assert base.train.epochs == 50
        for name, (_, changes) in variants.items():
            config = RunConfig.from_dict(ablation.variant_config(recipe, changes, 50))
            assert (config == base) == (not changes), (recipe, name)
