"""The representation jobs of ``actstore analyze`` (actstore/analysis/jobs.py): each job's
``OUT/<job>/`` group equals its function's own ``.save()``; feature and representation jobs in
one CLI run with one HTML report (checked in headless chromium: sections, inline SVGs, no JS
error); a rerun skips the finished jobs, redoes an unmarked one and refuses another plan; bad
combinations are one line; two torchrun ranks write the single process's bytes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

import actstore
import actstore.analysis as an
from actstore.analysis import AnalysisError
from actstore.analysis.jobs import MARKER
from actstore.analysis.output import ATTR, read_attrs
from actstore.analysis.report import render
from actstore.cli import main
from actstore.sae import SAEConfig, TopKSAE, load, save
from helpers import zygote
from helpers.analyze_repr_kill_job import BLOCK as KB
from helpers.analyze_repr_kill_job import JOBS as KJ
from helpers.paths import HELPERS, ROOT
from helpers.procs import torchrun
from helpers.repr_store import write_repr_store

BLOCK = 97  # rows a block: the 728-row store spans 8 blocks and both segments


def _cli(*args):
    return zygote.run(
        [sys.executable, "-m", "actstore.cli", "analyze", *map(str, args)], capture_output=True, text=True, cwd=ROOT
    )


def _files(d: Path, skip=("zarr.json",)) -> dict[str, bytes]:
    """Every file under ``d`` by relative path; the root's ``skip`` files (attributes) left out."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and
            str(p.relative_to(d)) not in skip}  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("aj")
    write_repr_store(root / "s")
    save(TopKSAE(SAEConfig("topk", 16, 8, k=2, hook="a"), seed=1), root / "sae_a")
    save(TopKSAE(SAEConfig("topk", 16, 12, k=2, hook="a"), seed=2), root / "sae_b")
    np.save(root / "v.npy", np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32))
    return root


SPEC = {
    "steering": {"top_k": 3, "window": 2, "pca": True},
    "pca": {"k": 3, "sample": 20},
    "diff": {"top_k": 3},
    "probe": {"epochs": 1},
    "scan": {"vectors": "steering", "k": 2},
    "mcs": {"neighbours": 3},
}


def _reference(w: Path, s, g, out: Path) -> None:
    """Each job's function called directly and saved, as the subcommands do."""
    sv = an.steering_vectors(s, "a,b", g, "pos", "neg", top_k=3, window=2, pca=True, block_rows=BLOCK)
    sv.save(out / "steering")
    p = an.pca(s, "a,b", g, k=3, sample=20, block_rows=BLOCK)
    p.meta["principal_angles"] = {"a vs b": an.principal_angles(p.components["a"], p.components["b"]).tolist()}
    p.save(out / "pca")
    an.layer_diff(s, "a", "b", g, top_k=3, block_rows=BLOCK).save(out / "diff")
    an.probes(s, "a,b", g, "pos", "neg", epochs=1, block_rows=BLOCK).save(out / "probe")
    unit = sv.vectors["a"].numpy().astype(np.float64)
    an.scan(s, "a", (unit / np.linalg.norm(unit))[None], g, k=2, block_rows=BLOCK).save(out / "scan")
    cos, idx = an.neighbours(w / "sae_a", 3)
    an.mcs(w / "sae_a", w / "sae_b").save(
        out / "mcs", {"dictionary/neighbours_cos": cos, "dictionary/neighbours_index": idx}
    )


@pytest.mark.slow  # over ~15 s on 2 busy cores (subprocesses or compiles): scheduled first
def test_each_job_equals_its_function(world, tmp_path):
    s = actstore.open(world / "s")
    g = an.row_groups(s, sources=True)
    spec = {**SPEC, "mcs": {**SPEC["mcs"], "other": str(world / "sae_b")}}
    out = an.run_all(s, spec, tmp_path / "o", sae=world / "sae_a", hooks="a,b", groups=g, block_rows=BLOCK)
    _reference(world, s, g, tmp_path / "ref")
    root = read_attrs(out)
    assert list(root["jobs"]) == list(SPEC) and root["represent"]["hooks"] == ["a", "b"]
    for job in SPEC:
        got, ref = out / job, tmp_path / "ref" / job
        assert _files(got) == _files(ref) and len(_files(ref)) > 2, job
        a, b = read_attrs(got), read_attrs(ref)
        assert a.pop(MARKER) == {"job": job, "plan": root["identity"]} and a == b, job


