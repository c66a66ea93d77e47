"""Every parameter group that is meant to learn actually changes.

``--schedule alternating`` with the default ``--phi-steps 0`` trained the decoder only and
left the encoder bit-identical to its initialisation. Now that combination is refused (config,
``TrainStep`` and the CLI, one line each), and for every inference scheme × schedule (× a
learned prior) two steps of ``TrainStep`` must change every parameter tensor of θ (decoder,
prior) and φ (encoder; for per-datapoint inference exactly the rows of the batch).
"""

from __future__ import annotations

import pytest
import torch

from vaelab import cli
from vaelab.config import ModelConfig, TrainConfig
from vaelab.fit.step import TrainStep
from vaelab.infer.schemes import build_inference
from vaelab.model.vae import build_vae

SCHEMES = {"amortized": {}, "per-datapoint": {},
           "semi-amortized": {"steps": 2, "lr": 1e-2},
           "semi-amortized-backprop": {"steps": 2, "lr": 1e-2, "backprop": True}}
NUM_DATA, BATCH = 10, 4


def _named(model, inference) -> dict[str, torch.Tensor]:
    params = {f"model.{n}": p for n, p in model.named_parameters()}
    params.update({f"inference.{n}": p for n, p in inference.named_parameters()})
    return {n: p.detach().clone() for n, p in params.items()}


@pytest.mark.parametrize("prior", ["standard_normal", "learned_normal"])
@pytest.mark.parametrize("schedule", ["joint", "alternating"])
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_every_parameter_meant_to_learn_changes(scheme, schedule, prior):
    torch.manual_seed(0)
    model = build_vae(ModelConfig(data_dim=12, latent_dim=3, hidden=(8,), prior=prior))
    inference = build_inference(scheme.removesuffix("-backprop"), model, NUM_DATA,
                                **SCHEMES[scheme])
    step = TrainStep(model, inference, lr=1e-2, schedule=schedule, phi_steps=1,
                     compile=False)
    x = torch.rand(NUM_DATA, 12, generator=torch.Generator().manual_seed(1)).bernoulli()
    index = torch.tensor([1, 4, 5, 8])
    before = _named(model, inference)
    for _ in range(2):
        assert not step(x[index], index).skipped
    after = _named(model, inference)
    encoder_used = scheme != "per-datapoint"
    for name, old in before.items():
        new = after[name]
        if name.startswith("model.encoder") or name.startswith("inference.encoder"):
            assert encoder_used == (not torch.equal(old, new)), name   # unused encoder: fixed
        elif old.dim() >= 1 and old.shape[0] == NUM_DATA and scheme == "per-datapoint":
            changed = (old != new).flatten(1).any(1)                   # the table of rows
            assert changed.tolist() == [i in index.tolist() for i in range(NUM_DATA)], name
        else:
            assert not torch.equal(old, new), f"{name} did not change"


def test_alternating_with_zero_phi_steps_is_refused_everywhere(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"--schedule alternating needs --phi-steps K >= 1"):
        TrainConfig(schedule="alternating")
    assert TrainConfig(schedule="alternating", phi_steps=1).phi_steps == 1
    model = build_vae(ModelConfig(data_dim=12, latent_dim=3, hidden=(8,)))
    inference = build_inference("amortized", model, NUM_DATA)
    with pytest.raises(ValueError, match=r"phi_steps: .*expected phi_steps >= 1, got 0"):
        TrainStep(model, inference, schedule="alternating")
    code = cli.main(["train", "--schedule", "alternating", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1
    assert err.startswith("vaelab: error: phi_steps (--phi-steps): --schedule alternating "
                          "needs --phi-steps K >= 1")   # the message says what to pass
    assert not (tmp_path / "run").exists()
