"""Fault injection: the real CLI, killed with SIGKILL in every stage and resumed each time, ends
with an uninterrupted run's artifacts (timings excluded) and recomputes no finished stage."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from selftaught.cli import main

from helpers import tiny_overrides

ROOT = Path(__file__).resolve().parent.parent


def _harness():
    spec = importlib.util.spec_from_file_location("faults_harness", ROOT / "benchmarks" / "faults.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["faults_harness"] = module
    spec.loader.exec_module(module)
    return module


def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_run(tmp_path, tiny_model):
    harness = _harness()
    # batch 2: three generation chunks of 8 questions, so a kill can land between chunks.
    args = tiny_overrides(tiny_model, tmp_path / "reference", "generation.batch_size=2")
    assert main(["run", *args]) == 0
    resumed = tmp_path / "resumed"
    killed = harness.kill_and_resume([*args, f"output_dir={resumed}"], resumed, harness.KILLS)
    assert killed == len(harness.KILLS) >= 12
    assert harness.compare(tmp_path / "reference", resumed) == []
    # The comparison is not vacuous: both runs hold both iterations' checkpoints and stages.
    files = harness.artifacts(resumed)
    for n in (1, 2):
        assert f"iteration-0{n}/checkpoint/model.safetensors" in files
        assert f"iteration-0{n}/rationalizations.jsonl" in files
