"""The test fork server (helpers/zygote.py) gives its children what a fresh ``python`` would:
argv, environment, working directory, ``sys.path``, exit status, signals, stop reports and an
unshared numpy seed; the crash tests rely on each of these."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from helpers import zygote

CHILD = """
import json, os, sys
import numpy as np
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "env": os.environ.get("ZYG_PROBE"),
                  "path0": sys.path[0], "extra": os.environ.get("PYTHONPATH", ""),
                  "on_path": [p for p in sys.path if p.endswith("zyg-extra")],
                  "rand": int(np.random.randint(0, 2**31)), "pid": os.getpid()}), flush=True)
mode = sys.argv[1]
if mode == "stop":
    os.kill(os.getpid(), __import__("signal").SIGSTOP)
    print("resumed", flush=True)
elif mode == "wait":
    sys.stdin.readline()
sys.exit(int(sys.argv[2]))
"""


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "child.py"
    path.write_text(CHILD)
    return path


def test_a_child_gets_argv_env_cwd_path_and_its_exit_code(script, tmp_path):
    extra = tmp_path / "zyg-extra"
    extra.mkdir()
    env = {**os.environ, "ZYG_PROBE": "yes", "PYTHONPATH": str(extra)}
    r = zygote.run([sys.executable, str(script), "exit", "3"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    got = json.loads(r.stdout)
    assert got["argv"] == [str(script), "exit", "3"] and got["cwd"] == str(tmp_path) and got["env"] == "yes"
    assert got["path0"] == str(script.parent) and got["on_path"] == [str(extra)]
    assert got["pid"] != os.getpid()


def test_children_draw_different_numpy_numbers(script):
    draws = {json.loads(zygote.run([sys.executable, str(script), "exit", "0"], capture_output=True).stdout)["rand"]
             for _ in range(3)}  # fmt: skip
    assert len(draws) == 3, "forked children share the zygote's numpy seed"


def test_sigkill_stop_and_failure_are_reported_as_popen_does(script):
    p = zygote.Popen([sys.executable, str(script), "wait", "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert isinstance(p, zygote.ZygoteProc)
    assert json.loads(p.stdout.readline())["pid"] == p.pid
    assert p.poll() is None
    p.kill()
    assert p.wait(60) == -signal.SIGKILL

    p = zygote.Popen([sys.executable, str(script), "stop", "0"], stdout=subprocess.PIPE, text=True)
    assert zygote.wait_stopped(p)
    os.kill(p.pid, signal.SIGCONT)
    p.stdout.readline()
    assert p.stdout.readline().strip() == "resumed" and p.wait(60) == 0

    r = zygote.run([sys.executable, "-c", "raise SystemExit(5)"], capture_output=True)  # not forked: -c
    assert r.returncode == 5
    bad = zygote.run([sys.executable, str(script), "exit"], capture_output=True, text=True)  # IndexError
    assert bad.returncode == 1 and "IndexError" in bad.stderr
