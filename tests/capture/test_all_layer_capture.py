"""All-layer capture (issue 23, for cross-layer transcoders): ``model.layers.*.mlp:input``
and ``model.layers.*.mlp`` of every layer in one forward, on a tiny 30-layer HF Llama built
from a config (60 hooks, as SmolLM2-135M gives): the wildcards' expansion and order, every
hook's rows against plain forward hooks in every storage dtype, the forward stopping after
the last MLP, hook lists that do not fit the model, and the memory the pipeline holds.

The speed and the bytes per token on the real SmolLM2: benchmarks/bench_all_layer_capture.py.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import actstore
from actstore.capture import resolve_hooks
from actstore.capture.pipeline import Sink
from actstore.errors import ModelError
from actstore.store.format import parse_dtype
from actstore.store.quantize import dequantize, quantize
from actstore.store.writer import SegmentWriter
from helpers.capture_models import token_array

LAYERS = 30
D = 16
HOOKS = "model.layers.*.mlp:input,model.layers.*.mlp"
CONTEXT = 16
BATCH = 4
# Windows are whole documents (truncate, no BOS/EOS): row r of the store is token r % CONTEXT
# of document r // CONTEXT, so a plain forward of the same ids is the reference.
OPTS = {
    "context": CONTEXT,
    "batch_size": BATCH,
    "packing": "truncate",
    "bos": "none",
    "eos": "none",
    "progress": False,
    "durable": False,
}


def _expected_names(layers: int = LAYERS) -> list[str]:
    return [n for i in range(layers) for n in (f"model.layers.{i}.mlp:input", f"model.layers.{i}.mlp")]


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=D,
        intermediate_size=24,  # not a power of two, unlike d
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # gains that are not all ones, so a hook on the wrong side of a norm shows
        for layer in m.model.layers:
            layer.post_attention_layernorm.weight.uniform_(0.5, 2.0)
    return m


@pytest.fixture(scope="module")
def ids() -> np.ndarray:
    return token_array(12, seed=3, length=CONTEXT)  # 12 windows: 3 batches of 4


@pytest.fixture(scope="module")
def reference(llama, ids) -> dict[str, torch.Tensor]:
    """``{hook name: [rows, D] fp32}`` from forward (pre-)hooks registered here, batch by batch as capture runs them."""
    got: dict[str, list[torch.Tensor]] = {n: [] for n in _expected_names()}
    handles = []
    for i, layer in enumerate(llama.model.layers):
        handles.append(
            layer.mlp.register_forward_pre_hook(lambda _m, a, i=i: got[f"model.layers.{i}.mlp:input"].append(a[0]))
        )
        handles.append(layer.mlp.register_forward_hook(lambda _m, _a, o, i=i: got[f"model.layers.{i}.mlp"].append(o)))
    try:
        with torch.inference_mode():
            for b in range(0, len(ids), BATCH):
                x = torch.from_numpy(ids[b : b + BATCH])
                llama(input_ids=x, attention_mask=torch.ones_like(x))
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v).reshape(-1, D).float() for n, v in got.items()}


def test_wildcards_expand_to_two_hooks_per_layer_in_layer_order(llama):
    want = _expected_names()
    assert [p.name for p in resolve_hooks(llama, HOOKS)] == want
    # The order is the model's, not the spec's: inputs before outputs, layer by layer.
    assert [p.name for p in resolve_hooks(llama, "model.layers.*.mlp, model.layers.*.mlp:input")] == want
    assert [p.name for p in resolve_hooks(llama, ["model.layers.*.mlp", HOOKS])] == want  # no duplicates


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp8", "int8", "q16"])
def test_every_hooks_rows_equal_a_plain_forward(llama, ids, reference, tmp_path, dtype):
    calls = {"norm": 0, "lm_head": 0}
    handles = [
        llama.get_submodule(name).register_forward_hook(lambda *_a, name=name: calls.__setitem__(name, calls[name] + 1))
        for name in ("model.norm", "lm_head")
    ]
    try:
        s = actstore.capture(llama, HOOKS, ids, tmp_path / "s", dtype=dtype, **OPTS)
    finally:
        for h in handles:
            h.remove()
    assert calls == {"norm": 0, "lm_head": 0}  # every forward ended at layer 29's MLP
    store = actstore.open(tmp_path / "s")
    assert store.hooks == _expected_names() and s["batches_this_run"] == 3
    assert store.rows == ids.size
    assert torch.equal(store.tokens()["token"].long(), torch.from_numpy(ids.reshape(-1)))
    spec = parse_dtype(dtype)
    for name, ref in reference.items():
        got = store.read(name)
        if spec.scaled:  # the store's own quantizer gives the codes; the read is their dequantization
            want = dequantize(*quantize(ref, spec), spec)
        else:
            want = ref.to(spec.value_dtype).float()
        # Row r of every hook is token r: the same row index in each hook is the same token.
        assert torch.equal(got, want), f"{dtype} {name}: max diff {(got - want).abs().max():.3g}"


@pytest.mark.parametrize(
    "hooks,named,hint",
    [
        ("model.layers.*.mlpx", "'model.layers.*.mlpx'", "closest: model.layers.*.mlp,"),
        ("model.layers.99.mlp", "'model.layers.99.mlp'", f"model.layers holds {LAYERS}, numbered 0-{LAYERS - 1}"),
        # A list written for a deeper model: the first misfit is named, nothing is captured.
        (f"{HOOKS},model.layers.31.mlp", "'model.layers.31.mlp'", f"holds {LAYERS}, numbered 0-{LAYERS - 1}"),
        ("transformer.h.*.mlp", "'transformer.h.*.mlp'", "closest:"),
        ("model.layers.*.mlp:inputs", "'model.layers.*.mlp:inputs'", "must be ':input' or ':output'"),
    ],
)
def test_a_hook_list_that_does_not_fit_the_model_fails_in_one_line(llama, ids, tmp_path, hooks, named, hint):
    with pytest.raises(ModelError) as e:
        actstore.capture(llama, hooks, ids, tmp_path / "s", **OPTS)
    msg = str(e.value)
    assert "\n" not in msg and named in msg and hint in msg, msg
    assert not (tmp_path / "s").exists()  # refused before any store was made


def test_memory_is_one_shard_per_array_and_at_most_slots_batches_in_flight(llama, tmp_path, monkeypatch):
    """What the pipeline holds does not grow with the run: (1) the batches between the
    model and the store (each ``{hook: [B*L, d]}`` activations) never exceed the ring's
    ``slots``, even when the store is the slow side; (2) the writer's buffer is one shard of
    every array, the same buffer all run, and shards are written out as they fill."""
    slots = 2
    counts = {"put": 0, "written": 0, "max_in_flight": 0}
    held: set[tuple[int, int]] = set()  # (buffer bytes, ids of the buffers) seen at each append
    put, append = Sink.put, SegmentWriter.append_packed

    def counting_put(self, acts, batch):
        put(self, acts, batch)
        counts["put"] += 1
        counts["max_in_flight"] = max(counts["max_in_flight"], counts["put"] - counts["written"])

    def slow_append(self, *a, **k):
        time.sleep(0.02)  # a store slower than the model: the ring fills and the model waits
        assert self._buf_rows < self.schema.shard_rows  # a full shard never waits in the buffer
        held.add((sum(b.nbytes for b in self._buf.values()), hash(tuple(map(id, self._buf.values())))))
        append(self, *a, **k)
        counts["written"] += 1

    monkeypatch.setattr(Sink, "put", counting_put)
    monkeypatch.setattr(SegmentWriter, "append_packed", slow_append)
    docs = token_array(6 * BATCH, seed=5, length=CONTEXT)  # 6 batches of 64 tokens
    layout = {"chunk_bytes": 16 * D * 2, "chunks_per_shard": 3}  # 48-row shards: 8 of them, across batches
    actstore.capture(llama, HOOKS, docs, tmp_path / "s", dtype="bf16", slots=slots, **layout, **OPTS)
    store = actstore.open(tmp_path / "s")
    assert store.rows == docs.size and store.schema.shard_rows == 48
    one_shard = store.schema.shard_rows * sum(
        np.dtype(a.dtype).itemsize * int(np.prod(a.row_shape)) for a in store.schema.arrays()
    )
    assert len(held) == 1 and next(iter(held))[0] == one_shard  # 2 x 30 hooks + 4 token columns, 48 rows each
    shards = list((tmp_path / "s/segments/rank00000/acts/model.layers.29.mlp/c").iterdir())
    assert len(shards) == docs.size // 48
    assert counts["put"] == 6 and counts["max_in_flight"] == slots  # reached (the store was slower), never passed


def test_the_default_layout_caps_one_shard_of_every_hook_at_the_buffer_budget():
    """A writer holds one shard of every array: SmolLM2's 60 MLP hooks in bf16 at 64 chunks
    a shard would hold 8.4 GiB; by default the shards shrink to fit SHARD_BUFFER_BYTES. A few
    hooks, or an explicit chunks_per_shard, keep the layout as it was."""
    from actstore.store.format import CHUNKS_PER_SHARD, SHARD_BUFFER_BYTES, make_schema

    def shard_bytes(schema):
        return sum(schema.shard_rows * s.d * 2 for s in schema.hooks.values())

    many = {f"model.layers.{i}.mlp{side}": 576 for i in range(30) for side in ("", ":input")}
    capped = make_schema(many, "bf16")
    chunk_rows = next(iter(capped.hooks.values())).chunk_rows
    assert SHARD_BUFFER_BYTES * 0.8 < shard_bytes(capped) <= SHARD_BUFFER_BYTES  # 7 chunks a shard, 945 MiB
    assert make_schema(many, "bf16", chunks_per_shard=64).shard_rows // chunk_rows == 64  # asked for: kept
    one = make_schema({"model.layers.15": 576}, "bf16")
    assert one.shard_rows // one.hooks["model.layers.15"].chunk_rows == CHUNKS_PER_SHARD
    huge = make_schema({f"h{i}": 65536 for i in range(1024)}, "fp32")  # one chunk of each is over budget
    assert huge.shard_rows == max(s.chunk_rows for s in huge.hooks.values())
