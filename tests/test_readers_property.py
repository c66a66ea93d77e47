"""Bad input, broadly: property-based tests (hypothesis) of every reader.

The readers meet arbitrary files: ``.npy``, ``.npz``, CSV, image folders, IDX, TOML/JSON
configs and run directories. Each is fed generated malformed inputs — wrong dtypes and shapes,
empty files, huge values and huge declared sizes, NaN/inf, truncated bytes, wrong encodings,
object arrays and pickles — and must either return a well-formed result or raise a clean
``ValueError``/``TypeError`` (library), or print one line ``vaelab: error: …`` with a non-zero
exit (CLI): never another exception, never a traceback, nothing left on disk. Examples per
test are kept modest (20-40) so the suite stays fast.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import tempfile
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from vaelab import cli, config, data

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLEAN = (ValueError, TypeError)

DTYPES = st.sampled_from(["float32", "float64", "float16", "int8", "uint8", "int64", "uint16",
                          "bool", "complex64", "U3", "S2", "datetime64[s]", "O"])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5)


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def check_dataset(ds: data.Dataset) -> None:
    """A loader's result is well formed: [N >= 1, D >= 1] floats (or uint8 8-bit), finite."""
    assert isinstance(ds, data.Dataset)
    assert ds.x.dim() == 2 and ds.x.shape[0] >= 1 and ds.x.shape[1] >= 1
    assert ds.x.is_floating_point() or ds.x.dtype == torch.uint8
    assert bool(torch.isfinite(ds.x.float()).all())


def load_or_clean_error(path: Path, **options) -> None:
    """load_dataset(path) returns a well-formed Dataset or raises ValueError/TypeError, and
    writes nothing next to the file."""
    before = listing(path.parent)
    try:
        ds = data.load_dataset(str(path), **options)
    except CLEAN as exc:
        assert str(exc) and "\n" not in str(exc).strip()
    else:
        check_dataset(ds)
    assert listing(path.parent) == before


def cli_one_line(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(argv)
    return code, err.getvalue()


def arrays(dtype=DTYPES, shape=SHAPES):
    def build(args):
        dt, sh = args
        if dt == "O":
            return np.array([[1, "a"], [None, 2.5]], dtype=object) if sh != () else np.array(
                None, dtype=object)
        return hnp.arrays(np.dtype(dt), sh)
    return st.tuples(dtype, shape).flatmap(lambda a: st.just(build(a)) if a[0] == "O"
                                           else build(a))


# --------------------------------------------------------------------------- .npy


@SETTINGS
@given(array=arrays(), cut=st.one_of(st.none(), st.floats(0, 1)))
def test_npy_any_array_or_truncated_file(array, cut):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=True)
        raw = buffer.getvalue()
        path.write_bytes(raw if cut is None else raw[:int(cut * len(raw))])
        load_or_clean_error(path)
        load_or_clean_error(path, mmap=True)


@SETTINGS
@given(rows=st.integers(0, 10**13), cols=st.integers(0, 10**7),
       descr=st.sampled_from(["<f4", "|u1", "<f8", "|O", "<i8"]), body=st.binary(max_size=64),
       version=st.sampled_from([1, 2, 3]))
def test_npy_header_declaring_huge_or_lying_sizes(rows, cols, descr, body, version):
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}"
    length = "<H" if version == 1 else "<I"              # 2.0 and 3.0: a 4-byte length
    prefix = 10 if version == 1 else 12
    header += " " * (-(len(header) + prefix + 1) % 64) + "\n"
    raw = (b"\x93NUMPY" + bytes([version, 0]) + struct.pack(length, len(header))
           + header.encode() + body)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        path.write_bytes(raw)
        load_or_clean_error(path)


