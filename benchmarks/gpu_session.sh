#!/usr/bin/env bash
# Everything a GPU session owes, in one device call (the machine has no package index).
#
# Here, first:   ../shared/tools/gpu-wheels eai-sparsify==1.3.3 safetensors tqdm einops
# Then run:      bash benchmarks/gpu_session.sh      (through the device tool; results land in $OUT)
#
# It installs the wheels, builds actstore._C, runs the tests marked gpu, then times the SAE
# kernels (forward, forward+backward, peak memory, per-kernel TFLOP/s and GB/s, against eager,
# torch.compile, sparsify and the bf16 GEMM ceiling), the store -> loader -> step pipeline, the
# loader feed, the trainer against SAELens where it is installed, and data-parallel training
# under torchrun (NCCL, one rank per GPU; and two ranks per GPU over gloo); it calibrates the
# measuring dispatch (topk_encode: fused kernel vs split kernel vs chunked GEMM vs eager; sparse_decode:
# Triton vs embedding_bag vs dense GEMM; encoder_grads: Triton vs dense vs reference; per shape class; the
# choices land in $OUT/dispatch.json) and times capture and store I/O. Commit $OUT's JSON into
# benchmarks/results/ (measured figures, beside the predicted ones of gpu_model.json).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
# The tests marked gpu (they run on the CPU elsewhere); ACTSTORE_REQUIRE_GPU=1 refuses to run them without CUDA.
ACTSTORE_REQUIRE_GPU=1 python3 -m pytest -q -x -m gpu 2>&1 | tail -15 | tee "$OUT/tests.txt"
run() { echo "== $*"; timeout 900 python3 "$@" 2>&1 | tail -40; }
run benchmarks/bench_sae_kernels.py --device cuda --shape small --shape big | tee "$OUT/sae_kernels.txt"
run benchmarks/bench_sae_pipeline.py --device cuda | tee "$OUT/sae_pipeline.txt"
run benchmarks/bench_sae_decode_crossover.py --device cuda --n 8192 --d 4096 --m 32768 | tee "$OUT/crossover.txt"
run benchmarks/bench_loader_feed.py --device cuda | tee "$OUT/loader_feed.txt"
# The measuring dispatch at the shapes people train: its timings are the fused and split
# kernels' first measured figures against the chunked cuBLAS path (and eager up to m=32768);
# bench_sae_kernels.py above times the same candidates alone (topk_encode_fused / _split /
# _chunked / _eager beside the bf16 GEMM). The split kernel's autotuned tiles are printed. Then the
# sparse decode (Triton CSR kernel vs embedding_bag vs scatter + GEMM, forward + backward) and the
# encoder backward (Triton vs dense products vs the reference) at TopK densities and at a threshold
# SAE's early density (10%).
ACTSTORE_DISPATCH_CACHE="$OUT/dispatch.json" timeout 600 python3 - <<'PY' 2>&1 | tee "$OUT/dispatch.txt"
import torch
from actstore.ops import _autotune, csr_decode, topk_encode
for n, d, m, k in [(4096, 768, 24576, 32), (8192, 2304, 65536, 64), (8192, 4096, 131072, 32)]:
    x = torch.randn(n, d, device="cuda", dtype=torch.bfloat16)
    W = (torch.randn(m, d, device="cuda") / d**0.5).to(torch.bfloat16)
    topk_encode(x, W, torch.zeros(m, device="cuda"), k)
    # The backward through the fused encoder: encoder_grads' dispatch times on this first backward.
    Wg = W.clone().requires_grad_()
    topk_encode(x, Wg, torch.zeros(m, device="cuda"), k)[0].sum().backward()
for n, d, m, per_row in [(4096, 768, 24576, 32), (8192, 2304, 65536, 64), (4096, 768, 24576, 2458), (2048, 2304, 16384, 1638)]:
    W = (torch.randn(m, d, device="cuda") / d**0.5).to(torch.bfloat16).requires_grad_()
    row_ptr = torch.arange(n + 1, device="cuda") * per_row
    cols = torch.randint(0, m, (n * per_row,), device="cuda")
    vals = torch.rand(n * per_row, device="cuda", requires_grad=True)
    csr_decode(row_ptr, cols, vals, W).sum().backward()  # forward + backward, timed as one
    with torch.no_grad():
        csr_decode(row_ptr, cols, vals, W)  # forward only: its own entry
for row in _autotune.table():
    print(row)
from actstore.kernels import topk_encode_split as S
print("split autotune:", {str(k): str(v) for k, v in S._topk_encode_split_tuned.cache.items()})
PY
run benchmarks/bench_capture.py --device cuda | tee "$OUT/capture.txt"
run benchmarks/bench_store_io.py | tee "$OUT/store_io.txt"
# Data-parallel training (issue 16): one rank per GPU over NCCL, then two ranks per GPU (more ranks
# than GPUs: actstore._dist shares the GPUs round-robin and joins over gloo). Each prints its summary.
python3 -c "import actstore, torch; w = actstore.create('/tmp/dp_store', {'h': 1024}, segment='s', dtype='bf16'); \
[w.append({'h': torch.randn(8192, 1024)}) for _ in range(8)]; w.close()"
NGPU=$(nvidia-smi -L | wc -l)
for NP in "$NGPU" $((2 * NGPU)); do
  echo "== torchrun --nproc_per_node=$NP actstore train (backend: $(LOCAL_WORLD_SIZE=$NP python3 -c 'from actstore._dist import backend; print(backend())'))"
  timeout 600 torchrun --nproc_per_node="$NP" -m actstore.cli train --store /tmp/dp_store --hook h --arch topk \
    --latents 16384 --k 32 --tokens 2000000 --batch-size 4096 --out "/tmp/dp_run_$NP" --no-progress --json 2>&1 \
    | tail -3 | tee "$OUT/train_dp_$NP.txt"
done
cp benchmarks/results/*cuda*.json "$OUT"/ 2>/dev/null
ls -l "$OUT"
