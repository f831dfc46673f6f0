"""What the adapters share: importing a peer package on demand, the width check, and the
refusal of a source/target pair by trainers that train single-hook SAEs only."""

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


def no_transcoder(tool: str, why: str, given: str) -> IntegrationError:
    """The one-line error for a transcoder (``given``) asked of ``tool``, which trains SAEs on
    one hook only (``why``): actstore's own trainer takes the source/target pair."""
    return IntegrationError(
        f"{tool} cannot train a transcoder ({why}), so it takes one hook, not {given}: train it with "
        "`actstore train --arch transcoder --source S --target T` and export it with actstore.sae.to_saelens "
        "or to_sparsify"
    )


def one_hook(hook, tool: str, why: str):
    """``hook`` itself; a source/target pair (a list or tuple of hooks) is the one-line
    :func:`no_transcoder` error."""
    if isinstance(hook, (list, tuple)):
        raise no_transcoder(tool, why, f"a source/target pair {list(hook)!r}")
    return hook
