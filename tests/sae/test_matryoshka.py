"""Matryoshka BatchTopK: the loss equals dictionary_learning's (the real package) given the
same weights and batch; SAELens' scale is G^2 times it; widths are checked in one line."""

import pytest
import torch

from actstore.errors import SAEError
from actstore.sae.config import SAEConfig
from actstore.sae.matryoshka import split_levels
from actstore.sae.registry import build
from helpers.peers import need

D, M, K, WIDTHS = 24, 96, 6, [12, 40, 96]


def _pair(seed=0, quiet=None):
    """An actstore Matryoshka SAE and dictionary_learning's trainer holding the same weights."""
    mt = need("dictionary_learning.trainers.matryoshka_batch_top_k")
    g = torch.Generator().manual_seed(seed)
    sae = build(SAEConfig("matryoshka_batchtopk", D, M, k=K, widths=WIDTHS[:-1]), seed=seed)
    with torch.no_grad():  # move every parameter off its init so a swapped one would show
        sae.b_enc.copy_(0.1 * torch.randn(M, generator=g))
        sae.b_dec.copy_(0.2 * torch.randn(D, generator=g))
        sae.W_enc.add_(0.05 * torch.randn(M, D, generator=g))
        if quiet is not None:  # small positive activations: rarely in the batch's top-k, so dead ones stay dead
            sae.W_enc[quiet] *= 0.01
            sae.b_enc[quiet] = 0.05
    sizes = [w - lo for lo, w in zip([0, *WIDTHS[:-1]], WIDTHS)]
    tr = mt.MatryoshkaBatchTopKTrainer(
        steps=10, warmup_steps=1, activation_dim=D, dict_size=M, k=K, layer=0, lm_name="x",
        group_fractions=[s / M for s in sizes], device="cpu", seed=seed,
    )  # fmt: skip
    assert tr.group_sizes == sizes
    with torch.no_grad():
        tr.ae.W_enc.copy_(sae.W_enc.t())
        tr.ae.W_dec.copy_(sae.W_dec)
        tr.ae.b_enc.copy_(sae.b_enc)
        tr.ae.b_dec.copy_(sae.b_dec)
    x = torch.randn(128, D, generator=g) * 2 + 0.5
    return sae, tr, x


@pytest.mark.parametrize("dead", [0, 5, 80])
def test_loss_equals_dictionary_learning(dead):
    mask = torch.zeros(M, dtype=torch.bool)
    mask[M - dead :] = True
    sae, tr, x = _pair(quiet=mask)
    tr.num_tokens_since_fired[mask] = tr.dead_feature_threshold  # dead there, alive elsewhere
    # dictionary_learning counts this batch's firing before its aux loss: a latent that fires
    # here is not dead for it. The same dead set is given to ours.
    fired = tr.ae.encode(x, use_threshold=False).sum(0) > 0
    theirs = tr.loss(x, step=0)
    ours = sae.loss(x, dead_mask=mask & ~fired)
    assert torch.allclose(ours["loss"], theirs, rtol=2e-6, atol=1e-6), (
        float(ours["loss"].detach()),
        float(theirs.detach()),
    )
    if dead:  # the aux term is in it (a wrong aux would not cancel)
        assert float(ours["aux_fvu"].detach()) > 0 and tr.dead_features == int((mask & ~fired).sum()) > 0


def test_saelens_scale_is_levels_squared():
    sae, _, x = _pair(1)
    mean = sae.loss(x)["loss"]
    sae.cfg.matryoshka_loss = "sum"
    total = sae.loss(x)["loss"]
    assert torch.allclose(total, mean * len(WIDTHS) ** 2, rtol=1e-6)


def test_levels_are_prefix_decodes():
    """Each level's output is the decode of the latents below its width, by brute force."""
    sae, _, x = _pair(2)
    lat = sae.encode(x)
    dense = lat.dense()
    for w, out in zip(WIDTHS, sae.level_outputs(lat)):
        ref = dense[:, :w] @ sae.W_dec[:w].float() + sae.b_dec.float()
        assert torch.allclose(out, ref, atol=1e-5)
    parts = split_levels(lat, WIDTHS)
    assert sum(p.cols.numel() for p in parts) == lat.cols.numel()


