"""Shared fixtures: seeding and small closed-form models in float64.

Every test starts from ``torch.manual_seed(0)`` so failures reproduce; the exact models are
built from their own seeded generator so they do not depend on test order.
"""

from __future__ import annotations

import os
from html.parser import HTMLParser

import pytest
import torch
from torch import nn

from vaelab.model import exact, families
from vaelab.model import vae as models

F64 = torch.float64


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: one thread is as fast, reproducible, and does not stall on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_linear_gaussian(data_dim: int = 5, latent_dim: int = 3, *, per_dim_noise: bool = False,
                         seed: int = 1) -> exact.LinearGaussian:
    """LinearGaussian with random W [D, L], b [D] and σ a float or a per-dimension tensor."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(data_dim, latent_dim, generator=g, dtype=F64)
    bias = torch.randn(data_dim, generator=g, dtype=F64)
    if per_dim_noise:
        noise = 0.3 + torch.rand(data_dim, generator=g, dtype=F64)
    else:
        noise = 0.7
    return exact.LinearGaussian(weight, bias, noise)


@pytest.fixture
def make_lg():
    """The :func:`make_linear_gaussian` factory, for tests that need other sizes."""
    return make_linear_gaussian


@pytest.fixture(params=[False, True], ids=["scalar_noise", "per_dim_noise"])
def linear_gaussian(request) -> exact.LinearGaussian:
    """Both noise modes of LinearGaussian (D = 5, L = 3)."""
    return make_linear_gaussian(per_dim_noise=request.param)


@pytest.fixture
def lg_data(linear_gaussian) -> torch.Tensor:
    """Six data points drawn from the linear-Gaussian model itself, [6, 5]."""
    return linear_gaussian.sample(6, generator=torch.Generator().manual_seed(2))


def linear_encoder(data_dim: int, family: families.Family, seed: int = 7,
                   scale: float = 1.0) -> models.Encoder:
    """A deliberately crude float64 encoder: one linear layer with random weights, zero bias,
    so its q is far from p(z | x) (a positive amortization gap)."""
    net = nn.Linear(data_dim, family.param_size).to(F64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.weight.copy_(scale * torch.randn(net.weight.shape, generator=g, dtype=F64))
        net.bias.zero_()
    return models.Encoder(net, family)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``vaelab`` in-process: (exit code, stdout, stderr)."""
    from vaelab import cli

    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _fashion_mnist_installed() -> bool:
    from vaelab import data

    return any((d / "t10k-images-idx3-ubyte.gz").is_file()
               or (d / "t10k-images-idx3-ubyte").is_file()
               for d in data.search_dirs("fashion-mnist"))


#: Mark for tests that read the real Fashion-MNIST files.
needs_fashion_mnist = pytest.mark.skipif(
    not _fashion_mnist_installed(),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


class _FakeCudaGenerator:
    """Stands in for one GPU's generator: its state is the last seed (a 1-element tensor)."""

    def __init__(self, state: int) -> None:
        self.state = torch.tensor([state])

    def manual_seed(self, seed: int) -> _FakeCudaGenerator:
        self.state = torch.tensor([seed])
        return self


@pytest.fixture
def fake_cuda(monkeypatch):
    """Two initialised 'GPUs' whose generators torch.manual_seed, get_rng_state and
    set_rng_state reach through torch.cuda, as on a CUDA machine."""
    gens = (_FakeCudaGenerator(101), _FakeCudaGenerator(202))

    def index(device) -> int:
        device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        return device.index or 0

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gens))
    monkeypatch.setattr(torch.cuda.random, "device_count", lambda: len(gens))  # manual_seed_all's
    monkeypatch.setattr(torch.cuda, "default_generators", gens)
    monkeypatch.setattr(torch.cuda, "get_rng_state",
                        lambda device="cuda": gens[index(device)].state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device="cuda": setattr(gens[index(device)], "state",
                                                             state.clone()))
    return gens


@pytest.fixture
def host_syncs(monkeypatch):
    """Counts the reads of tensor values into Python (item, tolist, int/float/bool of a
    tensor): each one waits for a GPU to finish, so hot loops keep them out. torch.optim's
    own reads are not counted: its step counters live on the CPU (no wait for the GPU)."""
    import sys

    count = [0]
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            count[0] += "torch/optim/" not in caller
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return count


# ------------------------------------------------------------------ device-sensitive tests

#: Where tests marked ``device`` run: VAELAB_TEST_DEVICE (cpu unless set), e.g.
#: ``VAELAB_TEST_DEVICE=cuda pytest -m device`` on a GPU machine (benchmarks/gpu.sh).
TEST_DEVICE = os.environ.get("VAELAB_TEST_DEVICE", "cpu")


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "device: device-sensitive; runs on $VAELAB_TEST_DEVICE (cpu by default; "
                   "VAELAB_TEST_DEVICE=cuda pytest -m device on a GPU), compared with the CPU")
    config.addinivalue_line(
        "markers", "torchrun: launches torchrun jobs (several processes, ~10-20 s each on 2 "
                   "cores); part of the suite, deselect with -m 'not torchrun'")


@pytest.fixture
def device() -> torch.device:
    """The device under test; skips cleanly when it is CUDA and this machine has none. On
    CUDA the exact settings training uses (no TF32, deterministic kernels) are on, so results
    compare with the CPU's to float32 precision."""
    if TEST_DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"VAELAB_TEST_DEVICE={TEST_DEVICE} but torch.cuda.is_available() is False")
    if TEST_DEVICE.startswith("cuda"):
        from vaelab._runtime import exact_cuda

        exact_cuda()
    return torch.device(TEST_DEVICE)


class ArrivedOn(Exception):
    """Raised by :func:`arrival` with the device its input came on (ends the call there)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(str(device))
        self.device = device


def arrival(x, *_args, **_kwargs):
    """Stands in for an encoder or an inner step: reports where x arrived, and stops."""
    raise ArrivedOn(x.device)


def without_flags(argv: list, flags: list) -> list:
    """``argv`` without the flags (and their values) of ``flags``: each given once."""
    out, skip = [], False
    for i, token in enumerate(argv):
        if skip:
            skip = False
        elif token in flags:
            skip = i + 1 < len(argv) and not str(argv[i + 1]).startswith("--")
        else:
            out.append(token)
    return out


class HtmlTables(HTMLParser):
    """Every <table> of a page as rows of cell texts (whitespace collapsed), keyed by its id
    (or its position), and every <img>'s attributes: what the report tests read back."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict] = []
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id") or str(len(self.tables)), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(attrs)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self._table[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def html_tables(html: str) -> HtmlTables:
    """The tables and images of ``html``."""
    parser = HtmlTables()
    parser.feed(html)
    return parser
