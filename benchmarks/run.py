"""Side-by-side benchmark: this project's generator, trainer and STaR iteration against plain transformers.

    python benchmarks/run.py --train-steps 8   # the default model and task, ~20 minutes on 2 AVX2 cores

In one run, on the model and task of configs/default.yaml:

(a) generation: useful generated tokens/s (up to the stop string) of selftaught's generator
    against plain ``model.generate`` on the same few-shot prompts, at batch 1 and at the same
    batch size, both greedy and stopped by the task's stop strings, in the same dtype on the
    same device;
(b) fine-tuning: tokens/s and model FLOP utilisation (6·N·tokens/s over a matmul peak measured
    here, in the training precision, on the device that trains) of selftaught's trainer against a plain transformers
    ``Trainer`` given the same sequences in the same steps, the same precision (bf16 mixed precision where
    the processor has bf16 matmuls, else fp32) and completion-only labels;
(c) one STaR iteration (generate, rationalize, filter, fine-tune from M, evaluate) against a
    straightforward implementation made of plain ``generate`` + ``Trainer``, with the
    held-out accuracy of both. The plain iteration runs twice: in this process, with the
    allocator tuning selftaught gives itself (selftaught/allocator.py), and in a child process
    with glibc's and torch's defaults, as a plain script runs; both ratios are reported.

It prints the ratios and appends them, with the date and the machine, to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from selftaught.allocator import ENVIRONMENT as ALLOCATOR_ENV, tune_allocator

# As `selftaught` does, before torch's first tensor (SELFTAUGHT_TUNE_ALLOCATOR=0: off). The plain
# baseline in this process gets the same allocator; (c) also runs it in a default process.
ALLOCATOR = tune_allocator()

import torch  # noqa: E402
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq,  # noqa: E402
                          Trainer, TrainingArguments)

from selftaught.config import load_config  # noqa: E402
from selftaught.generation import SamplingParams, get_generator  # noqa: E402
from selftaught.generation.precision import cpu_name  # noqa: E402
from selftaught.generation.transformers_backend import load_for_decoding, pick_device  # noqa: E402
from selftaught.models import resolve_base_model  # noqa: E402
from selftaught.stages import Stages  # noqa: E402
from selftaught.store import RunStore  # noqa: E402
from selftaught.tasks import Example, Task, get_task  # noqa: E402
from selftaught.training import TrainExample, get_trainer  # noqa: E402
from selftaught.training.flops import matmul_peak_tflops, model_flops_per_token  # noqa: E402
from selftaught.training.transformers_backend import _Sampler  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _timer(times: dict[str, float]):
    """timed(name, fn): call fn, add its wall time to times[name], return its value."""
    def timed(name, fn):
        start = time.perf_counter()
        value = fn()
        times[name] = time.perf_counter() - start
        return value
    return timed

# --- the straightforward implementation: plain generate + Trainer --------------------------


@torch.inference_mode()
def plain_generate(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int,
                   stop: tuple[str, ...]) -> list[str]:
    """``model.generate`` as its documentation shows it: left padding, greedy, stop strings."""
    texts = []
    for b in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[b : b + batch_size], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(model.device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             stop_strings=list(stop), tokenizer=tokenizer,
                             pad_token_id=tokenizer.pad_token_id)
        texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return [cut(t, stop)[0] for t in texts]


def cut(text: str, stop: tuple[str, ...]) -> tuple[str, str | None]:
    """The text before the first stop string, and that string."""
    hits = [(text.find(s), s) for s in stop if s in text]
    if not hits:
        return text, None
    at, s = min(hits)
    return text[:at], s


def load_plain(path: str, model_config, batch_size: int):
    """The plain baseline's model, in the same dtype and on the same device as selftaught's
    generator picks for ``model.dtype`` (bf16 on a GPU; for "auto" on a CPU the precision it
    timed and cached for ``batch_size``): a baseline in fp32 against our bf16 would measure the
    precision, not the code."""
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model, _, _ = load_for_decoding(path, model_config, batch_size, pick_device())
    return model, tokenizer


class _CountingCollator(DataCollatorForSeq2Seq):
    """Pads a batch (labels with -100) and counts the real tokens the Trainer sees."""

    tokens = 0

    def __call__(self, features, return_tensors=None):
        batch = super().__call__(features, return_tensors)
        _CountingCollator.tokens += int(batch["attention_mask"].sum())
        return batch


def plain_train(base: str, examples: list[TrainExample], steps: int, lr: float, warmup: int,
                batch_size: int, seed: int, out: Path, order: list[int] | None = None) -> dict:
    """transformers ``Trainer``: padded batches, bf16 autocast where supported, labels -100 on the
    prompt. ``order``: the examples to take, in turn (else ``Trainer`` shuffles them itself)."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = []
    for e in examples:
        p = tokenizer(e.prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(e.completion, add_special_tokens=False)["input_ids"]
        rows.append({"input_ids": p + c, "attention_mask": [1] * (len(p) + len(c)),
                     "labels": [-100] * len(p) + c})
    if order is not None:
        rows = [rows[i] for i in order]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    args = TrainingArguments(
        train_sampling_strategy="random" if order is None else "sequential",
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=lr, warmup_steps=warmup, lr_scheduler_type="constant_with_warmup",
        weight_decay=0.0, bf16=_bf16(), use_cpu=not torch.cuda.is_available(), seed=seed,
        save_strategy="no", report_to=[], logging_steps=max(steps, 1), disable_tqdm=True,
        dataloader_num_workers=0,
    )
    _CountingCollator.tokens = 0
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=_CountingCollator(tokenizer, label_pad_token_id=-100))
    result = trainer.train()
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    seconds = result.metrics["train_runtime"]
    return {"seconds": seconds, "tokens": _CountingCollator.tokens, "parameters": model.num_parameters()}