@pytest.mark.parametrize(
    "widths, msg",
    [([40, 12], "strictly increasing"), ([12, 12], "strictly increasing"), ([12, 200], "exceed"), ([0, 8], "positive"),
     (None, "needs --widths")],
)  # fmt: skip
def test_bad_widths_one_line(widths, msg):
    with pytest.raises(SAEError, match=msg) as e:
        SAEConfig("matryoshka_batchtopk", D, M, k=K, widths=widths)
    assert "\n" not in str(e.value)


# -- SAELens ---------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["mean", "sum"])
def test_saelens_export_keeps_the_widths_and_reads_back_as_matryoshka(loss, tmp_path):
    """SAELens stores Matryoshka SAEs as JumpReLU: its loader takes our export (the widths in
    its training_architecture_details), and from_saelens gives back the Matryoshka SAE."""
    sae_lens = need("sae_lens")
    from actstore.sae import from_saelens, to_saelens

    sae, _, x = _pair(3)
    sae.cfg.matryoshka_loss = loss
    sae.train()
    sae.loss(x)  # sets the inference threshold
    sae.eval()
    to_saelens(sae, tmp_path / "sl")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sl"))
    assert type(theirs).__name__ == "JumpReLUSAE"
    assert theirs.cfg.metadata.training_architecture == "matryoshka_batchtopk"
    assert theirs.cfg.metadata.training_architecture_details["matryoshka_widths"] == WIDTHS
    back = from_saelens(tmp_path / "sl")
    assert type(back) is type(sae) and back.cfg.widths == WIDTHS and back.cfg.matryoshka_loss == loss
    assert back.cfg.k == K and back.cfg.threshold == pytest.approx(float(sae.threshold))
    with torch.no_grad():
        want = sae.encode(x, dense=True)
        torch.testing.assert_close(theirs.encode(x), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(back.encode(x, dense=True), want)
        torch.testing.assert_close(back.output(x), theirs(x), atol=1e-5, rtol=1e-5)
    assert (want > 0).sum() > 0


def test_saelens_own_matryoshka_saves_import_with_their_widths(tmp_path):
    """SAELens' MatryoshkaBatchTopKTrainingSAE writes architecture ``matryoshka_batchtopk``
    (``save_model``, with its default decoder-norm rescaling) and the JumpReLU form
    (``save_inference_model``): both import as a Matryoshka SAE with its widths and its loss
    scale, with the latents of SAELens' own inference model."""
    sae_lens = need("sae_lens")
    from actstore.sae import from_saelens

    cfg = sae_lens.MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=M, k=K, matryoshka_widths=WIDTHS)
    theirs = sae_lens.MatryoshkaBatchTopKTrainingSAE(cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        theirs.topk_threshold.fill_(0.5)
    theirs.save_model(tmp_path / "train")
    assert '"architecture": "matryoshka_batchtopk"' in (tmp_path / "train" / "cfg.json").read_text()
    theirs.save_inference_model(tmp_path / "inference")
    inference = sae_lens.SAE.load_from_disk(str(tmp_path / "inference"))
    x = torch.randn(64, D, generator=g) * 2
    with torch.no_grad():
        want, want_out = inference.encode(x), inference(x)
    assert (want > 0).sum() > 0
    for folder in ("train", "inference"):
        ours = from_saelens(tmp_path / folder)
        assert ours.arch == "matryoshka_batchtopk" and ours.cfg.widths == WIDTHS, folder
        assert ours.cfg.matryoshka_loss == "sum" and ours.cfg.threshold == pytest.approx(0.5), folder
        torch.testing.assert_close(ours.encode(x, dense=True), want, atol=1e-4, rtol=1e-4, msg=folder)
        torch.testing.assert_close(ours.output(x), want_out, atol=1e-4, rtol=1e-4, msg=folder)


@pytest.mark.parametrize("dead", [1, 2])
def test_one_dead_latent_trains(dead):
    """The AuxK slice to min(k_aux, n_dead) columns is a strided view: the backward takes it."""
    sae = build(SAEConfig("matryoshka_batchtopk", D, M, k=K, widths=[12, 40]), seed=0).train()
    mask = torch.zeros(M, dtype=torch.bool)
    mask[M - dead :] = True
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(5))
    sae.loss(x, dead_mask=mask)["loss"].backward()
    assert sae.W_enc.grad is not None and torch.isfinite(sae.W_enc.grad).all()
