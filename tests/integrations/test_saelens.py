"""SAELens' own SAETrainer fed by actstore (real sae-lens): the loss falls, resume is exact,
the mean_norm factor folds into the SAE, a width mismatch and a transcoder are one line, and
a Matryoshka SAE trained there reads back into actstore with its widths."""

import copy
import signal
import subprocess
import sys

import pytest
import torch

import actstore
from actstore.errors import IntegrationError
from helpers import zygote
from helpers.integration_store import sparse_store
from helpers.paths import HELPERS
from helpers.peers import need

sae_lens = need("sae_lens")
from sae_lens.config import SAETrainerConfig  # noqa: E402

from actstore.integrations.saelens import (  # noqa: E402
    SAELensDataProvider,
    finish,
    latest_checkpoint,
    make_saelens_trainer,
    train_saelens,
)

HOOK = "blocks.1.hook_resid_post"
D, BATCH, STEPS = 32, 256, 48


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("sl") / "s"
    return path, sparse_store(path, HOOK, d=D)


def _cfgs(ckpt=None, n_checkpoints=0, steps=STEPS):
    sae_cfg = sae_lens.TopKTrainingSAEConfig(d_in=D, d_sae=64, k=4)
    tr = SAETrainerConfig(
        total_training_samples=steps * BATCH,
        train_batch_size_samples=BATCH,
        lr=3e-3,
        device="cpu",
        checkpoint_path=None if ckpt is None else str(ckpt),
        n_checkpoints=n_checkpoints,
    )
    return sae_cfg, tr


def _fvu(sae, x):
    with torch.no_grad():
        err = sae(x) - x
    return float((err**2).sum() / ((x - x.mean(0)) ** 2).sum())


ARCHS = {
    "topk": lambda: sae_lens.TopKTrainingSAEConfig(d_in=D, d_sae=64, k=4),
    "batchtopk": lambda: sae_lens.BatchTopKTrainingSAEConfig(d_in=D, d_sae=64, k=4),
    "jumprelu": lambda: sae_lens.JumpReLUTrainingSAEConfig(d_in=D, d_sae=64),
    "standard": lambda: sae_lens.StandardTrainingSAEConfig(d_in=D, d_sae=64, l1_coefficient=1.0),
    "gated": lambda: sae_lens.GatedTrainingSAEConfig(d_in=D, d_sae=64, l1_coefficient=1.0),
    "matryoshka_batchtopk": lambda: sae_lens.MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=D, d_sae=64, k=4, matryoshka_widths=[16, 64]
    ),
}


@pytest.mark.parametrize("arch", [a if a == "topk" else pytest.param(a, marks=pytest.mark.slow) for a in ARCHS])
def test_saelens_training_steps_fed_by_actstore_reduce_the_loss(store, arch):
    path, x = store
    held = x[-1024:].float()
    torch.manual_seed(0)
    _, tr = _cfgs()
    trainer, provider = make_saelens_trainer(path, HOOK, ARCHS[arch](), tr, threads=1)
    before = _fvu(trainer.sae, held * provider.scaling_factor)
    losses = []
    step = trainer.step

    def recording(batch):
        assert batch.shape == (BATCH, D) and batch.dtype == torch.float32
        out = step(batch)
        losses.append(float(out.losses["mse_loss"].detach()))
        return out

    trainer.step = recording
    try:
        sae = trainer.fit()
    finally:
        provider.close()
    assert len(losses) == STEPS
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    after = _fvu(sae, held * provider.scaling_factor)
    assert after < 0.5 * before, (before, after)


def test_batches_are_the_loaders_normalized_rows(store):
    path, x = store
    p = SAELensDataProvider(path, HOOK, BATCH, seed=5, threads=1)
    s = actstore.open(path)
    want = D**0.5 / s.stats(HOOK)["mean_norm"]
    assert p.scaling_factor == pytest.approx(want, rel=1e-6)
    ref = actstore.ActivationLoader(path, HOOK, BATCH, seed=5, epochs=1, drop_last=True, normalize="mean_norm")
    for a, b in zip([next(p) for _ in range(3)], ref):
        assert torch.equal(a, b)
    p.close()
    ref.close()


