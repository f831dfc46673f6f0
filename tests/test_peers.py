"""``helpers.peers.need``: a missing peer skips, or fails under ``ACTSTORE_REQUIRE_PEERS=1``
(in a test and at module level); and no test skips a peer any other way."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.peers import ENV, PEERS, need

TESTS = Path(__file__).resolve().parent
MISSING = "actstore_no_such_peer_xyz"


def test_a_present_peer_is_imported_and_a_missing_one_skips(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert need("json").__name__ == "json"
    with pytest.raises(pytest.skip.Exception, match=MISSING):
        need(MISSING)
    monkeypatch.setenv(ENV, "0")  # 0 is off
    with pytest.raises(pytest.skip.Exception):
        need(MISSING)


def test_a_missing_peer_fails_when_peers_are_required(monkeypatch):
    monkeypatch.setenv(ENV, "1")
    assert need("json").__name__ == "json"
    try:
        need(MISSING, reason="pip install it")
    except pytest.skip.Exception:  # caught here: left to propagate, it would skip this test, not fail it
        pytest.fail(f"need() skipped a missing peer under {ENV}=1")
    except pytest.fail.Exception as e:
        assert f"{ENV}=1 and peer '{MISSING}' is not usable: pip install it" in str(e)
    else:
        pytest.fail("need() returned a module that does not exist")


# Exit status 5: no test ran; 2: a collection error stopped the run (it names the module and the peer).
@pytest.mark.parametrize("required, outcome, rc", [("", "1 skipped", 5), ("1", "1 error", 2)])
def test_at_module_level_the_whole_module_skips_or_fails(tmp_path, required, outcome, rc):
    (tmp_path / "test_mod.py").write_text(
        f"from helpers.peers import need\nneed({MISSING!r})\n\ndef test_x():\n    pass\n"
    )
    env = {**os.environ, ENV: required, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert outcome in r.stdout, r.stdout[-2000:]
    assert r.returncode == rc
    if required:
        assert f"{ENV}=1 and peer '{MISSING}' is not usable" in r.stdout


def test_no_test_skips_a_peer_without_need():
    bare = re.compile(r"importorskip\(\s*[\"']([\w.]+)[\"']")
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name == "peers.py":
            continue
        for m in bare.finditer(path.read_text()):
            if m.group(1).split(".")[0] in PEERS:
                found.append(f"{path.relative_to(TESTS)}: importorskip({m.group(1)!r})")
    assert not found, "use helpers.peers.need for peers: " + "; ".join(found)