@SETTINGS
@given(raw=st.binary(max_size=256))
def test_npy_arbitrary_bytes(raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        path.write_bytes(raw)
        load_or_clean_error(path)


@SETTINGS
@given(payload=st.sampled_from(["npy", "npz", "pickle-as-npy"]))
def test_pickles_never_run(payload):
    class Boom:
        def __reduce__(self):
            return (Path.touch, (Path(marker),))

    with tempfile.TemporaryDirectory() as tmp:
        marker = str(Path(tmp) / "ran")
        path = Path(tmp) / ("x.npz" if payload == "npz" else "x.npy")
        array = np.empty(3, dtype=object)
        array[:] = [Boom(), Boom(), Boom()]
        if payload == "npz":
            np.savez(path, x=array)
        elif payload == "npy":
            np.save(path, array, allow_pickle=True)
        else:
            path.write_bytes(pickle.dumps(Boom()))
        load_or_clean_error(path)
        assert not Path(marker).exists()


# --------------------------------------------------------------------------- .npz


@SETTINGS
@given(members=st.dictionaries(st.sampled_from(["x", "y", "data", "labels", "x_train",
                                                "x_test", "y_train", "junk", "a b"]),
                               arrays(shape=hnp.array_shapes(min_dims=0, max_dims=3,
                                                             max_side=4)),
                               max_size=3),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_npz_any_members_or_truncated(members, cut):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npz"
        buffer = io.BytesIO()
        np.savez(buffer, **members)
        raw = buffer.getvalue()
        path.write_bytes(raw if cut is None else raw[:int(cut * len(raw))])
        for split in ("train", "test"):
            load_or_clean_error(path, split=split)


@SETTINGS
@given(name=st.sampled_from(["x.npy", "x", "../x.npy"]), body=st.binary(max_size=128))
def test_npz_with_foreign_zip_members(name, body):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npz"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(name, body)
        load_or_clean_error(path)


# --------------------------------------------------------------------------- CSV


CELLS = st.one_of(st.integers(-10**20, 10**20).map(str), st.floats(allow_nan=True,
                  allow_infinity=True).map(repr), st.sampled_from(["", "nan", "inf", "-inf",
                  "x", "1e999", "0x10", " 1 ", "1,5", "\"2\"", "NA", "é"]))


@SETTINGS
@example(rows=[["0"]], header=True, encoding="utf-8", label="label")   # was an IndexError
@given(rows=st.lists(st.lists(CELLS, min_size=0, max_size=5), min_size=0, max_size=6),
       header=st.booleans(), encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]),
       label=st.one_of(st.none(), st.just("label"), st.integers(-2, 6)))
def test_csv_ragged_nonnumeric_and_odd_encodings(rows, header, encoding, label):
    text = ("a,b,label\n" if header else "") + "\n".join(",".join(r) for r in rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.csv"
        path.write_bytes(text.encode(encoding, errors="replace"))
        load_or_clean_error(path, label_column=label)


@SETTINGS
@given(raw=st.binary(max_size=200))
def test_csv_arbitrary_bytes(raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.csv"
        path.write_bytes(raw)
        load_or_clean_error(path)


# --------------------------------------------------------------------------- image folders


IMAGE = st.one_of(
    st.tuples(st.sampled_from(["L", "RGB", "RGBA", "1", "LA", "P", "I;16"]), st.integers(1, 6),
              st.integers(1, 6)),
    st.binary(max_size=64))


@SETTINGS
@given(files=st.lists(st.tuples(st.sampled_from(["", "cat/", "dog/", "train/", "test/a/"]),
                                st.sampled_from([".png", ".jpg", ".txt", ".PNG"]), IMAGE),
                      min_size=0, max_size=5))
def test_image_folders_with_mixed_sizes_modes_and_junk(files):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i, (sub, ext, image) in enumerate(files):
            path = folder / sub / f"{i}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(image, bytes):
                path.write_bytes(image)
            else:
                mode, w, h = image
                Image.new(mode, (w, h)).save(path, format="PNG")
        for split in ("train", "test"):
            load_or_clean_error(folder, split=split)


# --------------------------------------------------------------------------- IDX


@SETTINGS
@given(type_code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF]),
       dims=st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=4),
       body=st.binary(max_size=64), magic=st.sampled_from([b"\x00\x00", b"\x01\x00"]))
def test_idx_headers_and_bodies(type_code, dims, body, magic):
    raw = magic + bytes([type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    with tempfile.TemporaryDirectory() as tmp:
        for name, blob in (("x-idx3-ubyte", raw + body), ("x-idx3-ubyte.gz", raw + body)):
            path = Path(tmp) / name
            path.write_bytes(blob)
            try:
                array = data.read_idx(path)
            except CLEAN:
                continue
            assert isinstance(array, np.ndarray) and array.ndim == len(dims)


# --------------------------------------------------------------------------- configs


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=12), inner, max_size=3)),
    max_leaves=10)
