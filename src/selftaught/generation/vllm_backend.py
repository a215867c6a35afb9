"""Generation on GPUs with vLLM's offline engine (``pip install 'selftaught[vllm]'``).

One ``vllm.LLM`` per checkpoint: the loop asks for a generator with the new model path every
iteration, and ``close`` frees the GPU before fine-tuning. ``enable_prefix_caching`` makes the
few-shot prefix that every prompt shares a one-time cost, as the transformers backend does by
hand; ``LLM.generate`` batches the whole stage with continuous batching.
"""

from __future__ import annotations

import gc
import time

from selftaught.config import ConfigError, GenerationConfig, ModelConfig
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


@register
class VLLMGenerator(Generator):
    name = "vllm"

    def __init__(self, model_path: str, model: ModelConfig, config: GenerationConfig):
        super().__init__(model_path, model, config)
        self.vllm = _import_vllm()
        # 'auto': vLLM's own choice (bf16 for bf16 checkpoints, fp16 for fp32 ones).
        self.llm = self.vllm.LLM(
            model=model_path, dtype=model.dtype, enable_prefix_caching=True,
            gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            max_num_seqs=max(config.batch_size, 1),
        )

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
        outputs = self.llm.generate(prompts, sampling, use_tqdm=True)
        results = [[_completion(c, params.stop) for c in out.outputs] for out in outputs]
        self.stats.seconds += time.perf_counter() - start
        self.stats.tokens += sum(c.tokens for r in results for c in r)
        self.stats.prompts += len(prompts)
        return results

    def close(self) -> None:
        """Give the GPU back for fine-tuning (vLLM's documented clean-up between engines)."""
        if getattr(self, "llm", None) is None:
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
