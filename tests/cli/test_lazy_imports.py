"""``import actstore``, the CLI's parser and help, and ``actstore info`` never import torch
(it takes 1.2-1.7 s; actstore/_lazy.py). Each check runs in a fresh interpreter and reads
``sys.modules`` at the end: a structural check, not a timing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers.paths import ROOT
from helpers.peers import need
from helpers.small_store import two_hook_store

HEAVY = ("torch", "transformers", "zarr")


def _loaded_after(code: str) -> dict:
    """Run ``code`` in a new interpreter (the worktree first on the path); which of HEAVY it loaded, and its stdout."""
    probe = (
        "import contextlib, io, json, sys\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        + "".join(f"    {line}\n" for line in code.splitlines())
        + f"print(json.dumps({{'loaded': [m for m in {HEAVY!r} if m in sys.modules], 'out': out.getvalue()}}))\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_import_and_parser_do_not_import_torch():
    got = _loaded_after("import actstore, actstore.cli\nactstore.cli.build_parser()\nactstore.__version__")
    assert got["loaded"] == []


@pytest.mark.parametrize("argv", [["--help"], ["analyze", "--help"], ["train", "--help"], ["capture", "--help"]])
def test_help_does_not_import_torch(argv):
    got = _loaded_after(f"from actstore.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass")
    assert got["loaded"] == [] and "usage: actstore" in got["out"]


def test_info_does_not_import_torch(tmp_path):
    two_hook_store(tmp_path / "s")
    got = _loaded_after(f"from actstore.cli import main\nassert main(['info', {str(tmp_path / 's')!r}]) == 0")
    assert got["loaded"] == [] and "rows      3,000" in got["out"]


def test_lazy_faces_resolve_every_name_and_keep_functions_over_submodules():
    code = (
        "import types, actstore, actstore.analysis, actstore.bench, actstore.capture.config, actstore.sae\n"
        "import actstore.analysis.steer, actstore.sae.train\n"
        "for pkg in ('actstore', 'actstore.store', 'actstore.capture', 'actstore.sae', 'actstore.analysis',\n"
        "            'actstore.bench'):\n"
        "    face = sys.modules[pkg]  # actstore.capture the attribute is capture() itself\n"
        "    for name in face.__all__:\n"
        "        assert getattr(face, name) is not None, (face.__name__, name)\n"
        "assert not isinstance(actstore.capture, types.ModuleType)\n"
        "assert not isinstance(actstore.analysis.steer, types.ModuleType)\n"
        "assert not isinstance(actstore.sae.train, types.ModuleType)\n"
        "assert isinstance(actstore.bench.kernels, types.ModuleType)\n"
        "print(actstore.analysis.AnalysisError is actstore.errors.AnalysisError)"
    )
    got = _loaded_after(code)
    assert got["out"].strip() == "True"


def test_a_name_every_object_has_does_not_shadow_an_export():
    """nnsight gives every object a ``save`` (it patches ``object``): after ``import nnsight``,
    ``actstore.sae.save`` must still be actstore's, not found on the class by normal lookup."""
    need("nnsight")
    code = (
        "import nnsight\n"
        "assert hasattr(object, 'save')  # what makes the shadowing possible\n"
        "from actstore.sae import save, load\n"
        "import actstore.sae\n"
        "print(save.__module__, actstore.sae.save is save, load.__module__)"
    )
    assert _loaded_after(code)["out"].split() == ["actstore.sae.io", "True", "actstore.sae.io"]