KEYS = st.sampled_from(["model", "train", "epochs", "latent_dim", "hidden", "lr", "train.lr",
                        "model.hidden", "binarize", "schedule", "phi_steps", "val_fraction",
                        "format", "nope", "model.nope", "x.y"])


@SETTINGS
@given(content=st.dictionaries(KEYS, JSON_VALUES, max_size=4) | JSON_VALUES)
def test_config_dicts_of_any_shape(content):
    try:
        config.RunConfig.from_dict(content)
    except CLEAN:
        pass


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=120), st.text(max_size=120).map(str.encode)),
       suffix=st.sampled_from([".toml", ".json", ".yaml", ""]))
def test_config_files_of_any_bytes(raw, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"c{suffix}"
        path.write_bytes(raw)
        try:
            config.load_config_file(path)
        except CLEAN as exc:
            assert "\n" not in str(exc).strip()


@settings(max_examples=20, deadline=None, derandomize=True)
@given(raw=st.one_of(st.binary(max_size=80), JSON_VALUES.map(
    lambda v: json.dumps(v).encode())), suffix=st.sampled_from([".toml", ".json"]))
def test_cli_config_files_give_one_line(raw, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"c{suffix}"
        path.write_bytes(raw)
        out = Path(tmp) / "run"
        code, err = cli_one_line(["train", "--config", str(path), "--out", str(out),
                                  "--epochs", "0"])                 # --epochs 0: never trains
        assert code in (1, 2) and err.startswith("vaelab: error: ") and err.count("\n") == 1
        assert not out.exists()


# --------------------------------------------------------------------------- run directories


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("goodrun")
    np.save(folder / "x.npy", (np.random.default_rng(0).random((40, 6)) < 0.5)
            .astype(np.float32))
    run = folder / "run"
    code, err = cli_one_line(["train", "--data", str(folder / "x.npy"), "--out", str(run),
                              "--epochs", "1", "--hidden", "4", "--latent-dim", "2", "--quiet"])
    assert code == 0, err
    return run


RUN_FILES = ["config.json", "model.safetensors", "metrics.jsonl", "checkpoint/state.json",
             "checkpoint/state.safetensors"]


@settings(max_examples=15, deadline=None, derandomize=True)
@given(target=st.sampled_from(RUN_FILES), how=st.sampled_from(["bytes", "truncate", "json",
                                                               "delete"]),
       raw=st.binary(max_size=64), value=JSON_VALUES, cut=st.floats(0, 1))
def test_corrupt_run_directories_give_one_line(good_run, target, how, raw, value, cut):
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(good_run, run)
        path = run / target
        if how == "delete":
            path.unlink()
        elif how == "bytes":
            path.write_bytes(raw)
        elif how == "truncate":
            original = path.read_bytes()
            assume(int(cut * len(original)) < len(original))
            path.write_bytes(original[:int(cut * len(original))])
        else:
            path.write_text(json.dumps(value))
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        code, err = cli_one_line(["evaluate", str(run), "--k", "2", "--limit", "3", "--quiet"])
        if code == 0:                       # e.g. metrics.jsonl or the checkpoint: not needed
            assert target in ("metrics.jsonl", "checkpoint/state.json",
                              "checkpoint/state.safetensors")
            (run / "eval.json").unlink()
        else:
            assert code in (1, 2) and err.startswith("vaelab: error: ") and err.count("\n") == 1
            assert "Traceback" not in err and "unexpected" not in err
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
        if not target.startswith("checkpoint"):
            return
        code, err = cli_one_line(["train", "--resume", str(run), "--quiet", "--epochs", "1"])
        if code != 0:                       # a corrupt checkpoint is refused, nothing touched
            assert err.startswith("vaelab: error: ") and err.count("\n") == 1
            assert "unexpected" not in err
            assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_lying_npy_header_is_refused_before_numpy_allocates(version):
    """Every .npy version's declared size is checked against the file (3.0 included): a
    24 GB declaration over 8 bytes is refused by vaelab's check, not attempted by numpy."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 6000000000), }"
    length, prefix = ("<H", 10) if version == 1 else ("<I", 12)
    header += " " * (-(len(header) + prefix + 1) % 64) + "\n"
    raw = (b"\x93NUMPY" + bytes([version, 0]) + struct.pack(length, len(header))
           + header.encode() + bytes(8))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        path.write_bytes(raw)
        with pytest.raises(ValueError, match="header declares shape"):
            data.readers._check_npy_size(path)
