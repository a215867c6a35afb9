"""Generation on GPUs with vLLM's offline engine (``pip install 'selftaught[vllm]'``).

One ``vllm.LLM`` per checkpoint: the loop asks for a generator with the new model path every
iteration, and ``close`` frees the GPU before fine-tuning. A LoRA checkpoint (an adapter) is
served by one engine per run holding the base model, with the adapter as a ``LoRARequest``.
Options (``generation.vllm.*``): tensor and data parallel size, memory, prefix caching. ``enable_prefix_caching`` makes the
few-shot prefix that every prompt shares a one-time cost, as the transformers backend does by
hand; ``LLM.generate`` batches the whole stage with continuous batching.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path

from selftaught.config import ConfigError, GenerationConfig, ModelConfig, option
from selftaught.generation.base import (Completion, Generator, SamplingParams, prompt_seeds, register,
                                         truncate_at_stop)


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise ConfigError(
            "generation.backend=vllm needs vLLM, which runs on NVIDIA/AMD GPUs: "
            "pip install 'selftaught[vllm]' (or use generation.backend=transformers on a CPU)"
        ) from None
    return vllm


@dataclass
class VLLMOptions:
    gpu_memory_utilization: float = option(
        "Fraction of each GPU's memory vLLM may take (given back before each fine-tune).", default=0.85)
    tensor_parallel_size: int = option("GPUs one copy of the model is split over (vLLM's tensor "
                                       "parallelism).", default=1)
    data_parallel_size: int = option("Copies of the model, each on tensor_parallel_size GPUs, "
                                     "that share the prompts (vLLM's data parallelism).", default=1)
    enable_prefix_caching: bool = option(
        "Reuse the KV cache of the few-shot prefix that every prompt of a stage shares.", default=True)
    max_lora_rank: int = option("training.method=lora: the largest adapter rank the engine serves.",
                                default=64)

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError("generation.vllm.gpu_memory_utilization must be in (0, 1], got "
                              f"{self.gpu_memory_utilization}")
        for key in ("tensor_parallel_size", "data_parallel_size", "max_lora_rank"):
            if getattr(self, key) < 1:
                raise ConfigError(f"generation.vllm.{key} must be >= 1, got {getattr(self, key)}")


# LoRA: one engine per base model for the whole run. Every iteration fine-tunes the same base M,
# so each iteration's adapter is served by the engine already holding M (a LoRARequest); between
# stages the engine sleeps (weights to CPU memory, KV cache dropped), giving the GPU to training.
_LORA_ENGINES: dict[tuple, object] = {}
_ADAPTER_IDS: dict[str, int] = {}


@register
class VLLMGenerator(Generator):
    name = "vllm"
    Options = VLLMOptions

    def __init__(self, model_path: str, model: ModelConfig, config: GenerationConfig):
        super().__init__(model_path, model, config)
        self.vllm = _import_vllm()
        o = config.vllm
        adapter = Path(model_path) / "adapter_config.json"
        self.lora = None
        engine = dict(
            dtype=model.dtype, enable_prefix_caching=o.enable_prefix_caching,
            gpu_memory_utilization=o.gpu_memory_utilization, max_num_seqs=max(config.batch_size, 1),
            tensor_parallel_size=o.tensor_parallel_size,
        )
        if o.data_parallel_size > 1:  # passed only when asked: older vLLM has no such argument
            engine["data_parallel_size"] = o.data_parallel_size
        if not adapter.is_file():
            # 'auto': vLLM's own choice (bf16 for bf16 checkpoints, fp16 for fp32 ones).
            self.llm = self.vllm.LLM(model=model_path, **engine)
            return
        from vllm.lora.request import LoRARequest

        base = json.loads(adapter.read_text())["base_model_name_or_path"]
        key = (base, tuple(sorted(engine.items())), o.max_lora_rank)
        if key in _LORA_ENGINES:
            self.llm = _LORA_ENGINES[key]
            self.llm.wake_up()
        else:
            self.llm = _LORA_ENGINES[key] = self.vllm.LLM(
                model=base, enable_lora=True, max_lora_rank=o.max_lora_rank, enable_sleep_mode=True, **engine)
        # one id per adapter: vLLM caches adapters by id
        lora_id = _ADAPTER_IDS.setdefault(model_path, len(_ADAPTER_IDS) + 1)
        self.lora = LoRARequest(f"adapter-{lora_id}", lora_id, model_path)

    def generate(
        self, prompts: list[str], params: SamplingParams, desc: str = "generate",
        seeds: list[int] | None = None,
    ) -> list[list[Completion]]:
        start = time.perf_counter()
        # One SamplingParams per request, each with its prompt's seed: vLLM then draws a
        # request's n samples from its own generator, whatever else is in the batch.
        sampling = [self.vllm.SamplingParams(
            n=params.n, temperature=params.temperature, top_p=params.top_p,
            max_tokens=params.max_new_tokens, stop=list(params.stop), seed=seed,
        ) for seed in prompt_seeds(prompts, params, seeds)]
        extra = {"lora_request": self.lora} if self.lora is not None else {}
        outputs = self.llm.generate(prompts, sampling, use_tqdm=True, **extra)
        results = [[_completion(c, params.stop) for c in out.outputs] for out in outputs]
        self.stats.seconds += time.perf_counter() - start
        self.stats.tokens += sum(c.tokens for r in results for c in r)
        self.stats.prompts += len(prompts)
        return results

    def close(self) -> None:
        """Give the GPU back for fine-tuning (vLLM's documented clean-up between engines)."""
        if getattr(self, "llm", None) is None:
            return
        if self.lora is not None:  # the run's LoRA engine sleeps until the next adapter
            self.llm.sleep(level=1)
            self.llm = None
            return
        del self.llm
        self.llm = None
        gc.collect()
        try:
            from vllm.distributed import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        except ImportError:  # older vLLM
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _completion(output, stops: tuple[str, ...]) -> Completion:
    """vLLM's CompletionOutput: stop_reason is the stop string, a stop token id, or None (EOS)."""
    text, hit = truncate_at_stop(output.text, stops)
    tokens = len(output.token_ids)
    if output.finish_reason == "length" and hit is None:
        return Completion(text, tokens, "length")
    if hit is not None or output.stop_reason in stops:
        return Completion(text, tokens, "stop", hit or output.stop_reason)
    return Completion(text, tokens, "eos")
