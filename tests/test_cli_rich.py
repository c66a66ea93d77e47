"""``vaelab train --family … --prior …`` end to end on a small Fashion-MNIST subset.

Every family (diagonal-normal, full-covariance-normal, mixture, iaf) and every prior
(standard-normal, learned-normal, mog, vamp, flow) appears in at least one tiny run (300 images,
a 16-unit hidden layer, 2 latent units), with the three inference schemes: each run trains,
resumes bit-exactly (1 epoch + resume to 2 = 2 epochs straight, every saved tensor equal),
reloads with ``vaelab.load``, samples, and (with an encoder) evaluates.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import vaelab
from vaelab import cli, data
from vaelab.fit import runs

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(
        not any((d / "train-images-idx3-ubyte.gz").is_file()
                or (d / "train-images-idx3-ubyte").is_file()
                for d in data.search_dirs("fashion-mnist")),
        reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"),
]

TINY = ["--limit", "300", "--hidden", "16", "--latent-dim", "2", "--batch-size", "50",
        "--quiet"]
CASES = {
    "mixture-mog": ["--family", "mixture", "--q-components", "3", "--prior", "mog",
                    "--prior-components", "4"],
    "iaf-vamp": ["--family", "iaf", "--q-flow-steps", "2", "--prior", "vamp",
                 "--prior-components", "5"],
    "full-covariance-flow": ["--family", "full-covariance-normal", "--prior", "flow",
                             "--prior-flow-steps", "2"],
    "diagonal-learned-semi-amortized": ["--family", "diagonal-normal", "--prior",
                                        "learned-normal", "--inference", "semi-amortized"],
    "iaf-standard-per-datapoint": ["--family", "iaf", "--prior", "standard-normal",
                                   "--inference", "per-datapoint"],
    "mixture-vamp-per-datapoint": ["--family", "mixture", "--prior", "vamp",
                                   "--inference", "per-datapoint"],
}


def _main(capsys, *argv) -> str:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _tensors(run) -> dict[str, torch.Tensor]:
    return runs.read_safetensors(run / runs.MODEL_FILE, "model")


@pytest.mark.parametrize("case", sorted(CASES))
def test_train_resume_reload_sample_evaluate(case, tmp_path, capsys):
    flags = CASES[case]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _main(capsys, "train", "--out", straight, "--epochs", "2", *TINY, *flags)
    _main(capsys, "train", "--out", resumed, "--epochs", "1", *TINY, *flags)
    _main(capsys, "train", "--resume", resumed, "--epochs", "2", "--quiet")
    a, b = _tensors(straight), _tensors(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), case
    config = json.loads((resumed / "config.json").read_text())["model"]
    given = dict(zip(flags[::2], flags[1::2], strict=True))
    assert config["family"] == given["--family"].replace("-", "_")
    assert config["prior"] == given["--prior"].replace("-", "_")

    trained = vaelab.load(resumed)
    assert type(trained.model.prior_module).__name__ == type(
        vaelab.load(straight).model.prior_module).__name__
    assert trained.sample(3).shape == (3, 784)
    assert "wrote" in _main(capsys, "sample", resumed, "-n", "4")
    if "per-datapoint" in case:
        return
    x = data.load_dataset("fashion-mnist", "test", limit=8).x
    x = (x > 0.5).float()
    q = trained.encode(x)
    assert q.batch_shape == (8,) and q.event_shape == (2,)
    estimate = trained.log_likelihood(x, num_samples=64)
    elbo = trained.elbo(x, num_samples=64)
    assert bool(torch.isfinite(estimate.log_likelihood).all())
    assert float((estimate.log_likelihood - elbo).mean()) > -1.0      # log p̂ ≳ ELBO
    _main(capsys, "evaluate", resumed, "--k", "16", "--limit", "20", "--quiet")
    result = json.loads((resumed / "eval.json").read_text())
    assert math.isfinite(result["elbo"]["mean"])


def test_train_help_lists_every_family_and_prior(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--family", "--q-components", "--q-flow-steps", "--prior",
                 "--prior-components", "--prior-flow-steps"):
        assert flag in text
    for name in ("diagonal-normal", "full-covariance-normal", "mixture", "iaf",
                 "standard-normal", "learned-normal", "mog", "vamp", "flow"):
        assert name in text


@pytest.mark.parametrize("argv, flag", [
    (["--family", "planar"], "--family"),
    (["--q-components", "0"], "--q-components"),
    (["--prior", "vampire"], "--prior"),
    (["--prior-flow-steps", "-1"], "--prior-flow-steps"),
])
def test_bad_family_and_prior_flags_are_one_line_errors(argv, flag, tmp_path, capsys):
    code = cli.main(["train", "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
