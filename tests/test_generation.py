"""The transformers generator: same answers as plain ``model.generate``, on both attention paths."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selftaught.config import GenerationConfig, ModelConfig
from selftaught.generation import SamplingParams, get_generator
from selftaught.generation.base import truncate_at_stop
from selftaught.generation.shared_prefix import cache_kwarg
from selftaught.generation.transformers_backend import PromptTooLongError
from selftaught.tasks import get_task

TASK = get_task("addition", {"digits_min": 1, "digits_max": 2})
STOP = TASK.stop


def _prompts(k: int = 8) -> list[str]:
    return [TASK.prompt(e) for e in TASK.load("test", k, seed=3)]


def _generator(model: str, batch_size: int = 5, shared: bool = True):
    g = get_generator(model, ModelConfig(dtype="float32"), GenerationConfig(batch_size=batch_size))
    if not shared:  # force the copy-the-prefix fallback path
        g.shared_prefix = False
        g.model.set_attn_implementation("sdpa")
    return g


def _reference(model_path: str, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy ``model.generate`` one prompt at a time, cut at the first stop string."""
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    out = []
    for p in prompts:
        ids = tok(p, return_tensors="pt", add_special_tokens=False).input_ids
        gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        out.append(truncate_at_stop(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True), STOP)[0])
    return out


@pytest.mark.parametrize("shared", [True, False])
def test_greedy_matches_plain_generate(tiny_model, shared):
    prompts = _prompts()
    g = _generator(tiny_model, shared=shared)
    assert g.shared_prefix is shared
    got = g.generate(prompts, SamplingParams(max_new_tokens=24, stop=STOP))
    assert [c[0].text for c in got] == _reference(tiny_model, prompts, 24)
    assert all(c[0].finish in ("stop", "eos", "length") for c in got)
    # the tiny model has learnt the format: most answers end at the stop string
    assert sum(c[0].finish == "stop" for c in got) >= len(prompts) // 2


def test_paths_agree_when_sampling(tiny_model):
    """Sampled: varied lengths, so rows leave the batch at different steps on both paths."""
    prompts = _prompts(8)
    params = SamplingParams(max_new_tokens=16, temperature=1.0, stop=STOP, seed=1)
    a = _generator(tiny_model, batch_size=4, shared=True).generate(prompts, params)
    b = _generator(tiny_model, batch_size=4, shared=False).generate(prompts, params)
    assert [(c[0].text, c[0].tokens, c[0].finish) for c in a] == [(c[0].text, c[0].tokens, c[0].finish) for c in b]
    assert len({c[0].tokens for c in a}) > 1  # rows did finish at different lengths


def test_stop_string_is_cut_and_counted(tiny_model):
    got = _generator(tiny_model).generate(_prompts(4), SamplingParams(max_new_tokens=24, stop=STOP))
    for (c,) in got:
        if c.finish == "stop":
            assert c.stop in STOP and not any(s in c.text for s in STOP)
            assert c.tokens > 0


def test_sampling_is_seeded_and_n_per_prompt(tiny_model):
    g = _generator(tiny_model)
    params = SamplingParams(max_new_tokens=12, temperature=1.0, n=3, stop=STOP, seed=7)
    a, b = g.generate(_prompts(4), params), g.generate(_prompts(4), params)
    assert [len(x) for x in a] == [3] * 4
    assert [[c.text for c in x] for x in a] == [[c.text for c in x] for x in b]
    assert len({c.text for x in a for c in x}) > 4  # samples differ


def test_prompt_too_long_is_a_clear_error(tiny_model):
    with pytest.raises(PromptTooLongError, match="max_new_tokens"):
        _generator(tiny_model).generate(["Q: 1 + 1 " * 300], SamplingParams(max_new_tokens=8))


def test_cache_goes_under_the_name_this_transformers_takes():
    # transformers 5.2x renamed forward's past_key_values to cache; older 5.x swallows cache=
    # silently in **kwargs, so the wrong name would leave the KV cache empty.
    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, **kwargs): ...

    class New(torch.nn.Module):
        def forward(self, input_ids=None, cache=None, **kwargs): ...

    class Wrapped(torch.nn.Module):  # a peft model: the name is the base model's
        def get_base_model(self):
            return Old()

    assert cache_kwarg(Old(), "kv") == {"past_key_values": "kv"}
    assert cache_kwarg(New(), "kv") == {"cache": "kv"}
    assert cache_kwarg(Wrapped(), "kv") == {"past_key_values": "kv"}


def _texts(results) -> list[list[str]]:
    return [[c.text for c in x] for x in results]


def test_samples_do_not_depend_on_batch_size_or_chunking(tiny_model):
    """At temperature > 0 each (prompt, sample) row draws with its own seed: the same samples
    at batch sizes 1, 3 and 8, and when the prompts come in two calls (a resumed stage)."""
    prompts, seeds = _prompts(6), [11, 12, 13, 14, 15, 16]
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.95, n=2, stop=STOP)
    by_batch = {b: _texts(_generator(tiny_model, batch_size=b).generate(prompts, params, seeds=seeds))
                for b in (1, 3, 8)}
    assert by_batch[1] == by_batch[3] == by_batch[8]
    g = _generator(tiny_model, batch_size=3)
    resumed = _texts(g.generate(prompts[:2], params, seeds=seeds[:2])) + _texts(
        g.generate(prompts[2:], params, seeds=seeds[2:]))
    assert resumed == by_batch[1]
    assert len({t for x in by_batch[1] for t in x}) > 6  # samples differ: it did sample
    other = _texts(g.generate(prompts, params, seeds=[s + 100 for s in seeds]))
    assert other != by_batch[1]  # and the seed decides them


def test_derived_seeds_are_stable_and_distinct():
    from selftaught.generation.base import derive_seed

    # A stable hash (blake2b), not Python's per-process hash(): this value holds in any process.
    assert derive_seed(0, 1, "generations", "train-3") == derive_seed(0, 1, "generations", "train-3")
    seeds = {derive_seed(0, n, stage, f"train-{i}") for n in (1, 2) for stage in ("generations", "rationalizations")
             for i in range(100)}
    assert len(seeds) == 400 and all(0 <= s < 2**31 for s in seeds)
