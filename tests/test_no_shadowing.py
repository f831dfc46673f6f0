"""The project's top-level ``kernels/`` folder never shadows another package named ``kernels``.

Hugging Face's ``kernels`` (a dependency of transformers >= 5) is imported by
``transformers.integrations.hub_kernels``. Commands run from a clone put the repository root on
``sys.path`` first (``python -c``, ``python -m actstore.cli``, pytest's rootdir), so a regular
package ``kernels/`` there used to win and break every transformers import. The folder has no
``__init__.py`` (setup.py says why): it installs only as ``actstore.kernels``. Each check runs in a
fresh interpreter whose working directory is the repository root, as a user's command would.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_from_root(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"from {ROOT}: {code!r} failed:\n{out.stderr[-2000:]}"
    return out.stdout.strip()


def test_no_init_in_top_level_kernels():
    assert not (ROOT / "kernels" / "__init__.py").exists(), (
        "kernels/__init__.py makes the folder a regular package that shadows Hugging Face's `kernels` "
        "from the repository root: remove it (see setup.py)"
    )


def test_import_kernels_from_root_is_the_installed_distribution():
    try:
        dist = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("Hugging Face's `kernels` is not installed (transformers >= 5 needs it): run `make install`")
    where = _run_from_root("import kernels, sys; print(kernels.__file__ or ''); print(sys.path[0] == '')")
    path, root_first = where.splitlines()
    assert root_first == "True", "the check must run with the repository root first on sys.path"
    assert path, "`import kernels` from the repository root gave a namespace package: it includes the project's folder"
    assert not Path(path).resolve().is_relative_to(ROOT / "kernels"), f"`import kernels` resolved to {path}"
    assert Path(path).resolve().is_relative_to(Path(dist.locate_file("")).resolve()), path


def test_project_kernels_never_a_top_level_portion_from_root():
    # A namespace package spec lists its portions; the project's folder must not be among them.
    got = _run_from_root(
        "import importlib.util; s = importlib.util.find_spec('kernels'); "
        "print('\\n'.join(s.submodule_search_locations or []) if s else '')"
    )
    portions = [Path(p).resolve() for p in got.splitlines() if p]
    assert ROOT / "kernels" not in portions, (
        f"the project's kernels/ is importable as a top-level `kernels`: {portions}"
    )


def test_transformers_hub_kernels_imports_from_root():
    pytest.importorskip("transformers")
    _run_from_root("import transformers.integrations.hub_kernels")


def test_actstore_kernels_is_the_project_folder():
    got = _run_from_root("import actstore.kernels.topk_encode as m; print(m.__file__)")
    assert Path(got).resolve() == (ROOT / "kernels" / "topk_encode.py").resolve(), got
