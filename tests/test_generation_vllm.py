"""The vLLM backend. vLLM needs a GPU, so here: the error without it, and the mapping to and
from vLLM's documented offline API (``LLM``, ``SamplingParams``, ``RequestOutput.outputs``)
checked against a stand-in module that records what it was given."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest

from selftaught.config import ConfigError, GenerationConfig, ModelConfig
from selftaught.generation import SamplingParams, get_generator
from selftaught.generation.base import derive_seed


def test_clear_error_without_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'selftaught\[vllm\]'"):
        get_generator("some/model", ModelConfig(), GenerationConfig(backend="vllm"))


@dataclass
class _Output:  # vllm.outputs.CompletionOutput
    text: str
    token_ids: list[int]
    finish_reason: str
    stop_reason: object = None


class _FakeVLLM(types.ModuleType):
    def __init__(self):
        super().__init__("vllm")
        self.made, self.freed = [], 0
        fake = self

        class LLM:
            def __init__(self, **kwargs):
                fake.made.append(kwargs)

            def generate(self, prompts, sampling, use_tqdm=True):
                fake.sampling = sampling
                outs = [_Output(" 3 + 4 = 7. The answer is 7.", [1] * 12, "stop", "\n\n"),
                        _Output(" 1 + 1 = 2", [1] * 5, "stop", None),  # end of sequence
                        _Output(" 9 + 9 = 18 and so on", [1] * 8, "length", None)]
                assert isinstance(sampling, list) and len(sampling) == len(prompts)  # one per request
                return [types.SimpleNamespace(outputs=outs[: s.kwargs["n"]]) for s in sampling]

        class SamplingParams_:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        self.LLM, self.SamplingParams = LLM, SamplingParams_
        self.distributed = types.ModuleType("vllm.distributed")
        self.distributed.cleanup_dist_env_and_memory = lambda: setattr(fake, "freed", fake.freed + 1)


def test_maps_params_and_outputs(monkeypatch):
    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.distributed", fake.distributed)
    g = get_generator("/ckpt/iteration-01", ModelConfig(dtype="bfloat16"),
                      GenerationConfig(backend="vllm", batch_size=128, vllm_gpu_memory_utilization=0.6))
    assert fake.made == [{"model": "/ckpt/iteration-01", "dtype": "bfloat16", "enable_prefix_caching": True,
                          "gpu_memory_utilization": 0.6, "max_num_seqs": 128}]
    params = SamplingParams(max_new_tokens=40, temperature=0.7, top_p=0.9, n=3, stop=("\n\n", "\nQ:"), seed=5)
    (a, b, c), = g.generate(["Q: What is 3 + 4?\nA:"], params, seeds=[1234])
    assert fake.sampling[0].kwargs == {"n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 40,
                                       "stop": ["\n\n", "\nQ:"], "seed": 1234}  # the prompt's own seed
    g.generate(["x", "y"], params)  # no seeds: one per position, from params.seed
    assert [s.kwargs["seed"] for s in fake.sampling] == [derive_seed(5, 0), derive_seed(5, 1)]
    g.generate(["x", "y"], params, seeds=[7, 8])
    assert [s.kwargs["seed"] for s in fake.sampling] == [7, 8]
    assert (a.finish, a.stop, a.tokens) == ("stop", "\n\n", 12)
    assert (b.finish, b.stop) == ("eos", None)
    assert (c.finish, c.text) == ("length", " 9 + 9 = 18 and so on")
    assert g.stats.tokens == 25 + 2 * 2 * 25
    g.close()
    g.close()  # idempotent
    assert fake.freed == 1 and g.llm is None
