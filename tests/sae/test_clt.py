"""Cross-layer transcoders: the output and gradients against a dense PyTorch reference, the
loss terms, training from a real store with per-layer held-out FVU (checked by brute force on
the raw rows, the normalization folded), exact resume after SIGKILL, latent sharding over two
torchrun ranks against one rank, and the one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from actstore.cli import main as cli
from actstore.errors import SAEError
from actstore.sae import TrainConfig, load, train
from actstore.sae.config import SAEConfig
from actstore.sae.registry import build
from helpers import layer_store, train_kill
from helpers.procs import torchrun

RUN = train_kill.RUN
L, D, DO, M, K = 3, 12, 10, 24, 3
SRC = [f"model.layers.{i}.mlp:input" for i in range(L)]
TGT = [f"model.layers.{i}.mlp" for i in range(L)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return layer_store.build(tmp_path_factory.mktemp("clt") / "acts")


def _clt(act="topk", skip=False, seed=0):
    cfg = SAEConfig(
        "skip_clt" if skip else "clt", D, M, k=K, d_out=DO, activation=act, sources=SRC, targets=TGT
    )  # fmt: skip
    clt = build(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():  # decoders and skip off zero, so every weight matters
        for p in clt.parameters():
            if p is not getattr(clt, "log_threshold", None):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
        if act == "jumprelu":
            clt.log_threshold.fill_(-1.0)
    return clt


def _dense_code(clt, x):
    """``[n, L, m]`` codes by brute force: each layer's pre-activations, then the activation."""
    n = x.shape[0]
    pre = torch.einsum("nld,lmd->nlm", x, clt.W_enc) + clt.b_enc
    a = torch.relu(pre)
    if clt.act == "topk":
        keep = torch.zeros_like(a, dtype=torch.bool)
        keep.scatter_(2, a.topk(K, dim=2).indices, True)
    elif clt.act == "batchtopk":  # each layer: the batch's n*k largest
        kth = a.reshape(n, L, M).permute(1, 0, 2).reshape(L, -1).topk(n * K, dim=1).values[:, -1]
        keep = a >= kth.view(1, L, 1)
    else:
        keep = pre > clt.log_threshold.exp()
        a = pre
    return a * keep


def _dense_output(clt, x):
    """``y_l = sum_{s<=l} a_s W_dec^{s->l} + b_dec[l] (+ W_skip x_l)``, with the decoder of
    ``s -> l`` read as the rows ``s*m:(s+1)*m`` of ``W_dec[l]``."""
    a = _dense_code(clt, x)
    outs = []
    for t in range(L):
        y = clt.b_dec[t].expand(x.shape[0], -1)
        for s in range(t + 1):
            y = y + a[:, s] @ clt.W_dec[t][s * M : (s + 1) * M]
        if clt.W_skip is not None:
            y = y + x[:, t] @ clt.W_skip[t].T
        outs.append(y)
    return torch.stack(outs, 1)


@pytest.mark.parametrize("act", ["topk", "batchtopk", "jumprelu"])
@pytest.mark.parametrize("skip", [False, True], ids=["clt", "skip_clt"])
def test_output_and_gradients_match_a_dense_reference(act, skip):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, L, D, generator=g), torch.randn(40, L, DO, generator=g)
    clt, ref = _clt(act, skip), _clt(act, skip)
    clt.train(act == "batchtopk")  # batchtopk: the batch's own threshold
    out = clt.output(x)
    want = _dense_output(ref, x)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    (out - y).pow(2).sum().backward()
    (want - y).pow(2).sum().backward()
    names = ["W_enc", "b_enc", "b_dec", *(["W_skip"] if skip else [])]
    for n in names:
        torch.testing.assert_close(getattr(clt, n).grad, getattr(ref, n).grad, rtol=1e-4, atol=1e-4, msg=n)
    for t in range(L):
        torch.testing.assert_close(clt.W_dec[t].grad, ref.W_dec[t].grad, rtol=1e-4, atol=1e-4)
        assert clt.W_dec[t].grad.abs().sum() > 0
    lat = clt.encode(x)  # one code over L*m latents, column s*m + i
    assert lat.m == L * M
    torch.testing.assert_close(lat.dense().view(40, L, M), _dense_code(ref, x).detach(), rtol=1e-5, atol=1e-5)


