"""Your own networks through vaelab's trainer (``vaelab.fit``) and the consent to load them.

Oracles: a run killed after epoch 2 and resumed reaches the uninterrupted run's weights bit
for bit; a fresh process with every unpickling entry point disabled reloads the run and gets
the same ELBO as the training process (same seed); evaluate/score/report run on it; a hostile
run directory whose factory would create a file creates nothing unless its module is trusted
(and does when it is: the refusal is what stood in the way).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import vaelab

HERE = Path(__file__).resolve().parent
MODULE = Path(__file__).stem          # this file is the user's module of networks


def make_nets(*, data_dim, latent_dim, image_shape, encoder_out, decoder_out, width=8):
    """The user's factory: a small tanh encoder and decoder."""
    encoder = nn.Sequential(nn.Linear(data_dim, width), nn.Tanh(), nn.Linear(width, encoder_out))
    decoder = nn.Sequential(nn.Linear(latent_dim, width), nn.Tanh(),
                            nn.Linear(width, decoder_out))
    return encoder, decoder


def not_nets(**_):
    return "not a pair of modules"


def wide_encoder(*, data_dim, latent_dim, image_shape, encoder_out, decoder_out):
    """One raw parameter of q too many."""
    return nn.Linear(data_dim, encoder_out + 1), nn.Linear(latent_dim, decoder_out)


def short_decoder(*, data_dim, latent_dim, image_shape, encoder_out, decoder_out):
    """One likelihood parameter too few."""
    return nn.Linear(data_dim, encoder_out), nn.Linear(latent_dim, decoder_out - 1)


class _FailsInTraining(nn.Linear):
    def forward(self, z):
        if self.training:
            raise RuntimeError("the user's decoder broke")
        return super().forward(z)


def breaks_in_training(*, data_dim, latent_dim, image_shape, encoder_out, decoder_out):
    """Right sizes, but the decoder fails in the first training step (after config.json)."""
    return nn.Linear(data_dim, encoder_out), _FailsInTraining(latent_dim, decoder_out)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return (np.random.default_rng(0).random((48, 6)) > 0.5).astype(np.float32)


def _fit(x, out, **kwargs):
    options = dict(args={"width": 8}, epochs=4, latent_dim=2, batch_size=16, log=None,
                   progress=False, val_fraction=0.25, seed=1, compile=False)
    return vaelab.fit(make_nets, x, out, **{**options, **kwargs})


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_killed_run_resumes_bit_exactly(tmp_path, x):
    whole = _weights(_fit(x, tmp_path / "whole").model)

    def kill(line: str) -> None:
        if line.startswith("epoch 2/"):
            raise KeyboardInterrupt   # after epoch 2's checkpoint, as a Ctrl-C would

    with pytest.raises(KeyboardInterrupt):
        _fit(x, tmp_path / "cut", log=kill)
    resumed = _weights(_fit(x, tmp_path / "cut", resume=True).model)
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    stored = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert stored["model"]["net"] == "factory"
    assert stored["model"]["net_options"] == {"factory": f"{MODULE}:make_nets",
                                              "args": {"width": 8}}


