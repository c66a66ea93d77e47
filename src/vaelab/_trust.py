"""Consent to run code a run directory names: the user's network factories.

A run trained on the user's own networks records the import path of their factory
(``"mypkg.nets:make_nets"``) and its JSON arguments, never the networks pickled. Importing
and calling that path is running code, and a run directory can come from anyone (a run whose
config says ``"os:system"`` with ``["rm -rf ~"]`` is a program). So vaelab imports a factory
only inside :func:`trusting`, which names the module prefixes the caller trusts
(``vaelab.load(run, trust=["mypkg"])``; ``vaelab.fit`` trusts the factory it was handed), and
refuses anything else in one line. The built-in networks import nothing from a run.

A trusted module is looked for where Python looks, then in the current working directory (as
``python -m`` and servers such as uvicorn do for "module:attr" strings): the ``vaelab`` console
script, unlike ``python -m vaelab``, does not put that folder on ``sys.path``, and a factory
written next to the data is where a user keeps it. The folder is on the path only while the
trusted module is imported, and after every other entry, so it shadows no installed module.
"""

from __future__ import annotations

import contextvars
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

#: The module prefixes trusted in this context (empty: none).
_TRUSTED: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("vaelab_trusted",
                                                                           default=())
_REFERENCE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def check_reference(reference: object, where: str = "factory") -> str:
    """``"package.module:function"`` as it is, or a one-line error."""
    if not isinstance(reference, str) or not _REFERENCE.match(reference):
        raise ValueError(f"{where}: expected an import path 'package.module:function', got "
                         f"{reference!r}")
    return reference


def _prefixes(trust: object) -> tuple[str, ...]:
    items = [trust] if isinstance(trust, str) else list(trust or ())  # type: ignore[call-overload]
    for item in items:
        if not isinstance(item, str) or not re.match(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$", item):
            raise ValueError(f"trust: expected module names such as 'mypkg' or "
                             f"'mypkg.nets', got {item!r}")
    return tuple(items)


@contextmanager
def trusting(trust: str | Iterable[str] | None) -> Iterator[None]:
    """Inside: factories in the modules ``trust`` names (and their submodules) may be
    imported, besides those already trusted around it."""
    token = _TRUSTED.set(_TRUSTED.get() + _prefixes(trust))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def is_trusted(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in _TRUSTED.get())


def _import_here_too(module_name: str) -> object:
    """``importlib.import_module`` of a trusted module, the working directory searched last
    (see the module docstring); ``sys.path`` is as it was afterwards."""
    here = os.getcwd()
    if here in sys.path or "" in sys.path:
        return importlib.import_module(module_name)
    sys.path.append(here)
    try:
        return importlib.import_module(module_name)
    finally:
        if here in sys.path:
            sys.path.remove(here)


def import_factory(reference: str, where: str = "factory") -> Callable:
    """The function ``reference`` names, imported only when its module is trusted; a
    one-line ValueError when it is not, cannot be imported, or is not callable."""
    module_name, _, attribute = check_reference(reference, where).partition(":")
    if not is_trusted(module_name):
        trusted = list(_TRUSTED.get())
        raise ValueError(f"{where}: the run names the network factory {reference!r}; loading "
                         f"it imports and runs code from module {module_name!r}, so expected it "
                         f"within the trusted modules {trusted}, got none that covers it (if you "
                         f"trust this run, pass trust=[{module_name.split('.')[0]!r}], or "
                         f"--trust {module_name.split('.')[0]} on the command line)")
    try:
        value: object = _import_here_too(module_name)
        for part in attribute.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{where}: expected an importable factory, could not import "
                         f"{reference!r}: {err}") from None
    if not callable(value):
        raise ValueError(f"{where}: expected {reference!r} to be a function, got "
                         f"{type(value).__name__}")
    return value
