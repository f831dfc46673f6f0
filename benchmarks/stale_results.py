"""Which result files are older than the code they measure?

Each ``benchmarks/results/<name>.json`` records the git commit it was measured at
(``meta.git.commit``). A result is **stale** when a later commit on the current history
(``git rev-list <commit>..HEAD``) changed its script or a package module it measures
(``MEASURES`` below: script -> result-name pattern and measured paths; a folder covers every
file under it). The listing says which commits and paths, and the command that reruns it.

    python benchmarks/stale_results.py            # list; exit 0 (results need a GPU or ~minutes)
    python benchmarks/stale_results.py --strict   # exit 1 if any result is not fresh

Staleness is a listing, not a failure: most results cannot be rerun where CI runs (no GPU,
long runs). tests/benchmarks/test_bench_results.py runs the check on this repository in CI and prints
the listing as a warning; it fails only when a result file has no entry in ``MEASURES``,
so that a new benchmark must say what it measures.

States: ``fresh``; ``stale`` (measured code changed since); ``unknown-commit`` (the commit
is not in this clone, e.g. measured on a branch that was rebased); ``no-commit`` (the file
records none); ``unmapped`` (no ``MEASURES`` entry matches its name). ``dirty_paths`` lists
measured paths that had uncommitted changes when it ran (``meta.git.uncommitted_paths``).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# What each script measures, beside itself: paths relative to the repository root. The
# timing harness (benchmarks/_common.py) is left out on purpose: a change to how figures are
# summarised does not make the measured code's figures wrong.
NATIVE = ["actstore/_native.py", "csrc", "bindings"]
STORE = ["actstore/store", "actstore/api.py", *NATIVE]
DEQUANT = [
    "actstore/ops/dequant_normalize.py",
    "kernels/dequant_normalize.py",
    "actstore/reference/dequant_normalize.py",
]
LOADER = ["actstore/loader", *DEQUANT, *STORE]
CAPTURE = [
    "actstore/capture",
    "actstore/models",
    "actstore/ops/capture_pack.py",
    "kernels/capture_pack.py",
    "actstore/reference/capture_pack.py",
    *STORE,
]
KERNELS = ["kernels", "actstore/ops", "actstore/reference"]
SAE = ["actstore/sae", *KERNELS, *LOADER]
MUTATED = [
    "actstore/store/writer.py",
    "actstore/store/manifest.py",
    "actstore/store/lease.py",
    "actstore/loader/plan.py",
    "kernels/topk_encode_split.py",
    "tests/store/test_store.py",
    "tests/store/test_store_failures.py",
    "tests/store/test_storage_contract.py",
    "tests/store/test_lease.py",
    "tests/loader/test_loader.py",
    "tests/ops/test_topk_encode_split.py",
]

# script (in benchmarks/) -> (full-match pattern of the result names it writes, measured paths)
MEASURES: dict[str, tuple[str, list[str]]] = {
    "bench_codecs.py": (r"codecs(_quick)?", ["actstore/store/quantize.py", *STORE]),
    "bench_store_io.py": (r"store_io(_quick)?", STORE),
    "bench_writer_profile.py": (r"writer_profile(_quick)?", STORE),
    "bench_s3.py": (r"s3(_cps\d+)?", LOADER),
    "bench_loader.py": (r"loader(_quick)?", LOADER),
    "bench_loader_feed.py": (r"loader_feed_\w+", LOADER),
    "bench_loader_profile.py": (r"loader_profile(_quick)?", LOADER),
    "bench_capture.py": (r"capture_overhead(_gpu)?(_quick)?", CAPTURE),
    "bench_capture_saelens.py": (r"capture_saelens(_quick)?", CAPTURE),
    "bench_all_layer_capture.py": (r"all_layer_capture_cpu(_quick)?", ["actstore/demo.py", *CAPTURE]),
    "bench_sae_kernels.py": (r"sae_kernels_\w+", KERNELS),
    "bench_sae_decode_crossover.py": (r"sae_decode_crossover_\w+", ["actstore/sae/latents.py", *KERNELS]),
    "bench_sae_pipeline.py": (r"sae_pipeline_\w+", SAE),
    "bench_sae_train.py": (r"sae_train_\w+", SAE),
    "bench_analysis.py": (r"analysis_\w+", ["actstore/analysis", "actstore/sae", *KERNELS, *STORE]),
    "bench_saedashboard.py": (r"saedashboard_cpu(_quick)?", ["actstore/analysis", "actstore/sae", *KERNELS, *STORE]),
    "gpu_compile.py": (r"gpu_compile(_ci)?", ["kernels", "actstore/store/format.py"]),
    "gpu_model.py": (r"gpu_model", ["kernels", "benchmarks/gpu_compile.py", "actstore/store/format.py"]),
    "sweep_train_defaults.py": (r"train_defaults_sweep", ["actstore/capture", "actstore/demo.py", *SAE]),
    "bench_demo_smollm2.py": (r"demo_smollm2", ["actstore/demo.py", "actstore/analysis", *CAPTURE, *SAE]),
    "bench_steering_smollm2.py": (r"steering_smollm2", ["actstore/analysis", *CAPTURE]),
    "bench_representations.py": (r"representations_cpu", ["actstore/analysis", *STORE]),
    "bench_resume.py": (r"resume_cpu", ["actstore/analysis", "benchmarks/bench_representations.py", *STORE]),
    "bench_hf_datasets.py": (r"hf_datasets_cpu(_quick)?", ["actstore/integrations/hf_datasets.py", *STORE]),
    "bench_dictionaries.py": (r"dictionaries_cpu", ["actstore/capture", "actstore/demo.py", *CAPTURE, *SAE]),
    "bench_clt.py": (r"clt_cpu", ["actstore/capture", "actstore/demo.py", "actstore/loader", *CAPTURE, *SAE]),
    # the store's quantizers and codecs on all-layer SmolLM2 rows, and the trainer for the FVU parity
    "bench_lossy_codecs.py": (r"lossy_codecs(_quick)?", ["actstore/demo.py", *CAPTURE, *SAE]),
    "sweep_dictionary_defaults.py": (
        r"dictionary_defaults_sweep",
        ["actstore/demo.py", "benchmarks/bench_dictionaries.py", *CAPTURE, *SAE],
    ),
    # the export and the fitted dictionaries' encoders; the graphs themselves are circuit-tracer's
    "bench_circuit_tracer_smollm2.py": (r"circuit_tracer_smollm2", ["actstore/sae", "actstore/models", *KERNELS]),
    # a mutation run: the mutated files and the tests that judge them (and the config in pyproject.toml)
    "run_mutation.py": (r"mutation", [*MUTATED, "pyproject.toml"]),
}


@dataclass
class Status:
    """One result file's standing; ``changes`` = ``[(sha, date, subject, [measured paths it changed])]``,
    newest first."""

    name: str
    state: str
    script: str | None = None
    commit: str | None = None
    command: str | None = None
    changes: list[tuple[str, str, str, list[str]]] = field(default_factory=list)
    dirty_paths: list[str] = field(default_factory=list)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def _under(path: str, measured: list[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in measured)


def script_for(name: str, measures=MEASURES) -> str | None:
    """The script whose pattern matches result ``name`` (the file stem), or None."""
    hits = [s for s, (pat, _) in measures.items() if re.fullmatch(pat, name)]
    return hits[0] if len(hits) == 1 else None


def check(repo: Path = REPO, measures=MEASURES, results_dir: str = "benchmarks/results") -> list[Status]:
    """Classify every ``<results_dir>/*.json`` of ``repo`` against its history (HEAD)."""
    out = []
    for f in sorted((repo / results_dir).glob("*.json")):
        name = f.stem
        script = script_for(name, measures)
        try:
            meta = json.loads(f.read_text()).get("meta", {})
        except (OSError, ValueError):
            meta = {}
        git = meta.get("git") or {}
        st = Status(name, "unmapped", script, git.get("commit"), meta.get("command"))
        out.append(st)
        if script is None:
            continue
        paths = [f"benchmarks/{script}", *measures[script][1]]
        for line in git.get("uncommitted_paths") or []:
            p = line[3:].split(" -> ")[-1].strip().strip('"')  # porcelain "XY path" or "XY old -> new"
            if _under(p, paths):
                st.dirty_paths.append(p)
        if not st.commit:
            st.state = "no-commit"
            continue
        if (
            subprocess.run(
                ["git", "cat-file", "-e", f"{st.commit}^{{commit}}"], cwd=repo, capture_output=True
            ).returncode
            != 0
        ):
            st.state = "unknown-commit"
            continue
        log = _git(repo, "log", "--format=%x00%H%x1f%cs%x1f%s", "--name-only", f"{st.commit}..HEAD", "--", *paths)
        for entry in log.split("\x00")[1:]:
            head, _, files = entry.partition("\n")
            sha, date, subject = head.split("\x1f", 2)
            changed = [p for p in files.split() if _under(p, paths)]
            st.changes.append((sha, date, subject, changed))
        st.state = "stale" if st.changes else "fresh"
    return out


def missing_paths(repo: Path = REPO, measures=MEASURES) -> list[str]:
    """Measured paths not in the work tree: moved code (``MEASURES`` needs updating) or a
    package not written yet (``actstore/models``, planned)."""
    paths = {f"benchmarks/{s}" for s in measures} | {p for _, ps in measures.values() for p in ps}
    return sorted(p for p in paths if not (repo / p).exists())


def report(statuses: list[Status], missing: list[str] = (), detail: bool = True) -> str:
    """The human listing: one line per result, then (``detail``) the commits behind each
    stale one and the command that reruns it."""
    lines = []
    width = max((len(s.name) for s in statuses), default=0) + 7
    for s in statuses:
        at = s.commit[:10] if s.commit else "-"
        what = {
            "fresh": "measured code unchanged since",
            "stale": f"{len(s.changes)} later commit(s) change what it measures",
            "unknown-commit": "its commit is not in this clone's history",
            "no-commit": "records no git commit",
            "unmapped": "no MEASURES entry in benchmarks/stale_results.py matches it",
        }[s.state]
        lines.append(f"{s.state:<15}{s.name + '.json':<{width}}at {at}  {what}")
        if not detail:
            continue
        for sha, date, subject, changed in s.changes[:5]:
            files = ", ".join(changed[:4]) + (f" (+{len(changed) - 4})" if len(changed) > 4 else "")
            lines.append(f"{'':<17}{sha[:10]} {date} {subject[:60]}: {files}")
        if len(s.changes) > 5:
            lines.append(f"{'':<17}... and {len(s.changes) - 5} older")
        if s.dirty_paths:
            lines.append(f"{'':<17}measured with uncommitted changes to: {', '.join(s.dirty_paths)}")
        if s.state == "stale" and s.command:
            lines.append(f"{'':<17}rerun: {s.command}")
    for p in missing:
        lines.append(f"MEASURES names a path not in the work tree: {p} (moved? update benchmarks/stale_results.py)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strict", action="store_true", help="exit 1 if any result is not fresh")
    ap.add_argument("--json", action="store_true", help="print the statuses as JSON")
    ap.add_argument("--brief", action="store_true", help="one line per result")
    args = ap.parse_args(argv)
    statuses = check()
    if args.json:
        print(json.dumps([s.__dict__ for s in statuses], indent=1))
    else:
        print(report(statuses, missing_paths(), detail=not args.brief))
    return 1 if args.strict and any(s.state != "fresh" for s in statuses) else 0


if __name__ == "__main__":
    sys.exit(main())
