"""The figures README.md quotes from benchmark result files are the ones in those files.

The README's figures were typed by hand (one read 94.7% where its result file says 94.6%).
Each entry of :data:`FIGURES` is a passage of a document with ``{}`` for each figure, the
result file (``benchmarks/results/``) and, per figure, how it is read from the JSON and
printed (path, format, scale). The test formats the figures from the JSON and looks for the
passage in the document, whitespace collapsed (a passage may span lines). A rerun that moves
a figure fails here until the document is updated (or the entry, where the wording changed).

Figures a document quotes that no result file holds are listed in :data:`NOT_BACKED` (a
human-measured install time, a test's bound, an external tool's documentation), so that the
list of unchecked figures is explicit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Callable

import pytest

from helpers.paths import BENCHMARKS

REPO = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"


@dataclass(frozen=True)
class F:
    """One figure: the value at ``path`` ("/"-separated keys and list indices, or a function
    of the whole JSON) times ``scale``, printed with ``fmt``."""

    path: str | Callable[[dict], float]
    fmt: str | Callable[[float], str] = "{}"
    scale: float = 1.0

    def text(self, doc: dict) -> str:
        v = self.path(doc) if callable(self.path) else get(doc, self.path)
        if isinstance(v, (int, float)) and self.scale != 1.0:
            v = v * self.scale
        return self.fmt(v) if callable(self.fmt) else self.fmt.format(v)


@dataclass(frozen=True)
class Passage:
    doc: str  # the document, relative to the repository root
    template: str  # the passage, one "{}" per figure
    result: str  # the result file in benchmarks/results/
    figures: tuple[F, ...] = field(default_factory=tuple)

    def expected(self, data: dict | None = None) -> str:
        """The passage with the figures of ``data`` (default: the result file's)."""
        data = load(self.result) if data is None else data
        return self.template.format(*(f.text(data) for f in self.figures))


def get(doc, path: str):
    for key in path.split("/"):
        doc = doc[int(key)] if isinstance(doc, list) else doc[key]
    return doc


@cache
def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def missing(passage: Passage, text: str, data: dict | None = None) -> str | None:
    """None when ``text`` holds the passage with the JSON's figures; else what was expected."""
    want = squash(passage.expected(data))
    return None if want in squash(text) else want


MS, PCT1, PCT2 = "{:.0f}", "{:.1f}", "{:.2f}"


def sci(digits: int) -> Callable[[float], str]:
    """Scientific as the documents print it: ``7e-8``, ``6.3e-7`` (no exponent padding)."""

    def fmt(v: float) -> str:
        mant, exp = f"{v:.{digits}e}".split("e")
        return f"{mant}e{int(exp)}"

    return fmt


DT = "parts/speed_transcoder/"  # dictionaries_cpu.json: the transcoder pair
DM = "parts/speed_matryoshka/"
DQ = "parts/quality/runs/"
CLT, TC = "parts/clt/clt/", "parts/clt/transcoders/"


def _max_over_cases(key: str) -> Callable[[dict], float]:
    def fn(d):
        cases = d["parts"]["parity"]["cases"].values()
        return max(get(c, key) for c in cases)

    return fn


FIGURES: list[Passage] = [
    # --- README.md: the demo -----------------------------------------------------------
    Passage(
        "README.md",
        "the demo takes {} s on 2 cores (capture {} s, training {} s, analysis {} s, report {} s; "
        "`benchmarks/results/demo_smollm2.json`)",
        "demo_smollm2.json",
        (
            F("total_seconds", MS),
            F("stages/capture/seconds", MS),
            F("stages/train/seconds", MS),
            F("stages/analyze/seconds", MS),
            F("stages/report/seconds", MS),
        ),
    ),
    # --- README.md: transcoders and Matryoshka SAEs ----------------------------------------
    Passage(
        "README.md",
        "rows of the pydoc text), m={}, k={}, batches of {}, float32, 2 CPU cores",
        "dictionaries_cpu.json",
        (F("parts/data/settings/latents"), F("parts/data/settings/k"), F("parts/data/settings/batch")),
    ),
    Passage(
        "README.md",
        "d=576, {}k rows of the pydoc text), m=4096",
        "dictionaries_cpu.json",
        (F("parts/data/rows", "{:.0f}", 1e-3),),
    ),
    Passage(
        "README.md",
        "| TopK transcoder step (interleaved, median) | {} ms | sparsify `SparseCoder(transcode=True)` {} ms | {}x |",
        "dictionaries_cpu.json",
        (
            F(DT + "step_timing/actstore/median_s", MS, 1e3),
            F(DT + "step_timing/sparsify_adam_same_lr/median_s", MS, 1e3),
            F(DT + "step_timing/sparsify_adam_same_lr_over_actstore_time_median", PCT2),
        ),
    ),
    Passage(
        "README.md",
        "| held-out FVU after {} equal steps | {} | {} (Adam, same lr); {} (its default Signum) | |",
        "dictionaries_cpu.json",
        (
            F("parts/data/settings/train_steps"),
            F(DT + "equal_steps/held_out/actstore/topk/fvu", "{:.4f}"),
            F(DT + "equal_steps/held_out/sparsify_adam_same_lr/topk/fvu", "{:.4f}"),
            F(DT + "equal_steps/held_out/sparsify_signum_default/topk/fvu", "{:.4f}"),
        ),
    ),
    Passage(
        "README.md",
        "| Matryoshka BatchTopK step (widths {}, {}, {}) | {} ms | SAELens `matryoshka_batchtopk` {} ms | {}x |",
        "dictionaries_cpu.json",
        (
            F(DM + "setup/widths/0"),
            F(DM + "setup/widths/1"),
            F(DM + "setup/widths/2"),
            F(DM + "step_timing/actstore/median_s", MS, 1e3),
            F(DM + "step_timing/saelens_same_lr/median_s", MS, 1e3),
            F(DM + "step_timing/saelens_same_lr_over_actstore_time_median", PCT2),
        ),
    ),
    Passage(
        "README.md",
        "| held-out FVU after 300 equal steps, batch top-k at L0 {} | {} | {} (its running threshold: {} at L0 {} "
        "vs ours {} at L0 {}) | |",
        "dictionaries_cpu.json",
        (
            F(DM + "equal_steps/held_out/actstore/batch_topk/l0", "{:.0f}"),
            F(DM + "equal_steps/held_out/actstore/batch_topk/fvu", "{:.4f}"),
            F(DM + "equal_steps/held_out/saelens_same_lr/batch_topk/fvu", "{:.4f}"),
            F(DM + "equal_steps/held_out/saelens_same_lr/inference_threshold/fvu", "{:.4f}"),
            F(DM + "equal_steps/held_out/saelens_same_lr/inference_threshold/l0", "{:.1f}"),
            F(DM + "equal_steps/held_out/actstore/inference_threshold/fvu", "{:.4f}"),
            F(DM + "equal_steps/held_out/actstore/inference_threshold/l0", "{:.1f}"),
        ),
    ),
    Passage(
        "README.md",
        "(loss within {} relative, gradients within {})",
        "dictionaries_cpu.json",
        (F(_max_over_cases("loss/max_rel"), sci(0)), F(_max_over_cases("max_grad_rel"), sci(1))),
    ),
    Passage(
        "README.md",
        "At equal m and k, {}k tokens with the trainer's defaults (`--parts quality`), the MLP output of layer 15 is "
        "reconstructed with held-out FVU {} by a transcoder, {} by a skip transcoder and {} by an SAE on the MLP "
        "output itself; spliced into the model over {} held-out tokens they recover {}%, {}% and {}% of the LM "
        "loss that zeroing the MLP output costs (clean {}, zeroed {} nats/token).",
        "dictionaries_cpu.json",
        (
            F("parts/quality/setup/tokens", "{:.0f}", 1e-3),
            F(DQ + "transcoder/held_out/fvu", "{:.4f}"),
            F(DQ + "skip_transcoder/held_out/fvu", "{:.4f}"),
            F(DQ + "sae_mlp_out/held_out/fvu", "{:.4f}"),
            F(DQ + "transcoder/eval_model/tokens", "{:,}"),
            F(DQ + "transcoder/eval_model/recovered", PCT1, 100),
            F(DQ + "skip_transcoder/eval_model/recovered", PCT2, 100),
            F(DQ + "sae_mlp_out/eval_model/recovered", PCT1, 100),
            F(DQ + "transcoder/eval_model/clean", "{:.4f}"),
            F(DQ + "transcoder/eval_model/zero_ablation", "{:.4f}"),
        ),
    ),
    # --- README.md: all-layer capture ---------------------------------------------------
    Passage(
        "README.md",
        "On 2 shared cores (fp32 model, batches of {}x{}, medians of {} interleaved rounds;",
        "all_layer_capture_cpu.json",
        (F("settings/batch_size"), F("settings/context"), F("settings/repeats")),
    ),
    *[
        Passage(
            "README.md",
            f"| {label} | {{}} KB | {{}} | {{}}%, {{}}% | {{}}x |",
            "all_layer_capture_cpu.json",
            (
                F(f"bytes/{dt}/acts_bytes_per_token", PCT1, 1e-3),
                F(f"bytes/{dt}/acts_bytes_per_value", PCT2),
                F(f"error_vs_fp32/{dt}/rel_l2_median", "{:.2f}" if dt == "bf16" else PCT1, 100),
                F(f"error_vs_fp32/{dt}/rel_l2_max", "{:.2f}" if dt == "bf16" else PCT1, 100),
                F(f"ratios/capture_{dt}_over_forward_to_L29/median_per_round", PCT2),
            ),
        )
        for label, dt in (("bf16 (default)", "bf16"), ("fp8", "fp8"), ("int8", "int8"), ("q16", "q16"))
    ],
    Passage(
        "README.md",
        "Raw bf16 is {} KB per token (2 bytes a value). CLT-Forge quotes ~{} KB per token in fp16 for GPT-2 small "
        "({} bytes a value) and {}-{} KB with int8 + zstd ({}-{}); its one scale per layer, measured on our rows, "
        "takes {} bytes a value but loses {}% of one hook ({}% of its codes are zero).",
        "all_layer_capture_cpu.json",
        (
            F("raw_bf16_bytes_per_token", PCT1, 1e-3),
            F("clt_forge/quoted_KB_per_token/fp16"),
            F("clt_forge/quoted_bytes_per_value/fp16", PCT1),
            F("clt_forge/quoted_KB_per_token/int8_zstd/0"),
            F("clt_forge/quoted_KB_per_token/int8_zstd/1"),
            F("clt_forge/quoted_bytes_per_value/int8_zstd/0", PCT2),
            F("clt_forge/quoted_bytes_per_value/int8_zstd/1", PCT2),
            F("clt_forge/their_scheme_measured_on_our_rows/acts_bytes_per_value", PCT2),
            F("clt_forge/their_scheme_measured_on_our_rows/rel_l2_max", MS, 100),
            F("clt_forge/their_scheme_measured_on_our_rows/zero_code_fraction_max", PCT1, 100),
        ),
    ),
    Passage(
        "README.md",
        "stores all {} MLP inputs and outputs of SmolLM2-135M",
        "all_layer_capture_cpu.json",
        (F("model/hook_count"),),
    ),
    # --- README.md: CLTs and crosscoders ---------------------------------------------------
    Passage(
        "README.md",
        "{} hooks captured in one forward, {}k rows of the pydoc text, {}k training tokens), TopK, m={} and k={} per "
        "layer, batch {}, {} steps,",
        "clt_cpu.json",
        (
            F(lambda d: len(d["parts"]["data"]["hooks"])),
            F("parts/data/rows", "{:.0f}", 1e-3),
            F("parts/clt/setup/tokens", "{:.0f}", 1e-3),
            F("parts/data/settings/latents"),
            F("parts/data/settings/k"),
            F("parts/data/settings/batch"),
            F("parts/data/settings/steps"),
        ),
    ),
    Passage(
        "README.md",
        "| held-out FVU, mean of the 8 MLP outputs | {} | {} |",
        "clt_cpu.json",
        (F(CLT + "fvu_mean_of_layers", "{:.3f}"), F(TC + "fvu_mean_of_layers", "{:.3f}")),
    ),
    Passage(
        "README.md",
        "| per layer, 8 / 12 / 15 | {} / {} / {} | {} / {} / {} |",
        "clt_cpu.json",
        (
            *(F(f"{CLT}fvu_per_layer/{i}", "{:.3f}") for i in (0, 4, 7)),
            *(F(f"{TC}fvu_per_layer/{i}", "{:.3f}") for i in (0, 4, 7)),
        ),
    ),
    Passage(
        "README.md",
        "| LM loss recovered, all 8 MLP outputs replaced at once ({} held-out tokens) | {}% | {}% |",
        "clt_cpu.json",
        (
            F("parts/clt/eval_model/clt/tokens", "{:,}"),
            F("parts/clt/eval_model/clt/recovered", PCT1, 100),
            F("parts/clt/eval_model/transcoders_x8/recovered", PCT1, 100),
        ),
    ),
    Passage(
        "README.md",
        "| latents dead on held-out rows | {}% ({}% at layer 15) | {}% |",
        "clt_cpu.json",
        (
            F(CLT + "dead_frac_mean_of_layers", PCT1, 100),
            F(CLT + "dead_frac_per_layer/7", PCT1, 100),
            F(TC + "dead_frac_mean", PCT1, 100),
        ),
    ),
    Passage(
        "README.md",
        "| training step, batch 512 (interleaved medians) | {} ms (same model, code densified to `[B, L m]`: {} ms) "
        "| {} ms for all 8 |",
        "clt_cpu.json",
        (
            F("parts/speed/step_timing/actstore_clt/median_s", MS, 1e3),
            F("parts/speed/step_timing/dense_decode/median_s", MS, 1e3),
            F("parts/speed/step_timing/actstore_transcoders_x8/median_s", MS, 1e3),
        ),
    ),
    Passage(
        "README.md",
        "| peak RSS at 8 / 16 layers, synthetic rows | {} / {} MiB (dense decode {} / {}) | |",
        "clt_cpu.json",
        tuple(
            F(f"parts/memory/runs/{r}/peak_mib", MS)
            for r in ("L8_actstore_clt", "L16_actstore_clt", "L8_dense_decode", "L16_dense_decode")
        ),
    ),
    Passage(
        "README.md",
        "The CLT wins at layers {} and loses at layer {}, with {}x the parameters.",
        "clt_cpu.json",
        (
            F(lambda d: _clt_wins(d, True)),
            F(lambda d: _clt_wins(d, False)),
            F(lambda d: d["parts"]["clt"]["clt"]["params"] / d["parts"]["clt"]["transcoders"]["params_total"], PCT1),
        ),
    ),
    Passage(
        "README.md",
        "A layer crosscoder over the MLP outputs of layers 9, 12 and 15 ({} latents, k={}) reached a mean held-out FVU "
        "of {} against {} for three SAEs of {} latents and k={}.",
        "clt_cpu.json",
        (
            F("parts/crosscoder/setup/crosscoder_m_total"),
            F("parts/crosscoder/setup/crosscoder_k_total"),
            F("parts/crosscoder/crosscoder/fvu_mean", "{:.3f}"),
            F("parts/crosscoder/saes/fvu_mean", "{:.3f}"),
            F("parts/crosscoder/setup/sae_m"),
            F("parts/crosscoder/setup/sae_k"),
        ),
    ),
]


def _mmm(name: str, key: str, fmt: str) -> tuple[F, F, F]:
    """min / median / max of a bench_s3 variant's ``key`` (``gb_per_s`` or ``batches_per_s``)."""
    return tuple(F(f"results/{name}/{key}_min_median_max/{i}", fmt) for i in range(3))


S3_WARM = "ratios/loader_s3_cache_warm_over_local/"
FIGURES += [
    # --- benchmarks/README.md and docs/guide/object-storage.md: bench_s3 ---------------------
    Passage(
        "benchmarks/README.md",
        "Last run ({}, 2 shared cores, load {} at the start and {} at the end; min / median / max of {} rounds): "
        "write {} / {} / {} GB/s local, {} / {} / {} to S3; read {} / {} / {} GB/s local, {} / {} / {} from S3; "
        "loader {} / {} / {} batches/s local, {} / {} / {} from S3 ({}x of the medians: moto's whole-object reads), "
        "{} / {} / {} from S3 with the cache warm ({}x of the medians; the rounds allow {}-{}x, across the {}x "
        "target: {}).",
        "s3.json",
        (
            F(lambda d: d["meta"]["date"][:10]),
            F("meta/machine/loadavg_1_5_15_at_start/0", PCT1),
            F("meta/machine/loadavg_1_5_15_at_end/0", PCT1),
            F("config/repeats"),
            *_mmm("write_local", "gb_per_s", "{:.3f}"),
            *_mmm("write_s3", "gb_per_s", "{:.3f}"),
            *_mmm("read_local", "gb_per_s", "{:.3f}"),
            *_mmm("read_s3", "gb_per_s", "{:.3f}"),
            *_mmm("loader_local", "batches_per_s", MS),
            *_mmm("loader_s3", "batches_per_s", PCT1),
            F("ratios/loader_s3_over_local/of_medians", PCT2),
            *_mmm("loader_s3_cache_warm", "batches_per_s", MS),
            F(S3_WARM + "of_medians", PCT2),
            F(S3_WARM + "range/0", PCT2),
            F(S3_WARM + "range/1", PCT2),
            F("target_loader_cache_warm_over_local", PCT1),
            F(lambda d: d["target_verdict"].split(":")[0]),
        ),
    ),
    Passage(
        "benchmarks/README.md",
        "the same store (encoder.layer.3, the first {} rows of the text repeated to {} rows, {} MB as bf16) in "
        "the layout `actstore.create` gives by default ({} chunks of {} rows a shard: two full shards;",
        "s3.json",
        (
            F("config/real_rows", "{:,}"),
            F("config/rows", "{:,}"),
            F("config/uncompressed_bytes", MS, 1e-6),
            F("config/layout/chunks_per_shard"),
            F("config/layout/chunk_rows"),
        ),
    ),
    Passage(
        "docs/guide/object-storage.md",
        "{} MB of MiniLM bf16 in two full shards, medians of {} rounds): write {} GB/s to S3 vs {} to local disk, "
        "both durable; `Store.read` {} vs {} GB/s; the loader {} batches/s from S3 vs {} locally (each range "
        "request costs moto a whole ~100 MB shard), and {} ({}x of the medians, the rounds allowing {}-{}x: the "
        "{}x target is {} by this run)",
        "s3.json",
        (
            F("config/uncompressed_bytes", MS, 1e-6),
            F("config/repeats"),
            F("results/write_s3/gb_per_s", "{:.3f}"),
            F("results/write_local/gb_per_s", "{:.3f}"),
            F("results/read_s3/gb_per_s", "{:.3f}"),
            F("results/read_local/gb_per_s", "{:.3f}"),
            F("results/loader_s3/batches_per_s", PCT1),
            F("results/loader_local/batches_per_s", MS),
            F("results/loader_s3_cache_warm/batches_per_s", MS),
            F(S3_WARM + "of_medians", PCT2),
            F(S3_WARM + "range/0", PCT2),
            F(S3_WARM + "range/1", PCT2),
            F("target_loader_cache_warm_over_local", PCT1),
            F(lambda d: d["target_verdict"].split(":")[0]),
        ),
    ),
]


def _clt_wins(d: dict, wins: bool) -> str:
    """The layers (8..15) where the CLT's held-out FVU is below (``wins``) / above the
    per-layer transcoder's, as the README prints them ("9-15", "8")."""
    clt, tc = d["parts"]["clt"]["clt"]["fvu_per_layer"], d["parts"]["clt"]["transcoders"]["fvu_per_layer"]
    layers = [8 + i for i, (a, b) in enumerate(zip(clt, tc)) if (a < b) == wins]
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ", ".join(map(str, layers))


# Figures the documents quote that no result file holds (checked by hand, or not figures of a run).
NOT_BACKED = {
    "README.md": [
        "the make demo / make test install and run times (66/145/19/211 s, 112/460/572 s, 1,399 tests): measured "
        "by hand on a fresh machine, no result file",
        "CI's lint and docs build, 8 s: by hand",
        "Matryoshka loss parity is also in dictionaries_cpu.json (checked above); 'SAELens ... give the held-out FVU "
        "actstore reports' is a test (tests/sae/test_transcoder.py), not a figure",
        "945 MiB, the capped shard buffer of 60 hooks: computed from the layout (checked against the code below)",
        "weights within 2e-4 relative over two torchrun ranks: a test's bound (tests/sae/test_clt.py)",
    ],
}


@pytest.mark.parametrize("passage", FIGURES, ids=lambda p: f"{p.doc}:{p.result}:{p.template[:40]}")
def test_the_document_quotes_the_result_files_figures(passage):
    got = missing(passage, (REPO / passage.doc).read_text())
    assert got is None, f"{passage.doc} does not read, as {passage.result} says:\n  {got}"


def test_the_capped_shard_buffer_the_readme_quotes_is_the_layouts():
    import numpy as np

    from actstore.store.format import make_schema

    hooks = {f"model.layers.{i}.mlp{s}": 576 for i in range(30) for s in ("", ":input")}
    sch = make_schema(hooks, "bf16")
    mib = sch.shard_rows * sum(d * np.dtype("uint16").itemsize for d in hooks.values()) / 2**20
    text = squash((REPO / "README.md").read_text())
    assert f"1 GiB for all hooks together: {mib:.0f} MiB here" in text


def test_a_figure_that_differs_from_its_result_file_fails():
    # Planted: one figure off in the document's text; and one in (a copy of) the result file.
    passage = next(p for p in FIGURES if p.result == "clt_cpu.json" and "per layer, 8 / 12 / 15" in p.template)
    text = (REPO / passage.doc).read_text()
    assert missing(passage, text) is None
    right = squash(passage.expected())
    assert missing(passage, squash(text).replace(right, right.replace("| 0.", "| 0.9", 1))) is not None
    data = json.loads(json.dumps(load(passage.result)))
    data["parts"]["clt"]["clt"]["fvu_per_layer"][0] += 0.01
    assert missing(passage, text, data) is not None


def test_the_capture_dtype_help_quotes_the_all_layer_figures():
    """``actstore capture --dtype``'s help states each dtype's measured ratio and error: the
    figures of all_layer_capture_cpu.json (ratio to raw bf16; median hook's relative error)."""
    from dataclasses import fields

    from actstore.capture.config import CaptureConfig

    text = squash(next(f for f in fields(CaptureConfig) if f.name == "dtype").metadata["help"].replace("%%", "%"))
    data = load("all_layer_capture_cpu.json")
    digits = {"bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "q16": 2}
    for dt, n in digits.items():
        ratio = data["bytes"][dt]["ratio_vs_raw_bf16"]
        err = data["error_vs_fp32"][dt]["rel_l2_median"] * 100
        assert f"{dt} {ratio:.2f}x, {err:.{n}f}%" in text, (dt, text)
    assert f"fp32 {data['bytes']['fp32']['ratio_vs_raw_bf16']:.2f}x, exact" in text
    assert f"(worst hook {data['error_vs_fp32']['int8']['rel_l2_max'] * 100:.1f}%)" in text
