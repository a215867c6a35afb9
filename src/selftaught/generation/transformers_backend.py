"""Batched decoding with transformers models, written for STaR's prompt shape.

Every prompt in a STaR stage is the same few-shot prompt followed by one question, so this
backend encodes the shared prefix once and copies its KV cache into each batch instead of
re-encoding hundreds of tokens per question (``model.generate`` has no such reuse across
calls with different suffixes). Sequences leave the batch as soon as they hit a stop string,
so no compute goes to tokens past the answer.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, DynamicCache

from dataclasses import dataclass

from selftaught.config import ConfigError, GenerationConfig, ModelConfig, option
from selftaught.generation.shared_prefix import (ATTENTION, SuffixCache, cache_kwarg, encode_prefix,
                                                supports_shared_prefix)
from selftaught.generation.precision import cpu_decode_dtype
from selftaught.models import cache_root, load_causal_lm
from selftaught.generation.base import (
    Completion,
    Generator,
    SamplingParams,
    derive_seed,
    prompt_seeds,
    register,
    truncate_at_stop,
)


class PromptTooLongError(ValueError):
    pass


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(name: str, device: str) -> torch.dtype | None:
    """The precision ``model.dtype`` asks for; None where it is timed on the loaded model."""
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None  # "auto" on the CPU: whichever of fp32 and bf16 decodes faster here (precision.py)


def load_for_decoding(path: str, model: ModelConfig, batch_size: int, device: str):
    """``path`` on ``device`` in the precision ``model.dtype`` asks for: ``(model, dtype,
    timings)``, the timings being those behind an "auto" choice on the CPU (else None)."""
    dtype = pick_dtype(model.dtype, device)
    loaded = load_causal_lm(path, dtype=dtype or torch.float32)
    precision = None
    if dtype is None:
        dtype, precision = cpu_decode_dtype(loaded, batch_size, cache_root(model))
        loaded.to(dtype)
    return loaded.to(device).eval(), dtype, precision


@dataclass
class TransformersOptions:
    num_processes: int = option(
        "Processes a stage's prompts are spread over (one GPU each, or CPU processes), each "
        "decoding a contiguous share, gathered back in order; started with torchrun.",
        default=1,
    )

    def __post_init__(self) -> None:
        if self.num_processes < 1:
            raise ConfigError(f"generation.transformers.num_processes must be >= 1, got {self.num_processes}")


@register
class TransformersGenerator(Generator):
    name = "transformers"
    Options = TransformersOptions

    def __init__(self, model_path: str, model: ModelConfig, config: GenerationConfig):
        super().__init__(model_path, model, config)
        self.device = pick_device()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        # precision: the timings behind an "auto" choice on the CPU, else None
        self.model, self.dtype, self.precision = load_for_decoding(model_path, model, config.batch_size,
                                                                   self.device)
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {i for i in eos + [self.tokenizer.eos_token_id] if i is not None}
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = next(iter(self.eos_ids), 0)
        self.shared_prefix = supports_shared_prefix(self.model)
        if self.shared_prefix:
            self.model.set_attn_implementation(ATTENTION)
        self._prefix: tuple[tuple[int, ...], object] | None = None

    def close(self) -> None:
        self._prefix = None
        del self.model

    @torch.inference_mode()
    def generate(
        self, prompts: list[str], params: SamplingParams, desc: str = "generate",
        seeds: list[int] | None = None,
    ) -> list[list[Completion]]:
        start = time.perf_counter()
        ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        prefix = _common_prefix(ids)
        self._check_length(ids, params)
        # Bucket by length so a batch pads little; n samples of a prompt share its batch.
        order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
        rows = [(i, k) for i in order for k in range(params.n)]
        results: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
        # Each row (prompt i, sample k) samples with its own seed, so its tokens do not depend
        # on the rows it is batched with, the batch size, chunking or a resume.
        seeds = prompt_seeds(prompts, params, seeds)
        batch = self.config.batch_size
        with tqdm(total=len(rows), desc=desc, unit="seq", leave=False) as bar:
            for b in range(0, len(rows), batch):
                chunk = rows[b : b + batch]
                suffixes = [ids[i][len(prefix) :] for i, _ in chunk]
                row_seeds = [derive_seed(seeds[i], k) for i, k in chunk]
                for (i, k), c in zip(chunk, self._decode_batch(prefix, suffixes, params, row_seeds)):
                    results[i][k] = c
                bar.update(len(chunk))
        self.stats.seconds += time.perf_counter() - start
        self.stats.tokens += sum(c.tokens for r in results for c in r)
        self.stats.prompts += len(prompts)
        return results

    def _check_length(self, ids: list[list[int]], params: SamplingParams) -> None:
        longest = max(len(x) for x in ids)
        if self.context and longest + params.max_new_tokens > self.context:
            raise PromptTooLongError(
                f"a prompt of {longest} tokens plus generation.max_new_tokens="
                f"{params.max_new_tokens} exceeds the model's context of {self.context} tokens; "
                "use fewer or shorter few-shot examples, or lower generation.max_new_tokens"
            )

    def _decode_batch(
        self,
        prefix: tuple[int, ...],
        suffixes: list[list[int]],
        params: SamplingParams,
        row_seeds: list[int],
    ) -> list[Completion]:
        n, width, p = len(suffixes), max(len(s) for s in suffixes), len(prefix)
        dev = self.device
        # Left-pad each suffix *after* the shared prefix: [prefix | pad | suffix].
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        valid = torch.zeros((n, width), dtype=torch.bool)  # which suffix positions are real
        positions = torch.zeros((n, width), dtype=torch.long)
        for r, s in enumerate(suffixes):
            pad = width - len(s)
            input_ids[r, pad:] = torch.tensor(s)
            valid[r, pad:] = True
            positions[r, pad:] = torch.arange(p, p + len(s))
        input_ids, valid, positions = input_ids.to(dev), valid.to(dev), positions.to(dev)

        cache, shared = self._start_cache(prefix, n, width + params.max_new_tokens)
        if shared is None and p:  # the copying path attends to the prefix through the mask
            valid = torch.cat([valid.new_ones((n, p)), valid], dim=1)
        logits = self._forward(input_ids, positions, valid, cache, shared)
        next_pos = positions[:, -1:] + 1
        alive = list(range(n))  # original row of each live batch row
        generated: list[list[int]] = [[] for _ in range(n)]
        done: dict[int, Completion] = {}
        for step in range(params.max_new_tokens):
            tokens = _sample(logits, params, [row_seeds[r] for r in alive], step).tolist()
            keep = []
            for j, (row, tok) in enumerate(zip(alive, tokens)):
                finished = self._finish(generated[row], tok, params, last=step + 1 == params.max_new_tokens)
                if finished is None:
                    keep.append(j)
                else:
                    done[row] = finished
            if not keep:
                break
            if len(keep) < len(alive):  # drop finished rows from the batch and the cache
                idx = torch.tensor(keep, device=dev)
                if shared is None:
                    cache.batch_select_indices(idx)
                else:
                    cache.select_rows(idx)
                valid, next_pos = valid[idx], next_pos[idx]
                alive = [alive[j] for j in keep]
                tokens = [tokens[j] for j in keep]
            step_ids = torch.tensor(tokens, device=dev)[:, None]
            valid = torch.cat([valid, valid.new_ones((len(alive), 1))], dim=1)
            logits = self._forward(step_ids, next_pos, valid, cache, shared)
            next_pos = next_pos + 1
        return [done[r] for r in range(n)]

    def _start_cache(self, prefix: tuple[int, ...], n: int, capacity: int):
        """A fresh cache for ``n`` rows, and the shared prefix's keys/values if attention reads it apart."""
        if self.shared_prefix and prefix:
            if self._prefix is None or self._prefix[0] != prefix:
                self._prefix = (prefix, encode_prefix(self.model, torch.tensor(prefix, device=self.device)))
            return SuffixCache(self.model.config.num_hidden_layers, capacity), self._prefix[1]
        # Fallback for attention that the shared-prefix path does not cover (sliding windows,
        # soft-capping...): copy the prefix cache into every row.
        cache = DynamicCache(config=self.model.config)
        if prefix:
            if self._prefix is None or self._prefix[0] != prefix:
                full = DynamicCache(config=self.model.config)
                self.model(input_ids=torch.tensor([prefix], device=self.device),
                           **cache_kwarg(self.model, full), use_cache=True, logits_to_keep=1)
                self._prefix = (prefix, full)
            for layer, src in enumerate(self._prefix[1].layers):
                cache.update(src.keys.expand(n, -1, -1, -1).clone(),
                             src.values.expand(n, -1, -1, -1).clone(), layer)
        return cache, None

    def _forward(self, ids, positions, valid, cache, shared) -> torch.Tensor:
        """Logits of the last position of each row, in float32."""
        if shared is not None:
            t, s = ids.shape[1], valid.shape[1]
            seen = valid[:, None, :].expand(-1, t, -1)
            if t > 1:  # causal among the new tokens
                seen = seen & torch.ones(t, s, dtype=torch.bool, device=valid.device).tril(s - t)
            out = self.model(input_ids=ids, position_ids=positions, **cache_kwarg(self.model, cache),
                             use_cache=True, logits_to_keep=1, shared_prefix=shared, suffix_mask=seen)
        else:
            out = self.model(input_ids=ids, attention_mask=valid.long(), position_ids=positions,
                             **cache_kwarg(self.model, cache), use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float()

    def _finish(self, generated: list[int], tok: int, params: SamplingParams, last: bool) -> Completion | None:
        """Append ``tok``; return the Completion if the sequence is over, else None."""
        if tok in self.eos_ids:
            return Completion(self.tokenizer.decode(generated), len(generated), "eos")
        generated.append(tok)
        text = self.tokenizer.decode(generated)
        kept, stop = truncate_at_stop(text, params.stop)
        if stop is not None:
            return Completion(kept, len(generated), "stop", stop)
        if last:
            return Completion(text, len(generated), "length")
        return None


def _common_prefix(ids: list[list[int]]) -> tuple[int, ...]:
    """Longest token prefix shared by all prompts, leaving each at least one token of its own."""
    first = ids[0]
    n = min(len(x) for x in ids) - 1
    for x in ids[1:]:
        k = 0
        while k < n and x[k] == first[k]:
            k += 1
        n = k
    return tuple(first[: max(n, 0)])


def _sample(logits: torch.Tensor, params: SamplingParams, row_seeds: list[int], step: int) -> torch.Tensor:
    if params.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1:
        sorted_p, sorted_i = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > params.top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter_(-1, sorted_i, sorted_p)
    # Counter-based noise: one uniform per (row seed, step), inverted through the row's CDF.
    # torch.multinomial draws from one generator shared by the batch, so a row's sample would
    # depend on its neighbours; no torch or transformers sampler takes a seed per row.
    u = torch.tensor([derive_seed(s, step) / 2**31 for s in row_seeds], device=probs.device)
    cdf = probs.cumsum(-1)
    picked = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1).contiguous(), right=True)
    return picked.squeeze(-1).clamp_(max=probs.shape[-1] - 1)
