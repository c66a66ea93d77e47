"""Posterior collapse of a one-layer model is warned about like a hierarchy's layers.

``vaelab.model.hierarchical.collapse_warning`` is the one rule (no active unit, or a rate
below ``ZERO_RATE`` nats); train (end of training), evaluate (eval.json warnings), runs and
report (their problems column) all ask it.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import run_cli

from vaelab.config import ModelConfig, TrainConfig
from vaelab.measure.evaluate import evaluate_model
from vaelab.model import hierarchical
from vaelab.model.vae import build_vae
from vaelab.show import runinfo


def test_one_layer_collapse_is_named_by_the_same_rule():
    line = hierarchical.collapse_warning([1], (20,), [0.097])
    assert line.startswith("warning: posterior collapse: no active unit of 20")
    assert "rate" not in line.split(",")[0] and "--free-bits" in line
    quiet = hierarchical.collapse_warning([], (20,), [0.01])
    assert "rate 0.010 nats" in quiet and "no active unit" not in quiet
    assert hierarchical.collapse_warning([], (20,), [hierarchical.ZERO_RATE]) is None
    assert hierarchical.collapse_warning([], (20,), None) is None


def test_collapse_from_a_metrics_row():
    rows = {"val_rate": 0.3, "train_rate": 0.001, "val_active_units": 0}
    assert "no active unit of 4" in hierarchical.collapse_from_metrics(rows, (4,))
    assert hierarchical.collapse_from_metrics({"val_rate": None, "train_rate": 0.001},
                                              (4,)).endswith("(--free-bits)")
    assert hierarchical.collapse_from_metrics({"val_rate": 2.0, "val_active_units": 3},
                                              (4,)) is None
    layered = {"val_rate_per_layer": [1.0, 0.001], "val_active_units_per_layer": [3, 0]}
    assert "layer 2 (2 units) collapsed" in hierarchical.collapse_from_metrics(layered, (4, 2))


def test_evaluate_warns_about_a_collapsed_one_layer_model():
    model = build_vae(ModelConfig(data_dim=6, latent_dim=3, hidden=(8,))).double()
    linear = [m for m in model.encoder.net.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        linear[-1].weight.zero_()            # q(z | x) no longer depends on x
    x = torch.rand(40, 6, dtype=torch.float64).round()
    result = evaluate_model(model, x, num_samples=2)
    q = model.encode(x)
    assert float(q.mean.detach().var(0).max()) == 0.0  # the oracle: nothing varies with x
    assert result["active_units"] == 0
    assert any(w.startswith("warning: posterior collapse: no active unit of 3")
               for w in result["warnings"])


def test_train_evaluate_and_runs_say_a_run_collapsed(tmp_path, capsys):
    np.save(tmp_path / "d.npy", np.random.default_rng(0).random((300, 8)).astype(np.float32))
    run = tmp_path / "runs" / "col"
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "d.npy", "--out", run,
                           "--epochs", "15", "--lr", "0.01", "--hidden", "16", "--latent-dim",
                           "5", "--batch-size", "32", "--quiet")
    assert code == 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["val_active_units"] == 0 and last["val_rate"] < hierarchical.ZERO_RATE
    assert "warning: posterior collapse: no active unit of 5" in err      # noise: nothing to code
    code, out, _ = run_cli(capsys, "evaluate", run, "--k", "4", "--limit", "50", "--quiet")
    assert code == 0 and "posterior collapse" in out
    code, out, _ = run_cli(capsys, "runs", tmp_path / "runs")
    row = [line for line in out.splitlines() if line.startswith("col")][0]
    assert row.rstrip().endswith("collapsed")


def test_the_remedy_fits_how_the_run_was_trained():
    def line(**train) -> str:
        return hierarchical.collapse_warning([1], (4,), [0.01], training=TrainConfig(**train))

    plain = line()
    assert "try a KL warm-up (--kl-schedule linear) or free bits (--free-bits)" in plain
    warm = line(kl_warmup_epochs=5)           # a warm-up already on is not suggested as missing
    assert "--kl-schedule linear" not in warm and "a KL warm-up (" not in warm
    assert "a longer KL warm-up (this run: --kl-warmup 5 epochs)" in warm
    assert warm.endswith("or free bits (--free-bits)")
    cyclical = line(kl_schedule="cyclical")
    assert "a KL warm-up (" not in cyclical and "--kl-cycles 4, --kl-ratio 0.5" in cyclical
    bits = line(kl_warmup_epochs=2, free_bits=0.25)
    assert bits.endswith("or more free bits (this run: --free-bits 0.25)")
    iwae = line(objective="iwae", num_samples=2)      # free bits is refused with iwae
    assert "free bits" not in iwae and iwae.endswith("try a KL warm-up (--kl-schedule linear)")
    assert "a smaller KL weight (this run: --beta 4)" in line(beta=4.0)
    layered = {"kl_schedule": "linear", "kl_warmup_epochs": 3.0, "objective": "elbo"}
    hvae = hierarchical.collapse_warning([2], (4, 2), [1.0, 0.0], training=layered)
    assert hvae.endswith("try a longer KL warm-up (this run: --kl-warmup 3 epochs), free bits "
                         "(--free-bits) or fewer layers")


def test_train_evaluate_and_runs_do_not_suggest_the_warm_up_a_run_had(tmp_path, capsys):
    np.save(tmp_path / "d.npy", np.random.default_rng(0).random((300, 8)).astype(np.float32))
    run = tmp_path / "runs" / "warm"
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "d.npy", "--out", run,
                           "--epochs", "15", "--lr", "0.01", "--hidden", "16", "--latent-dim",
                           "5", "--batch-size", "32", "--kl-warmup", "2", "--quiet")
    assert code == 0 and "posterior collapse" in err      # noise: nothing to code
    from_metrics = [p.line for p in runinfo.model_problems(runinfo.read_run(run))]
    evaluated = run_cli(capsys, "evaluate", run, "--k", "4", "--limit", "50", "--quiet")[1]
    for text in (err, evaluated, *from_metrics):
        assert "--kl-schedule linear" not in text and "--kl-warmup 2 epochs" in text
