"""Fault injection: the real CLI, killed with SIGKILL in every stage and resumed each time, ends
with an uninterrupted run's artifacts (timings excluded) and recomputes no finished stage."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from selftaught.cli import main

from helpers import read_jsonl, tiny_overrides

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


def test_a_kill_mid_delete_leaves_no_half_checkpoint_and_the_resume_finishes_it(tmp_path, tiny_model):
    harness = _harness()
    args = tiny_overrides(tiny_model, tmp_path / "reference", "loop.iterations=3", "loop.keep_checkpoints=selected")
    assert main(["run", *args]) == 0
    resumed = tmp_path / "resumed"
    p = harness.selftaught(["run", *args, f"output_dir={resumed}"], "delete *:1")
    assert p.returncode == -9, p.stderr[-3000:]
    [doomed] = resumed.glob("iteration-*/checkpoint.deleted")  # renamed away whole, not yet deleted
    assert not (doomed.parent / "checkpoint").exists()
    p = harness.selftaught(["run", "--resume", str(resumed)])
    assert p.returncode == 0, p.stderr[-3000:]
    assert harness.compare(tmp_path / "reference", resumed) == []
    # Not vacuous: 3 iterations, and only the newest and the one best on validation are left.
    files = harness.artifacts(resumed)
    selected = read_jsonl(resumed / "metrics.jsonl")[-1]["selected_iteration"]
    kept = {n for n in (1, 2, 3) if f"iteration-0{n}/checkpoint/model.safetensors" in files}
    assert kept == {3, selected} and len(kept) < 3
    assert all(f"iteration-0{n}/train.json" in files for n in (1, 2, 3))