def test_a_fresh_process_reloads_without_pickle(tmp_path, x):
    _fit(x, tmp_path / "run")
    torch.manual_seed(0)
    here = vaelab.load(tmp_path / "run", trust=[MODULE]).elbo(torch.from_numpy(x), 4)
    files = {p.relative_to(tmp_path / "run").as_posix(): p.read_bytes()
             for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "checkpoint/state.safetensors"} <= set(files)
    # no pickle (protocol 2+ starts with 0x80) and no torch.save archive (a zip)
    assert not [name for name, blob in files.items() if blob[:1] == b"\x80" or blob[:2] == b"PK"]
    script = f"""
import pickle, sys
import numpy as np, torch
def refuse(*args, **kwargs):
    raise AssertionError("something was unpickled")
pickle.load = pickle.loads = refuse
pickle.Unpickler = refuse
torch.load = refuse
import vaelab
x = torch.from_numpy(np.asarray({x.tolist()!r}, dtype=np.float32))
torch.manual_seed(0)
print(vaelab.load({str(tmp_path / "run")!r}, trust=[{MODULE!r}]).elbo(x, 4).tolist())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={"PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1",
                              "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(np.array(json.loads(out.stdout)), here.numpy())


def test_evaluate_score_and_report_take_the_run(tmp_path, x):
    from vaelab import cli
    from vaelab.use.scores import anomaly_scores

    _fit(x, tmp_path / "run", epochs=1)
    trained = vaelab.load(tmp_path / "run", trust=[MODULE])
    report = vaelab.evaluate_model(trained.model, x, num_samples=8, seed=0)
    assert report["log_likelihood"]["mean"] >= report["elbo"]["mean"] - 0.5   # IS ≥ ELBO
    scores = anomaly_scores(trained.model, torch.from_numpy(x), ["elbo"])
    assert scores["neg_elbo"].shape == (48,) and np.isfinite(scores["neg_elbo"]).all()
    assert cli.main(["--trust", MODULE, "report", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "report.html").is_file()


def test_a_factory_is_imported_only_with_consent(tmp_path, x, capsys):
    """A hostile run directory: its factory would create a file when imported and called."""
    from vaelab import cli

    _fit(x, tmp_path / "run", epochs=1)
    marker = tmp_path / "pwned"
    (tmp_path / "evil_nets.py").write_text(
        f"def make(**kwargs):\n    open({str(marker)!r}, 'w').close()\n    raise SystemExit\n")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["model"]["net_options"] = {"factory": "evil_nets:make", "args": {}}
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    sys.path.insert(0, str(tmp_path))
    try:
        for trust in (None, ["vaelab"], [MODULE], "evil"):
            with pytest.raises(ValueError, match=r"^net_options.factory: the run names the "
                                                 r"network factory 'evil_nets:make'; "):
                vaelab.load(tmp_path / "run", trust=trust)
        assert cli.main(["evaluate", str(tmp_path / "run")]) != 0
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "--trust evil_nets" in err and "Traceback" not in err
        assert not marker.exists()
        with pytest.raises(SystemExit):       # consent given: the code runs
            vaelab.load(tmp_path / "run", trust=["evil_nets"])
        assert marker.exists()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("evil_nets", None)


def test_built_in_runs_import_nothing(tmp_path, x, monkeypatch):
    from vaelab import _trust

    def refuse(*args, **kwargs):
        raise AssertionError("a built-in run imported a factory")

    monkeypatch.setattr(_trust, "import_factory", refuse)
    config = {"latent_dim": 2, "hidden": [8], "epochs": 1, "batch_size": 16, "seed": 1}
    from vaelab.fit.train import train

    train(config, tmp_path / "run", dataset=x, log=None, progress=False)
    assert vaelab.load(tmp_path / "run").model.data_dim == 6


def test_bad_factories_are_one_line(tmp_path, x):
    with pytest.raises(ValueError, match=r"^model: expected an import path 'package.module:"
                                         r"function', got 'no colon'$"):
        vaelab.fit("no colon", x, tmp_path / "a")
    with pytest.raises(ValueError, match=r"^net_options.factory: expected an importable "
                                         r"factory, could not import 'no_such_pkg.nets:make'"):
        vaelab.fit("no_such_pkg.nets:make", x, tmp_path / "b", log=None, progress=False)
    with pytest.raises(TypeError, match=r"^net_options.factory: expected '.*:not_nets' to "
                                        r"return \(encoder net, decoder net\)"):
        vaelab.fit(not_nets, x, tmp_path / "c", log=None, progress=False)
    with pytest.raises(TypeError, match=r"^model: expected a network factory importable"):
        vaelab.fit(lambda **kw: None, x, tmp_path / "d")
    with pytest.raises(TypeError, match=r"^args: expected JSON values"):
        vaelab.fit(make_nets, x, tmp_path / "e", args={"width": object()})


@pytest.mark.parametrize(("factory", "expected"), [
    (wide_encoder, r"the encoder net of '.*:wide_encoder' maps x \[2, 6\] to \[2, 5\]; "
                   r"expected \[2, 4\] \(encoder_out"),
    (short_decoder, r"the decoder net of '.*:short_decoder' maps z \[2, 2\] to \[2, 5\]; "
                    r"expected \[2, 6\] \(decoder_out")])
def test_wrong_sized_nets_are_one_line_before_anything_is_written(tmp_path, x, factory,
                                                                  expected):
    """Net sizes are checked before training: one line naming the factory, the net, the
    expected and received shapes; a first fit leaves no folder, a folder that was there is
    left as it was, and a retry with a right factory needs no overwrite=True."""
    out = tmp_path / "new" / "run"
    with pytest.raises(ValueError, match=rf"^net_options.factory: {expected}") as caught:
        vaelab.fit(factory, x, out, latent_dim=2, epochs=1, log=None, progress=False)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    with pytest.raises(ValueError, match=rf"^net_options.factory: {expected}"):
        vaelab.fit(factory, x, tmp_path / "mine", latent_dim=2, epochs=1, log=None,
                   progress=False)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    for folder in (out, tmp_path / "mine"):
        assert len(_fit(x, folder, epochs=1).metrics) == 1


def test_a_first_fit_that_fails_in_training_leaves_no_folder(tmp_path, x):
    """The factory's nets pass the size check and fail in the first step, after config.json
    was written: the folder this call created goes, and a retry needs no overwrite=True."""
    with pytest.raises(RuntimeError, match="the user's decoder broke"):
        vaelab.fit(breaks_in_training, x, tmp_path / "run", latent_dim=2, epochs=1, log=None,
                   progress=False)
    assert not (tmp_path / "run").exists()
    assert len(_fit(x, tmp_path / "run", epochs=1).metrics) == 1


def test_a_trusted_factory_that_cannot_be_imported_is_one_line(tmp_path, x, capsys):
    """A run moved to where its factory's module is gone (consent given): ``vaelab.load``
    and the CLI refuse in one line naming the factory, no traceback."""
    from vaelab import cli

    _fit(x, tmp_path / "run", epochs=1)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    for reference in ("gone_pkg.nets:make", f"{MODULE}:no_such_function"):
        config["model"]["net_options"]["factory"] = reference
        (tmp_path / "run" / "config.json").write_text(json.dumps(config))
        trust = reference.split(".")[0].split(":")[0]
        with pytest.raises(ValueError) as caught:
            vaelab.load(tmp_path / "run", trust=[trust])
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"net_options.factory: expected an importable factory, "
                                  f"could not import {reference!r}: ")
        assert cli.main(["--trust", trust, "evaluate", str(tmp_path / "run")]) != 0
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err and repr(reference) in err


def _fit_rank(rank: int, world: int, port: int, folder: str) -> None:
    """One torchrun rank training the user's networks through vaelab.fit."""
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    x = (np.random.default_rng(0).random((48, 6)) > 0.5).astype(np.float32)
    result = _fit(x, Path(folder) / "run", epochs=2, device="cpu")
    np.savez(Path(folder) / f"rank{rank}.npz",
             **{k: v.detach().numpy() for k, v in result.model.state_dict().items()})
    import torch.distributed as dist

    dist.destroy_process_group()


