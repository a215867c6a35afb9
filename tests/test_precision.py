"""model.dtype=auto on the CPU: fp32 or bf16 by timing this processor, once, then from the cache."""

from __future__ import annotations

import json

import pytest
import torch

from selftaught.config import GenerationConfig, ModelConfig
from selftaught.generation import SamplingParams, get_generator
from selftaught.generation import precision
from selftaught.tasks import get_task

TASK = get_task("addition", {"digits_min": 1, "digits_max": 2})


def _fake_timings(monkeypatch, seconds: dict[torch.dtype, float]) -> list[torch.dtype]:
    """Replace the decode-step timer by fixed figures per precision; return the calls made."""
    calls = []

    def timed(model, *args, **kwargs):
        calls.append(model.dtype)
        return seconds[model.dtype]

    monkeypatch.setattr(precision, "decode_step_seconds", timed)
    return calls


@pytest.mark.parametrize("bf16_s, expected", [(0.5, torch.bfloat16), (0.95, torch.float32), (3.0, torch.float32)])
def test_auto_keeps_the_faster_precision(tiny_model, tmp_path, monkeypatch, capsys, bf16_s, expected):
    calls = _fake_timings(monkeypatch, {torch.float32: 1.0, torch.bfloat16: bf16_s})
    g = get_generator(tiny_model, ModelConfig(cache_dir=str(tmp_path)), GenerationConfig(batch_size=4))
    assert g.dtype == expected and g.model.dtype == expected
    rounds = 1 if bf16_s in (0.5, 3.0) else 2  # a second round only where the two are close
    assert calls == [torch.float32, torch.bfloat16] * rounds
    assert g.precision == {"float32_s": 1.0, "bfloat16_s": bf16_s, "dtype": str(expected).split(".")[1],
                           "batch": 4}
    said = capsys.readouterr().err
    assert f"decoding in {str(expected).split('.')[1]} on this CPU" in said and "decode-precision.json" in said

    # The verdict is kept per processor and model shape: the next generator does not time again.
    again = get_generator(tiny_model, ModelConfig(cache_dir=str(tmp_path)), GenerationConfig(batch_size=4))
    assert again.dtype == expected and len(calls) == 2 * rounds and "decoding in" not in capsys.readouterr().err
    (key, saved), = json.loads((tmp_path / "decode-precision.json").read_text()).items()
    assert precision.cpu_name() in key and f"|{torch.__version__}|" in key and saved == g.precision
    # another batch size is timed afresh: the faster precision can depend on it
    get_generator(tiny_model, ModelConfig(cache_dir=str(tmp_path)), GenerationConfig(batch_size=8))
    assert len(calls) > 2 * rounds


def test_a_cache_that_cannot_be_written_costs_the_probe_not_the_run(tiny_model, tmp_path, monkeypatch, capsys):
    calls = _fake_timings(monkeypatch, {torch.float32: 1.0, torch.bfloat16: 3.0})
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the cache folder should be
    g = get_generator(tiny_model, ModelConfig(cache_dir=str(blocked / "cache")), GenerationConfig(batch_size=4))
    assert g.dtype == torch.float32 and len(calls) == 2
    said = capsys.readouterr().err
    assert "decoding in float32 on this CPU" in said and "not kept" in said and "model.cache_dir" in said


def test_explicit_precision_is_not_timed(tiny_model, tmp_path, monkeypatch):
    calls = _fake_timings(monkeypatch, {torch.float32: 1.0, torch.bfloat16: 0.1})
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        g = get_generator(tiny_model, ModelConfig(dtype=name, cache_dir=str(tmp_path)), GenerationConfig())
        assert g.dtype == dtype and g.model.dtype == dtype and g.precision is None
    assert calls == [] and not (tmp_path / "decode-precision.json").exists()


def test_probe_times_real_decode_steps(tiny_model, tmp_path):
    g = get_generator(tiny_model, ModelConfig(cache_dir=str(tmp_path)), GenerationConfig(batch_size=4))
    p = g.precision
    assert 0 < p["float32_s"] < 10 and 0 < p["bfloat16_s"] < 10
    assert g.dtype == (torch.bfloat16 if p["bfloat16_s"] * precision.MARGIN < p["float32_s"] else torch.float32)
    assert g.model.dtype == g.dtype
    # every weight is in the chosen precision (the probe's bf16 copy is not what decodes)
    assert all(t.dtype == g.dtype for t in g.model.parameters())


def test_bf16_greedy_outputs_against_fp32(tiny_model):
    """Stated bound: on the tiny model, bf16 greedy decoding gives at least 3/4 of fp32's texts.

    32 prompts, so that one flipped answer moves the share by 3 points: the briefly trained
    model's top logits are close, and native bf16 kernels round otherwise than emulated ones.
    """
    prompts = [TASK.prompt(e) for e in TASK.load("test", 32, seed=3)]
    texts = {}
    for name in ("float32", "bfloat16"):
        g = get_generator(tiny_model, ModelConfig(dtype=name), GenerationConfig(batch_size=16))
        texts[name] = [c[0].text for c in g.generate(prompts, SamplingParams(max_new_tokens=24, stop=TASK.stop))]
    same = sum(a == b for a, b in zip(texts["float32"], texts["bfloat16"]))
    print(f"bf16: {same}/32 texts identical to fp32")
    assert same >= 24, f"{same}/32 identical"
