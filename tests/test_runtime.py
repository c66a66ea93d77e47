"""vaelab._runtime: the one device resolution and the one rank/world-size helper."""

from __future__ import annotations

import pytest
import torch

from vaelab import _runtime


def test_resolve_device(monkeypatch):
    assert _runtime.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _runtime.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--device: expected 'cpu' or 'auto' here "
                                         r"\(torch.cuda.is_available\(\) is False\), got 'cuda'"):
        _runtime.resolve_device("cuda", "--device")
    with pytest.raises(ValueError, match="device: expected one of 'auto', 'cpu', 'cuda', "
                                         "got 'tpu'"):
        _runtime.resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _runtime.resolve_device("auto") == torch.device("cuda", 1)   # the worker's own GPU
    monkeypatch.delenv("LOCAL_RANK")
    assert _runtime.resolve_device("cuda") == torch.device("cuda")


def test_rank_and_world_size_follow_the_environment_until_a_group_is_joined(monkeypatch):
    for name in _runtime.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    assert _runtime.rank_and_world_size() == (0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert _runtime.rank_and_world_size() == (2, 4)
    assert _runtime.read_env().local_rank == 2       # torchrun's default: LOCAL_RANK = RANK
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK: expected 0 <= RANK < WORLD_SIZE = 4, got 4"):
        _runtime.rank_and_world_size()