def test_the_loss_is_the_mean_over_layers_of_each_layers_fvu_and_auxk_trains_dead_latents():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, L, D, generator=g)
    y = torch.randn(64, L, DO, generator=g) * torch.tensor([1.0, 3.0, 10.0])[:, None]  # layers of unequal variance
    clt = _clt("topk").train()
    res = clt.loss(x, target=y)
    y_hat = _dense_output(_clt("topk"), x).detach()
    fvu = (y_hat - y).pow(2).sum(2).mean(0) / (y - y.mean(0)).pow(2).sum(2).mean(0)
    torch.testing.assert_close(res["layer_fvu"], fvu, rtol=1e-5, atol=1e-6)
    assert float(res["loss"].detach()) == pytest.approx(float(fvu.mean()), rel=1e-5)
    dead = torch.zeros(L * M, dtype=torch.bool)
    dead[M : M + 8] = True  # 8 dead latents of layer 1
    res = clt.loss(x, dead_mask=dead, target=y)
    assert float(res["aux_fvu"]) > 0
    res["loss"].backward()
    rows = clt.W_enc.grad[1, :8].abs().sum(1)
    assert bool((rows > 0).any()), "AuxK gave the dead latents of layer 1 no encoder gradient"


def test_a_clt_takes_one_row_per_layer_and_a_target():
    clt = _clt()
    with pytest.raises(SAEError, match=r"must be \[n, L=3, 12\]"):
        clt.loss(torch.randn(4, 2, D), target=torch.randn(4, L, DO))
    with pytest.raises(SAEError, match="reconstructs its targets"):
        clt.loss(torch.randn(4, L, D))


def _train(store, out, act="topk", **kw):
    return train(
        store=store.path,
        arch=kw.pop("arch", "clt"),
        source="model.layers.*.mlp:input",
        target="model.layers.*.mlp",
        activation=act,
        latents=48,
        k=None if act == "jumprelu" else 4,
        tokens=32 * 40,
        out=str(out),
        batch_size=32,
        lr=3e-3,
        warmup_steps=5,
        log_every=10,
        checkpoint_every=20,
        buffer_rows=256,
        eval_rows=320,
        progress=False,
        **kw,
    )


def _held_out(store, clt, rows):
    """Each layer's FVU of the saved (folded) CLT on the raw held-out rows."""
    sl = slice(store.rows - rows, store.rows)
    x = torch.stack([store.read(h, sl) for h in clt.cfg.sources], 1).double()
    y = torch.stack([store.read(h, sl) for h in clt.cfg.targets], 1).double()
    clt = clt.double().eval()
    with torch.no_grad():
        y_hat = clt.output(x).double()
    err = (y_hat - y).pow(2).sum((0, 2))
    var = (y - y.mean(0)).pow(2).sum((0, 2))
    return (err / var).tolist()


