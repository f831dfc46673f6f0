"""The SAE modules (one interface over five archs), the normalization fold, and the file
formats: actstore's own, and round trips through the real SAELens and sparsify packages
(the same input gives the same latents)."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from actstore.errors import ActstoreError, SAEError, SAEFileError
from actstore.reference.jumprelu import jumprelu_reference, step_reference
from actstore.sae import (
    ARCHS,
    Latents,
    SAEConfig,
    build,
    from_saelens,
    from_sparsify,
    load,
    save,
    to_saelens,
    to_sparsify,
)
from actstore.sae.config import CLT_ARCHS, TRANSCODER_ARCHS
from helpers.peers import need

D, M = 24, 96
# The one-hook archs that reconstruct their own input (transcoders: tests/sae/test_transcoder.py;
# crosscoders: test_crosscoder.py; CLTs: test_clt.py).
SAE_ARCHS = [a for a in ARCHS if a not in (*TRANSCODER_ARCHS, *CLT_ARCHS, "crosscoder")]


def _sae(arch, seed=0, **kw):
    if arch == "matryoshka_batchtopk":
        kw.setdefault("widths", [12, 40])
    cfg = SAEConfig(arch, D, M, k=6 if "topk" in arch else None, **kw)
    sae = build(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # off the tied init, so every parameter matters in the checks
        for p in sae.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        if arch == "jumprelu":
            sae.log_threshold.fill_(-3.0)
    if arch in ("batchtopk", "matryoshka_batchtopk"):
        sae.train()
        sae.loss(torch.randn(64, D, generator=g))  # sets the inference threshold
    return sae.eval()


def _x(n=40, seed=9):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize("arch", SAE_ARCHS)
def test_every_arch_shares_one_interface_and_every_parameter_learns(arch):
    sae = _sae(arch).train()
    x = _x()
    dead = torch.zeros(M, dtype=torch.bool)
    dead[::3] = True
    out = sae.loss(x, dead_mask=dead)
    out["loss"].backward()
    no_grad = [n for n, p in sae.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"{arch}: no gradient for {no_grad}"
    assert 0 < float(out["fvu"].detach()) and isinstance(out["latents"], Latents)
    sae.eval()
    lat = sae.encode(x)
    dense = sae.encode(x, dense=True)
    assert dense.shape == (40, M)
    torch.testing.assert_close(lat.dense(), dense)
    torch.testing.assert_close(sae(x), dense @ sae.W_dec.float() + sae.b_dec.float(), atol=1e-4, rtol=1e-4)
    if arch == "topk":
        assert lat.l0() == 6 and ((dense > 0).sum(1) <= 6).all()


def _reference_code(sae, x, training=False, tol=1e-5):
    """The arch's code of ``x`` from its weights in plain float64 torch, written here
    independently of actstore's ops: ``(f [n, m], tied [n, m] bool)``. ``tied`` marks the
    latents whose membership float rounding may flip: those within ``tol`` of a fixed
    threshold, or of the k-th value when another latent is also that close to it (a lone
    k-th value is no tie: it must be kept)."""
    p = {k: v.detach().double() for k, v in sae.state_dict().items()}
    xc = x.double() - p["b_dec"]
    if sae.arch == "gated":
        G = xc @ p["W_enc"].T
        gate = G + p["b_gate"]
        return (gate > 0) * torch.relu(p["r_mag"].exp() * G + p["b_mag"]), gate.abs() <= tol
    pre = xc @ p["W_enc"].T + p["b_enc"]
    if sae.arch == "relu":
        return torch.relu(pre), pre.abs() <= tol
    if sae.arch == "jumprelu":
        theta = p["log_threshold"].exp()
        return pre * (pre > theta), (pre - theta).abs() <= tol
    k = sae.cfg.k
    if sae.arch == "topk":
        kth = pre.sort(1, descending=True).values[:, k - 1 : k]
        near = (pre - kth).abs() <= tol
        return torch.relu(pre) * (pre >= kth), near & (near.sum(1, keepdim=True) > 1)
    if training:  # batchtopk: the batch's n*k largest positive pre-activations
        t = torch.relu(pre).flatten().sort(descending=True).values[pre.shape[0] * k - 1]
        near = (pre - t).abs() <= tol
        return pre * ((pre >= t) & (pre > 0)), near & (near.sum() > 1)
    t = float(sae.threshold)  # batchtopk at inference: one fixed threshold
    return pre * ((pre > t) & (pre > 0)), (pre - t).abs() <= tol


def _assert_same_code(got, want, tied, tol=1e-5):
    """Per row: the same active latents (any that differ must be tied) with the same values."""
    got, want = got.detach().double(), want.double()
    assert got.shape == want.shape
    for r in range(got.shape[0]):
        g, w = set(got[r].nonzero().flatten().tolist()), set(want[r].nonzero().flatten().tolist())
        untied = sorted(j for j in g ^ w if not tied[r, j])
        assert not untied, f"row {r}: latents {untied} active in only one code"
        both = sorted(g & w)
        torch.testing.assert_close(got[r, both], want[r, both], atol=tol, rtol=tol)
    assert (want > 0).sum() > 0


ENCODE_CASES = ["topk", "batchtopk-train", "batchtopk-eval", "jumprelu", "gated", "relu"]


@pytest.mark.parametrize("backend", ["default", pytest.param("triton", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("case", ENCODE_CASES)
def test_every_arch_encodes_like_a_dense_reference_from_its_weights(case, backend, monkeypatch):
    """Through the class, on its default ops (the references on the CPU) and on its Triton
    path (``ACTSTORE_BACKEND=triton``: the interpreter without a GPU), which for batchtopk-eval
    is the fixed-threshold candidate path."""
    if backend == "triton":
        monkeypatch.setenv("ACTSTORE_BACKEND", "triton")
    arch, training = case.split("-")[0], case.endswith("-train")
    sae = _sae(arch).train(training)
    x = _x()
    want, tied = _reference_code(sae, x, training)
    threshold = sae.threshold.clone() if arch == "batchtopk" else None
    _assert_same_code(sae.encode(x).dense(), want, tied)
    if threshold is not None:  # training moved the running threshold: encode again from where it was
        sae.threshold.copy_(threshold)
    _assert_same_code(sae.encode(x, dense=True), want, tied)


def test_topk_training_step_uses_auxk_only_with_dead_latents():
    sae = _sae("topk").train()
    x = _x()
    none = sae.loss(x)
    dead = torch.zeros(M, dtype=torch.bool)
    dead[:50] = True
    some = sae.loss(x, dead_mask=dead)
    assert float(none["aux_fvu"]) == 0 and float(some["aux_fvu"]) > 0
    torch.testing.assert_close(some["fvu"], none["fvu"])


def test_jumprelu_straight_through_gradients_follow_the_rectangle_kernel():
    pre = torch.tensor([[0.5, 1.0004, 2.0], [0.9996, 0.2, 3.0]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    eps = 0.001
    f = jumprelu_reference(pre, theta, eps)
    assert f.tolist() == [[0.0, pytest.approx(1.0004), 2.0], [0.0, 0.0, 3.0]]
    f.sum().backward()
    # Inside the band |pre - theta| < eps/2: d/dtheta = -theta/eps per entry.
    assert theta.grad.tolist() == [pytest.approx(-1000.0), pytest.approx(-1000.0), 0.0]
    assert pre.grad.tolist() == [[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
    theta.grad = None
    step_reference(pre, theta, eps).sum().backward()
    assert theta.grad.tolist() == [pytest.approx(-1000.0), pytest.approx(-1000.0), 0.0]


@pytest.mark.parametrize("arch", SAE_ARCHS)
def test_folding_the_normalization_gives_the_same_latents_on_raw_inputs(arch):
    sae = _sae(arch)
    sae.cfg.scale = 0.37
    x = _x()
    want = sae.encode(x * 0.37, dense=True)
    recon = sae(x * 0.37) / 0.37
    sae.fold_scale()
    assert sae.cfg.scale == 1.0
    torch.testing.assert_close(sae.encode(x, dense=True), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sae(x), recon, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", SAE_ARCHS)
def test_save_and_load_round_trip_exactly(arch, tmp_path):
    sae = _sae(arch)
    save(sae, tmp_path / "s")
    back = load(tmp_path / "s")
    assert type(back) is type(sae) and back.cfg == sae.cfg
    for (n, a), (_, b) in zip(sae.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n
    assert not list(tmp_path.glob("s/*.tmp"))


def test_damaged_or_mismatched_files_get_one_line_errors(tmp_path):
    sae = _sae("topk")
    save(sae, tmp_path / "s")
    (tmp_path / "s" / "sae.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="damaged") as e:
        load(tmp_path / "s")
    assert "\n" not in str(e.value) and isinstance(e.value, SAEError) and isinstance(e.value, ActstoreError)
    save(sae, tmp_path / "t")
    doc = json.loads((tmp_path / "t" / "config.json").read_text())
    doc["m"] = 128
    (tmp_path / "t" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="shape"):
        load(tmp_path / "t")
    doc["surprise"] = 1
    (tmp_path / "t" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="unknown keys"):
        load(tmp_path / "t")
    with pytest.raises(FileNotFoundError, match="not found") as e:
        load(tmp_path / "nothing")
    assert isinstance(e.value, SAEFileError)
    with pytest.raises(ValueError, match="unknown SAE arch"):
        SAEConfig("sparse", 4, 8)


# -- SAELens -------------------------------------------------------------------------------

SAELENS = {
    "topk": ("TopKSAE", {"k": 6}),
    "relu": ("StandardSAE", {}),
    "jumprelu": ("JumpReLUSAE", {}),
    "gated": ("GatedSAE", {}),
}


def _saelens_sae(arch, seed):
    saes = need("sae_lens.saes")
    name, kw = SAELENS[arch]
    sae = getattr(saes, name)(getattr(saes, name + "Config")(d_in=D, d_sae=M, **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in sae.named_parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * (0.3 if n != "threshold" else 0.0)
                + (0.4 if n == "threshold" else 0)
            )
    return sae


@pytest.mark.parametrize("arch", list(SAELENS))
def test_saelens_models_import_with_the_same_latents(arch, tmp_path):
    theirs = _saelens_sae(arch, seed=3)
    theirs.save_model(tmp_path / "sl")
    ours = from_saelens(tmp_path / "sl")
    assert ours.arch == arch
    x = _x()
    with torch.no_grad():
        want = theirs.encode(x)
        got = ours.encode(x, dense=True)
    assert (want > 0).sum() > 0
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.decode(ours.encode(x)), theirs.decode(want), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", SAE_ARCHS)
def test_actstore_saes_export_to_saelens_with_the_same_latents(arch, tmp_path):
    sae_lens = need("sae_lens")
    ours = _sae(arch, hook="blocks.2.hook_resid_post")
    ours.cfg.scale = 2.0  # export folds it: SAELens then takes raw activations
    x = _x() / 2.0  # raw rows that training scaled to _x()
    want = ours.encode(x * 2.0, dense=True)
    to_saelens(ours, tmp_path / "sl")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sl"))
    assert theirs.cfg.metadata.hook_name == "blocks.2.hook_resid_post"  # SAELens kept our metadata
    with torch.no_grad():
        got = theirs.encode(x)
    assert (want > 0).sum() > 0
    torch.testing.assert_close(got, want.detach(), atol=1e-4, rtol=1e-4)
    # and back: the same class (BatchTopK and Matryoshka too, by SAELens' training_architecture
    # record beside their JumpReLU form), the same code
    back = from_saelens(tmp_path / "sl")
    assert type(back) is type(ours) and back.cfg.hook == "blocks.2.hook_resid_post" and not back.training
    torch.testing.assert_close(back.encode(x, dense=True), want.detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_saelens_training_saves_import_with_their_decoder_norm_rescaling_folded(arch, tmp_path):
    """SAELens' TopK-family training configs rescale the pre-activations by the decoder norms
    by default (``rescale_acts_by_decoder_norm``): the import folds that into the weights. Its
    inference save of a BatchTopK SAE (the JumpReLU form, recording the training arch) reads
    back as BatchTopK too."""
    sae_lens = need("sae_lens")
    name = {"topk": "TopKTrainingSAE", "batchtopk": "BatchTopKTrainingSAE"}[arch]
    theirs = getattr(sae_lens, name)(getattr(sae_lens, name + "Config")(d_in=D, d_sae=M, k=6))
    assert theirs.cfg.rescale_acts_by_decoder_norm
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():  # decoder rows far from unit norm, so the rescaling matters
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if arch == "batchtopk":
            theirs.topk_threshold.fill_(0.5)
    theirs.save_model(tmp_path / "train")
    theirs.save_inference_model(tmp_path / "inference")
    inference = sae_lens.SAE.load_from_disk(str(tmp_path / "inference"))
    x = _x()
    with torch.no_grad():
        want, want_out = inference.encode(x), inference(x)
    assert (want > 0).sum() > 0
    for folder in ("train", "inference"):
        ours = from_saelens(tmp_path / folder)
        assert ours.arch == arch and ours.cfg.k == 6, folder
        torch.testing.assert_close(ours.encode(x, dense=True), want, atol=1e-4, rtol=1e-4, msg=folder)
        torch.testing.assert_close(ours(x), want_out, atol=1e-4, rtol=1e-4, msg=folder)


# -- sparsify ------------------------------------------------------------------------------


def test_sparsify_checkpoints_round_trip_with_the_same_latents(tmp_path):
    sparsify = need("sparsify")
    coder = sparsify.SparseCoder(D, sparsify.SparseCoderConfig(num_latents=M, k=6))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in coder.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    coder.save_to_disk(tmp_path / "sp")
    ours = from_sparsify(tmp_path / "sp")
    x = _x()
    with torch.no_grad():
        enc = coder.encode(x)
    v, i = enc.top_acts, enc.top_indices
    lat = ours.encode(x)
    got_v = lat.vals.reshape(40, 6)
    torch.testing.assert_close(got_v, v.sort(1, descending=True).values, atol=1e-4, rtol=1e-4)
    assert [set(r.tolist()) for r in lat.cols.reshape(40, 6)] == [set(r.tolist()) for r in i]
    to_sparsify(ours, tmp_path / "back")
    again = sparsify.SparseCoder.load_from_disk(tmp_path / "back")
    with torch.no_grad():
        torch.testing.assert_close(again.encode(x).top_acts.sort(1).values, v.sort(1).values)


@pytest.mark.parametrize("arch", ["jumprelu", "gated"])
def test_thresholds_start_from_a_data_quantile_near_the_target_l0(arch):
    m = 512
    sae = build(SAEConfig(arch, D, m), seed=0)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4096, D, generator=g) * 3 + 1
    sae.init_b_dec(x.mean(0))
    before = sae.encode(torch.randn(2048, D, generator=g) * 3 + 1).l0()
    sae.init_from_batch(x, l0=16)
    after = sae.encode(torch.randn(2048, D, generator=g) * 3 + 1).l0()  # fresh rows, same law
    assert before > 100 and 12 < after < 20, (before, after)
    with pytest.raises(SAEError, match="init l0 must be in"):
        sae.init_from_batch(x, l0=0)


def test_cand_k_follows_the_batches_and_dense_rows_are_counted():
    sae = build(SAEConfig("jumprelu", D, 4096), seed=0)  # theta 0.001: about m/2 fire per row
    g = torch.Generator().manual_seed(2)
    x = torch.randn(256, D, generator=g)
    sae.init_b_dec(x.mean(0))
    assert sae.cand_k == 64
    sae.encode(x)
    counts = sae.take_encode_counts()
    assert counts == {"encode_rows": 256, "dense_rows": 256} and sae.cand_k == 4096  # dense by choice
    sae.init_from_batch(torch.randn(8192, D, generator=g), l0=8)
    sae.encode(x)  # still dense (chosen from the last batch), then sized from this one
    assert sae.take_encode_counts()["dense_rows"] == 256 and 16 <= sae.cand_k <= 128, sae.cand_k
    sae.encode(torch.randn(256, D, generator=g))
    c = sae.take_encode_counts()
    assert c["encode_rows"] == 256 and c["dense_rows"] <= 256 // 100 + 1


@pytest.mark.parametrize("arch", ["jumprelu", "gated"])
def test_dense_codes_decode_by_one_gemm_with_the_same_loss_and_gradients(arch, monkeypatch):
    # The module (actstore.ops re-exports its function under the same name).
    csr_decode_mod = importlib.import_module("actstore.ops.csr_decode")

    sae = build(SAEConfig(arch, D, M), seed=3)  # at init: about half the latents active
    x = _x()
    out = {}
    for cut in (0.1, 1.0):  # 0.1: the dense GEMM (density ~0.5); 1.0: the sparse decode
        monkeypatch.setattr(csr_decode_mod, "DENSE_DECODE_ABOVE", cut)
        sae.zero_grad()
        loss = sae.loss(x)
        density = loss["latents"].cols.numel() / (x.shape[0] * M)
        loss["loss"].backward()
        out[cut] = (float(loss["loss"].detach()), {n: p.grad.clone() for n, p in sae.named_parameters()})
    assert density > 0.2
    assert out[0.1][0] == pytest.approx(out[1.0][0], rel=1e-5)
    for name, g in out[0.1][1].items():
        torch.testing.assert_close(g, out[1.0][1][name], atol=1e-5, rtol=1e-4, msg=name)
