"""What the adapters share: importing a peer package on demand, and the width check."""

from __future__ import annotations

import importlib

from ..errors import DependencyError, IntegrationError
from ..store.reader import Store


def require(module: str, pip_name: str):
    """Import ``module`` or raise a one-line DependencyError naming ``pip install pip_name``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DependencyError(
            f"{module} is not installed ({type(e).__name__}: {str(e).splitlines()[0]}); pip install {pip_name}"
        ) from None


def check_width(store: Store, hook: str, want: int, tool: str, field: str) -> int:
    """The width ``d`` of ``hook`` in ``store``; IntegrationError when ``want`` (the peer's ``field``) differs."""
    d = store._hook(hook).d  # UnknownHookError (one line) for a hook the store lacks
    if int(want) != d:
        raise IntegrationError(
            f"store hook {hook!r} has width {d}, the {tool} config has {field}={int(want)}; "
            f"set {field}={d} or pick the hook of width {int(want)}"
        )
    return d