def plain_iteration(base: str, task: Task, train: list[Example], held_out: list[Example],
                    config, work: Path) -> dict:
    """One STaR iteration written the obvious way, stage for stage the same as selftaught's."""
    g, t = config.generation, config.training
    stop = tuple(g.stop or task.stop)
    times: dict[str, float] = {}
    timed = _timer(times)

    model, tokenizer = timed("load", lambda: load_plain(base, config.model, g.batch_size))
    outs = timed("generate", lambda: plain_generate(
        model, tokenizer, [task.prompt(e) for e in train], g.batch_size, g.max_new_tokens, stop))
    solved = {e.id: o for e, o in zip(train, outs) if task.is_correct(task.extract_answer(o, e), e)}
    failures = [e for e in train if e.id not in solved]
    hinted = timed("rationalize", lambda: plain_generate(
        model, tokenizer, [task.prompt(e, hint=True) for e in failures], g.batch_size,
        g.max_new_tokens, stop))
    rationalized = {e.id: o for e, o in zip(failures, hinted)
                    if task.is_correct(task.extract_answer(o, e), e)}
    kept = [TrainExample(task.format_question(e), (solved.get(e.id) or rationalized[e.id]) + stop[0])
            for e in train if e.id in solved or e.id in rationalized]
    model = None  # free the generator's weights before training
    gc.collect()
    trained = timed("fine_tune", lambda: plain_train(
        base, kept, t.steps(1), t.learning_rate, t.warmup_steps, t.batch_size, config.seed,
        work / "plain-checkpoint"))

    def evaluate():
        model, tokenizer = load_plain(str(work / "plain-checkpoint"), config.model, g.batch_size)
        return plain_generate(model, tokenizer, [task.prompt(e) for e in held_out], g.batch_size,
                              g.max_new_tokens, stop)

    preds = timed("evaluate", evaluate)
    accuracy = sum(task.is_correct(task.extract_answer(o, e), e) for e, o in zip(held_out, preds)) / len(held_out)
    return {"seconds": sum(times.values()), "stages": times, "accuracy": accuracy,
            "kept": (len(solved), len(rationalized)), "train_seconds": trained["seconds"]}


def selftaught_iteration(base: str, task: Task, train: list[Example], held_out: list[Example],
                         config, work: Path) -> dict:
    """Iteration 1 of ``selftaught.loop.star``, stage by stage, timed from the outside."""
    store = RunStore.create(work / "selftaught-run", config.to_dict(), overwrite=True)
    stages = Stages(config, task, store)
    stages.say = lambda *a, **k: None
    times: dict[str, float] = {}
    timed = _timer(times)

    rationales = timed("generate", lambda: stages.generate_rationales(1, base, train))
    failures = stages.failures(train, rationales)
    rationalized = timed("rationalize", lambda: stages.rationalize(1, base, failures))
    dataset = stages.filter_correct(1, train, rationales, rationalized)
    model = timed("fine_tune", lambda: stages.fine_tune(1, base, dataset))
    metrics = timed("evaluate", lambda: stages.evaluate(1, model, held_out))
    stages.close()
    store.close()  # its lock: one writer per run folder
    kept = sum(r["correct"] for r in rationales), sum(r["correct"] for r in rationalized)
    return {"seconds": sum(times.values()), "stages": times, "accuracy": metrics["accuracy"], "kept": kept}

