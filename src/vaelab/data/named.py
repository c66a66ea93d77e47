"""The named datasets (Fashion-MNIST, MNIST): where their IDX files are found or downloaded.

Role in vaelab: Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747) and MNIST
(LeCun et al. 1998) are looked up in a user folder, ``$VAELAB_DATA``, the system's dataset
folder (:data:`SYSTEM_DATA_DIR`) and the download cache, in that order, else downloaded with
their published MD5 digests checked and written atomically.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaelab.data.kinds import Dataset, _describe
from vaelab.data.readers import read_idx

DEFAULT_DATASET = "fashion-mnist"
#: The class names of the named data sets, by label (figures, and conditions given by name).
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
CLASS_NAMES = {"fashion-mnist": FASHION_MNIST_CLASSES,
               "mnist": tuple(str(d) for d in range(10))}
SYSTEM_DATA_DIR = Path("/usr/share/datasets")  # Debian's dataset-fashion-mnist installs here


@dataclass(frozen=True)
class NamedSource:
    """Where a named IDX dataset is downloaded from.

    ``md5`` maps each ``.gz`` file name to the MD5 digest published by the dataset's authors.
    """

    base_url: str
    md5: dict[str, str]
    install_hint: str


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

NAMED_SOURCES: dict[str, NamedSource] = {
    "fashion-mnist": NamedSource(
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        install_hint="`apt-get install dataset-fashion-mnist`, or set VAELAB_DATA to a folder "
        "holding the IDX files",
    ),
    "mnist": NamedSource(
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        install_hint="put the four IDX files (train-images-idx3-ubyte.gz, ...) in a folder and "
        "set VAELAB_DATA to it (e.g. `VAELAB_DATA=~/mnist vaelab train --data mnist`), or go "
        "online for the checked download",
    ),
}


def cache_dir(name: str) -> Path:
    """Download cache of dataset ``name``: ``$XDG_CACHE_HOME/vaelab/<name>`` (~/.cache default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vaelab" / name


def search_dirs(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for the IDX files of ``name``, in order.

    ``root`` and ``root/<name>``, ``$VAELAB_DATA`` and ``$VAELAB_DATA/<name>``,
    ``/usr/share/datasets/<name>``, then the download cache.
    """
    dirs = []
    if root is not None:
        dirs += [Path(root), Path(root) / name]
    env = os.environ.get("VAELAB_DATA")
    if env:
        dirs += [Path(env), Path(env) / name]
    return dirs + [SYSTEM_DATA_DIR / name, cache_dir(name)]


def _locate(name: str, split: str, root: str | os.PathLike | None) -> list[Path] | None:
    """First folder holding both IDX files of ``split`` (``.gz`` preferred) → their paths."""
    for folder in search_dirs(name, root):
        found = []
        for stem in IDX_FILES[split]:
            found += [p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()][:1]
        if len(found) == len(IDX_FILES[split]):
            return found
    return None


def download_file(url: str, dest: str | os.PathLike, md5: str, *, timeout: float = 60.0) -> Path:
    """Fetch ``url`` into ``dest`` atomically (temp file + rename) after checking its MD5.

    On any failure nothing is left at ``dest`` or beside it; a checksum mismatch raises
    ValueError, a network failure the ``OSError`` of urllib.
    """
    dest = Path(dest)
    created = first_missing(dest.parent)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5.lower():
            raise ValueError(f"download {url}: expected MD5 {md5.lower()}, got "
                             f"{digest.hexdigest()}; the file was discarded")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        remove_empty_dirs(dest.parent, created)
        raise
    return dest


def first_missing(folder: Path) -> Path | None:
    """The outermost not-yet-existing folder on the way to ``folder`` (None: it exists)."""
    missing = None
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        missing = parent
    return missing


def remove_empty_dirs(folder: Path, created: Path | None) -> None:
    """Remove ``folder`` and its parents up to ``created`` (a failed download or run made them)
    while they are empty, so a failed attempt leaves no empty folders behind."""
    if created is None:
        return
    for parent in (folder, *folder.parents):
        try:
            parent.rmdir()             # only ever removes an empty folder
        except OSError:
            return
        if parent == created:
            return


def _download_or_explain(name: str, split: str, root: str | os.PathLike | None,
                         download: bool) -> list[Path]:
    """Download the IDX files of ``split`` into the cache, or raise one explanatory line."""
    source = NAMED_SOURCES[name]
    problem = "download=False"
    if download:
        try:
            paths = []
            for stem in IDX_FILES[split]:
                dest = cache_dir(name) / f"{stem}.gz"
                if not dest.is_file():
                    download_file(source.base_url + dest.name, dest, source.md5[dest.name])
                paths.append(dest)
            return paths
        except OSError as err:
            problem = f"download from {source.base_url} failed ({' '.join(str(err).split())})"
    where = ", ".join(str(d) for d in search_dirs(name, root))
    env_note = "" if os.environ.get("VAELAB_DATA") else " ($VAELAB_DATA not set)"
    raise FileNotFoundError(
        f"source: dataset {name!r} ({split} split) not found: looked for "
        f"{' and '.join(f'{s}[.gz]' for s in IDX_FILES[split])} in {where}{env_note}; "
        f"{problem}; to install: {source.install_hint}")


def _load_named(name: str, split: str, root: str | os.PathLike | None,
                download: bool, keep_uint8: bool = False) -> Dataset:
    """Load split ``split`` of the named IDX dataset ``name``: [N, H*W] in [0, 1], labels [N]."""
    paths = _locate(name, split, root) or _download_or_explain(name, split, root, download)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"IDX file {paths[0]}: expected uint8 images of shape N×H×W, "
                         f"got {_describe(images)}")
    if labels.shape != images.shape[:1] or labels.dtype != np.uint8:
        raise ValueError(f"IDX file {paths[1]}: expected {images.shape[0]} uint8 labels "
                         f"(one per image in {paths[0]}), got {_describe(labels)}")
    n, h, w = images.shape
    x = images.reshape(n, h * w)
    x = x.copy() if keep_uint8 else np.divide(x, np.float32(255), dtype=np.float32)
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(torch.from_numpy(x), y, (1, h, w), name, "8-bit")
