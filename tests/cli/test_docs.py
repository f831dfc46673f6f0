"""The docs against the code: the plain-zarr recipe in docs/FORMAT.md, run for real, and the
README's "Layout" section against the tree."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
import torch

from helpers.paths import ROOT
from helpers.small_store import two_hook_store


def test_format_md_plain_zarr_recipe(tmp_path):
    acts = two_hook_store(tmp_path / "s")
    text = (ROOT / "docs" / "FORMAT.md").read_text()
    code = re.search(r"## Reading with plain zarr\s+```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(code.replace('"STORE"', repr(str(tmp_path / "s"))), scope)
    assert torch.equal(scope["x"], acts["encoder.layer.3"].to(torch.bfloat16))
    assert isinstance(scope["bits"], np.ndarray) and scope["bits"].dtype == np.uint16


# Folders whose files the README's layout lists one by one; in a listed folder, __init__.py may go unnamed.
LISTED_IN_FULL = ("actstore/", "kernels/")
INDENT = 2  # spaces per level of the tree
NAME_END = re.compile(r"\S(?:\s\S|\S)*")  # names run up to the first double space


def _layout_entries() -> list[str]:
    """Every path the README's Layout block names, relative to the root ("dir/" for a folder).

    A line is ``<indent><name>[, <name>...]  <what it is for>``; its names sit inside the last
    folder named one level up. A line indented deeper than one level below the line above it
    continues that line's description."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"^## Layout\n+```\n(.*?)^```", text, re.S | re.M)
    assert block, "README.md has no Layout section with a code block"
    entries, stack = [], []  # stack: the folder at each indent level
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        assert indent % INDENT == 0 or indent > INDENT * (len(stack) + 1), f"odd indent: {line!r}"
        level = indent // INDENT
        if level > len(stack):  # a description's continuation
            continue
        del stack[level:]
        names = NAME_END.match(line, indent).group(0)
        parent = "".join(stack)
        for name in names.split(", "):
            entries.append(parent + name)
        if names.endswith("/") and "," not in names:
            stack.append(names)
    return entries


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked tree is unknown")
    return [p for p in out.splitlines() if (ROOT / p).exists()]  # deleted in the work tree: gone


def test_readme_layout_names_only_what_exists():
    missing = [e for e in _layout_entries() if not ((ROOT / e).is_dir() if e.endswith("/") else (ROOT / e).is_file())]
    assert not missing, f"README Layout names what does not exist: {missing}"


def test_readme_layout_names_every_module_and_top_level_folder():
    entries = set(_layout_entries())
    tracked = _tracked()
    top = {p.split("/")[0] + "/" for p in tracked if "/" in p and not p.startswith(".")}
    unnamed = sorted(t for t in top if not any(e.startswith(t) for e in entries))
    for p in tracked:
        if p.startswith(LISTED_IN_FULL) and p.endswith(".py") and p not in entries:
            if p.endswith("/__init__.py") and p[: -len("__init__.py")] in entries:
                continue  # the folder's line says what the package is
            unnamed.append(p)
    assert not unnamed, f"README Layout does not name: {unnamed} (one line each: name, two spaces, what it is for)"
