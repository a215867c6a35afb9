"""selftaught.tune_allocator: freed tensors are reused instead of page-faulted in again."""

import json
import os
import platform
import subprocess
import sys

import pytest

# In a fresh process: a 256 MB tensor is freed and the same size allocated again; the second
# allocation's minor page faults say whether the memory went back to the kernel in between.
PROBE = """
import json, resource, sys
import selftaught
done = selftaught.tune_allocator() if sys.argv[1] == "tune" else None
import torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = torch.ones(64 * 2**20)
del a
before = faults()
b = torch.ones(64 * 2**20)
print(json.dumps({"done": done, "faults": faults() - before,
                  "env": {k: v for k, v in __import__("os").environ.items()
                          if k.startswith(("MALLOC_", "THP_"))}}))
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="the allocator settings are glibc's (Linux)")


def probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("MALLOC_", "THP_", "GLIBC_TUNABLES", "SELFTAUGHT_TUNE"))}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_freed_memory_is_reused_without_page_faults():
    plain, tuned = probe("plain"), probe("tune")
    pages = 256 * 2**20 // 4096
    assert plain["faults"] > pages // 2  # glibc unmapped the block; every page faulted in again
    assert tuned["faults"] < pages // 20, tuned
    assert tuned["done"] == {"glibc": True, "huge_pages": True}
    assert tuned["env"] == {"THP_MEM_ALLOC_ENABLE": "1", "MALLOC_MMAP_MAX_": "0",
                            "MALLOC_TRIM_THRESHOLD_": str(2**62)}  # what child processes inherit


def test_the_users_settings_are_kept_and_it_can_be_turned_off():
    kept = probe("tune", MALLOC_MMAP_MAX_="65536", THP_MEM_ALLOC_ENABLE="0")
    assert kept["done"] == {"glibc": False, "huge_pages": False}
    assert kept["env"] == {"MALLOC_MMAP_MAX_": "65536", "THP_MEM_ALLOC_ENABLE": "0"}
    off = probe("tune", SELFTAUGHT_TUNE_ALLOCATOR="0")
    assert off["done"] == {"glibc": False, "huge_pages": False} and off["env"] == {}
    assert off["faults"] > 256 * 2**20 // 4096 // 2


TRAIN = """
import json, sys
from pathlib import Path
import selftaught
if sys.argv[1] == "tune":
    selftaught.tune_allocator()
from selftaught.config import TrainingConfig
from selftaught.training import TrainExample, get_trainer
examples = [TrainExample(f"Q: What is {a} + {b}?\\nA:", f" {a} + {b} = {a + b}. The answer is {a + b}.")
            for a in range(4) for b in range(4)]
trainer = get_trainer(TrainingConfig(learning_rate=1e-3, warmup_steps=1, batch_size=8, bf16=False), seed=0)
result = trainer.train(sys.argv[2], examples, 6, Path(sys.argv[3]))
print(json.dumps(result.losses))
"""


def test_training_gives_the_same_losses_with_the_allocator_tuned(random_model, tmp_path):
    """Where tensors live changes no arithmetic: the six losses agree to the last bit."""
    losses = {}
    for mode in ("plain", "tune"):
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "THP_", "GLIBC_TUNABLES"))}
        out = subprocess.run([sys.executable, "-c", TRAIN, mode, random_model, str(tmp_path / mode)],
                             env=clean, capture_output=True, text=True, check=True).stdout
        losses[mode] = json.loads(out.splitlines()[-1])
    assert len(losses["plain"]) == 6 and losses["plain"][-1] < losses["plain"][0]
    assert losses["tune"] == losses["plain"]
