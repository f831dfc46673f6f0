"""A mutation run (mutmut 3) over the store's writer, manifest and lease, the loader's plan and the
host Python of the split TopK encoder, each file with its own tests.

    python benchmarks/run_mutation.py                       # every target; results/mutation.json
    python benchmarks/run_mutation.py --only lease plan     # some targets (the others' figures kept)
    python benchmarks/run_mutation.py --sample 120          # a seeded sample of each target's mutants
    python benchmarks/run_mutation.py --rerun undetected    # only the last run's survivors and untested
                                                            # mutants (after new tests); the earlier
                                                            # figures are kept as "before"

Run it with the project's interpreter (the venv that runs the tests). It makes the tool's venv
(``--tool-venv``, default ``build/mutmut-venv``): ``python -m venv --system-site-packages``, a
``.pth`` that puts this interpreter's site-packages (torch, zarr, pytest...) before the base
interpreter's, and ``pip install mutmut==3.8.1``, so that mutmut never goes into the project's venv.

Each target runs in a folder of its own, ``mutants-run/<target>/`` (git-ignored): links to
actstore/, kernels/ and tests/, and a pyproject.toml whose ``[tool.mutmut]`` is this repository's
with ``only_mutate`` and the test selection narrowed to the target (``TARGETS``). mutmut copies the
tree into ``mutants/`` there and runs, for each mutant, only the selected tests that call the mutated
function (it records which in a first, clean run), with ``-x``. One moto server (127.0.0.1) serves
every run's object-storage tests (tests/conftest.py then starts none per pytest session).

A target with more mutants than ``--sample`` runs a sample drawn with ``random.Random(seed)`` from
its sorted mutant names; ``--time-box`` stops a target's run after so many seconds (SIGINT, then
SIGKILL to its process group 120 s later: mutmut saves each result as it comes, and here it never
finished on SIGINT alone), and its untried mutants count as ``not_checked``. ``--rerun`` first
deletes the target's ``mutants/mutmut-stats.json``, so that tests changed since are mapped again.

Score (Stryker's definition): ``(killed + timeout) / (killed + timeout + survived + no_tests)``;
skipped, suspicious and not-checked mutants are left out of it and reported beside it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, metadata, write_result  # noqa: E402

MUTMUT = "mutmut==3.8.1"
NAME = "mutation"
RUNS = REPO / "mutants-run"
PYTEST_ARGS = ["-x", "-p", "no:cacheprovider", "-m", "not slow"]
STORE_TESTS = [
    "tests/store/test_store.py",
    "tests/store/test_store_failures.py",
    "tests/store/test_storage_contract.py",
]
# target -> (the file mutated, the tests it runs against: the fast ones that exercise it)
TARGETS: dict[str, tuple[str, list[str]]] = {
    "writer": ("actstore/store/writer.py", STORE_TESTS),
    "manifest": ("actstore/store/manifest.py", STORE_TESTS),
    "lease": (
        "actstore/store/lease.py",
        ["tests/store/test_lease.py", "tests/store/test_storage_contract.py", "tests/store/test_store_failures.py"],
    ),
    "plan": ("actstore/loader/plan.py", ["tests/loader/test_loader.py"]),
    "split_encoder": ("kernels/topk_encode_split.py", ["tests/ops/test_topk_encode_split.py"]),
}
STATUS = {  # mutmut 3.8.1's mutmut.stats.status_by_exit_code; anything else is "suspicious"
    1: "killed", 3: "killed", 0: "survived", 5: "no_tests", 33: "no_tests", 34: "skipped", 35: "suspicious",
    36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault",
    2: "interrupted", None: "not_checked",
}  # fmt: skip
COUNTS = [
    "killed",
    "survived",
    "timeout",
    "no_tests",
    "skipped",
    "suspicious",
    "segfault",
    "interrupted",
    "not_checked",
]


def tool_venv(path: Path) -> Path:
    """The tool's venv (made if missing); returns its ``mutmut`` executable."""
    py = path / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(path)], check=True)
    # The base interpreter's site-packages is what --system-site-packages shows; this one's (a venv,
    # usually) goes before it, so the tests import the same torch/zarr/pytest as a plain test run.
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "_project_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    have = subprocess.run([str(py), "-m", "pip", "show", "mutmut"], capture_output=True, text=True).stdout
    if f"Version: {MUTMUT.split('==')[1]}" not in have:
        subprocess.run([str(py), "-m", "pip", "install", "-q", MUTMUT], check=True)
    return path / "bin" / "mutmut"


def mutmut_version(exe: Path) -> str:
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip().rsplit(" ", 1)[-1]


def start_moto() -> tuple[subprocess.Popen | None, str | None]:
    """One moto server on a free port of 127.0.0.1 for every run, or (None, None) without moto."""
    if importlib.util.find_spec("moto") is None:
        return None, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(240):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError("moto.server did not listen within 60 s")


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    return "[" + ", ".join(_toml(x) for x in v) + "]"