def test_two_torchrun_ranks_train_the_users_networks_alike(tmp_path):
    """Under torchrun every rank ends with the same weights (the gradients are averaged),
    rank 0 writes the run, and it reloads with consent."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fit_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    assert ranks[0].files == ranks[1].files
    assert all(np.array_equal(ranks[0][k], ranks[1][k]) for k in ranks[0].files)
    trained = vaelab.load(tmp_path / "run", trust=[MODULE])
    assert all(np.array_equal(v.numpy(), ranks[0][k]) for k, v in
               trained.model.state_dict().items())
    assert len(trained.metrics) == 2


@pytest.mark.parametrize("options", [{"missing": "mask"}, {"latent_dim": (2, 2)},
                                     {"latent_dim": (2, 2), "hierarchy": "top-down"}])
def test_incomplete_data_and_hierarchies_are_refused_in_one_line(tmp_path, x, options):
    """The factory's nets read x [B, D] and give one layer's parameters: an encoder of
    [values, mask] or a hierarchy's conditionals are not what it promised to build."""
    data = x.copy()
    data[0, 0] = np.nan                          # a missing value, for missing='mask'
    with pytest.raises(ValueError, match=r"^(net|latent_dim): .*factory") as caught:
        _fit(data if "missing" in options else x, tmp_path / "run", epochs=1, **options)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_trusted_factory_is_found_in_the_working_directory_only_while_imported(
        tmp_path, monkeypatch):
    """The `vaelab` console script does not put the working directory on sys.path (as
    `python -m vaelab` does): a trusted module there is found anyway, sys.path is left as it
    was, and an untrusted one there is still refused without being imported."""
    import os
    import sys

    from vaelab._trust import import_factory, trusting

    (tmp_path / "here_nets.py").write_text("def make(**_):\n    return 'made'\n")
    (tmp_path / "here_evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n"
                                           "def make(**_):\n    return 'evil'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    before = list(sys.path)
    with trusting(["here_nets"]):
        assert import_factory("here_nets:make")() == "made"
        with pytest.raises(ValueError, match="trusted modules"):
            import_factory("here_evil:make")
    assert sys.path == before and not (tmp_path / "ran").exists()
    sys.modules.pop("here_nets", None)


def test_the_console_script_scores_a_run_whose_factory_is_in_the_working_directory(tmp_path):
    """The page's command line, run as a user runs it: a factory module next to the data,
    the run fitted in Python, then `vaelab --trust M score RUN --data F --reference F` from
    that folder; resuming it from the command line is one line pointing to vaelab.fit."""
    import subprocess
    import sys

    source = Path(__file__).read_text()
    factory = source[source.index("def make_nets"):source.index("def not_nets")]
    (tmp_path / "folder_nets.py").write_text("from torch import nn\n\n\n" + factory)
    fit = ("import numpy as np, vaelab\nfrom folder_nets import make_nets\n"
           "x = (np.random.default_rng(0).random((32, 6)) > 0.5).astype('float32')\n"
           "np.save('x.npy', x)\n"
           "vaelab.fit(make_nets, x, 'runs/own', epochs=1, latent_dim=2, batch_size=16, "
           "log=None, progress=False, compile=False)\n")
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", fit], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    script = Path(sys.executable).with_name("vaelab")
    done = subprocess.run([str(script), "--trust", "folder_nets", "score", "runs/own",
                           "--data", "x.npy", "--reference", "x.npy", "--score", "elbo",
                           "latent-knn", "--quiet"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs" / "own" / "scores.csv").is_file()
    done = subprocess.run([str(script), "--trust", "folder_nets", "train", "--resume",
                           "runs/own", "--epochs", "2"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "resume it in Python with vaelab.fit(..., resume=True)" in done.stderr
