"""Kill a real `selftaught run` with SIGKILL at named points in every stage, resume it each time,
and check that it ends with an uninterrupted run's artifacts, recomputing no finished stage.

    python benchmarks/faults.py                     # the default model at small sizes (~minutes)
    python benchmarks/faults.py model.name_or_path=/path/to/model task.train_size=64 ...

The kills are exact, not timed: each process runs with ``SELFTAUGHT_FAULT=POINT:N`` and kills
itself at the N-th passage through that point (``selftaught/faults.py`` names them). The test
suite runs the same harness on the tiny model (tests/test_faults.py).

Artifacts are compared byte for byte, except what measures time: ``stages.json`` (seconds and
tokens/s of each stage), the timing fields of ``train.json`` and ``metrics.jsonl`` (TIMING), and
the run's own path (``output_dir`` in config.yaml, ``checkpoint`` in metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# Fields that measure time (or the run's own path): the only ones allowed to differ.
TIMING = {
    "seconds", "tokens_per_second", "iteration_seconds", "model_tflops", "computed_tflops",
    "peak_tflops", "mfu", "hardware_flop_utilisation", "seconds_forward_backward",
    "seconds_optimizer", "seconds_optimizer_first_step", "peak_rss_mib", "checkpoint", "output_dir",
}

# Where each process dies, in the order a run reaches them; every stage of both iterations.
# A point's count starts again in each (resumed) process.
KILLS = [
    "torn iteration-00/eval:1",                 # mid-evaluation, a torn line in eval.jsonl.partial
    "write iteration-00/eval.jsonl:1",          # a stage marker written, not yet renamed
    "write */metrics.jsonl:1",                  # the metrics marker
    "append iteration-01/generations:2",        # mid-generation, after two chunks
    "torn iteration-01/generations:1",          # a torn line in generations.jsonl.partial
    "append iteration-01/rationalizations:1",   # mid-rationalization
    "write iteration-01/train.jsonl:1",         # the filtered training set's marker
    "train step:1",                             # mid-fine-tune
    "checkpoint iteration-01:1",                # the checkpoint saved, not yet renamed into place
    "write iteration-01/train.json:1",          # the fine-tune's marker
    "torn iteration-01/eval:1",                 # mid-evaluation of M_1
    "append iteration-02/generations:1",        # iteration 2: mid-generation
    "write iteration-02/rationalizations.jsonl:1",
    "train step:2",
    "write iteration-02/stages.json:1",         # the fine-tune's timings, after train.json
]

# The script's longer list, for its config (start_steps=4): every point above and more, each
# one reachable from where the one before it left the run.
LONG_KILLS = [
    "torn iteration-00/eval:1", "append iteration-00/eval:1", "write iteration-00/eval.jsonl:1",
    "write */metrics.jsonl:1",
    "append iteration-01/generations:2", "torn iteration-01/generations:1",
    "write iteration-01/generations.jsonl:1", "append iteration-01/rationalizations:1",
    "write iteration-01/train.jsonl:1", "train step:1", "train step:3", "checkpoint iteration-01:1",
    "write iteration-01/train.json:1", "write iteration-01/stages.json:1",
    "torn iteration-01/eval:1", "write iteration-01/eval.jsonl:1", "write */metrics.jsonl:1",
    "append iteration-02/generations:1", "torn iteration-02/generations:1",
    "write iteration-02/rationalizations.jsonl:1", "train step:2", "checkpoint iteration-02:1",
    "write iteration-02/train.json:1", "write iteration-02/stages.json:1",
    "torn iteration-02/eval:1", "write iteration-02/eval.jsonl:1", "write */metrics.jsonl:1",
]


def selftaught(args: list[str], fault: str | None = None, timeout: float = 3600) -> subprocess.CompletedProcess:
    env = dict(os.environ, SELFTAUGHT_FAULT=fault or "")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "selftaught", *args], env=env, text=True,
                          capture_output=True, timeout=timeout)


def artifacts(run: Path) -> dict[str, bytes | object]:
    """Every file of a run folder, timing fields removed where a file has them."""
    out: dict[str, bytes | object] = {}
    for p in sorted(run.rglob("*")):
        if not p.is_file() or p.name == "stages.json":
            continue
        rel = str(p.relative_to(run))
        if p.name == "train.json":
            out[rel] = _untimed(json.loads(p.read_text()))
        elif p.name == "metrics.jsonl":
            out[rel] = [_untimed(json.loads(line)) for line in p.read_text().splitlines()]
        elif p.name == "config.yaml":
            out[rel] = _untimed(yaml.safe_load(p.read_text()))
        else:
            out[rel] = p.read_bytes()
    return out


def _untimed(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in TIMING}


def finished(run: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file of a finished stage: rewritten means recomputed."""
    # preference_pairs.jsonl is written by the filter before its marker, train.jsonl: until
    # that marker exists the filter stage is unfinished and may be redone on resume.
    files = [p for p in run.glob("iteration-*/*.jsonl")
             if p.name != "preference_pairs.jsonl" or (p.parent / "train.jsonl").exists()]
    for train_json in run.glob("iteration-*/train.json"):
        files += [train_json, *(p for p in (train_json.parent / "checkpoint").rglob("*") if p.is_file())]
    return {str(p.relative_to(run)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in files + [run / "config.yaml"]}


def kill_and_resume(args: list[str], run: Path, kills: list[str], say=print) -> int:
    """Start ``selftaught run args`` dying at ``kills[0]``, resume dying at each next one, then
    resume to the end. Raises AssertionError when a process did not die where it should, a
    resumed process rewrote a finished stage, or lost a finished metrics record."""
    for i, fault in enumerate(kills):
        before = finished(run) if i else {}
        metrics_before = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
        cmd = ["run", *args] if i == 0 else ["run", "--resume", str(run)]
        start = time.perf_counter()
        p = selftaught(cmd, fault)
        assert p.returncode == -9, f"{fault}: expected SIGKILL, got exit {p.returncode}\n{p.stderr[-3000:]}"
        _check_kept(run, before, metrics_before, fault)
        say(f"killed at {fault!r} after {time.perf_counter() - start:.1f}s")
    before, metrics_before = finished(run), (run / "metrics.jsonl").read_text().splitlines()
    p = selftaught(["run", "--resume", str(run)])
    assert p.returncode == 0, p.stderr[-3000:]
    _check_kept(run, before, metrics_before, "the last resume")
    assert not (run / "run.lock").exists(), "the lock outlived its run"
    return len(kills)


def _check_kept(run: Path, before: dict, metrics_before: list[str], when: str) -> None:
    after = finished(run)
    rewritten = [p for p, stat in before.items() if after.get(p) != stat]
    assert not rewritten, f"{when}: finished stages rewritten or removed: {rewritten}"
    metrics = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    assert metrics[: len(metrics_before)] == metrics_before, f"{when}: a finished metrics record changed"


def compare(reference: Path, resumed: Path) -> list[str]:
    """Paths whose (untimed) content differs between two runs; [] when they are the same."""
    a, b = artifacts(reference), artifacts(resumed)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--output", default="runs/faults", help="folder for the two runs")
    a = parser.parse_args(argv)
    out = Path(a.output)
    # Small sizes, shaped like the test's: three generation chunks of 8, two iterations.
    small = ["task.train_size=24", "eval.size=8", "loop.iterations=2", "loop.patience=0",
             "generation.batch_size=2", "training.start_steps=4", "training.warmup_steps=1",
             "training.batch_size=4", "training.micro_batch_size=4", *a.overrides]
    t0 = time.perf_counter()
    p = selftaught(["run", *small, f"output_dir={out / 'reference'}", "--overwrite"])
    assert p.returncode == 0, p.stderr[-3000:]
    t1 = time.perf_counter()
    resumed = out / "resumed"
    killed = kill_and_resume([*small, f"output_dir={resumed}", "--overwrite"], resumed, LONG_KILLS)
    t2 = time.perf_counter()
    diff = compare(out / "reference", resumed)
    print(f"{killed} SIGKILLs and resumes; uninterrupted run {t1 - t0:.0f}s, killed and resumed "
          f"{t2 - t1:.0f}s; artifacts differing from the uninterrupted run (timings excluded): "
          f"{diff or 'none'}")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