@pytest.mark.parametrize("arch,act", [("clt", "topk"), ("skip_clt", "jumprelu"), ("clt", "batchtopk")])
def test_training_reports_each_layers_held_out_fvu_and_the_saved_clt_takes_raw_rows(store, tmp_path, arch, act):
    s = _train(store, tmp_path / "o", act, arch=arch)
    ev = s["eval"]
    assert s["source"] == [f"model.layers.{i}.mlp:input" for i in range(3)]
    assert list(ev["block_fvu"]) == [f"model.layers.{i}.mlp" for i in range(3)]
    clt = load(tmp_path / "o" / "sae")
    assert type(clt).__name__ == "CrossLayerTranscoder" and clt.act == act and clt.W_enc.shape == (3, 48, 16)
    assert clt.cfg.source_scales == [1.0] * 3 and clt.cfg.target_scales == [1.0] * 3  # folded
    per_layer = _held_out(store, clt, ev["rows"])
    assert per_layer == pytest.approx(list(ev["block_fvu"].values()), rel=1e-4)
    assert ev["fvu"] == pytest.approx(sum(per_layer) / 3, rel=1e-4)  # the mean over layers
    assert 0 < ev["fvu"] < 0.9  # it learned the cross-layer structure, partly
    assert sum(ev["layer_l0"]) == pytest.approx(ev["l0"], rel=1e-6) and len(ev["layer_l0"]) == 3
    if act == "topk":
        assert ev["layer_l0"] == pytest.approx([4, 4, 4], abs=0.05)  # k per layer (a few rows hold zeros)
    log = [json.loads(ln) for ln in (tmp_path / "o" / "log.jsonl").read_text().splitlines() if "eval" not in ln]
    assert len(log[-1]["layer_fvu"]) == 3 and log[-1]["fvu"] < log[0]["fvu"]


def test_the_cli_trains_a_clt(store, tmp_path, capsys):
    out = tmp_path / "o"
    args = ["train", "--store", str(store.path), "--arch", "clt", "--source", "model.layers.*.mlp:input"]
    args += ["--target", "model.layers.*.mlp", "--latents", "32", "--k", "3", "--tokens", str(32 * 10)]
    args += ["--out", str(out), "--batch-size", "32", "--no-progress", "--json"]
    assert cli(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["arch"] == "clt" and len(summary["eval"]["block_fvu"]) == 3


@pytest.mark.parametrize(
    "source,target,msg",
    [
        ("model.layers.*.mlp:input", "model.layers.1.mlp,model.layers.2.mlp", "name 3 and 2 hooks"),
        ("model.layers.0.mlp:input,model.layers.1.mlp:input", "model.layers.1.mlp,model.layers.2.mlp", r"layer 0\)"),
        ("model.layers.*.attn:input", "model.layers.*.mlp", "names no hook of the store"),
    ],
    ids=["counts", "layers", "missing"],
)
def test_hooks_that_do_not_pair_layer_by_layer_are_one_line(store, tmp_path, source, target, msg):
    cfg = TrainConfig(
        store=store.path, arch="clt", source=source, target=target, latents=16, k=2, tokens=64, out=str(tmp_path)
    )
    with pytest.raises(SAEError, match=msg) as e:
        train(cfg, progress=False)
    assert "\n" not in str(e.value)


def test_sharding_options_are_checked():
    with pytest.raises(SAEError, match="--shard-latents is for CLTs"):
        TrainConfig(store="s", hook="h", arch="topk", latents=8, k=2, tokens=8, out="o", shard_latents=True)
    with pytest.raises(SAEError, match="sharded CLTs take activation topk or jumprelu"):
        build(SAEConfig("clt", D, M, k=K, d_out=DO, activation="batchtopk", sources=SRC, targets=TGT), shard=(0, 2))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["clt:jumprelu", "skip_clt:batchtopk"])
def test_a_clt_killed_mid_run_resumes_to_the_same_weights(store, tmp_path, arch):
    train_kill.kill_and_resume(store.path, tmp_path, arch, 30, ["step:5", "written:9", "ckpt:30"])


