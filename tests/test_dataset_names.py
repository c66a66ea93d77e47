"""Tests for vaelab.dataset_names: the one list of the names --data accepts."""

from __future__ import annotations

import pytest


def test_the_named_datasets_are_the_data_packages_and_every_name_is_listed():
    """The names are listed without importing torch; the copy equals the data
    package's own list, and the help of --data and its error name every accepted name."""
    from vaelab import cli
    from vaelab.data.named import NAMED_SOURCES
    from vaelab.dataset_names import DATA_PROTOCOLS, NAMED_DATASETS, data_names

    assert NAMED_DATASETS == tuple(NAMED_SOURCES)
    assert data_names() == (*NAMED_SOURCES, *DATA_PROTOCOLS)
    parser = cli.command.build_parser()
    train = next(a for a in parser._actions if a.dest == "command").choices["train"]
    data_help = next(a.help for a in train._actions if a.dest == "data")
    assert all(name in data_help for name in data_names())
    from vaelab.data import load_dataset

    with pytest.raises(FileNotFoundError) as err:
        load_dataset("no-such-data-anywhere")
    assert all(name in str(err.value) for name in data_names())