def test_rerun_skips_finished_jobs_redoes_unmarked_and_refuses_another_plan(world, tmp_path):
    s = actstore.open(world / "s")
    g = an.row_groups(s, sources=True)
    spec = {"pca": {"k": 3, "sample": 20}, "diff": {}, "probe": {"epochs": 1}}
    out = an.run_all(s, spec, tmp_path / "o", hooks="a,b", groups=g, block_rows=BLOCK)
    before = _files(out, skip=())
    stamps = {j: (out / j / "zarr.json").stat().st_mtime_ns for j in spec}
    # A crash between writing pca's group and marking it, and one inside diff's write.
    doc = json.loads((out / "pca" / "zarr.json").read_text())
    del doc["attributes"][ATTR][MARKER]
    (out / "pca" / "zarr.json").write_text(json.dumps(doc))
    shutil.rmtree(out / "diff")
    (out / "diff" / "_build").mkdir(parents=True)
    (out / "diff" / "_build" / "half").write_bytes(b"x")
    assert an.run_all(s, spec, tmp_path / "o", hooks="a,b", groups=g, block_rows=BLOCK) == out
    assert (out / "probe" / "zarr.json").stat().st_mtime_ns == stamps["probe"]  # skipped
    assert (out / "pca" / "zarr.json").stat().st_mtime_ns != stamps["pca"]  # redone
    assert _files(out, skip=()) == before
    with pytest.raises(AnalysisError, match="holds a different analysis"):
        an.run_all(s, {**spec, "pca": {"k": 4}}, tmp_path / "o", hooks="a,b", groups=g, block_rows=BLOCK)
    with pytest.raises(AnalysisError, match="holds a different analysis"):
        last = an.row_groups(s, sources=True, positions="last")
        an.run_all(s, spec, tmp_path / "o", hooks="a,b", groups=last, block_rows=BLOCK)
    # An SAE analysis written by run() alone is another analysis than the same jobs plus pca.
    an.run(s, world / "sae_a", "stats", tmp_path / "f", hook="a", block_rows=BLOCK)
    with pytest.raises(AnalysisError, match="holds a different analysis"):
        an.run_all(s, "stats,pca", tmp_path / "f", sae=world / "sae_a", hook="a", groups=g, block_rows=BLOCK)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(AnalysisError, match="holds no actstore analysis"):
        an.run_all(s, "pca", tmp_path / "x", groups=g)
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_sigkill_after_a_job_then_rerun_skips_it_and_gives_the_same_bytes(world, tmp_path):
    ref = an.run_all(world / "s", KJ, tmp_path / "ref", hooks="a,b", block_rows=KB)
    out = tmp_path / "out"
    child = zygote.Popen([sys.executable, str(HELPERS / "analyze_repr_kill_job.py"), str(world / "s"), str(out),
                              "pca"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert zygote.wait_stopped(child)  # returns once the child has stopped after writing pca
    child.kill()
    assert child.wait() == -signal.SIGKILL
    assert (out / "pca" / "zarr.json").exists() and not (out / "probe").exists()
    done = []
    assert an.run_all(world / "s", KJ, out, hooks="a,b", block_rows=KB, on_job=done.append) == out
    assert done == ["probe"]  # steering and pca were finished: skipped
    assert _files(out, skip=()) == _files(ref, skip=())


@pytest.mark.slow
def test_sigkill_inside_a_job_then_rerun_resumes_that_pass_and_gives_the_same_bytes(world, tmp_path):
    ref = an.run_all(world / "s", KJ, tmp_path / "ref", hooks="a,b", block_rows=KB)
    out = tmp_path / "out"
    child = zygote.Popen([sys.executable, str(HELPERS / "analyze_repr_kill_job.py"), str(world / "s"), str(out),
                              "probes.sgd.0:2"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert zygote.wait_stopped(child)  # stopped after the SGD pass's second commit
    child.kill()
    assert child.wait() == -signal.SIGKILL
    assert (out / "_state" / "repr-probe").is_dir() and not (out / "probe").exists()
    commits, done = [], []
    rerun = an.run_all(
        world / "s", KJ, out, hooks="a,b", block_rows=KB, commit_rows=1, on_job=done.append,
        on_pass_commit=lambda name, seq, rows: commits.append((name, seq)),
    )  # fmt: skip
    assert rerun == out and done == ["probe"]
    names = [n for n, _ in commits]
    assert "probes.sums" not in names  # finished before the kill: not read again
    assert min(q for n, q in commits if n == "probes.sgd.0") == 3  # continues after commit 2
    assert not (out / "_state" / "repr-probe").exists()  # removed once the group is written
    assert _files(out, skip=()) == _files(ref, skip=())


CHROMIUM = shutil.which("chromium")


def _browser(url: str) -> tuple[str, list[str]]:
    """The DOM chromium builds for ``url`` and the console lines it logged."""
    out = zygote.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, [ln for ln in out.stderr.splitlines() if ":CONSOLE" in ln]


@pytest.mark.slow  # five CLI processes and a browser: about a minute on 2 shared cores
def test_cli_features_and_representation_jobs_with_the_report(world, tmp_path):
    out = tmp_path / "o"
    jobs = "stats,top,steering,pca,diff,scan"
    line = ["--store", world / "s", "--sae", world / "sae_a", "--hook", "a", "--jobs", jobs,
            "--hooks", "a,b", "--block-rows", BLOCK, "--option", "top.k=3", "--option", "steering.top_k=3",
            "--option", "pca.k=3", "--option", "pca.sample=20", "--option", "diff.top_k=3", "--option", "scan.k=2",
            "--out", out, "--no-progress"]  # fmt: skip
    r = _cli(*line, "--html", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["jobs"] == ["stats", "top", "steering", "pca", "diff", "scan"] and doc["m"] == 8
    assert doc["represent"] == {j: str(out / j) for j in ("steering", "pca", "diff", "scan")}
    # The feature arrays are run()'s; scan defaulted to the SAE's decoder rows at its hook.
    ref = an.run(world / "s", world / "sae_a", {"stats": {}, "top": {"k": 3}}, tmp_path / "ref", hook="a",
                 block_rows=BLOCK)  # fmt: skip
    got = {k: v for k, v in _files(out).items() if k.split("/")[0] in ("latents", "summary", "top")}
    assert got == _files(ref) and len(got) > 5
    s = actstore.open(world / "s")
    res = an.scan(s, "a", load(world / "sae_a").W_dec.detach().numpy(), an.row_groups(s, sources=True), k=2,
                  block_rows=BLOCK)  # fmt: skip
    assert _files(out / "scan") == _files(res.save(tmp_path / "scan_ref"))
    page = Path(doc["report"]).read_text(encoding="utf-8")
    for job in ("steering", "pca", "diff", "scan"):
        assert f'id="job-{job}"' in page
    assert 'id="latents-table"' in page and page.count("<circle") >= 20  # the PCA scatters, inline
    stamps = {j: (out / j / "zarr.json").stat().st_mtime_ns for j in doc["represent"]}
    again = _cli(*line)
    assert again.returncode == 0 and "steering: " in again.stdout, again.stderr
    assert {j: (out / j / "zarr.json").stat().st_mtime_ns for j in doc["represent"]} == stamps
    other = _cli(*line[:-3], "--option", "pca.k=4", "--out", out, "--no-progress")
    assert other.returncode == 1 and other.stderr.count("\n") == 1 and "holds a different analysis" in other.stderr
    rep = zygote.run([sys.executable, "-m", "actstore.cli", "report", out, "--out", tmp_path / "again"],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert rep.returncode == 0 and 'id="job-pca"' in (tmp_path / "again" / "index.html").read_text(), rep.stderr
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium): the browser half is not run")
    dom, console = _browser(Path(doc["report"]).as_uri())
    sections = [j for j in ("steering", "pca", "diff", "scan") if f'id="job-{j}"' in dom]
    assert sections == ["steering", "pca", "diff", "scan"]
    assert dom.count("<svg") >= 2 + 2 + 1 + 1 + 1  # pca scatters, diff and scan histograms, density
    assert "of 8 shown" in dom  # the latent table's script ran
    assert not [ln for ln in console if "Uncaught" in ln or "Error" in ln], console


def test_representation_only_report_and_cli(world, tmp_path):
    out = tmp_path / "o"
    r = _cli("--store", world / "s", "--jobs", "probe,scan", "--hooks", "a,b", "--option", "probe.epochs=1",
             "--option", f"scan.vectors={world / 'v.npy'}", "--positions", "last", "--out", out, "--html",
             "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "probe: " in r.stdout and "analysed" not in r.stdout
    s = actstore.open(world / "s")
    g = an.row_groups(s, sources=True, positions="last")
    ref = an.probes(s, "a,b", g, "pos", "neg", epochs=1).save(tmp_path / "ref")
    assert _files(out / "probe") == _files(ref) and read_attrs(out)["represent"]["groups"]["positions"] == "last"
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert 'id="job-probe"' in page and 'id="job-scan"' in page and "<polyline" in page
    assert 'id="latents-table"' not in page and "<script" not in page
    with pytest.raises(AnalysisError, match="holds representation jobs only"):
        an.open(out)
    assert render(out, tmp_path / "r2").read_text(encoding="utf-8") == page.replace(
        str(out / "report"), str(tmp_path / "r2")
    )


@pytest.mark.parametrize(
    "args, words",
    [
        (["--jobs", "pcaa"], "unknown analysis job(s) ['pcaa']"),
        (["--jobs", "stats,pca"], "missing --sae"),
        (["--jobs", "mcs"], "missing --sae"),
        (["--jobs", "scan"], "missing --sae"),
        (["--jobs", "pca", "--hooks", "a,zz"], "unknown hook(s) ['zz']"),
        (["--jobs", "pca", "--option", "pca.kk=3"], "unknown option pca.kk"),
        (["--jobs", "pca", "--option", "pca.k=lots"], 'option pca.k="lots": give an integer'),
        (["--jobs", "steering", "--option", "steering.pca=1"], "option steering.pca=1: give true or false"),
        (["--jobs", "diff"], "diff takes two hooks and --hooks names 3"),
        (["--jobs", "diff", "--hooks", "a,c"], "differ in width"),
        (["--jobs", "steering", "--docs", "{ONE}"], "compare two row groups"),
        (["--jobs", "probe", "--positive", "nope"], "unknown group 'nope'"),
        (["--jobs", "steering", "--positive", "neg"], "the same group"),
        (["--jobs", "pca,scan", "--option", "scan.vectors=steering"], "add steering to the jobs"),
        (["--jobs", "scan", "--option", "scan.vectors={V}", "--option", "scan.hook=c"], "do not match hook 'c'"),
        (["--jobs", "mcs", "--sae", "{SAE}"], "mcs.other=PATH"),
        (["--jobs", "pca", "--option", "steering.pca=true"], "not in --jobs"),
    ],
)
def test_bad_combinations_are_one_line(world, tmp_path, capsys, args, words):
    (tmp_path / "one.json").write_text(json.dumps({"all": list(range(40))}))
    sub = {"ONE": tmp_path / "one.json", "V": world / "v.npy", "SAE": world / "sae_a"}
    code = main(
        ["analyze", "--store", str(world / "s"), "--out", str(tmp_path / "o"), *[a.format(**sub) for a in args]]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("actstore: ") and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_two_ranks_write_the_single_process_bytes(world, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HELPERS)])}
    args = ["analyze", "--store", world / "s", "--jobs", "steering,pca", "--hooks", "a,b,c", "--block-rows", BLOCK,
            "--option", "steering.pca=true", "--option", "pca.k=3", "--option", "pca.sample=30",
            "--no-progress"]  # fmt: skip
    one = zygote.run([sys.executable, HELPERS / "analyze_cli.py", *map(str, args), "--out", tmp_path / "one"],
                         capture_output=True, text=True, env=env)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    r = torchrun(HELPERS / "analyze_cli.py", [*args, "--out", tmp_path / "two"], nproc=2, port_base=31700, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _files(tmp_path / "one", skip=()), _files(tmp_path / "two", skip=())
    assert sorted(a) == sorted(b) and len(a) > 20
    assert [k for k in a if a[k] != b[k]] == []