@pytest.mark.slow
@pytest.mark.parametrize("act", ["topk", "jumprelu"])
def test_latents_sharded_over_two_ranks_train_the_weights_of_one_rank(store, tmp_path, act):
    """Two torchrun ranks, each with half of every layer's latents and the whole batch, end
    where one rank holding every latent does (float rounding apart): the saved CLT (gathered
    on rank 0) and the loss log agree."""
    train_kill.finish(train_kill.run(store.path, tmp_path / "one", f"clt:{act}", 32 * 30), 30)
    env = {"TRAIN_RUN_SHARD": "1", "TRAIN_RUN_COMM": "1"}
    r = torchrun(RUN, [store.path, tmp_path / "two", f"clt:{act}", 32 * 30], nproc=2, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load(tmp_path / "one" / "sae"), load(tmp_path / "two" / "sae")
    assert b.W_enc.shape == a.W_enc.shape == (3, 64, 16)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=2e-4, atol=2e-5, msg=name)
    la, lb = train_kill.log(tmp_path / "one"), train_kill.log(tmp_path / "two")
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    for ra, rb in zip(la, lb):
        if "eval" in ra:
            assert rb["eval"]["fvu"] == pytest.approx(ra["eval"]["fvu"], rel=1e-4)
            continue
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4) and rb["l0"] == pytest.approx(ra["l0"], rel=1e-4)
    ck = json.loads((tmp_path / "two" / "latest.json").read_text())["checkpoint"]
    assert {p.name for p in (tmp_path / "two" / ck).glob("sae-rank*")} == {"sae-rank0", "sae-rank1"}
    # The step's communication (payload of each rank's collectives, batch 32, L=3, d_out=16,
    # float32): the all-reduce of the partial outputs [32, 3, 16] and of the L0 (a scalar);
    # JumpReLU adds its L0 terms [3]; TopK an AuxK flag (int64), the all-gather of every
    # layer's local top-k values [2 ranks x 32 x 4] and, once latents are dead, AuxK (every
    # layer: [2 x 32 x 8] gathered, the aux decode [32, 16] reduced, one dead count).
    comm = json.loads((tmp_path / "two" / "comm-rank0.json").read_text())
    assert len(comm) == 30
    out_bytes = 32 * 3 * 16 * 4 + 4
    if act == "jumprelu":
        assert set(comm) == {out_bytes + 3 * 4}
    else:
        plain = out_bytes + 8 + 3 * 2 * 32 * 4 * 4
        aux = plain + 3 * (2 * 32 * 8 * 4 + 32 * 16 * 4 + 4)
        assert comm[0] == plain and set(comm) == {plain, aux}


def test_saelens_and_sparsify_refuse_clts_and_crosscoders_in_one_line(tmp_path):
    from actstore.sae import to_saelens, to_sparsify

    cc = build(SAEConfig("crosscoder", 24, 32, k=4, sources=["a", "b", "c"]))
    for f in (to_saelens, to_sparsify):
        for d in (_clt(), cc):
            with pytest.raises(SAEError, match="holds no") as e:
                f(d, tmp_path / "x")
            assert "\n" not in str(e.value)
    assert not (tmp_path / "x").exists()


def test_a_many_hook_runs_shuffle_window_is_capped_in_bytes(store, monkeypatch):
    """The loader holds 2-3 shuffle windows: a CLT's window is cut to WINDOW_BYTES of stored
    rows over all its hooks (6 hooks x 16 float32 = 384 B a row here), an SAE's is left."""
    import importlib

    import actstore
    from actstore.sae.layout import resolve

    trainer = importlib.import_module("actstore.sae.train")
    monkeypatch.setattr(trainer, "WINDOW_BYTES", 384 * 100)
    kw = dict(store=str(store.path), latents=16, k=2, tokens=64, out="o", batch_size=32, buffer_rows=4096)
    clt = TrainConfig(arch="clt", source="model.layers.*.mlp:input", target="model.layers.*.mlp", **kw)
    sae = TrainConfig(arch="topk", hook="model.layers.0.mlp", **kw)
    assert trainer._window(clt, resolve(clt, store, actstore.open), [store]) == 100
    assert trainer._window(sae, resolve(sae, store, actstore.open), [store]) == 4096
    monkeypatch.setattr(trainer, "WINDOW_BYTES", 384 * 10)
    assert trainer._window(clt, resolve(clt, store, actstore.open), [store]) == 32  # never below a batch
