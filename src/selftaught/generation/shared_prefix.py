"""Attention over one few-shot prefix shared by every row of a batch, without copying it.

Every prompt in a STaR stage is the same few-shot prefix (~220 tokens for the default task)
followed by a short question. Copying the prefix's KV cache into each of 64 rows, and
re-reading 64 copies at every decoding step, was most of the decoding time on the CPU
(``torch.cat`` in ``DynamicCache`` alone was ~40%). Here the prefix keys and values are kept
once, and each row's queries meet them in one matrix product over all rows of the batch
(the idea of Hydragen, Juravsky et al. 2024); only the per-row suffix (question + generated
tokens) lives in a per-row cache, preallocated so that a step writes in place instead of
concatenating. Neither transformers nor torch offers attention with a shared prefix, so
this small attention function is written here and plugged in through transformers'
``AttentionInterface``; the prefix itself is encoded by the model's own SDPA path.
"""

from __future__ import annotations

import functools
import inspect

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION = "selftaught_shared_prefix"


def supports_shared_prefix(model) -> bool:
    """Plain causal attention through transformers' attention interface, and nothing else."""
    c = model.config
    layer_types = set(getattr(c, "layer_types", None) or ["full_attention"])
    return bool(getattr(c, "sliding_window", None) is None
                and getattr(c, "attn_logit_softcapping", None) is None
                and layer_types <= {"full_attention"}
                and getattr(model, "_supports_attention_backend", False))


def shared_prefix_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, Hq, T, D]
    key: torch.Tensor,  # [B, Hkv, S, D]: this row's suffix so far, from SuffixCache
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    shared_prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    suffix_mask: torch.Tensor | None = None,  # [B, T, S] bool: which suffix keys a query sees
    **kwargs,
) -> tuple[torch.Tensor, None]:
    if shared_prefix is None:  # encoding the prefix itself: ordinary causal attention
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    prefix_k, prefix_v = shared_prefix[module.layer_idx]  # [Hkv, P, D], seen by every query
    b, hq, t, d = query.shape
    hkv, p, s = key.shape[1], prefix_k.shape[1], key.shape[2]
    g = hq // hkv  # query heads per kv head (GQA): query head h reads kv head h // g
    scaling = scaling if scaling is not None else d**-0.5
    # Queries scaled before the products, as torch's math SDPA does, not the scores after: the
    # scores are (prefix + suffix) / head_dim times larger (3.5x for the default), and scaling
    # them was a pass over fresh memory as slow as the softmax. With head_dim 64 the scale is
    # 1/8, exact either way.
    q = (query * scaling).reshape(b, hkv, g * t, d)
    # Prefix: one batched product per kv head over the queries of all rows at once.
    q_rows = q.transpose(0, 1).reshape(hkv, b * g * t, d)
    scores_p = torch.bmm(q_rows, prefix_k.transpose(1, 2)).view(hkv, b, g * t, p).transpose(0, 1)
    scores_s = torch.matmul(q, key.transpose(-1, -2)).view(b, hkv, g, t, s)
    scores_s = scores_s.masked_fill(~suffix_mask[:, None, None], float("-inf")).view(b, hkv, g * t, s)
    weights = torch.cat([scores_p, scores_s], dim=-1).float().softmax(-1).to(query.dtype)
    w_p, w_s = weights.split([p, s], dim=-1)
    out_p = torch.bmm(w_p.transpose(0, 1).reshape(hkv, b * g * t, p), prefix_v)
    out = out_p.view(hkv, b, g * t, d).transpose(0, 1) + torch.matmul(w_s, value)
    return out.reshape(b, hq, t, d).transpose(1, 2), None  # [B, T, Hq, D], as the interface returns


AttentionInterface.register(ATTENTION, shared_prefix_attention)


class _SuffixLayer(CacheLayerMixin):
    """Per-row keys/values of the suffix, in a buffer sized for the whole decode."""

    is_sliding = False

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.keys = key_states.new_empty((b, h, self.capacity, d))
        self.values = value_states.new_empty((b, h, self.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"suffix cache full ({self.capacity} tokens)")  # a bug, not user input
        self.keys[:, :, self.length : end] = key_states
        self.values[:, :, self.length : end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def select_rows(self, rows: torch.Tensor) -> None:
        if self.is_initialized:  # copy only the filled part into a smaller buffer
            keys, values = self.keys[rows, :, : self.length], self.values[rows, :, : self.length]
            self.keys = self.keys.new_empty((len(rows), *self.keys.shape[1:]))
            self.values = self.values.new_empty((len(rows), *self.values.shape[1:]))
            self.keys[:, :, : self.length] = keys
            self.values[:, :, : self.length] = values

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        return self.capacity


class SuffixCache(Cache):
    """The per-row part of the KV cache; the shared prefix is passed to attention beside it."""

    def __init__(self, num_layers: int, capacity: int):
        super().__init__(layers=[_SuffixLayer(capacity) for _ in range(num_layers)])

    def select_rows(self, rows: torch.Tensor) -> None:
        for layer in self.layers:
            layer.select_rows(rows)


def encode_prefix(model, prefix_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Run the prefix once; return each layer's (keys, values) as [Hkv, P, D]."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(input_ids=prefix_ids[None], **cache_kwarg(model, cache), use_cache=True, logits_to_keep=1)
    return [(layer.keys[0].contiguous(), layer.values[0].contiguous()) for layer in cache.layers]


def cache_kwarg(model, cache) -> dict:
    """``{name: cache}`` for ``model.forward``: transformers 5.2x renamed ``past_key_values`` to
    ``cache``, and each version swallows the other name silently in its ``**kwargs``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {_cache_name(type(base)): cache}


@functools.lru_cache(maxsize=None)
def _cache_name(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"
