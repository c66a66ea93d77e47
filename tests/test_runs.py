"""vaelab.fit.runs: pickle-free state trees, atomic checkpoints, clear errors for broken runs."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import vaelab
from vaelab import data
from vaelab.fit import runs
from vaelab.fit.train import train

# the module itself: vaelab/__init__ may re-export the function ``train`` as ``vaelab.fit.train``
TINY = {"model": {"hidden": [16], "latent_dim": 2},
        "train": {"epochs": 1, "batch_size": 100, "limit": 300, "val_fraction": 0.1}}



pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fashion() -> data.Dataset:
    return data.load_dataset("fashion-mnist", "train", limit=300)


@pytest.fixture(scope="module")
def template(fashion, tmp_path_factory):
    """A finished one-epoch run, copied by :func:`run` for tests that damage it."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("template") / "run"
    train(TINY, out, dataset=fashion, log=None)
    return out


@pytest.fixture
def run(template, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(template, out)
    return out


def _adam_state() -> dict:
    p, q = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2))
    opt = torch.optim.Adam([p, q], lr=0.1, betas=(0.5, 0.9))
    (p.sum() + q.pow(2).sum()).backward()
    opt.step()
    return opt.state_dict()


def test_pack_tree_round_trips_an_optimizer_state():
    state = {"theta": _adam_state(), "phi": None, "misc": [1.5, math.inf, "s", (1, 2), True]}
    tensors: dict[str, torch.Tensor] = {}
    skeleton = runs.pack_tree(state, tensors, "optimizer.")
    text = json.dumps(skeleton, allow_nan=False)  # strict JSON, no pickle
    back = runs.unpack_tree(json.loads(text), tensors)
    assert back["phi"] is None and back["misc"] == [1.5, math.inf, "s", (1, 2), True]
    theta, ref = back["theta"], state["theta"]
    assert theta["param_groups"] == ref["param_groups"]
    assert set(theta["state"]) == {0, 1}  # int keys survive
    for i in (0, 1):
        for key, value in ref["state"][i].items():
            assert torch.equal(theta["state"][i][key], value)


def test_pack_tree_refuses_what_would_need_pickle():
    with pytest.raises(TypeError, match="without pickle"):
        runs.pack_tree({"f": object()}, {}, "x.")
    with pytest.raises(TypeError, match="keys"):
        runs.pack_tree({(1, 2): 3}, {}, "x.")


def test_rng_state_round_trip():
    state = torch.get_rng_state()
    assert torch.equal(runs.rng_from_json(runs.rng_to_json(state)), state)


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    runs.atomic_write_json(tmp_path / "a.json", {"x": 1})
    runs.atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    with pytest.raises(ValueError):
        runs.atomic_write_json(tmp_path / "a.json", {"x": math.nan})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}