def mutated_path(target: str) -> str:
    """The target's path in its run folder: a kernel sits at ``actstore/kernels/`` there, as a
    wheel installs it (setup.py's package_dir), because mutmut names a mutant's module after its
    path and the tests import ``actstore.kernels.<op>``; from ``kernels/<op>.py`` mutmut expected
    ``kernels.<op>`` and found no test for any mutant."""
    path = TARGETS[target][0]
    return f"actstore/{path}" if path.startswith("kernels/") else path


def run_dir(target: str) -> Path:
    """``mutants-run/<target>/``: the tree (links, or for a kernel a copy in the wheel's layout)
    and the target's pyproject.toml."""
    import shutil

    import tomllib

    tests = TARGETS[target][1]
    path = mutated_path(target)
    d = RUNS / target
    d.mkdir(parents=True, exist_ok=True)
    names = ("tests",) if path != TARGETS[target][0] else ("actstore", "kernels", "tests")
    for name in names:
        link = d / name
        if not link.is_symlink():
            link.symlink_to(Path("..", "..", name))
    conf_extra = {}
    if names == ("tests",):
        # copies keep their mtimes, so mutmut sees an unchanged file as already mutated
        skip = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO / "actstore", d / "actstore", ignore=skip, dirs_exist_ok=True)
        shutil.copytree(REPO / "kernels", d / "actstore" / "kernels", ignore=skip, dirs_exist_ok=True)
        conf_extra["source_paths"] = ["actstore"]
    text = (REPO / "pyproject.toml").read_text()
    conf = tomllib.loads(text)["tool"]["mutmut"]
    conf.update(only_mutate=[path], pytest_add_cli_args_test_selection=list(tests), **conf_extra)
    body = "".join(f"{k} = {_toml(v)}\n" for k, v in conf.items())
    head = text.split("[tool.mutmut]")[0]  # the pytest section (markers, addopts) stays
    (d / "pyproject.toml").write_text(head + "[tool.mutmut]\n" + body)
    # Made before mutmut starts: a PYTHONPATH entry that does not exist yet is cached by the import
    # system as "no finder", and the tests would then not find the mutated actstore at all.
    (d / "mutants").mkdir(exist_ok=True)
    return d


def _env(d: Path, moto: str | None) -> dict:
    env = dict(os.environ)
    # The mutants' copy of the tree, for the tests' own subprocesses too (helpers/*.py); never the
    # checkout, whose unmutated actstore would otherwise answer for them.
    env["PYTHONPATH"] = str(d / "mutants")
    env.pop("MUTANT_UNDER_TEST", None)
    if moto:
        env["ACTSTORE_TEST_MOTO_ENDPOINT"] = moto
    return env


def generate(exe: Path, d: Path, env: dict) -> None:
    """Write the mutants (and their .meta files) without running anything."""
    code = (
        "from mutmut.__main__ import copy_src_dir, copy_also_copy_files, create_mutants, set_mutant_under_test\n"
        "from mutmut.utils.file_utils import setup_source_paths\n"
        "set_mutant_under_test('mutant_generation'); copy_src_dir(); copy_also_copy_files(); setup_source_paths()\n"
        "create_mutants(1)\n"
    )
    subprocess.run([str(exe.parent / "python"), "-c", code], cwd=d, env=env, check=True, stdout=subprocess.DEVNULL)


def meta(d: Path, target: str) -> dict:
    return json.loads((d / "mutants" / (mutated_path(target) + ".meta")).read_text())


