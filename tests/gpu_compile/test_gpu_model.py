"""benchmarks/gpu_model.py: the roofline arithmetic on one hand-computed case (the issue's
target shape n=8192, d=4096, m=131072, k=32, bf16, on an H200) and the occupancy rule."""

from __future__ import annotations

import sys

import pytest

from helpers.paths import BENCHMARKS

sys.path.insert(0, str(BENCHMARKS))
import gpu_model as G  # noqa: E402


def test_topk_encode_at_the_target_shape_by_hand():
    s = G.Shape(8192, 4096, 131072, 32, "bf16")
    cfg = G.launch_config("topk_encode", s)
    assert cfg["BLOCK_N"] == 16  # today's launcher: 512 programs, each streams all of W_enc
    w = G.kernel_work("topk_encode", s, cfg)
    assert w["flops"] == 2 * 8192 * 131072 * 4096 == 8_796_093_022_208
    w_bytes = 131072 * 4096 * 2 + 131072 * 4  # W_enc bf16 + folded bias float32
    x_bytes, out_bytes = 8192 * 4096 * 2, 8192 * 32 * 12
    assert w["hbm_bytes"] == w_bytes + x_bytes + out_bytes
    assert w["l2_bytes"] == 512 * w_bytes + x_bytes + out_bytes == 550_094_503_936
    dev = G.DEVICES["H200-SXM"]
    p = G.predict(w, dev)
    assert p["bound_by"] == "l2" and p["predicted_s"] == pytest.approx(550_094_503_936 / 5.5e12)  # ~100 ms
    assert p["predicted_compute_s"] == pytest.approx(8.894e-3, rel=1e-3)  # 8.796e15 / 989e12
    floor = G.gemm_floor(s, dev)
    assert floor["predicted_gemm_s"] == pytest.approx(8.894e-3, rel=1e-3)
    # + the [n, m] bf16 pre-activations written and read once at 4.8 TB/s: 2 * 2.147e9 / 4.8e12
    assert floor["predicted_gemm_plus_topk_s"] - floor["predicted_gemm_s"] == pytest.approx(8.948e-4, rel=1e-3)


def test_occupancy_by_hand():
    dev = G.DEVICES["H100-SXM"]
    # 128 registers x 32 lanes = 4096 per warp, 4 warps: 65536 / 16384 = 4 blocks (smem would allow 10)
    o = G.occupancy(128, 4, 20480, dev)
    assert (o["blocks_per_sm"], o["warps_per_sm"], o["occupancy"], o["limited_by"]) == (4, 16, 0.25, "registers")
    # 255 registers round up to 8160 -> 8192 per warp: 2 blocks of 4 warps
    assert G.occupancy(255, 4, 0, dev)["blocks_per_sm"] == 2
    # 32 registers, 8 warps: threads limit 2048 / 256 = 8 blocks = 64 warps, full occupancy
    assert G.occupancy(32, 8, 0, dev)["occupancy"] == 1.0
    # 100 KiB of shared memory: (228 KiB) // (101 KiB) = 2 blocks
    assert G.occupancy(32, 4, 100 * 1024, dev) == {**o, "blocks_per_sm": 2, "warps_per_sm": 8, "occupancy": 0.125,
                                                   "limited_by": "shared memory"}  # fmt: skip


def test_split_encoder_at_the_target_shape_by_hand():
    s = G.Shape(8192, 4096, 131072, 32, "bf16")
    cfg = G.launch_config("topk_encode_split", s)
    assert (cfg["BLOCK_N"], cfg["BLOCK_M"], cfg["GROUP_N"]) == (128, 128, 16)
    w = G.kernel_work("topk_encode_split", s, cfg)
    # sample 2 sqrt(32 * 131072) = 4096 latents; 32 * 31 = 992 survivors expected per row; cap 2 * 992 + 64
    assert (w["sample_m"], w["expected_survivors_per_row"], w["cap"]) == (4096, 992, 2048)
    tiles = 64 * (4096 // 128 + (131072 - 4096) // 128)  # 64 row blocks x 1024 column blocks
    assert w["tile_l2_bytes"] == tiles * 256 * 4096 * 2 == 137_438_953_472
    w_bytes = 131072 * 4096 * 2 + 131072 * 4
    hbm = 4 * w_bytes + 8192 * 4096 * 2 + 8192 * 4096 * 24 + 8192 * 992 * 64 + 8192 * 32 * 12
    assert w["hbm_bytes"] == hbm and w["l2_bytes"] == w["tile_l2_bytes"] + hbm
    assert w["serial_hbm_bytes"] == 8192 * (2048 + 32) * 64
    dev = G.DEVICES["H200-SXM"]
    p = G.predict(w, dev)
    assert p["bound_by"] == "l2"
    # epilogue: 64 x 992 threshold tiles, ~1 survivor per row per tile (992 * 128 / 126976),
    # the fullest of 128 rows ~4.4; 6 instructions per element per round, 132 SMs x 4 x 1.98 GHz
    assert G.expected_max_poisson(1.0, 1) == pytest.approx(1.0) and G.expected_max_poisson(0.5, 1) == pytest.approx(0.5)
    rounds = G.expected_max_poisson(992 * 128 / 126976, 128)
    assert 4 < rounds < 5 and w["epilogue_rounds_per_tile"] == rounds
    epi = 64 * 992 * rounds * 6 * 128 * 128 / 32 / (132 * 4 * 1.98e9)  # ~0.8 ms
    assert p["predicted_epilogue_s"] == pytest.approx(epi)
    assert p["predicted_s"] == pytest.approx(w["l2_bytes"] / 5.5e12 + 8192 * 2080 * 64 / 4.8e12 + epi)  # ~27 ms
    assert p["predicted_tiled_gemm_s"] == pytest.approx(137_438_953_472 / 5.5e12)  # the tiles' L2 traffic: ~25 ms
    row = next(r for r in G.model([]) if r["kernel"] == "topk_encode_split" and r["shape"] == s.label)
    ratio = row["devices"]["H200-SXM"]["ratio_to_gemm"]
    assert ratio == pytest.approx(p["predicted_s"] / (2 * 8192 * 131072 * 4096 / 989e12))
    assert row["target_within_1_3x_of_gemm"]["H200-SXM"] == (ratio <= 1.3)
    # the L2 bandwidth that would bring it within 1.3x: l2 bytes / (1.3 x GEMM - the select)
    need = w["l2_bytes"] / (1.3 * 2 * 8192 * 131072 * 4096 / 989e12 - 8192 * 2080 * 64 / 4.8e12 - epi)
    assert row["l2_Bps_needed_for_1_3x"]["H200-SXM"] == pytest.approx(need)