def test_checkpoint_swap_survives_a_kill_between_the_renames(tmp_path):
    runs.write_checkpoint(tmp_path, {"w": torch.zeros(2)}, {"epoch": 1})
    runs.write_checkpoint(tmp_path, {"w": torch.ones(2)}, {"epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    # the state between "checkpoint -> checkpoint.old" and "checkpoint.new -> checkpoint"
    shutil.copytree(tmp_path / "checkpoint", tmp_path / "checkpoint.old")
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.new")
    state = json.loads((tmp_path / "checkpoint.new" / "state.json").read_text())
    state["epoch"] = 3
    (tmp_path / "checkpoint.new" / "state.json").write_text(json.dumps(state))
    tensors, read = runs.read_checkpoint(tmp_path)
    assert read["epoch"] == 3 and torch.equal(tensors["w"], torch.ones(2))
    runs.write_checkpoint(tmp_path, {"w": torch.full((2,), 4.0)}, {"epoch": 4})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert runs.read_checkpoint(tmp_path)[1]["epoch"] == 4


def test_partial_new_checkpoint_is_ignored(tmp_path):
    runs.write_checkpoint(tmp_path, {"w": torch.zeros(2)}, {"epoch": 1})
    (tmp_path / "checkpoint.new").mkdir()
    (tmp_path / "checkpoint.new" / "state.safetensors").write_bytes(b"partial")
    assert runs.read_checkpoint(tmp_path)[1]["epoch"] == 1
    runs.write_checkpoint(tmp_path, {"w": torch.ones(2)}, {"epoch": 2})
    assert runs.read_checkpoint(tmp_path)[1]["epoch"] == 2


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("damage, match", [
    (lambda d: (d / "state.safetensors").write_bytes((d / "state.safetensors").read_bytes()[:-7]),
     "SHA-256"),
    (lambda d: (d / "state.json").write_text('{"format": "vaelab-checkpoint/1", "ep'),
     "not valid JSON"),
    (lambda d: (d / "state.json").write_text('{"format": "something else"}'),
     "not a vaelab checkpoint"),
    (lambda d: (d / "state.safetensors").unlink(), "cannot read"),
])
def test_corrupt_checkpoint_is_one_clear_error_and_nothing_changes(run, fashion, damage, match):
    damage(run / "checkpoint")
    before = _snapshot(run)
    with pytest.raises(runs.RunError, match=match):
        train({**TINY, "train": {**TINY["train"], "epochs": 2}}, run, dataset=fashion,
              resume=True, log=None)
    assert _snapshot(run) == before


def test_incompatible_checkpoint_tensors(run, fashion):
    tensors, state = runs.read_checkpoint(run)
    tensors["model.decoder.net.0.weight"] = torch.zeros(3, 3)
    runs.write_checkpoint(run, tensors, {k: v for k, v in state.items()
                                         if k not in ("format", "sha256")})
    with pytest.raises(runs.RunError, match=r"decoder\.net\.0\.weight.*expected shape"):
        train({**TINY, "train": {**TINY["train"], "epochs": 2}}, run, dataset=fashion,
              resume=True, log=None)


def test_resume_with_other_data_is_refused(run, fashion):
    config = {**TINY, "train": {**TINY["train"], "epochs": 2}}
    with pytest.raises(runs.RunError, match="training examples"):
        train(config, run, dataset=fashion.subset(slice(0, 200)), resume=True, log=None)
    flipped = data.Dataset(1 - fashion.x, fashion.labels, fashion.image_shape, fashion.name)
    with pytest.raises(runs.RunError, match="training data differ"):
        train(config, run, dataset=flipped, resume=True, log=None)


def test_load_errors_name_the_problem(run, tmp_path):
    with pytest.raises(runs.RunError, match="does not exist"):
        vaelab.load(tmp_path / "nowhere")
    model = run / "model.safetensors"
    good = model.read_bytes()
    model.write_bytes(good[: len(good) // 2])
    with pytest.raises(runs.RunError, match="model.*not a valid safetensors"):
        vaelab.load(run)
    weights = load_file_bytes(good)
    weights["encoder.net.0.weight"] = torch.zeros(16, 5)
    save_file(weights, model)
    with pytest.raises(runs.RunError, match=r"encoder\.net\.0\.weight.*\[16, 784\].*\[16, 5\]"):
        vaelab.load(run)
    del weights["encoder.net.0.weight"]
    save_file(weights, model)
    with pytest.raises(runs.RunError, match="missing"):
        vaelab.load(run)
    model.unlink()
    with pytest.raises(runs.RunError, match="does not exist"):
        vaelab.load(run)


def load_file_bytes(blob: bytes) -> dict:
    from safetensors.torch import load
    return load(blob)


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ('{"model": {}, "train": {}}', "not a vaelab run config"),
    ('{"format": "vaelab-run/1", "model": {"latent_dimm": 2}}', "latent_dimm"),
    ('{"format": "vaelab-run/1", "train": {"epochs": -3}}', "epochs"),
])
def test_bad_config_json(run, text, match):
    (run / "config.json").write_text(text)
    with pytest.raises(runs.RunError, match=match):
        vaelab.load(run)


def test_loaded_model_matches_the_file(run):
    trained = vaelab.load(run)
    weights = load_file(run / "model.safetensors")
    state = trained.model.state_dict()
    assert all(torch.equal(state[k], weights[k]) for k in state)
    assert not trained.model.training
    assert "TrainedModel" in repr(trained)


def _rows(*values) -> list[dict]:
    return [{"epoch": i + 1, "val_elbo": v} for i, v in enumerate(values)]


def test_saved_epoch_is_the_best_under_early_stopping_else_the_last():
    best = runs.saved_epoch(_rows(-10.0, -5.0, None, -5.0, -7.0), 3)
    assert (best.epoch, best.val_elbo, best.last_epoch, best.last_val_elbo, best.best) == (
        2, -5.0, 5, -7.0, True)                      # the first of equal bests, null skipped
    assert best.describe() == "best val ELBO -5.00 at epoch 2 (saved); last epoch 5: -7.00"
    for off in (None, 0, False, "3"):
        last = runs.saved_epoch(_rows(-10.0, -5.0, -7.0), off)
        assert (last.epoch, last.val_elbo, last.best) == (3, -7.0, False), off
        assert last.describe() == "val ELBO -7.00 at epoch 3 (saved; the last epoch)"
    assert runs.saved_epoch(_rows(-9.0, -3.0), 1).describe() == (
        "best val ELBO -3.00 at epoch 2 (saved; the last epoch)")
    none = runs.saved_epoch(_rows(None, None), 2)     # no finite bound: the last weights stay
    assert (none.epoch, none.val_elbo, none.best) == (2, None, False)
    assert runs.saved_epoch([], 2) is None
    assert "-2.6e+11" in runs.saved_epoch(_rows(-2.6e11), None).describe()