def run_mutmut(exe: Path, d: Path, env: dict, names: list[str], max_children: int, time_box: float) -> float:
    """``mutmut run`` of ``names`` (all when empty), niced; SIGINT after ``time_box`` seconds."""
    cmd = ["nice", "-n", "10", str(exe), "run", "--max-children", str(max_children), *names]
    t0 = time.perf_counter()
    with open(d / "run.log", "w") as log:
        p = subprocess.Popen(cmd, cwd=d, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            p.wait(timeout=time_box)
        except subprocess.TimeoutExpired:
            print(f"  time box of {time_box:.0f} s reached: stopping mutmut", flush=True)
            os.killpg(p.pid, signal.SIGINT)
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        # What the tests left behind in the run's process group: mutmut ends each mutant's test
        # process with os._exit, so atexit never stops the fork servers of tests/helpers/zygote.py.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return time.perf_counter() - t0


def show(exe: Path, d: Path, env: dict, name: str) -> str:
    """The mutant's diff, without its header lines."""
    out = subprocess.run([str(exe), "show", name], cwd=d, env=env, capture_output=True, text=True).stdout
    return "\n".join(ln for ln in out.splitlines() if ln[:1] in "+-@ " and not ln.startswith(("---", "+++")))


def summarize(status: dict[str, str]) -> dict:
    counts = dict.fromkeys(COUNTS, 0)
    for st in status.values():
        counts[st] += 1
    detected = counts["killed"] + counts["timeout"]
    scored = detected + counts["survived"] + counts["no_tests"]
    return {"counts": counts, "score": round(detected / scored, 4) if scored else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=list(TARGETS), help="targets to run (default: all)")
    ap.add_argument("--sample", type=int, default=0, help="at most this many mutants per target (0: all)")
    ap.add_argument("--seed", type=int, default=26)
    ap.add_argument("--time-box", type=float, default=1800.0, help="seconds per target before mutmut is stopped")
    ap.add_argument("--max-children", type=int, default=1, help="mutants tested at once (1: one test process)")
    ap.add_argument("--rerun", choices=["undetected"], help="rerun the last results' survived and no-tests mutants")
    ap.add_argument(
        "--names", type=Path, help="with --rerun: only these mutants (one name a line); the others keep their status"
    )
    ap.add_argument("--tool-venv", type=Path, default=REPO / "build" / "mutmut-venv")
    args = ap.parse_args(argv)

    meta_doc = metadata()
    exe = tool_venv(args.tool_venv)
    version = mutmut_version(exe)
    out_path = RESULTS / f"{NAME}.json"
    old = json.loads(out_path.read_text()) if out_path.exists() else {}
    if args.rerun and not old:
        ap.error(f"--rerun needs an earlier {out_path}")
    doc = {
        "meta": meta_doc,
        "tool": {"mutmut": version, "venv": "python -m venv --system-site-packages + pip install " + MUTMUT},
        "score_definition": "(killed + timeout) / (killed + timeout + survived + no_tests)",
        "targets": dict(old.get("targets", {})),
    }
    moto_proc, moto = start_moto()
    try:
        for target in args.only or list(TARGETS):
            path, tests = TARGETS[target]
            print(f"{target}: {path}", flush=True)
            d = run_dir(target)
            env = _env(d, moto)
            generate(exe, d, env)
            everyone = sorted(meta(d, target)["exit_code_by_key"])
            prev = old.get("targets", {}).get(target, {})
            if args.rerun:
                undetected = ("survived", "no_tests")
                chosen = [n for n, st in prev.get("status", {}).items() if st in undetected and n in everyone]
                if args.names:
                    only = set(args.names.read_text().split())
                    chosen = [n for n in chosen if n in only]
            elif args.sample and len(everyone) > args.sample:
                chosen = sorted(random.Random(args.seed).sample(everyone, args.sample))
            else:
                chosen = everyone
            print(f"  {len(everyone)} mutants, running {len(chosen)}", flush=True)
            if args.rerun:
                # mutmut records which tests call each function once, and afterwards only for new
                # tests: a test that was changed to call a mutated function would never run it
                (d / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
            wall = run_mutmut(exe, d, env, chosen, args.max_children, args.time_box) if chosen else 0.0
            codes = meta(d, target)["exit_code_by_key"]
            fresh = {n: STATUS.get(codes.get(n), "suspicious") for n in chosen}
            if args.rerun:  # the earlier figures stay as "before"; only the survivors were run again
                entry = {**prev, "before": prev.get("before") or {k: prev[k] for k in ("counts", "score")}}
                # a survivor the time box left unchecked keeps its earlier status
                entry["status"] = {**prev["status"], **{n: st for n, st in fresh.items() if st != "not_checked"}}
                rerun = {"commit": meta_doc["git"]["commit"], "mutants": len(chosen), "wall_s": round(wall, 1)}
                entry["reruns"] = prev.get("reruns", []) + [rerun]
            else:
                sampled = len(chosen) < len(everyone)
                entry = {
                    "file": path,
                    "tests": tests,
                    "test_command": " ".join(["pytest", *PYTEST_ARGS[:3], "-m", "'not slow'", *tests]),
                    "mutants_total": len(everyone),
                    "mutants_run": len(chosen),
                    "sample": {"size": len(chosen), "seed": args.seed} if sampled else None,
                    "wall_s": round(wall, 1),
                    "commit": meta_doc["git"]["commit"],
                    "status": fresh,
                }
            entry.update(summarize(entry["status"]))
            entry["survivors"] = {n: show(exe, d, env, n) for n, st in entry["status"].items() if st == "survived"}
            doc["targets"][target] = entry
            c = entry["counts"]
            print(f"  score {entry['score']}: {c} in {wall:.0f} s", flush=True)
            write_result(NAME, doc)  # after every target: a stopped run keeps the finished ones
    finally:
        if moto_proc is not None:
            moto_proc.terminate()
            moto_proc.wait(timeout=30)
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
