"""The small vocabulary every config group checks its keys with, and the registry each group keeps its
choices in.

A group (``sane_cli.data``, ``models``, ``optim``, ``methods``) keeps a :class:`Registry` from option name to
what builds or describes it, and a ``check_config(cfg)`` beside its code that calls the checks below on the
whole run config (keys are dotted: ``model.depth``);
``sane_cli.config.validate`` only composes them. A bad value raises :class:`UsageError` with one line naming
the key, the value and what is allowed. This module imports neither torch nor pandas.
"""

from __future__ import annotations

import math
from typing import Any, Generic, TypeVar

from omegaconf import OmegaConf

from .errors import UsageError

T = TypeVar("T")
FLOAT32_MAX = 3.4028234663852886e38  # the largest float32: the parameters' precision


def path_fits(path, what: str) -> None:
    """``path`` can be a file system's: each of its names at most the bytes the file system allows (255 on most),
    the whole at most its path length (4096).

    Raises:
        UsageError: naming ``what`` (``hydra.run.dir``, ``-o``) and the name too long.
    """
    import os
    from pathlib import Path

    path = Path(path).expanduser().absolute()
    known = next((p for p in (path, *path.parents) if _exists(p)), Path("/"))
    try:
        name_max, path_max = os.pathconf(known, "PC_NAME_MAX"), os.pathconf(known, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    long = next((part for part in path.parts if len(os.fsencode(part)) > name_max), None)
    if long is not None:
        raise UsageError(f"{what}: the name {long[:40]!r}... is {len(os.fsencode(long))} bytes, more than the "
                         f"{name_max} its file system allows; choose a shorter one")  # fmt: skip
    if len(os.fsencode(str(path))) >= path_max:
        raise UsageError(f"{what}: the path is {len(os.fsencode(str(path)))} bytes, more than the {path_max} its file "
                         "system allows; choose a shorter one")  # fmt: skip


def _exists(path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long
        return False


def fail(key: str, value: Any, allowed: str) -> None:
    """Raise the one-line error for ``key=value``; ``allowed`` says what would do."""
    raise UsageError(f"{key}={value!r} is invalid: {allowed}")


def _value(cfg, key: str) -> Any:
    return OmegaConf.select(cfg, key)


def number(cfg, key: str, *, minimum: float, strict: bool = False, integer: bool = False,
           optional: bool = False) -> None:  # fmt: skip
    """``key`` is a finite number (an integer with ``integer``) >= ``minimum`` (> with ``strict``); null only
    if ``optional``. Booleans are not numbers here."""
    value = _value(cfg, key)
    kind = "an integer" if integer else "a number"
    bound = f"{'>' if strict else '>='} {minimum:g}"
    if value is None:
        if optional:
            return
        fail(key, value, f"must be {kind} {bound}")
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        fail(key, value, f"must be {kind} {bound}")
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        fail(key, value, f"must be {kind} {bound}")


def fraction(cfg, key: str) -> None:
    """A decay or momentum coefficient: a number in [0, 1)."""
    number(cfg, key, minimum=0)
    if _value(cfg, key) >= 1:
        fail(key, _value(cfg, key), "must be in [0, 1)")


def float32(cfg, key: str) -> None:
    """A number that torch applies to float32 parameters (a step size, a decay) must fit in float32."""
    value = _value(cfg, key)
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > FLOAT32_MAX:
        fail(key, value, f"must be at most {FLOAT32_MAX:.4g}, the largest float32 (the parameters' precision)")


def choice(cfg, key: str, choices) -> None:
    """``key`` is one of ``choices`` (any iterable of names: a tuple, or a registry's keys)."""
    value = _value(cfg, key)
    if value not in tuple(choices):
        fail(key, value, f"must be one of {', '.join(choices)}")


def flag(cfg, key: str) -> None:
    """``key`` is true or false."""
    if not isinstance(_value(cfg, key), bool):
        fail(key, _value(cfg, key), "must be true or false")


def path(cfg, key: str, *, optional: bool = False) -> None:
    """``key`` is a path, written as text (null only if ``optional``)."""
    value = _value(cfg, key)
    if not (isinstance(value, str) and value) and not (optional and value is None):
        fail(key, value, "must be a folder's path" + (" or null" if optional else ""))


class Registry(dict, Generic[T]):
    """A config group's options: name -> what builds or describes it. Looking up a name it does not hold
    raises :class:`UsageError` naming the key and the known names, never a fall-through to a default.

    >>> losses = Registry("loss", {"mse": 1, "cross_entropy": 2})
    >>> losses["cross_entropy"]
    2
    >>> losses["hinge"]
    Traceback (most recent call last):
    ...
    sane_cli.errors.UsageError: loss='hinge' is unknown; choose one of mse, cross_entropy
    """

    def __init__(self, key: str, entries: dict[str, T]):
        super().__init__(entries)
        self.key = key  # the config key that names an option, e.g. model.name

    def __missing__(self, name: str) -> T:
        raise UsageError(f"{self.key}={name!r} is unknown; choose one of {', '.join(self)}")