# --- the benchmark -------------------------------------------------------------------------


@dataclass
class Row:
    section: str
    what: str
    value: float
    unit: str
    note: str = ""


def useful_tokens(tokenizer, texts: list[str]) -> int:
    """Tokens of each completion up to its stop string: the same count for both generators."""
    return sum(len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"])


def bench_generation(base, task, examples, config, batch1_prompts: int) -> tuple[list[Row], list[TrainExample]]:
    g = config.generation
    stop = tuple(g.stop or task.stop)
    prompts = [task.prompt(e) for e in examples]
    params = SamplingParams(max_new_tokens=g.max_new_tokens, stop=stop)
    tokenizer = AutoTokenizer.from_pretrained(base)

    generator = get_generator(base, config.model, g)
    generator.generate(prompts[:2], params, desc="warm-up")
    start = time.perf_counter()
    ours = [c[0].text for c in generator.generate(prompts, params, desc="selftaught generator")]
    ours_s = time.perf_counter() - start
    generator.close()

    model, plain_tok = load_plain(base, config.model, g.batch_size)
    if hasattr(generator, "dtype"):  # the transformers backend: same dtype, same device
        assert (model.dtype, model.device.type) == (generator.dtype, torch.device(generator.device).type)
    plain_generate(model, plain_tok, prompts[:2], 2, 4, stop)  # warm-up
    start = time.perf_counter()
    plain = plain_generate(model, plain_tok, prompts, g.batch_size, g.max_new_tokens, stop)
    plain_s = time.perf_counter() - start
    few = prompts[:batch1_prompts]
    start = time.perf_counter()
    plain1 = plain_generate(model, plain_tok, few, 1, g.max_new_tokens, stop)
    plain1_s = time.perf_counter() - start
    del model

    ours_tps = useful_tokens(tokenizer, ours) / ours_s
    plain_tps = useful_tokens(tokenizer, plain) / plain_s
    plain1_tps = useful_tokens(tokenizer, plain1) / plain1_s
    same = sum(a == b for a, b in zip(ours, plain)) / len(prompts)
    correct = [task.is_correct(task.extract_answer(o, e), e) for e, o in zip(examples, ours)]

    n = len(prompts)
    rows = [
        Row("generation", f"selftaught generator, batch {g.batch_size}, {n} prompts", ours_tps, "tokens/s",
            f"{ours_s:.1f} s; {same:.0%} of outputs identical to plain generate"),
        Row("generation", f"plain model.generate, batch {g.batch_size}, {n} prompts", plain_tps, "tokens/s", f"{plain_s:.1f} s"),
        Row("generation", f"plain model.generate, batch 1, first {len(few)} prompts", plain1_tps, "tokens/s", f"{plain1_s:.1f} s"),
        Row("generation", f"speed-up over plain generate at batch {g.batch_size}", ours_tps / plain_tps, "x"),
        Row("generation", "speed-up over plain generate at batch 1", ours_tps / plain1_tps, "x"),
    ]
    kept = [TrainExample(task.format_question(e), o + stop[0]) for e, o, ok in zip(examples, ours, correct) if ok]
    return rows, kept


def bench_training(base, examples: list[TrainExample], config, steps: int, work: Path, label: str) -> list[Row]:
    t = config.training
    # The peak of the device that trains (a GPU's own when training on a GPU, never the CPU's).
    peak = matmul_peak_tflops(torch.bfloat16 if _bf16() else torch.float32, pick_device())
    result = get_trainer(t, config.seed).train(base, examples, steps, work / "ours")
    n = result.extra["parameters"]
    ours_tps = result.tokens / result.seconds
    # The same sequences in the same steps as ours: short and long steps differ in tokens/s.
    order = _Sampler(len(examples), config.seed).take(steps * t.batch_size)
    plain = plain_train(base, examples, steps, t.learning_rate, t.warmup_steps, t.batch_size,
                        config.seed, work / "plain", order)
    if plain["tokens"] != result.tokens:
        raise RuntimeError(f"the plain Trainer saw {plain['tokens']} tokens, ours {result.tokens}: not the same steps")
    plain_tps = plain["tokens"] / plain["seconds"]
    mfu = lambda tps: model_flops_per_token(n, n) * tps / (peak * 1e12)  # noqa: E731
    shutil.rmtree(work / "ours", ignore_errors=True)
    shutil.rmtree(work / "plain", ignore_errors=True)
    return [
        Row("fine-tuning", f"selftaught trainer, {label}", ours_tps, "tokens/s",
            f"MFU {mfu(ours_tps):.1%}; {result.seconds:.1f} s for {steps} steps; "
            f"forward+backward {result.extra['seconds_forward_backward']:.1f} s, "
            f"optimizer {result.extra['seconds_optimizer']:.1f} s"),
        Row("fine-tuning", f"plain Trainer, {label}", plain_tps, "tokens/s",
            f"MFU {mfu(plain_tps):.1%}; {plain['seconds']:.1f} s for {steps} steps, the same "
            f"{plain['tokens']} tokens in the same steps as ours"),
        Row("fine-tuning", f"selftaught MFU, {label}", mfu(ours_tps), "fraction",
            f"6·N·tokens/s over a measured {'bf16' if _bf16() else 'fp32'} {pick_device()} matmul peak of "
            f"{peak * 1000:.0f} GFLOP/s"),
        Row("fine-tuning", f"speed-up over plain Trainer, {label}", ours_tps / plain_tps, "x"),
    ]


def plain_iteration_in_default_process(child_argv: list[str], work: Path) -> dict:
    """The plain iteration in a child process with glibc's and torch's default allocator, as a
    script of plain ``generate`` + ``Trainer`` runs: the tuning selftaught applies to itself
    (selftaught/allocator.py) also speeds plain ``generate`` up, so both are reported."""
    out = work / "plain-default-process.json"
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
    env["SELFTAUGHT_TUNE_ALLOCATOR"] = "0"
    subprocess.run([sys.executable, __file__, *child_argv, "--plain-iteration-json", str(out)],
                   env=env, check=True)
    return json.loads(out.read_text())


def bench_iteration(base, task, train, held_out, config, work: Path, child_argv: list[str]) -> list[Row]:
    ours = selftaught_iteration(base, task, train, held_out, config, work)
    gc.collect()
    plain = plain_iteration(base, task, train, held_out, config, work)
    default = plain_iteration_in_default_process(child_argv, work)
    profile = lambda r: ", ".join(f"{k} {v:.0f} s" for k, v in r["stages"].items())  # noqa: E731
    outcome = lambda r: f"held-out accuracy {r['accuracy']:.1%}; kept {r['kept'][0]} + {r['kept'][1]}"  # noqa: E731
    return [
        Row("iteration", "selftaught, one STaR iteration", ours["seconds"], "s", f"{outcome(ours)}; {profile(ours)}"),
        Row("iteration", "plain generate + Trainer, one STaR iteration", plain["seconds"], "s",
            f"{outcome(plain)}; {profile(plain)}; in this process, with selftaught's allocator tuning"),
        Row("iteration", "speed-up", plain["seconds"] / ours["seconds"], "x", "the same process, the same allocator"),
        Row("iteration", "plain generate + Trainer in a default process, one STaR iteration", default["seconds"], "s",
            f"{outcome(default)}; {profile(default)}; a child process with glibc's and torch's default allocator"),
        Row("iteration", "speed-up, each as it runs by default", default["seconds"] / ours["seconds"], "x",
            "selftaught tunes its allocator, a plain script does not"),
        Row("iteration", "accuracy difference (selftaught − plain)", 100 * (ours["accuracy"] - plain["accuracy"]), "points"),
    ]


# The processor's matmul features as /proc/cpuinfo names them, in the words written to RESULTS.md.
MATMUL_FLAGS = {"avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512", "avx512_bf16": "AVX-512 BF16",
                "amx_bf16": "AMX BF16 (listed)"}


def machine() -> str:
    cpu, flags = cpu_name(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    if flags is not None:
        have = [name for flag, name in MATMUL_FLAGS.items() if flag in flags] or ["none of AVX2, AVX-512"]
        missing = [name for flag, name in MATMUL_FLAGS.items() if flag not in flags and flag != "amx_bf16"]
        cpu += f" (matmul features: {', '.join(have)}{'; no ' + ', no '.join(missing) if missing else ''}; " \
               f"torch kernels: {torch.backends.cpu.get_cpu_capability()})"
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    threads = torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} CPUs ({threads} torch threads){gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def markdown(rows: list[Row], header: str) -> str:
    lines = [header, "", "| section | measurement | value | notes |", "|---|---|---|---|"]
    for r in rows:
        value = f"{r.value:.1%}" if r.unit == "fraction" else f"{r.value:,.2f} {r.unit}"
        lines.append(f"| {r.section} | {r.what} | {value} | {r.note} |")
    return "\n".join(lines) + "\n"


def _bf16() -> bool:
    from selftaught.training.transformers_backend import _bf16_supported

    return _bf16_supported("cuda" if torch.cuda.is_available() else "cpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"),
                        help="the run config whose model, task and sizes are measured")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--prompts", type=int, default=128, help="prompts for (a) (default 128)")
    parser.add_argument("--batch1-prompts", type=int, default=32,
                        help="prompts for plain generate at batch 1 (default 32: it is slow)")
    parser.add_argument("--train-steps", type=int, default=20, help="optimizer steps for (b)")
    parser.add_argument("--skip-iteration", action="store_true", help="skip (c)")
    parser.add_argument("--only-iteration", action="store_true", help="run (c) alone (~20 minutes on 2 cores)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"),
                        help="markdown file the results are appended to")
    parser.add_argument("--plain-iteration-json", type=Path, help=argparse.SUPPRESS)  # the child above
    args = parser.parse_args(argv)
    if args.only_iteration and args.skip_iteration:
        raise SystemExit("--only-iteration and --skip-iteration exclude each other; give one")

    # The plain iteration checks final answers only, as the paper does: so does selftaught's here.
    config = load_config(args.config, ["loop.step_checker=none", *args.overrides])
    task = get_task(config.task.name, config.task.options)
    train = task.load("train", config.task.train_size, config.seed)
    held_out = task.load(config.eval.split, config.eval.size, config.seed)
    base = resolve_base_model(config.model)
    if args.plain_iteration_json:  # plain_iteration_in_default_process's child
        with tempfile.TemporaryDirectory(prefix="selftaught-bench-") as tmp:
            plain = plain_iteration(base, task, train, held_out, config, Path(tmp))
        args.plain_iteration_json.write_text(json.dumps(plain))
        return 0
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="selftaught-bench-") as tmp:
        work = Path(tmp)
        if not args.only_iteration:
            print("(a) generation ...", file=sys.stderr)
            generation, kept = bench_generation(base, task, train[: args.prompts], config, args.batch1_prompts)
            rows += generation
            if not kept:
                raise SystemExit("benchmark: the model answered none of the prompts correctly; "
                                 "nothing to fine-tune on for (b)")
            print("(b) fine-tuning ...", file=sys.stderr)
            rows += bench_training(base, kept, config, args.train_steps, work,
                                   "question + rationale (the default)")
            long = [TrainExample(task.fewshot_prompt() + e.prompt, e.completion) for e in kept]
            rows += bench_training(base, long, config, args.train_steps, work,
                                   "few-shot prompt kept (training.keep_fewshot_prompt=true)")
        if not args.skip_iteration:
            print("(c) one STaR iteration ...", file=sys.stderr)
            rows += bench_iteration(base, task, train, held_out, config, work,
                                    ["--config", args.config, *args.overrides])

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"## {when}\n\nMachine: {machine()}.\nModel `{config.model.name_or_path}`, task "
              f"`{config.task.name}` {json.dumps(config.task.options)}, {len(train)} training and "
              f"{len(held_out)} held-out questions, generation batch {config.generation.batch_size}, "
              f"{config.training.batch_size} sequences a step; allocator tuned in this process "
              f"(selftaught/allocator.py): {ALLOCATOR}. Whole benchmark: "
              f"{time.perf_counter() - started:.0f} s.")
    text = markdown(rows, header)
    print(text)
    results = Path(args.results)
    if not results.exists():
        results.write_text("# Benchmark results\n\nAppended by `python benchmarks/run.py`; newest last.\n")
    with results.open("a") as f:
        f.write("\n" + text)
    print(f"appended to {results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
