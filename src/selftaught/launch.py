"""How a run spans processes: one driver runs the loop, a stage on N processes is a child group.

The driver process runs Algorithm 1 and owns the run folder. A stage configured for more than
one process (``training.num_processes``, ``generation.num_processes``) is started as a child
process group by an existing launcher (``accelerate launch`` or ``torchrun``) running
``python -m selftaught.worker SPEC.json``; the group's main process writes its result beside
the spec and the driver reads it back. So a crashed worker is a failed stage (its stderr tail
is shown, ``--resume`` reruns it), the generation engine is closed before training starts,
and a 1-process run starts no launcher at all. Why a driver rather than launching the whole
run under the engine (TRL's way): generation, rationalization and evaluation need no gradient
sync, the run folder keeps one writer, and a stage that runs on 1 process pays nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

import yaml

from selftaught.config import ConfigError, GenerationConfig, ModelConfig, RunConfig, TrainingConfig
from selftaught.generation import Completion, Generator, SamplingParams
from selftaught.generation.base import GenerationStats
from selftaught.training import TrainExample, TrainResult

# accelerate config values of distributed_type that place one process per GPU
_GPU_TYPES = {"MULTI_GPU", "FSDP", "DEEPSPEED", "MEGATRON_LM"}


class WorkerFailedError(RuntimeError):
    """A stage's process group exited with an error; the message ends with its stderr tail."""


def needs_launcher(training: TrainingConfig) -> bool:
    return training.num_processes > 1 or training.accelerate_config is not None


def check_launch(training: TrainingConfig, processes: int | None = None, key: str = "training.num_processes") -> None:
    """Bad launch settings, one clear line each, before any model loads."""
    n = processes or training.num_processes
    if n == 1 and training.accelerate_config is None:
        return
    if _executable(training.launcher) is None:
        raise ConfigError(
            f"{key}={n} starts its processes with training.launcher={training.launcher}, which is "
            f"not installed here: pip install accelerate (torchrun comes with torch), or set {key}=1")
    accel = read_accelerate_config(training.accelerate_config) if training.accelerate_config else {}
    if accel and training.launcher != "accelerate":
        raise ConfigError("training.accelerate_config needs training.launcher=accelerate "
                          f"({training.launcher} does not read accelerate config files)")
    machines = int(accel.get("num_machines", 1) or 1)
    if n % machines:
        raise ConfigError(f"{key}={n} does not split evenly over the {machines} machines of "
                          f"{training.accelerate_config}")
    per_machine = n // machines
    gpus = _gpu_count()
    if gpus:
        if per_machine > gpus and not accel.get("use_cpu"):
            raise ConfigError(f"{key}={n} needs {per_machine} GPUs on this machine, but torch sees {gpus}; "
                              f"set {key}={gpus * machines} or fewer")
    else:
        if accel and str(accel.get("distributed_type", "")).upper() == "DEEPSPEED":
            raise ConfigError(f"{training.accelerate_config} asks for DeepSpeed, which needs GPUs, and "
                              "torch sees none on this machine")
        cores = os.cpu_count() or 1
        if per_machine > cores:  # no GPU: the processes are CPU processes over gloo
            raise ConfigError(f"{key}={n}: this machine has no GPU and {cores} CPU cores; "
                              f"set {key}={cores} or fewer")


def check_run(config: RunConfig) -> None:
    """Both stages' launch settings, before any model loads."""
    check_launch(config.training)
    processes = generation_processes(config.generation)
    if processes > 1:  # started by torchrun, which comes with torch
        check_launch(dataclasses.replace(config.training, accelerate_config=None, launcher="torchrun"),
                     processes, f"generation.{config.generation.backend}.num_processes")


def generation_processes(generation: GenerationConfig) -> int:
    """The processes the configured backend asks to be spread over (its num_processes option)."""
    try:
        return getattr(getattr(generation, generation.backend), "num_processes", 1)
    except AttributeError:  # a backend with no options of its own
        return 1


def fine_tune_on_group(training: TrainingConfig, seed: int, base_model: str, examples: list[TrainExample],
                       steps: int, out_dir: Path, run_root: Path) -> TrainResult:
    """``Trainer.train`` on ``training.num_processes`` processes; rank 0 saves ``out_dir``."""
    spec = {"stage": "fine_tune", "training": dataclasses.asdict(training), "seed": seed,
            "base_model": base_model, "examples": [[e.prompt, e.completion] for e in examples],
            "steps": steps, "out_dir": str(out_dir)}
    result = run_group(training, training.num_processes, spec, out_dir.parent, "fine_tune", run_root)
    return TrainResult(**result)


