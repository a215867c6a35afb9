"""Stages on several processes (launch.py, worker.py): CPU processes over gloo on this machine.

The fine-tune through accelerate on 2 processes must give the per-step losses of 1 process with
the same global batch and data order; a whole run with 2 training and 2 generation processes
must give the results of a 1-process run, also after a worker is killed and the run resumed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from transformers import AutoModelForCausalLM

from selftaught.cli import main
from selftaught.config import ConfigError, TrainingConfig, load_config
from selftaught.launch import check_run, command, fine_tune_on_group
from selftaught.training import TrainExample, get_trainer

from helpers import metrics, read_jsonl, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [TrainExample(f"Q: What is {i} + {i + 3}?\nA:", f" {i} + {i + 3} = {2 * i + 3}. The answer is {2 * i + 3}.\n\n")
            for i in range(10)]
# Same global batch (4 sequences a step) and data order; only the summation order of the
# gradient differs (an all-reduce of two halves), so losses agree to float32 rounding.
LOSS_RTOL = 1e-5


def _config(**kw) -> TrainingConfig:
    return TrainingConfig(**{"learning_rate": 5e-3, "warmup_steps": 1, "batch_size": 4, "micro_batch_size": 1,
                             "bf16": False, **kw})


def _max_weight_difference(a: str, b: str) -> float:
    sa = AutoModelForCausalLM.from_pretrained(a).state_dict()
    sb = AutoModelForCausalLM.from_pretrained(b).state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k] - sb[k]).abs().max().item() for k in sa)


def test_two_processes_give_the_losses_of_one(random_model, tmp_path):
    one = get_trainer(_config(micro_batch_size=2), seed=0).train(random_model, EXAMPLES, 4, tmp_path / "one")
    two = fine_tune_on_group(_config(micro_batch_size=1, num_processes=2), 0, random_model, EXAMPLES, 4,
                             tmp_path / "two" / "checkpoint", tmp_path / "two")
    assert two.extra["processes"] == 2 and two.extra["distributed_type"] == "MULTI_CPU"
    assert one.extra["processes"] == 1
    # every process's peak memory is on the record: one figure per process, each a real size
    assert len(two.extra["peak_rss_mib"]) == 2 and len(one.extra["peak_rss_mib"]) == 1
    assert all(50 < m < 24 * 1024 for m in two.extra["peak_rss_mib"] + one.extra["peak_rss_mib"])
    assert two.losses == pytest.approx(one.losses, rel=LOSS_RTOL)
    assert two.losses[-1] < two.losses[0]  # it trained
    assert two.tokens == one.tokens  # both halves of every step counted
    # rank 0 alone wrote a full checkpoint that from_pretrained loads, with the same weights
    assert _max_weight_difference(str(tmp_path / "one"), str(tmp_path / "two" / "checkpoint")) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason=(
    "accelerate turns FSDP on only over GPUs or other accelerators: its AcceleratorState sets "
    "DistributedType.FSDP for MULTI_GPU-like process groups, never for MULTI_CPU (gloo), so on "
    "this CPU an FSDP config file runs as plain data parallel"))
def test_fsdp2_gathers_a_full_checkpoint(random_model, tmp_path):
    n = min(2, torch.cuda.device_count())
    kw = {"micro_batch_size": 4 // n, "num_processes": n,
          "accelerate_config": str(ROOT / "configs" / "accelerate" / "fsdp2.yaml")}
    one = get_trainer(_config(micro_batch_size=4 // n), seed=0).train(random_model, EXAMPLES, 4, tmp_path / "one")
    fsdp = fine_tune_on_group(_config(**kw), 0, random_model, EXAMPLES, 4, tmp_path / "fsdp" / "checkpoint",
                              tmp_path / "fsdp")
    assert fsdp.extra["distributed_type"] == "FSDP"
    assert fsdp.losses == pytest.approx(one.losses, rel=1e-3)  # bf16 autocast under FSDP's policy
    assert _max_weight_difference(str(tmp_path / "one"), str(tmp_path / "fsdp" / "checkpoint")) < 1e-2


def test_bad_launch_settings_are_one_clear_line_each(tmp_path, monkeypatch, capsys):
    base = ["training.num_processes=2", "training.micro_batch_size=4", f"output_dir={tmp_path / 'run'}"]
    cases = {
        "file not found": [f"training.accelerate_config={tmp_path / 'missing.yaml'}"],
        "does not parse as YAML": [f"training.accelerate_config={tmp_path / 'bad.yaml'}"],
        "this machine has no GPU and": ["training.num_processes=64", "training.batch_size=64",
                                        "training.micro_batch_size=1"],
        "must equal training.micro_batch_size": ["training.micro_batch_size=8"],
    }
    (tmp_path / "bad.yaml").write_text("distributed_type: [FSDP\n")
    if torch.cuda.is_available():
        cases.pop("this machine has no GPU and")
    for expected, extra in cases.items():
        assert main(["run", *base, *extra]) == 2
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "run").exists()  # refused before any work
    monkeypatch.setattr("selftaught.launch._executable", lambda name: None)
    with pytest.raises(ConfigError, match="training.launcher=accelerate, which is not installed"):
        check_run(load_config(overrides=base))


def test_launch_commands(tmp_path):
    spec = tmp_path / "s.json"
    plain = command(_config(num_processes=2), 2, spec)
    assert plain[1:4] == ["launch", "--num_processes", "2"] and plain[-3:] == ["-m", "selftaught.worker", str(spec)]
    nodes = command(_config(num_processes=16, batch_size=16, accelerate_config=str(
        ROOT / "configs" / "accelerate" / "fsdp2_two_nodes.yaml"), launch_prefix="srun --ntasks-per-node=1"), 16, spec)
    assert nodes[:4] == ["srun", "--ntasks-per-node=1", "bash", "-c"]
    assert '--machine_rank "${SLURM_NODEID:-0}" -m selftaught.worker' in nodes[4]
    assert "--main_process_port" not in nodes[4]  # the config file names the main machine's port
    generation = command(_config(), 2, spec, distributed=False)
    assert generation[:3] == [sys.executable, "-m", "torch.distributed.run"]


def _run_overrides(model: str, out: Path, processes: int) -> list[str]:
    return tiny_overrides(model, out, "loop.rationalize=false", "training.micro_batch_size=2",
                          f"training.num_processes={processes}", f"generation.transformers.num_processes={processes}")


def test_run_on_two_processes_matches_one_and_resumes_after_a_killed_worker(tmp_path, tiny_model):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["run", *_run_overrides(tiny_model, one, 1)]) == 0

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    driver = subprocess.Popen([sys.executable, "-m", "selftaught", "run", *_run_overrides(tiny_model, two, 2)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    spec = two / "iteration-01" / "fine_tune.spec.json"
    killed = None
    deadline = time.monotonic() + 1800
    while killed is None and driver.poll() is None and time.monotonic() < deadline:
        if spec.exists():  # iteration 1's fine-tune has started: kill one of its workers
            workers = [p for p in psutil.Process(driver.pid).children(recursive=True)
                       if "selftaught.worker" in " ".join(p.cmdline()) and str(spec) in p.cmdline()
                       and p.name().startswith("python")]
            if len(workers) == 2:
                killed = workers[-1]
                killed.send_signal(signal.SIGKILL)
        time.sleep(0.2)
    _, err = driver.communicate(timeout=120)
    assert killed is not None, err[-2000:]
    assert driver.returncode == 2, err[-2000:]
    failure = [line for line in err.splitlines() if line.startswith("selftaught: error:")]
    assert failure and "fine_tune on 2 processes failed" in failure[0] and "--resume" in failure[0]
    assert not (two / "iteration-01" / "train.json").exists()  # the stage is not marked finished

    assert main(["run", "--resume", str(two)]) == 0
    m1, m2 = metrics(one), metrics(two)
    assert [m["accuracy"] for m in m1.values()] == [m["accuracy"] for m in m2.values()]
    for n in (1, 2):
        it1, it2 = one / f"iteration-{n:02d}", two / f"iteration-{n:02d}"
        for stage in ("generations", "train", "eval"):
            assert read_jsonl(it2 / f"{stage}.jsonl") == read_jsonl(it1 / f"{stage}.jsonl"), (n, stage)
        s1, s2 = (json.loads((it / "train.json").read_text()) for it in (it1, it2))
        assert s2["processes"] == 2 and s2["losses"] == pytest.approx(s1["losses"], rel=LOSS_RTOL)
