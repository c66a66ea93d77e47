"""vaelab.fit.validation: the active units read every validation row when q's mean is exact,
and the first ESTIMATED_MEAN_ROWS when it is a Monte Carlo estimate (an IAF posterior)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from vaelab.fit import validation
from vaelab.model.families import DiagonalNormal, Family, IAFNormal


class _Encoder(nn.Module):
    """x [N, D] → q from a fixed linear map; counts the rows whose q's mean was read."""

    def __init__(self, family: Family, data_dim: int) -> None:
        super().__init__()
        self.family = family
        self.net = nn.Linear(data_dim, family.param_size)
        self.rows_read = 0

    def forward(self, x: torch.Tensor, index: object) -> torch.distributions.Distribution:
        q = self.family(self.net(x))
        self.rows_read += len(x)
        return q


class _Loop(validation.Validated):
    def __init__(self, encoder: _Encoder, val_x: torch.Tensor) -> None:
        self.tc = SimpleNamespace(inference="amortized", seed=0)
        self.val_x, self.inference, self.model = val_x, encoder, nn.Identity()
        self.device = torch.device("cpu")


def _expected_active(encoder: _Encoder, rows: torch.Tensor) -> int:
    """The definition, computed directly: units with Var_x E_q[z_u | x] > 0.01."""
    torch.manual_seed(7919)
    with torch.no_grad():
        means = encoder(rows, None).mean
    return int((means.double().var(0) > 1e-2).sum())


def test_exact_means_read_every_validation_row():
    torch.manual_seed(0)
    x = torch.randn(1500, 6)
    encoder = _Encoder(DiagonalNormal(4), 6)
    expected = _expected_active(encoder, x)
    encoder.rows_read = 0
    out = _Loop(encoder, x)._active_units()
    assert out == {"val_active_units": expected} and expected > 0
    assert encoder.rows_read == 1 + len(x)          # the one-row probe, then every row


def test_estimated_means_read_only_the_first_rows(monkeypatch):
    monkeypatch.setattr(validation, "ESTIMATED_MEAN_ROWS", 300)
    torch.manual_seed(0)
    x = torch.randn(1500, 6)
    family = IAFNormal(4, steps=1)
    for p in family.parameters():                   # a flow that is not the identity
        nn.init.normal_(p, std=0.3)
    encoder = _Encoder(family, 6)
    expected = _expected_active(encoder, x[:300])
    encoder.rows_read = 0
    out = _Loop(encoder, x)._active_units()
    assert out == {"val_active_units": expected} and expected > 0
    assert encoder.rows_read == 1 + 300