def test_folded_sae_takes_raw_activations(store, tmp_path):
    path, x = store
    torch.manual_seed(2)
    trainer, provider = make_saelens_trainer(path, HOOK, *_cfgs(steps=8), threads=1)
    try:
        sae = trainer.fit()
    finally:
        provider.close()
    f = provider.scaling_factor
    assert not 0.5 < f < 2
    unfolded = copy.deepcopy(sae)
    finish(sae, f, tmp_path / "out")
    loaded = sae_lens.SAE.load_from_disk(str(tmp_path / "out"))
    raw = x[:64].float()
    with torch.no_grad():
        want = unfolded(raw * f) / f  # what the SAE trained on normalized rows gives, in raw units
        torch.testing.assert_close(loaded(raw), want, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(unfolded(raw), want, rtol=1e-2, atol=1e-2)  # the fold changed something


def test_width_mismatch_is_one_line(store):
    path, _ = store
    sae_cfg, tr = _cfgs()
    sae_cfg = sae_lens.TopKTrainingSAEConfig(d_in=D + 1, d_sae=64, k=4)
    with pytest.raises(IntegrationError) as e:
        train_saelens(path, HOOK, sae_cfg, tr)
    msg = str(e.value)
    assert "\n" not in msg and f"width {D}" in msg and f"d_in={D + 1}" in msg


def test_a_matryoshka_sae_trained_by_saelens_reads_back_with_its_widths(store, tmp_path):
    from actstore.sae import from_saelens

    path, x = store
    torch.manual_seed(3)
    _, tr = _cfgs(steps=8)
    train_saelens(path, HOOK, ARCHS["matryoshka_batchtopk"](), tr, threads=1, out=tmp_path / "out")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "out"))  # SAELens' JumpReLU form
    ours = from_saelens(tmp_path / "out")
    assert ours.arch == "matryoshka_batchtopk" and ours.cfg.widths == [16, 64] and ours.cfg.k == 4
    raw = x[-256:].float()
    with torch.no_grad():
        want = theirs.encode(raw)
        torch.testing.assert_close(ours.encode(raw, dense=True), want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.output(raw), theirs(raw), atol=1e-4, rtol=1e-4)
    assert (want > 0).sum() > 0


def test_transcoders_are_refused_in_one_line(store):
    path, _ = store
    sae_cfg, tr = _cfgs()
    tc = sae_lens.TranscoderConfig(d_in=D, d_sae=64, d_out=D, apply_b_dec_to_input=False)
    for call in (
        lambda: train_saelens(path, [HOOK, HOOK], sae_cfg, tr),
        lambda: SAELensDataProvider(path, (HOOK, HOOK), BATCH),
        lambda: train_saelens(path, HOOK, tc, tr),
    ):
        with pytest.raises(IntegrationError, match="SAELens cannot train a transcoder .*v6.5.0.*actstore train") as e:
            call()
        assert "\n" not in str(e.value)


def test_double_normalization_is_refused(store):
    path, _ = store
    _, tr = _cfgs()
    cfg = sae_lens.TopKTrainingSAEConfig(d_in=D, d_sae=64, k=4, normalize_activations="expected_average_only_in")
    with pytest.raises(IntegrationError, match="normalize_activations='none'"):
        train_saelens(path, HOOK, cfg, tr)


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_uninterrupted_weights(store, tmp_path):
    """A real training process SIGKILLed after 30 of 48 batches (checkpoints after steps 13, 25, 37);
    rerunning the same command resumes from the newest checkpoint and ends on the weights of
    a run that was never killed."""
    from safetensors.torch import load_file

    path, _ = store
    run = [sys.executable, str(HELPERS / "saelens_run.py"), str(path), HOOK]
    done = zygote.run([*run, str(tmp_path / "a"), str(tmp_path / "a.st")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    p = zygote.Popen([*run, str(tmp_path / "b"), str(tmp_path / "b.st"), "30"], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if line.strip() != "stopped 30":
        p.kill()
        pytest.fail(f"the run did not stop at batch 30 (printed {line!r})")
    p.send_signal(signal.SIGKILL)
    assert p.wait(timeout=60) == -signal.SIGKILL
    assert latest_checkpoint(tmp_path / "b").name == str(24 * BATCH + BATCH)  # saved after the 25th step
    again = zygote.run([*run, str(tmp_path / "b"), str(tmp_path / "b.st")], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = load_file(str(tmp_path / "a.st")), load_file(str(tmp_path / "b.st"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("split", ["rows", "docs"])
def test_train_saelens_trains_on_only_the_selected_rows(tmp_path, monkeypatch, split):
    # A held-out split in one store: every row SAELens is fed comes from the selection.
    from actstore.integrations import saelens as sl
    from helpers.integration_store import HOOKS, rows_store

    ref = rows_store(tmp_path / "s")["h.a"]  # fp32, doc = row // 50, unique random rows
    sel, allowed = ({"rows": (100, 900)}, range(100, 900)) if split == "rows" else ({"docs": (4, 12)}, range(200, 600))
    fed = []
    real = sl.SAELensDataProvider.__next__
    monkeypatch.setattr(sl.SAELensDataProvider, "__next__", lambda self: fed.append(real(self)) or fed[-1])
    cfg = sae_lens.TopKTrainingSAEConfig(d_in=HOOKS["h.a"], d_sae=32, k=4)
    tr = SAETrainerConfig(total_training_samples=12 * 64, train_batch_size_samples=64, lr=1e-3, device="cpu")
    train_saelens(tmp_path / "s", "h.a", cfg, tr, normalize=None, threads=1, **sel)
    got = torch.cat(fed)
    assert got.shape[0] >= 12 * 64
    idx = ((got[:, None, :] == ref[None, :, :]).all(-1)).int().argmax(1)  # each fed row's store row
    assert torch.equal(ref[idx], got)  # every fed row is a store row, unchanged (normalize=None)
    assert set(idx.tolist()) <= set(allowed) and len(set(idx.tolist())) > 300  # and from the selection only
    with pytest.raises(actstore.LoaderError, match=r"rows=\(9, 3\) is empty"):
        train_saelens(tmp_path / "s", "h.a", cfg, tr, normalize=None, threads=1, rows=(9, 3))
