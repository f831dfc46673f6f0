"""The docs against the code: the plain-zarr recipe in docs/FORMAT.md, run for real; docs/layout.md
against the tree; mkdocs.yml's nav against docs/; every command line in the README and the docs
against the CLI's parser; the API pages against the packages' exports. The site itself is built
by `make docs` (`mkdocs build --strict`: a broken link or a renamed function fails it)."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess

import numpy as np
import pytest
import torch
import yaml

from actstore.cli import build_parser
from helpers.paths import ROOT
from helpers.small_store import two_hook_store

DOCS = ROOT / "docs"


def test_format_md_plain_zarr_recipe(tmp_path):
    acts = two_hook_store(tmp_path / "s")
    text = (ROOT / "docs" / "FORMAT.md").read_text()
    code = re.search(r"## Reading with plain zarr\s+```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(code.replace('"STORE"', repr(str(tmp_path / "s"))), scope)
    assert torch.equal(scope["x"], acts["encoder.layer.3"].to(torch.bfloat16))
    assert isinstance(scope["bits"], np.ndarray) and scope["bits"].dtype == np.uint16


# Folders whose files docs/layout.md lists one by one; in a listed folder, __init__.py may go unnamed.
LISTED_IN_FULL = ("actstore/", "kernels/")
INDENT = 2  # spaces per level of the tree
NAME_END = re.compile(r"\S(?:\s\S|\S)*")  # names run up to the first double space


def _layout_entries() -> list[str]:
    """Every path the listing in docs/layout.md names, relative to the root ("dir/" for a folder).

    A line is ``<indent><name>[, <name>...]  <what it is for>``; its names sit inside the last
    folder named one level up. A line indented deeper than one level below the line above it
    continues that line's description."""
    text = (DOCS / "layout.md").read_text()
    block = re.search(r"^# Layout\n.*?^```\n(.*?)^```", text, re.S | re.M)
    assert block, "docs/layout.md has no '# Layout' title followed by a code block"
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


def test_layout_names_only_what_exists():
    missing = [e for e in _layout_entries() if not ((ROOT / e).is_dir() if e.endswith("/") else (ROOT / e).is_file())]
    assert not missing, f"docs/layout.md names what does not exist: {missing}"


def test_layout_names_every_module_and_top_level_folder():
    entries = set(_layout_entries())
    tracked = _tracked()
    top = {p.split("/")[0] + "/" for p in tracked if "/" in p and not p.startswith(".")}
    unnamed = sorted(t for t in top if not any(e.startswith(t) for e in entries))
    for p in tracked:
        if p.startswith(LISTED_IN_FULL) and p.endswith(".py") and p not in entries:
            if p.endswith("/__init__.py") and p[: -len("__init__.py")] in entries:
                continue  # the folder's line says what the package is
            unnamed.append(p)
    assert not unnamed, f"docs/layout.md does not name: {unnamed} (one line each: name, two spaces, what it is for)"


def test_readme_has_no_layout_listing():
    """The listing lives in docs/layout.md only: a second copy in the README would go stale."""
    assert not re.search(r"^## Layout", (ROOT / "README.md").read_text(), re.M)


def test_readme_links_resolve():
    """The README is now mostly links into docs/: each must name a file that exists."""
    targets = re.findall(r"\]\(([^)\s]+)\)", (ROOT / "README.md").read_text())
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t)]
    assert len(local) > 20, "the README's links into docs/ are gone"
    broken = [t for t in local if not (ROOT / t).exists()]
    assert not broken, f"README links to files that do not exist: {broken}"


def _nav_pages(nav) -> list[str]:
    """The Markdown files mkdocs.yml's nav names (relative to docs/), in order."""
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            pages += _nav_pages(value)
        elif not re.match(r"[a-z]+://", value):  # an external link is no page
            pages.append(value)
    return pages


def _mkdocs() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_mkdocs_nav_names_every_page_once_and_only_pages_that_exist():
    nav = _nav_pages(_mkdocs()["nav"])
    missing = [p for p in nav if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that are not in docs/: {missing}"
    twice = sorted({p for p in nav if nav.count(p) > 1})
    assert not twice, f"mkdocs.yml's nav names these more than once: {twice}"
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    left_out = [p for p in pages if p not in nav]
    assert not left_out, f"docs/ pages missing from mkdocs.yml's nav (add them, or the site hides them): {left_out}"


def _commands() -> list[str]:
    (sub,) = [a for a in build_parser()._actions if a.dest == "cmd"]
    return list(sub.choices)


def test_every_command_has_a_user_guide_page():
    nav = _nav_pages(_mkdocs()["nav"])
    missing = [c for c in _commands() if f"guide/{c}.md" not in nav]
    assert not missing, f"commands without a docs/guide/<command>.md page in mkdocs.yml's nav: {missing}"


def _command_lines(path) -> list[str]:
    """The ``actstore ...`` command lines of a Markdown file's bash blocks, continuations joined,
    as the arguments after ``actstore`` (``python -m actstore.cli`` and ``torchrun -m actstore.cli`` too)."""
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```", path.read_text(), re.S | re.M):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            lex = shlex.shlex(line, posix=True, punctuation_chars=True)  # '#' starts a comment
            lex.whitespace_split = True
            words = list(lex)
            ends = [i for i, w in enumerate(words) if set(w) <= set("();<>|&")]  # a redirect or a pipe
            words = words[: ends[0]] if ends else words
            for i, w in enumerate(words):
                if w == "actstore" or (w == "actstore.cli" and i and words[i - 1] == "-m"):
                    if "..." not in words:  # an elided line: not a whole command
                        lines.append(words[i + 1 :])
                    break
    return lines


def test_every_command_line_in_the_readme_and_docs_parses():
    """A renamed command or flag fails here, not in a reader's shell."""
    parser = build_parser()
    files = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    seen, bad = 0, []
    for path in files:
        for argv in _command_lines(path):
            seen += 1
            try:
                parser.parse_args(argv)
            except SystemExit:
                bad.append(f"{path.relative_to(ROOT)}: actstore {shlex.join(argv)}")
    assert seen > 20, f"only {seen} command lines found: has the docs' code-block style changed?"
    assert not bad, "command lines the CLI refuses:\n" + "\n".join(bad)


def _exports(package: str) -> list[str]:
    init = ROOT.joinpath(*package.split(".")) / "__init__.py"
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


def test_api_pages_document_exports_that_share_a_submodule_name():
    """griffe reads ``from .pca import pca`` as the submodule, so ``::: actstore.analysis`` leaves the
    function out: each such export needs its own ``::: package.name.name`` block."""
    text = "\n".join(p.read_text() for p in sorted((DOCS / "api").glob("*.md")))
    packages = re.findall(r"^::: (actstore[\w.]*)\s*$", text, re.M)
    assert "actstore" in packages and "actstore.ops" in packages
    missing = []
    for package in packages:
        folder = ROOT.joinpath(*package.split("."))
        if not (folder / "__init__.py").is_file():
            continue  # a module or an object, not a package
        for name in _exports(package):
            shadowed = (folder / f"{name}.py").is_file() or (folder / name / "__init__.py").is_file()
            if shadowed and not re.search(rf"^::: {re.escape(package)}\.{name}\.\w+", text, re.M):
                missing.append(f"{package}.{name}")
    assert not missing, f"exports not rendered in docs/api/ (add '::: <package>.<name>.<name>'): {missing}"
