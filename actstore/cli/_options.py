"""Command-line options generated from a config dataclass's fields.

Each option is ``--name-with-dashes`` with the argparse type taken from the field's
annotation (``int | None`` -> int; anything not int/float/str is read as a string), the
help from the field's metadata (or a table the command passes), and the field's default
shown in the help. The argparse default is always None, so a command can tell what was
given on the command line, lay it over a ``--config`` file, and leave the rest to the
dataclass's own defaults: one place for every default.
"""

from __future__ import annotations

import dataclasses
import types
import typing

_SCALARS = (int, float, str)


def _boolean(text: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off) for a bool field."""
    v = text.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


_boolean.__name__ = "true|false"  # argparse names the type in its error message


def option_type(hint) -> type:
    """The argparse ``type`` for an annotation: bool (read as true/false), int, float or str
    (first of them in a union; str otherwise)."""
    if hint is bool:
        return _boolean
    if hint in _SCALARS:
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if arg in _SCALARS:
                return arg
    return str


def add_options(parser, cls, names, helps: dict[str, str] | None = None) -> None:
    """Add ``--name`` for each of ``names`` (fields of dataclass ``cls``) to ``parser``."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        f = fields[name]
        help_ = (helps or {}).get(name) or f.metadata.get("help", "")
        if f.default is not dataclasses.MISSING and f.default is not None:
            help_ += f" (default {f.default})"
        parser.add_argument("--" + name.replace("_", "-"), type=option_type(hints[name]), default=None, help=help_)


def given(args, names) -> dict:
    """The options of ``names`` that were given on the command line."""
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}
