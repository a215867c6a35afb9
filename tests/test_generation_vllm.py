"""The vLLM backend. vLLM needs a GPU, so here: the error without it, and the mapping to and
from vLLM's documented offline API (``LLM``, ``SamplingParams``, ``RequestOutput.outputs``)
checked against a stand-in module that records what it was given."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest

from selftaught.config import ConfigError, GenerationConfig, ModelConfig, load_config
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
        self.made, self.freed, self.calls = [], 0, []
        fake = self

        class LLM:
            def __init__(self, **kwargs):
                fake.made.append(kwargs)
                self.awake = True

            def sleep(self, level=1):
                fake.calls.append(("sleep", level))
                self.awake = False

            def wake_up(self):
                fake.calls.append(("wake_up",))
                self.awake = True

            def generate(self, prompts, sampling, use_tqdm=True, lora_request=None):
                assert self.awake
                fake.sampling, fake.lora = sampling, lora_request
                outs = [_Output(" 3 + 4 = 7. The answer is 7.", [1] * 12, "stop", "\n\n"),
                        _Output(" 1 + 1 = 2", [1] * 5, "stop", None),  # end of sequence
                        _Output(" 9 + 9 = 18 and so on", [1] * 8, "length", None)]
                assert isinstance(sampling, list) and len(sampling) == len(prompts)  # one per request
                return [types.SimpleNamespace(outputs=outs[: s.kwargs["n"]]) for s in sampling]

        class SamplingParams_:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        @dataclass
        class LoRARequest:  # vllm.lora.request.LoRARequest(lora_name, lora_int_id, lora_path)
            lora_name: str
            lora_int_id: int
            lora_path: str

        self.LLM, self.SamplingParams = LLM, SamplingParams_
        self.lora_module = types.ModuleType("vllm.lora.request")
        self.lora_module.LoRARequest = LoRARequest
        self.distributed = types.ModuleType("vllm.distributed")
        self.distributed.cleanup_dist_env_and_memory = lambda: setattr(fake, "freed", fake.freed + 1)


@pytest.fixture
def fake(monkeypatch):
    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.distributed", fake.distributed)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", fake.lora_module)
    return fake


def _vllm(**options) -> GenerationConfig:
    return load_config(overrides=["generation.backend=vllm", "generation.batch_size=128",
                                  *(f"generation.vllm.{k}={v}" for k, v in options.items())]).generation


def test_maps_params_and_outputs(fake):
    g = get_generator("/ckpt/iteration-01", ModelConfig(dtype="bfloat16"),
                      _vllm(gpu_memory_utilization=0.6, tensor_parallel_size=4, data_parallel_size=2,
                            enable_prefix_caching="false"))
    assert fake.made == [{"model": "/ckpt/iteration-01", "dtype": "bfloat16", "enable_prefix_caching": False,
                          "gpu_memory_utilization": 0.6, "max_num_seqs": 128, "tensor_parallel_size": 4,
                          "data_parallel_size": 2}]
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


def test_lora_adapters_share_one_engine_holding_the_base_model(fake, tmp_path, monkeypatch):
    """Every iteration's adapter is trained from the same base M: the engine loads M once and
    serves each adapter as a LoRARequest, sleeping (GPU memory given back) between stages."""
    monkeypatch.setattr("selftaught.generation.vllm_backend._LORA_ENGINES", {})
    adapters = []
    for n in (1, 2):
        (tmp_path / f"iteration-0{n}" / "checkpoint").mkdir(parents=True)
        adapters.append(tmp_path / f"iteration-0{n}" / "checkpoint")
        (adapters[-1] / "adapter_config.json").write_text('{"base_model_name_or_path": "/models/base"}')
    params = SamplingParams(max_new_tokens=8, stop=("\n\n",))
    seen = []
    for path in adapters:
        g = get_generator(str(path), ModelConfig(), _vllm(max_lora_rank=32))
        g.generate(["Q: 1 + 1?\nA:"], params)
        seen.append(fake.lora)
        g.close()
    assert len(fake.made) == 1  # one engine for the run
    assert fake.made[0]["model"] == "/models/base" and fake.made[0]["enable_lora"] is True
    assert fake.made[0]["max_lora_rank"] == 32 and fake.made[0]["enable_sleep_mode"] is True
    assert [r.lora_path for r in seen] == [str(p) for p in adapters]
    assert len({r.lora_int_id for r in seen}) == 2  # vLLM caches adapters by id: a new one each
    assert fake.calls == [("sleep", 1), ("wake_up",), ("sleep", 1)]
    assert fake.freed == 0  # slept, not torn down


def test_vllm_options_are_checked_in_the_backend(fake):
    with pytest.raises(ConfigError, match="generation.vllm.tensor_parallel_size must be >= 1"):
        _vllm(tensor_parallel_size=0)
    with pytest.raises(ConfigError, match="generation.vllm_gpu_memory_utilization is now generation.vllm.gpu_memory_utilization"):
        load_config(overrides=["generation.vllm_gpu_memory_utilization=0.5"])
