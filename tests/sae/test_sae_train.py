"""The trainer end to end on a real store: metrics and outputs, exact resume after
SIGKILL of a real training process (at chosen steps and checkpoint phases, never at a
moment of the clock), two ranks under torchrun (gloo), the CLI, and its errors."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from actstore.cli import main as cli
from actstore.errors import SAEError
from actstore.sae import TrainConfig, load, train
from helpers import zygote
from helpers.loader_store import build
from helpers.paths import HELPERS
from helpers.procs import torchrun

RUN = HELPERS / "train_run.py"
trainer = importlib.import_module("actstore.sae.train")  # the module (``actstore.sae.train`` the attribute is train())
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build(tmp_path_factory.mktemp("train") / "acts")


def _run(store, out, arch="topk", tokens=32 * 60, stop=None):
    env = {**ENV, "TRAIN_RUN_STOP": stop} if stop else ENV
    return zygote.Popen(
        [sys.executable, str(RUN), str(store.path), str(out), arch, str(tokens)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _kill_at(store, out, stop, arch="topk"):
    """Run until the child has stopped itself at ``stop`` (see helpers/train_run.py), then SIGKILL it there."""
    p = _run(store, out, arch, stop=stop)
    line = p.stdout.readline()
    if line.strip() != f"stopped {stop}":
        p.kill()
        _, err = p.communicate(timeout=60)
        pytest.fail(f"the run did not stop at {stop} (printed {line!r}): {err[-2000:]}")
    p.send_signal(signal.SIGKILL)
    assert p.wait(timeout=60) == -signal.SIGKILL


def _log(out, eval_line=False):
    """The training lines of OUT/log.jsonl less their timing (with ``eval_line``, the held-out line too)."""
    rows = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("tokens_per_s", None)
    return rows if eval_line else [r for r in rows if "eval" not in r]


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "gated", "relu"])
def test_training_lowers_the_loss_and_writes_every_output(store, tmp_path, arch):
    summary = train(
        store=store.path,
        hook="wide",
        arch=arch,
        latents=64,
        k=4 if "topk" in arch else None,
        tokens=32 * 40,
        out=str(tmp_path / "o"),
        batch_size=32,
        lr=3e-3,
        warmup_steps=5,
        log_every=5,
        checkpoint_every=10,
        buffer_rows=256,
        progress=False,
        sae={"l1_coef": 0.01} if arch in ("relu", "gated") else {},
    )
    log = _log(tmp_path / "o")
    assert summary["steps"] == 40 and [r["step"] for r in log] == list(range(5, 41, 5))
    assert log[-1]["fvu"] < log[0]["fvu"]
    assert all(0 <= r["dead_frac"] <= 1 and r["l0"] > 0 for r in log)
    if arch == "topk":
        assert all(r["l0"] == 4 for r in log)
    sae = load(tmp_path / "o" / "sae")
    assert sae.arch == arch and sae.cfg.scale == 1.0  # the normalization is folded in
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["final"]["step"] == 40
    assert len(list((tmp_path / "o").glob("ckpt-*"))) == 1  # older checkpoints are pruned


# Kill points of the 60-step run (checkpoints every 3 steps, log lines every 2), each rerun
# resuming from the checkpoint before it: a step before the first checkpoint (a fresh
# restart over a log that has lines) and one mid-interval, a checkpoint folder written but
# not yet named by latest.json (mid-run and the last), and a complete checkpoint (the first,
# and the last before the outputs are written).
KILL_PLANS = [["step:3", "written:9", "ckpt:60"], ["ckpt:3", "step:14", "written:60"]]


@pytest.mark.slow
def test_a_run_killed_at_chosen_steps_resumes_to_the_same_weights(store, tmp_path):
    ref = _run(store, tmp_path / "ref")
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-2000:]
    for trial, plan in enumerate(KILL_PLANS):
        run = tmp_path / f"kill{trial}"
        for stop in plan:
            _kill_at(store, run, stop)
        p = _run(store, run)
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.split() == ["done", "60"], err[-2000:]
        assert (run / "params-rank0.sha256").read_text() == (tmp_path / "ref" / "params-rank0.sha256").read_text(), (
            f"killed at {plan}: resumed weights differ"
        )
        assert _log(run, True) == _log(tmp_path / "ref", True), f"killed at {plan}: the log differs"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["transcoder:jumprelu", "skip_transcoder:batchtopk", "matryoshka_batchtopk"])
def test_every_dictionary_family_resumes_to_the_same_weights_after_sigkill(store, tmp_path, arch):
    """The families with a target (and the skip weights) or nested levels keep all of it in
    the checkpoint: killed mid-interval, with a folder not yet named, and at the last
    checkpoint, the rerun ends bit-identical to an uninterrupted run, log included."""
    ref = _run(store, tmp_path / "ref", arch)
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-2000:]
    run = tmp_path / "kill"
    for stop in ["step:7", "written:12", "ckpt:60"]:
        _kill_at(store, run, stop, arch)
    p = _run(store, run, arch)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0 and out.split() == ["done", "60"], err[-2000:]
    assert (run / "params-rank0.sha256").read_text() == (tmp_path / "ref" / "params-rank0.sha256").read_text()
    assert _log(run, True) == _log(tmp_path / "ref", True)


@pytest.mark.slow
def test_two_ranks_under_torchrun_train_one_model(store, tmp_path):
    r = torchrun(RUN, [store.path, tmp_path, "topk", 64 * 30], nproc=2, port_base=28700)
    assert r.returncode == 0, r.stderr[-3000:]
    hashes = {(tmp_path / f"params-rank{k}.sha256").read_text() for k in range(2)}
    assert len(hashes) == 1  # the ranks stayed in step
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 30 and summary["tokens"] == 64 * 30
    log = _log(tmp_path)
    assert log[-1]["fvu"] < log[0]["fvu"]
    ck = json.loads((tmp_path / "latest.json").read_text())["checkpoint"]
    assert {p.name for p in (tmp_path / ck).glob("loader-rank*.json")} == {"loader-rank0.json", "loader-rank1.json"}


def test_cli_trains_from_a_config_file_and_refuses_a_changed_rerun(store, tmp_path, capsys):
    cfg = {
        "store": str(store.path),
        "hook": "wide",
        "arch": "topk",
        "latents": 64,
        "k": 4,
        "tokens": 32 * 12,
        "out": str(tmp_path / "o"),
        "batch_size": 32,
        "buffer_rows": 256,
    }
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert cli(["train", "--config", str(tmp_path / "c.json"), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 12
    rc = cli(["train", "--config", str(tmp_path / "c.json"), "--k", "8", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("actstore: ") and "different settings (k)" in err and err.count("\n") == 1
    assert (
        cli(
            [
                "train",
                "--store",
                str(store.path),
                "--hook",
                "nope",
                "--arch",
                "topk",
                "--latents",
                "8",
                "--k",
                "2",
                "--tokens",
                "64",
                "--out",
                str(tmp_path / "p"),
                "--no-progress",
            ]
        )
        == 1
    )
    assert "hook 'nope' is not in the store" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown arch"):
        TrainConfig(store="s", hook="h", arch="dense", latents=8, out="o", tokens=8)


def _train_small(store, out, **kw):
    opts = dict(store=store.path, hook="wide", arch="topk", latents=64, k=4, tokens=32 * 20, out=str(out))
    opts.update(batch_size=32, lr=3e-3, log_every=5, checkpoint_every=10, buffer_rows=256, progress=False)
    return train(**{**opts, **kw})


def test_held_out_rows_are_set_aside_and_evaluated_exactly(store, tmp_path, monkeypatch):
    made = []

    class Spy(trainer.ActivationLoader):  # records each loader's row selection; reads as usual
        def __init__(self, *a, **kw):
            made.append((kw.get("shuffle"), kw.get("rows")))
            super().__init__(*a, **kw)

    monkeypatch.setattr(trainer, "ActivationLoader", Spy)
    n, held = store.rows, 200
    summary = _train_small(store, tmp_path / "o", eval_rows=held)
    # The statistics pass reads the held-out rows (to take them out of the store's statistics),
    # then the run trains on the rest and evaluates the held-out rows in order.
    assert made == [(False, (n - held, n)), (True, (0, n - held)), (False, (n - held, n))]
    ev = summary["eval"]
    log_eval = [r for r in _log(tmp_path / "o", True) if "eval" in r]
    assert log_eval == [{"step": 20, "tokens": 32 * 20, "eval": ev}]
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["eval"] == ev
    # the same figures computed here from the stored rows and the saved (folded) SAE
    sae = load(tmp_path / "o" / "sae")
    x = store.read("wide", slice(n - held, n))
    with torch.no_grad():
        lat = sae.encode(x)
        x_hat = sae.decode(lat)
    fvu = float((x_hat - x).double().pow(2).sum() / (x - x.mean(0)).double().pow(2).sum())
    assert ev["rows"] == held and ev["eval_rows"] == held
    assert ev["fvu"] == pytest.approx(fvu, rel=1e-3) and 0 < ev["fvu"] < 1
    assert ev["l0"] == pytest.approx(lat.l0(), rel=1e-6)
    assert ev["dead_frac"] == pytest.approx(float((~lat.fired()).float().mean()))


def test_held_out_documents_and_no_evaluation(store, tmp_path):
    # doc = token // 50 in the fixture: the three highest ids (42, 43, 44) are rows 2100..2237
    s = _train_small(store, tmp_path / "d", eval_docs=3)
    assert s["eval"]["rows"] == store.rows - 2100 and s["eval"]["first_doc"] == 42
    s = _train_small(store, tmp_path / "n", eval_rows=0)
    assert s["eval"] == {"eval_rows": 0}
    assert all("eval" not in r for r in _log(tmp_path / "n", True))


# The defaults, stated here as the values they must have (not read back from actstore.sae.config):
# benchmarks/results/train_defaults_sweep.json, "setup"."defaults_now" (the sweep that chose them):
# batch_size 2048, warmup_frac 0.05, lr 0.0018475208614068027 for latents 3072 (= 8e-4 / sqrt(3072 / 2^14));
# its runs hold out 6505 of 130105 rows (5%); benchmarks/results/dictionary_defaults_sweep.json,
# "setup"."defaults_now": dead_tokens 1000000, and 5651 of 113030 rows held out (5%);
# docs/guide/train.md ("Held-out evaluation", "Defaults"): at most 16384 held-out rows, decay
# over the last 20% of the steps.
def test_the_training_defaults_are_the_swept_ones():
    cfg = TrainConfig(store="s", hook="h", arch="topk", latents=3072, out="o", tokens=8)
    assert (cfg.batch_size, cfg.warmup_frac, cfg.decay_frac, cfg.dead_tokens) == (2048, 0.05, 0.2, 1_000_000)
    assert cfg.lr is None and trainer.default_lr(3072) == pytest.approx(0.0018475208614068027, rel=1e-12)
    assert trainer.default_lr(2**14) == pytest.approx(8e-4, rel=1e-12)
    for rows, held in ((130105, 6505), (113030, 5651), (400_000, 16384)):  # the two sweeps' stores; the cap
        fake = type("S", (), {"rows": rows})()
        assert trainer.split(cfg, fake) == (
            {"rows": (0, rows - held)},
            {"rows": (rows - held, rows)},
            {"eval_rows": held},
        )


def test_default_held_out_share_and_warmup_fraction(store, tmp_path):
    s = _train_small(store, tmp_path / "o")
    assert store.rows == 2238 and s["eval"]["rows"] == 111  # 5% of the rows, rounded down
    cfg = TrainConfig(store="s", hook="h", arch="topk", latents=8, out="o", tokens=8)
    total = 400
    w = trainer.warmup_steps(cfg, total)
    assert w == 20  # 5% of 400 steps
    assert s["steps"] == 20 and s["warmup_steps"] == 1  # 5% of 20 steps
    lrs = [trainer._lr(cfg, 1.0, step, total) for step in range(total)]
    assert lrs[w - 1] == 1.0 and all(a < b for a, b in zip(lrs[: w - 1], lrs[1:w]))  # linear ramp, then flat
    # a linear decay to 0 over the last 20% of the steps: 80 of 400, from step 320
    assert lrs[320] == 1.0 and lrs[321] == pytest.approx(79 / 80) and lrs[-1] == pytest.approx(1 / 80)
    assert trainer.warmup_steps(dataclasses.replace(cfg, warmup_steps=7), total) == 7  # steps win when given


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"eval_rows": 10**6}, "sets aside every row"),
        ({"eval_docs": 45}, "sets aside every document"),
        ({"eval_rows": 5, "eval_docs": 2}, "not both"),
        ({"warmup_frac": 1.0}, "warmup_frac"),
        ({"eval_rows": -1}, "eval_rows"),
    ],
)
def test_bad_held_out_or_warmup_settings_are_one_line(store, tmp_path, kw, msg):
    with pytest.raises(SAEError) as e:
        _train_small(store, tmp_path / "o", **kw)
    assert msg in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("arch", ["jumprelu", "gated"])
def test_threshold_archs_start_near_their_target_l0_and_log_dense_rows(store, tmp_path, arch):
    kw = dict(arch=arch, k=None, tokens=32 * 5, log_every=1, lr=1e-9, sae={"l1_coef": 0.01} if arch == "gated" else {})
    _train_small(store, tmp_path / "q", init_l0=4, **kw)
    _train_small(store, tmp_path / "z", init_l0=0, **kw)  # the configured init: about half fire
    q, z = _log(tmp_path / "q"), _log(tmp_path / "z")
    assert q[0]["l0"] < 3 * 4 and z[0]["l0"] > 16, (q[0]["l0"], z[0]["l0"])  # of 64 latents
    assert all(0 <= r["dense_rows_frac"] <= 1 for r in q + z)
    assert z[0]["dense_rows_frac"] == 1.0  # cand_k 64 >= m = 64: every row dense, by choice


TC = ["--source", "narrow", "--target", "wide"]


def _held_out_fvu(store, sae, rows, source, target):
    """FVU of the saved SAE (normalization folded in) on the last ``rows`` raw rows, by brute force."""
    n = store.rows
    x = store.read(source, slice(n - rows, n)).double()
    y = store.read(target, slice(n - rows, n)).double()
    with torch.no_grad():
        y_hat = sae.eval().double().output(x)
    return float((y_hat - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


@pytest.mark.parametrize(
    "flags, source, target",
    [
        (["--arch", "transcoder", *TC, "--activation", "batchtopk"], "narrow", "wide"),
        (["--arch", "skip_transcoder", *TC, "--activation", "jumprelu"], "narrow", "wide"),
        (["--arch", "matryoshka_batchtopk", "--hook", "wide", "--widths", "8,32"], "wide", "wide"),
    ],
)  # fmt: skip
def test_cli_trains_each_family_and_reports_the_held_out_fvu_of_its_target(
    store, tmp_path, capsys, flags, source, target
):
    out = tmp_path / "o"
    args = ["train", "--store", str(store.path), *flags, "--latents", "64", "--tokens", str(32 * 30), "--out", str(out)]
    args += ["--batch-size", "32", "--lr", "3e-3", "--no-progress", "--json"]
    args += [] if "jumprelu" in flags else ["--k", "4"]
    assert cli(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["source"], summary["target"]) == (source, target)
    sae = load(out / "sae")
    assert sae.arch == flags[1] and sae.cfg.hook == source and sae.cfg.d_target == store._hook(target).d
    assert sae.cfg.scale == 1.0 and sae.cfg.scale_out == 1.0  # both normalizations folded
    ev = summary["eval"]
    assert 0 < ev["fvu"] < 1  # it learned something about the target
    assert _held_out_fvu(store, sae, ev["rows"], source, target) == pytest.approx(ev["fvu"], rel=1e-5)
    if sae.arch == "matryoshka_batchtopk":
        assert sae.cfg.widths == [8, 32, 64]
        levels = ev["level_fvu"]  # each prefix alone, by brute force: nested, so never better than the next
        assert levels[-1] == pytest.approx(ev["fvu"]) and levels[0] >= levels[1] >= levels[2]
        x = store.read("wide", slice(store.rows - ev["rows"], store.rows)).double()
        with torch.no_grad():
            dense = sae.double().encode(x, dense=True)
            for w, want in zip([8, 32], levels):
                x_hat = dense[:, :w] @ sae.W_dec[:w] + sae.b_dec
                assert float((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()) == pytest.approx(want, rel=1e-5)
        assert all(len(r["level_fvu"]) == 3 for r in _log(out))


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"hook": None, "arch": "transcoder", "source": "narrow"}, "needs --source and --target"),
        ({"hook": None, "arch": "transcoder", "source": "narrow", "target": "narrow"}, "for an SAE use --hook"),
        ({"arch": "transcoder", "source": "narrow", "target": "wide"}, "not --hook"),
        ({"target": "narrow"}, "needs --arch transcoder"),
        ({"activation": "jumprelu"}, "--activation is for transcoders"),
        ({"hook": None, "arch": "transcoder", "source": "narrow", "target": "nope"}, "'nope' is not in the store"),
        ({"arch": "matryoshka_batchtopk", "widths": "32,8"}, "strictly increasing"),
        ({"arch": "matryoshka_batchtopk", "widths": "8,128"}, "exceed the 64 latents"),
        ({"arch": "matryoshka_batchtopk"}, "needs --widths"),
        ({"widths": "8,32"}, "--widths is for arch matryoshka_batchtopk"),
        ({"hook": None, "arch": "transcoder", "source": "narrow", "target": "wide", "activation": "relu"}, "activa"),
    ],
)  # fmt: skip
def test_bad_sources_targets_and_widths_are_one_line(store, tmp_path, kw, msg):
    with pytest.raises(SAEError) as e:
        _train_small(store, tmp_path / "o", **kw)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_a_target_from_another_store_is_refused_in_one_line(store, tmp_path):
    other = build(tmp_path / "other", segments={"rank00000": 500})
    with pytest.raises(SAEError) as e:
        _train_small(store, tmp_path / "o", hook=None, arch="transcoder", source="narrow", target="wide",
                     target_store=str(other.path))  # fmt: skip
    msg = str(e.value)
    assert "different stores" in msg and f"(500 rows there, {store.rows} here)" in msg and "\n" not in msg
    # The same store named twice is fine.
    _train_small(store, tmp_path / "p", hook=None, arch="transcoder", source="narrow", target="wide",
                 target_store=str(store.path), tokens=32 * 2)  # fmt: skip


def test_a_transcoder_starts_with_centred_pre_activations_and_its_target_mean(store):
    """No ``b_dec`` is subtracted from a transcoder's input, so its encoder bias takes the
    centring (sparsify's init): over the store's rows, in the training scale, every latent's
    pre-activation has mean 0, and the decoder bias is the target's mean."""
    cfg = TrainConfig(store=store.path, arch="transcoder", source="narrow", target="wide", latents=64, k=4,
                      tokens=64, out="unused")  # fmt: skip
    loader = trainer.ActivationLoader(store, ["narrow", "wide"], 256, normalize="mean_norm")
    sae = trainer._new_sae(cfg, store, loader)
    x = store.read("narrow", slice(0, store.rows)).double() * sae.cfg.scale
    pre = x @ sae.W_enc.double().t() + sae.b_enc.double()
    assert pre.mean(0).abs().max() < 1e-4 * pre.std(0).min()
    y = store.read("wide", slice(0, store.rows)).double() * sae.cfg.scale_out
    torch.testing.assert_close(sae.b_dec.double(), y.mean(0), rtol=1e-4, atol=1e-5)
    loader.close()
