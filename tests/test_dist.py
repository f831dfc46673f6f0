"""actstore._dist.local_device: the one device-placement rule, with the GPU count and the
local rank injected (no GPU here), and a guard that no other module reads LOCAL_RANK."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import actstore
from actstore._dist import backend, local_device

CUDA = torch.device


@pytest.mark.parametrize(
    "device,gpus,local_rank,want",
    [
        ("auto", 2, 3, CUDA("cuda", 1)),  # more ranks than GPUs: round-robin
        (None, 2, 0, CUDA("cuda", 0)),
        ("cuda", 2, 3, CUDA("cuda", 1)),  # a bare "cuda" is this rank's GPU too
        (torch.device("cuda"), 4, 6, CUDA("cuda", 2)),
        ("auto", 1, 1, CUDA("cuda", 0)),  # the 2-rank test on a 1-GPU box
        ("cuda:1", 2, 0, CUDA("cuda", 1)),  # an explicit index is kept
        ("cpu", 8, 3, CUDA("cpu")),
        ("auto", 0, 3, CUDA("cpu")),  # no GPU: the CPU
    ],
)
def test_local_device_rule(device, gpus, local_rank, want):
    assert local_device(device, gpus=gpus, local_rank=local_rank) == want


def test_local_rank_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "5")
    assert local_device("auto", gpus=4) == CUDA("cuda", 1)
    monkeypatch.delenv("LOCAL_RANK")
    assert local_device("auto", gpus=4) == CUDA("cuda", 0)


def test_without_cuda_auto_is_the_cpu_everywhere():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only default")
    assert local_device("auto") == CUDA("cpu")


def test_only_the_rule_reads_local_rank():
    """Capture, the loader, the trainer and the analyses place devices through local_device."""
    pkg = Path(actstore.__file__).parent
    readers = sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*.py") if "LOCAL_RANK" in p.read_text())
    assert readers == ["_dist.py"], readers


@pytest.mark.parametrize("gpus,local_world,want", [(8, 8, "nccl"), (2, 1, "nccl"), (1, 2, "gloo"), (0, 2, "gloo")])
def test_backend_is_nccl_only_when_each_rank_has_its_own_gpu(gpus, local_world, want):
    assert backend(gpus=gpus, local_world=local_world) == want
