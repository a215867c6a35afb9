"""Decoding precision on the CPU, chosen by timing this processor rather than by a fixed rule.

Whether bf16 decodes faster than fp32 depends on the processor and the batch: on a CPU without
AVX-512 BF16 bf16 is emulated (6x slower here), and even with it a decode step is made of small
products whose bf16 kernels can lose to fp32's. No processor flag settles that, so
``model.dtype=auto`` times a few decode steps of the loaded model in both precisions and keeps
bf16 only when it is clearly faster. The verdict is cached per processor, torch build, model
shape and batch size, so the probe (~8 s where bf16 is emulated) runs once per machine.

The probe's steps attend to a few cached tokens, not a few hundred: a decode step is 77-85%
matrix products at the default's shapes, and those are what the two precisions differ in.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from selftaught.generation.shared_prefix import cache_kwarg

# bf16 must save a tenth of a step: it changes a few greedy outputs (189 and 191 of 200 held-out
# texts identical to fp32's for the default's base model and a fine-tune; accuracy within 2
# points), which a gain within the machine's timing noise does not buy.
MARGIN = 1.10
PROBE_STEPS = 2


def cpu_name() -> str:
    """The processor's model name, as /proc/cpuinfo gives it (platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _key(model, batch: int) -> str:
    c = model.config
    shape = "-".join(str(getattr(c, k, "")) for k in
                     ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                      "num_attention_heads", "num_key_value_heads", "vocab_size"))
    bf16 = torch.cpu._is_avx512_bf16_supported()
    kernels = torch.backends.cpu.get_cpu_capability()
    return f"{cpu_name()}|{torch.__version__}|{kernels}|bf16={bf16}|{shape}|batch={batch}"


def decode_step_seconds(model, batch: int, steps: int = PROBE_STEPS) -> float:
    """Fastest of ``steps`` one-token decode steps of ``model`` over ``batch`` rows.

    The first step fills the cache and lets oneDNN pick its kernels; it is not timed.
    """
    ids = torch.randint(model.config.vocab_size, (batch, 1), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache(config=model.config)
    best = float("inf")
    with torch.inference_mode():
        for step in range(steps + 1):
            start = time.perf_counter()
            logits = model(input_ids=ids, use_cache=True, **cache_kwarg(model, cache)).logits
            took = time.perf_counter() - start
            ids = logits[:, -1:].argmax(-1)
            if step:
                best = min(best, took)
    return best


def measure(model, batch: int) -> dict:
    """Decode-step seconds of ``model`` (fp32) and of a bf16 copy over ``batch`` rows, interleaved."""
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    fp32_s, bf16_s = float("inf"), float("inf")
    # The VM's speed drifts by 10-15% within minutes: alternate, keep the best. One step each
    # first; more only where the two are close (emulated bf16, ~6x slower, needs no more).
    for steps in (1, PROBE_STEPS):
        fp32_s = min(fp32_s, decode_step_seconds(model, batch, steps))
        bf16_s = min(bf16_s, decode_step_seconds(bf16, batch, steps))
        if max(fp32_s, bf16_s) > 1.5 * min(fp32_s, bf16_s):
            break
    del bf16
    return {"float32_s": fp32_s, "bfloat16_s": bf16_s,
            "dtype": "bfloat16" if bf16_s * MARGIN < fp32_s else "float32", "batch": batch}


def cpu_decode_dtype(model, batch: int, cache_dir: Path) -> tuple[torch.dtype, dict]:
    """The precision to decode ``model`` (loaded in fp32) in on this CPU at ``batch`` rows a step,
    and the timings behind it. Steps are timed at the batch generation runs: the faster precision
    can change with it, as small products favour other kernels than large ones."""
    path = cache_dir / "decode-precision.json"
    key = _key(model, batch)
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = v = measure(model, batch)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            # Written whole and renamed: processes that probe side by side never read half a file.
            fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=path.name + ".")
            with os.fdopen(fd, "w") as f:
                json.dump(known, f, indent=1)
            os.replace(tmp, path)
            kept = f"measured once, kept in {path}"
        except OSError as e:  # a read-only cache costs the probe again next time, not the run
            kept = f"not kept ({e.strerror}: {e.filename}); set model.cache_dir to keep it"
        print(f"selftaught: decoding in {v['dtype']} on this CPU (one step of {v['batch']} rows took "
              f"{v['float32_s']:.3f} s in float32, {v['bfloat16_s']:.3f} s in bfloat16; "
              f"model.dtype=auto, {kept})", file=sys.stderr)
    verdict = known[key]
    return getattr(torch, verdict["dtype"]), verdict