class ProcessGroupGenerator(Generator):
    """The configured backend's ``generate`` with the prompts split over processes.

    Not a backend of its own: each process builds the configured one, decodes a contiguous
    share of the prompts, and the main process gathers the shares back in prompt order, so
    the result is what one process gives (decoding is per prompt; sampling seeds are per
    prompt and sample, not per process).
    """

    name = "process-group"

    def __init__(self, model_path: str, model: ModelConfig, config: GenerationConfig,
                 training: TrainingConfig, folder: Path, run_root: Path):
        super().__init__(model_path, model, config)
        self.training, self.folder, self.run_root = training, folder, run_root

    def generate(self, prompts: list[str], params: SamplingParams, desc: str = "generate",
                 seeds: list[int] | None = None) -> list[list[Completion]]:
        spec = {"stage": "generate", "model_path": self.model_path,
                "model": dataclasses.asdict(self.model_config),
                "generation": _as_written(self.config), "params": dataclasses.asdict(params),
                "prompts": prompts, "seeds": seeds, "desc": desc}
        processes = min(generation_processes(self.config), max(len(prompts), 1))
        result = run_group(self.training, processes, spec, self.folder, "generate", self.run_root,
                           distributed=False)
        stats = GenerationStats(**result["stats"])
        self.stats.seconds += stats.seconds
        self.stats.tokens += stats.tokens
        self.stats.prompts += len(prompts)
        return [[Completion(**c) for c in r] for r in result["completions"]]


def _as_written(generation: GenerationConfig) -> dict[str, Any]:
    """The config section as a YAML file spells it: backend sections nested under their names."""
    data = dataclasses.asdict(generation)
    data.update(data.pop("backend_options"))
    return data


def read_accelerate_config(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).expanduser().read_text())  # JSON is YAML too
    except FileNotFoundError:
        raise ConfigError(f"training.accelerate_config: file not found: {path} "
                          "(examples in configs/accelerate/)") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"training.accelerate_config: {path} does not parse as YAML: "
                          f"{str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or "distributed_type" not in data:
        raise ConfigError(f"training.accelerate_config: {path} is not an accelerate config "
                          "(no distributed_type key); write one with `accelerate config`")
    return data


def command(training: TrainingConfig, processes: int, spec: Path, distributed: bool = True) -> list[str]:
    """The launcher's command line for ``python -m selftaught.worker SPEC``.

    ``distributed=False`` (generation): processes on this machine, no engine config file.
    """
    if not distributed:
        # Generation needs no engine, only processes on this machine: torchrun, which comes
        # with torch, from this very Python (no launcher CLI to start first).
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                f"--master_port={_free_port()}", "-m", "selftaught.worker", str(spec)]
    accel_file = training.accelerate_config
    accel = read_accelerate_config(accel_file) if accel_file else {}
    machines = int(accel.get("num_machines", 1) or 1)
    exe = _executable(training.launcher) or training.launcher
    if training.launcher == "torchrun":
        argv = [exe, f"--nproc_per_node={processes}", f"--master_port={_free_port()}"]
    else:
        argv = [exe, "launch", "--num_processes", str(processes)]
        argv += (["--config_file", accel_file] if accel_file else
                 ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"])
        if machines == 1:  # many machines: the config file names the main process's address and port
            argv += ["--main_process_port", str(_free_port())]
    argv += ["-m", "selftaught.worker", str(spec)]
    if not training.launch_prefix:
        return argv
    # Under e.g. srun the command runs once per machine; each takes its rank from Slurm.
    rank = ' --machine_rank "${SLURM_NODEID:-0}"' if machines > 1 else ""
    head, tail = argv[: argv.index("-m")], argv[argv.index("-m"):]
    return [*shlex.split(training.launch_prefix), "bash", "-c", shlex.join(head) + rank + " " + shlex.join(tail)]


def run_group(training: TrainingConfig, processes: int, spec: dict[str, Any], folder: Path, name: str,
              run_root: Path, distributed: bool = True) -> dict[str, Any]:
    """Run one stage on ``processes`` processes; return what its main process wrote."""
    folder.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = folder / f"{name}.spec.json", folder / f"{name}.result.json"
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
    argv = command(training, processes, spec_path, distributed)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_source_root(), os.environ.get("PYTHONPATH")]))}
    tail = _run_showing_stderr(argv, env)
    if tail is not None or not result_path.exists():
        lines = "".join(tail or []).rstrip()
        raise WorkerFailedError(
            f"{name} on {processes} processes failed ({shlex.join(argv[:3])} ...); finished stages "
            f"are saved, rerun it with `selftaught run --resume {run_root}`. Last lines "
            f"of its stderr:\n{lines}")
    return json.loads(result_path.read_text())


def _run_showing_stderr(argv: list[str], env: dict[str, str]) -> list[str] | None:
    """Run, passing stderr through live; on failure return its last lines (None: success)."""
    try:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as e:
        return [f"cannot start {argv[0]}: {e}\n"]
    tail: deque[str] = deque(maxlen=25)

    def pump() -> None:
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode(errors="replace")
            sys.stderr.write(line)
            tail.append(line.rsplit("\r", 1)[-1])  # progress bars: the last state only

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise
    reader.join(timeout=5)
    return None if code == 0 else list(tail) + [f"(exit status {code})\n"]


def _executable(name: str) -> str | None:
    # The launcher installed beside this Python (a virtual environment) comes first.
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _source_root() -> str:
    """The workers import this very copy of selftaught, even from a source checkout."""
    return str(Path(__file__).resolve().parents[1])

