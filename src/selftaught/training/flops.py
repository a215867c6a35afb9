"""FLOP accounting for fine-tuning: model FLOPs per token and this machine's matmul peak.

Model FLOP utilisation (MFU, PaLM appendix B; nanoGPT prints it while training) is
``6 · N · tokens/s`` divided by a peak. Vendor peaks mean little on a shared CPU, so the peak
is *measured*: the best of a few square matmuls in the training precision.
"""

from __future__ import annotations

import functools
import time

import torch


@functools.lru_cache(maxsize=None)
def matmul_peak_tflops(dtype: torch.dtype = torch.bfloat16, device: str = "cpu", size: int = 16384,
                       seconds: float = 1.0) -> float:
    """Best TFLOP/s of single square matmuls over ~``seconds``: the peak MFU is measured against.

    The side doubles from 256 up to ``size`` while one product takes under 25 ms: large enough
    that a GPU is not measured on its launch overhead, small enough that a precision the
    processor only emulates (bf16 without AVX-512 BF16: ~1000x slower) takes a second, not minutes.
    The best over a second, not half of one: on the shared 2-core machine, 0.5 s windows gave
    fp32 peaks from 99 to 150 GFLOP/s, and a low peak inflates MFU.
    """
    side = min(256, size)
    while True:
        a = torch.randn(side, side, dtype=dtype, device=device)
        b = torch.randn(side, side, dtype=dtype, device=device)
        # Into one preallocated buffer: no allocation (nor, on a CPU, page faults) in the timing.
        c = torch.empty(side, side, dtype=dtype, device=device)
        torch.matmul(a, b, out=c)  # warm-up (oneDNN picks its kernel on the first call)
        took = _timed(lambda: torch.matmul(a, b, out=c), device)
        if side >= size or took > 0.025:
            break
        side *= 2
    flops = 2 * side**3
    best = flops / took
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        best = max(best, flops / _timed(lambda: torch.matmul(a, b, out=c), device))
    return best / 1e12


def _timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def model_flops_per_token(n_params: int, trainable: int) -> int:
    """6N for a full fine-tune: 2N forward, 2N for activation gradients, 2N for weight gradients.

    With LoRA the frozen weights get no gradient: 4N plus 2 per trainable parameter.
    """
    return 4 * n_params + 2 * trainable


def computed_flops(n_params: int, trainable: int, embedding: int, tokens: int, loss_tokens: int) -> int:
    """FLOPs the trainer really runs: the output layer only at positions that carry a loss.

    ``embedding`` is the vocabulary x hidden output layer (tied or not; the input lookup is no
    matmul). Attention scores are left out, as in the 6N estimate (sequences here are short).
    """
    if trainable >= n_params:  # full fine-tune
        return 6 * (n_params - embedding) * tokens + 6 * embedding * loss_tokens
    # LoRA: frozen body and output layer, trainable adapters in the body
    return (4 * (n_params - embedding) + 2 * trainable) * tokens + 4 * embedding * loss_tokens
