"""actstore.capture end to end on real models built from configs: HF transformers
(all-MiniLM-L6-v2 from its package, a tiny GPT-2 saved to disk), a TransformerLens
HookedTransformer, and a plain nn.Module; every input kind; resume; NaN handling; errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import actstore
from actstore.capture import CaptureConfig
from actstore.capture.plan import Policy, iter_batches, iter_windows
from actstore.capture.runner import _run_capture
from actstore.store.errors import CaptureError
from helpers import zygote
from helpers.capture_models import TinyLM, token_array, token_docs
from helpers.paths import HELPERS


def _all(store, hook, dtype=torch.float32):
    return store.read(hook, dtype=dtype)


@pytest.fixture(scope="module")
def minilm():
    from actstore.demo import load_minilm

    return load_minilm()


@pytest.fixture(scope="module")
def english():
    from actstore.demo import english_documents

    return [t[:3000] for _, t in english_documents()[:8]]


# -- hooks -------------------------------------------------------------------------------


def test_wildcards_inputs_and_order():
    from actstore.capture import resolve_hooks

    got = resolve_hooks(TinyLM(), "layers.*.mlp.0:input, layers.1")
    # Module order; '*' is one path component, so layers.1.mlp.0 is not matched by 'layers.*'.
    assert [p.name for p in got] == [
        "layers.0.mlp.0:input",
        "layers.1",
        "layers.1.mlp.0:input",
        "layers.2.mlp.0:input",
        "layers.3.mlp.0:input",
    ]
    assert [p.name for p in resolve_hooks(TinyLM(), "layers.*")] == [f"layers.{i}" for i in range(4)]


def test_unknown_hook_lists_closest_names():
    from actstore.capture import resolve_hooks

    with pytest.raises(CaptureError) as e:
        resolve_hooks(TinyLM(), "layers.7.mlpp")
    msg = str(e.value)
    assert "\n" not in msg and "unknown hook 'layers.7.mlpp'" in msg and "layers.0.mlp" in msg


def test_forward_stops_after_last_hooked_module(tmp_path):
    m = TinyLM()
    actstore.capture(m, "layers.1", token_docs(), tmp_path / "s", context=16, batch_size=4, progress=False)
    assert m.ran == ["layers.0"]  # layers.1's hook ended the forward inside it; 2 and 3 never ran
    full = TinyLM()
    actstore.capture(
        full, "layers.1", token_docs(), tmp_path / "t", context=16, batch_size=4, progress=False, stop_early=False
    )
    assert full.ran == ["layers.0", "layers.1", "layers.2", "layers.3"]
    a, b = actstore.open(tmp_path / "s"), actstore.open(tmp_path / "t")
    assert torch.equal(_all(a, "layers.1", torch.bfloat16), _all(b, "layers.1", torch.bfloat16))


# -- plan --------------------------------------------------------------------------------


def _stream(docs, eos=None):
    out = []
    for k, d in enumerate(docs):
        out += [(int(t), k, i) for i, t in enumerate(d)]
        if eos is not None:
            out.append((eos, k, -1))
    return out


@pytest.mark.parametrize("bos,eos", [("none", "none"), ("prepend", "doc"), ("prepend", "window")])
def test_packing_keeps_every_token_once_in_order(bos, eos):
    docs = token_docs(30, seed=1)
    p = Policy(context=16, packing="pack", bos=bos, eos=eos, bos_id=90, eos_id=91, pad_id=0)
    rows = []
    for b in iter_batches(iter_windows(docs, p), 3):
        ids, doc, pos, fl = (a.reshape(-1)[b.keep] for a in (b.ids, b.doc, b.pos, b.flags))
        assert b.ids.shape[1] == 16
        for t, d, q, f in zip(ids, doc, pos, fl):
            if f & actstore.FLAG_BOS:
                assert t == 90 and q == -1
                continue
            if eos == "window" and f & actstore.FLAG_SPECIAL:
                assert t == 91
                continue
            rows.append((int(t), int(d), int(q)))
        if bos == "prepend":
            assert (b.ids[:, 0] == 90).all()
    assert rows == _stream(docs, 91 if eos == "doc" else None)


def test_truncate_budget_and_rank_split():
    docs = token_docs(25, seed=2)
    p = Policy(context=8, packing="truncate", bos="prepend", eos="none", bos_id=90, pad_id=0)
    one = list(iter_batches(iter_windows(docs, p), 4))
    assert sum(b.n_keep for b in one) == sum(min(len(d), 7) + 1 for d in docs)
    capped = list(iter_batches(iter_windows(docs, p), 4, max_tokens=50))
    assert sum(b.n_keep for b in capped) == 50
    split = [list(iter_batches(iter_windows(docs, p), 4, rank=r, world=3)) for r in range(3)]
    assert sorted(b.index for s in split for b in s) == [b.index for b in one]
    for r, s in enumerate(split):
        assert all(b.index % 3 == r for b in s)


# -- models and inputs -------------------------------------------------------------------


def test_hf_minilm_text_matches_a_plain_forward(tmp_path, minilm, english):
    model, tok = minilm
    hooks = "encoder.layer.1,encoder.layer.3.attention.output.dense:input"
    s = actstore.capture(
        model,
        hooks,
        english,
        tmp_path / "s",
        tokenizer=tok,
        context=32,
        batch_size=4,
        tokens=900,
        dtype="fp32",
        progress=False,
    )
    assert s["committed_rows"] == 900
    st = actstore.open(tmp_path / "s")
    cols = st.tokens()
    # Rebuild the windows independently: [CLS] + 30 body tokens + [SEP], documents run on.
    stream = [t for text in english for t in tok(text, add_special_tokens=False)["input_ids"]]
    body = [int(t) for t, f in zip(cols["token"], cols["flags"]) if f == 0]
    assert body == stream[: len(body)]
    assert int((cols["flags"] == actstore.FLAG_BOS).sum()) == int((cols["token"] == tok.cls_token_id).sum())
    # Activations: a plain forward over the same batches, with ordinary hooks.
    ids = []
    for i in range(0, len(body) + 30, 30):
        chunk = stream[i : i + 30]
        ids.append([tok.cls_token_id] + chunk + [tok.sep_token_id])
    got = {}
    h1 = model.encoder.layer[1].register_forward_hook(
        lambda m, a, o: got.setdefault("l1", []).append(o[0] if isinstance(o, tuple) else o)
    )
    h2 = model.encoder.layer[3].attention.output.dense.register_forward_pre_hook(
        lambda m, a: got.setdefault("d", []).append(a[0])
    )
    try:
        for b in range(0, len(ids), 4):
            batch = ids[b : b + 4]
            x = torch.tensor(batch)
            with torch.inference_mode():
                model(input_ids=x, attention_mask=torch.ones_like(x))
    finally:
        h1.remove(), h2.remove()
    ref1 = torch.cat([t.reshape(-1, 384) for t in got["l1"]])[:900]
    ref2 = torch.cat([t.reshape(-1, 384) for t in got["d"]])[:900]
    assert torch.allclose(st.read("encoder.layer.1"), ref1, atol=1e-5)
    assert torch.allclose(st.read("encoder.layer.3.attention.output.dense:input"), ref2, atol=1e-5)


def test_input_kinds_give_the_same_tokens(tmp_path, minilm, english):
    import datasets

    model, tok = minilm
    docs = english[:5]
    (tmp_path / "txt").mkdir()
    for i, t in enumerate(docs):
        (tmp_path / "txt" / f"{i:03d}.txt").write_text(t, encoding="utf-8")
    with open(tmp_path / "d.jsonl", "w") as f:
        for t in docs:
            f.write(json.dumps({"body": t}) + "\n")
    datasets.Dataset.from_dict({"body": docs}).save_to_disk(str(tmp_path / "saved"))
    datasets.Dataset.from_dict({"body": docs}).to_parquet(str(tmp_path / "d.parquet"))
    pre = [tok(t, add_special_tokens=False)["input_ids"] for t in docs]
    sources = {
        "txt": tmp_path / "txt",
        "jsonl": tmp_path / "d.jsonl",
        "saved": tmp_path / "saved",
        "parquet": tmp_path / "d.parquet",
        "list": docs,
        "pretok": pre,
    }
    toks = {}
    for name, src in sources.items():
        actstore.capture(
            model,
            "encoder.layer.0",
            src,
            tmp_path / name / "store",
            tokenizer=tok,
            context=64,
            batch_size=8,
            tokens=600,
            text_column="body",
            progress=False,
        )
        toks[name] = actstore.open(tmp_path / name / "store").tokens()
    for name, t in toks.items():
        for col in ("token", "doc", "pos", "flags"):
            assert torch.equal(t[col], toks["txt"][col]), (name, col)
    assert toks["txt"]["token"].numel() == 600


def test_transformerlens_hook_names(tmp_path):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=3, d_model=32, d_head=8, n_heads=4, d_mlp=64, n_ctx=24, d_vocab=97, act_fn="gelu"
    )
    m = HookedTransformer(cfg)
    data = token_array(12, seed=3, length=40)
    calls = []
    m.blocks[2].register_forward_hook(lambda _m, args, _o: calls.append(tuple(args[0].shape[:2])))
    actstore.capture(
        m,
        "blocks.*.hook_resid_post,blocks.0.attn.hook_z",
        data,
        tmp_path / "s",
        context=24,
        batch_size=5,
        dtype="fp32",
        progress=False,
    )
    st = actstore.open(tmp_path / "s")
    assert st.hooks == [
        "blocks.0.attn.hook_z",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_post",
        "blocks.2.hook_resid_post",
    ]
    stream = data.reshape(-1)
    n = st.rows
    assert n == stream.size and torch.equal(st.tokens()["token"].long(), torch.from_numpy(stream))
    windows = torch.from_numpy(stream[: (n // 24) * 24].reshape(-1, 24))
    _, cache = m.run_with_cache(windows[:5])
    want = cache["blocks.1.hook_resid_post"].reshape(-1, 32)
    assert torch.allclose(st.read("blocks.1.hook_resid_post", slice(0, 120)), want, atol=1e-5)
    z = cache["blocks.0.attn.hook_z"].reshape(-1, 32)
    assert torch.allclose(st.read("blocks.0.attn.hook_z", slice(0, 120)), z, atol=1e-5)
    # blocks.2 ran to its end only in the norm detection's probe forward (1 x 4 tokens: it goes on until
    # ln_final has read blocks.2.hook_resid_post) and in run_with_cache; capture's batches stopped inside it
    assert calls == [(1, 4), (5, 24)]


def test_hf_model_from_a_local_folder_and_context_limit(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=32)).save_pretrained(
        tmp_path / "gpt2"
    )
    data = token_array(6, seed=4, length=30)
    s = actstore.capture(
        str(tmp_path / "gpt2"), "transformer.h.*", data, tmp_path / "s", context=32, batch_size=2, progress=False
    )
    assert s["committed_rows"] == data.size
    with pytest.raises(CaptureError, match=r"context 64 is longer than the model allows \(32 positions\)"):
        actstore.capture(str(tmp_path / "gpt2"), "transformer.h.0", data, tmp_path / "t", context=64, progress=False)


# -- resume, NaN, errors -------------------------------------------------------------------


def _snapshot(path):
    st = actstore.open(path)
    out = {h: st.read(h, dtype=torch.bfloat16).view(torch.int16) for h in st.hooks}
    out.update({k: v for k, v in st.tokens().items()})
    out["stats"] = {h: st.stats(h)["count"] for h in st.hooks}
    return out


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if k == "stats":
            assert a[k] == b[k]
        else:
            assert torch.equal(a[k], b[k]), k


def test_interrupt_commits_and_rerun_resumes_exactly(tmp_path):
    kw = dict(context=16, batch_size=4, progress=False, chunk_bytes=1024, chunks_per_shard=2)
    docs = token_docs(60, seed=5)
    actstore.capture(TinyLM(), "layers.0,layers.2", docs, tmp_path / "ref", **kw)

    def stop(n):
        if n == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run_capture(TinyLM(), "layers.0,layers.2", docs, tmp_path / "s", CaptureConfig(**kw), after_batch=stop)
    part = actstore.open(tmp_path / "s")
    assert part.rows == 7 * 64  # every completed batch was committed, nothing more
    s = actstore.capture(TinyLM(), "layers.0,layers.2", docs, tmp_path / "s", **kw)
    assert s["resumed_from"] == 7 * 64
    _same(_snapshot(tmp_path / "s"), _snapshot(tmp_path / "ref"))
    again = actstore.capture(TinyLM(), "layers.0,layers.2", docs, tmp_path / "s", **kw)
    assert again["rows_this_run"] == 0  # already complete: nothing added
    with pytest.raises(CaptureError, match="captured with context=16, this run has context=32"):
        actstore.capture(TinyLM(), "layers.0,layers.2", docs, tmp_path / "s", **{**kw, "context": 32})


def test_nonfinite_rows_are_dropped_counted_and_reported(tmp_path):
    docs = token_docs(20, seed=6)
    n_bad = sum(int((d == 5).sum()) for d in docs)
    assert n_bad > 0
    s = actstore.capture(
        TinyLM(nan_token=5),
        "layers.0,layers.2",
        docs,
        tmp_path / "s",
        context=16,
        batch_size=4,
        dtype="fp32",
        progress=False,
    )
    total = sum(len(d) for d in docs)
    assert s["nonfinite_rows_dropped"] == n_bad and s["committed_rows"] == total - n_bad
    st = actstore.open(tmp_path / "s")
    assert not (st.tokens()["token"] == 5).any()
    assert st.stats("layers.2")["nonfinite_rows"] == n_bad and st.stats("layers.0")["nonfinite_rows"] == 0
    for h in ("layers.0", "layers.2"):
        x = st.read(h).double()
        assert torch.isfinite(x).all()
        assert torch.allclose(st.stats(h)["mean"], x.mean(0), atol=1e-5)
        assert torch.allclose(st.stats(h)["var"], x.var(0, unbiased=False), rtol=1e-4)
        assert st.stats(h)["count"] == x.shape[0]
    info = zygote.run(
        [sys.executable, "-m", "actstore.cli", "info", str(tmp_path / "s")], capture_output=True, text=True
    )
    assert f"nonfinite rows {n_bad}" in info.stdout
    with pytest.raises(CaptureError, match="NaN/inf"):
        actstore.capture(
            TinyLM(nan_token=5),
            "layers.2",
            docs,
            tmp_path / "e",
            context=16,
            batch_size=4,
            nonfinite="error",
            progress=False,
        )

    # Interrupted and resumed, the dropped rows still add up: same rows as the run above.
    def stop(n):
        if n == 3:
            raise KeyboardInterrupt

    kw = dict(context=16, batch_size=4, dtype="fp32", progress=False)
    with pytest.raises(KeyboardInterrupt):
        _run_capture(
            TinyLM(nan_token=5), "layers.0,layers.2", docs, tmp_path / "r", CaptureConfig(**kw), after_batch=stop
        )
    r = actstore.capture(TinyLM(nan_token=5), "layers.0,layers.2", docs, tmp_path / "r", **kw)
    assert r["resumed_from"] > 0
    again = actstore.open(tmp_path / "r")
    assert torch.equal(again.tokens()["token"], st.tokens()["token"])
    assert again.stats("layers.2")["nonfinite_rows"] == n_bad


@pytest.mark.parametrize("dtype", ["fp8", "int8", "q16"])
def test_scaled_dtypes_round_trip_within_bounds(tmp_path, dtype):
    docs = token_docs(10, seed=8)
    actstore.capture(TinyLM(), "layers.1", docs, tmp_path / "s", context=16, batch_size=4, dtype=dtype, progress=False)
    actstore.capture(TinyLM(), "layers.1", docs, tmp_path / "r", context=16, batch_size=4, dtype="fp32", progress=False)
    got, ref = actstore.open(tmp_path / "s").read("layers.1"), actstore.open(tmp_path / "r").read("layers.1")
    amax = ref.abs().amax(1, keepdim=True)
    bound = {
        "fp8": 2**-4 * ref.abs() + amax / 448 * 2**-10,
        "int8": amax / 254,
        "q16": ref.pow(2).mean(1, keepdim=True).sqrt() / 64,  # half a step of rms/32
    }[dtype]
    assert bool(((got - ref).abs() <= bound * 1.0001 + 1e-7).all())


def test_one_line_errors(tmp_path):
    with pytest.raises(CaptureError, match="no tokens in data"):
        actstore.capture(TinyLM(), "layers.0", [], tmp_path / "a", progress=False)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(CaptureError, match="matched no files|no tokens"):
        actstore.capture(TinyLM(), "layers.0", str(tmp_path / "nothing-*.npy"), tmp_path / "b", progress=False)
    with pytest.raises(CaptureError, match="batch size 0"):
        actstore.capture(TinyLM(), "layers.0", token_docs(), tmp_path / "c", batch_size=0, progress=False)
    with pytest.raises(CaptureError, match="text data needs a tokenizer"):
        actstore.capture(TinyLM(), "layers.0", ["some text"], tmp_path / "d", progress=False)
    r = zygote.run(
        [
            sys.executable,
            "-m",
            "actstore.cli",
            "capture",
            "--model",
            "python:capture_models:make_tiny",
            "--hooks",
            "layers.9",
            "--data",
            "x.npy",
            "--out",
            str(tmp_path / "e"),
        ],
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "unknown hook 'layers.9'" in r.stderr and "layers.0" in r.stderr


def _env():
    import os

    return {
        **os.environ,
        "PYTHONPATH": f"{HELPERS}{':' + os.environ['PYTHONPATH'] if os.environ.get('PYTHONPATH') else ''}",
    }


def test_cli_capture_from_a_yaml_config(tmp_path):
    np.save(tmp_path / "toks.npy", token_array(10, seed=9, length=33))
    (tmp_path / "cfg.yaml").write_text(
        "model: python:capture_models:make_tiny\nhooks: [layers.0, 'layers.1.mlp.2:input']\n"
        f"data: {tmp_path / 'toks.npy'}\nout: {tmp_path / 'store'}\ncontext: 16\nbatch-size: 3\ndtype: fp16\n"
    )
    r = zygote.run(
        [
            sys.executable,
            "-m",
            "actstore.cli",
            "capture",
            "--config",
            str(tmp_path / "cfg.yaml"),
            "--tokens",
            "200",
            "--json",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["committed_rows"] == 200
    st = actstore.open(tmp_path / "store")
    assert st.hooks == ["layers.0", "layers.1.mlp.2:input"] and st.rows == 200
    assert st.schema.hooks["layers.1.mlp.2:input"].d == 64
