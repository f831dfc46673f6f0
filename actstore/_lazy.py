"""Lazy package faces (PEP 562): a package names what it re-exports and from which of its
modules, and each name is imported on first use.

Why: torch alone takes 1.2-1.7 s to import, so a face that imported everything made
``actstore --help`` and ``actstore info`` take 2.4-3.1 s. With lazy faces, ``import
actstore`` costs a few milliseconds, and torch comes in only with the first name that
needs it (``actstore.capture``, ``actstore.sae.TopKSAE``, reading rows of a store...).

Usage, at the end of a package's ``__init__.py``::

    attach(__name__, {".reader": ("Store",), ".writer": ("SegmentWriter",)})
"""

from __future__ import annotations

import importlib
import sys
import types


def attach(package: str, exports: dict[str, tuple[str, ...]]) -> None:
    """Make the already-imported module ``package`` (its ``__name__``) import each name of
    ``exports`` (source module, relative to ``package`` -> names it defines; ``"."`` -> names of
    submodules) on first access, then keep it as a plain attribute (later accesses cost nothing)."""
    source = {name: mod for mod, names in exports.items() for name in names}
    face = sys.modules[package]

    class LazyPackage(types.ModuleType):
        def __getattribute__(self, name):
            # An exported name not loaded yet goes to __getattr__ even when normal lookup would
            # find something: nnsight gives every object a ``save`` method (on ``object``), which
            # would otherwise shadow ``actstore.sae.save`` for good once nnsight is imported.
            if name in source and name not in types.ModuleType.__getattribute__(self, "__dict__"):
                return type(self).__getattr__(self, name)
            return types.ModuleType.__getattribute__(self, name)

        def __getattr__(self, name):
            mod = source.get(name)
            if mod is None:
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            if mod == ".":  # a submodule, which the face used to import itself
                value = importlib.import_module("." + name, package)
            else:
                value = getattr(importlib.import_module(mod, package), name)
            self.__dict__[name] = value
            return value

        def __setattr__(self, name, value):
            # The import system binds a submodule on its package when it first loads it. A name
            # the package exports from the submodule of the same name (actstore.capture,
            # actstore.sae.train, actstore.analysis.steer) keeps meaning the export, as it did
            # when the face imported everything at once: the module stays in sys.modules.
            if isinstance(value, types.ModuleType) and value.__name__ == f"{package}.{name}" and name in source:
                return
            super().__setattr__(name, value)

        def __dir__(self):
            return sorted({*self.__dict__, *source})

    face.__class__ = LazyPackage
