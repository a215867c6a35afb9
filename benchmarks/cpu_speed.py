"""How close the CPU paths come to this machine's own limits, and to llama.cpp.

    python benchmarks/cpu_speed.py                                   # (a) and (b), ~10 minutes on 2 cores
    python benchmarks/cpu_speed.py --llama-cpp /path/to/llama.cpp/build/bin   # and (c), ~7 more

On the model and task of configs/default.yaml:

(a) fine-tuning: our trainer on the default's short question + rationale sequences, 8 a step:
    tokens/s, MFU (6·N·tokens/s) against the matmul peak measured here in the training
    precision, the share of a step the optimizer takes, and the losses;
(b) decoding: the shared-prefix generator in fp32 and in bf16, at batch 64, 128, 256 and 512, on
    the same held-out prompts, greedy: useful tokens/s (up to the stop string), the fraction of
    the compute limit (2·N FLOPs a token over the same peak in that precision), how many
    answers are right, and how many outputs are the same in both precisions. Where the
    processor only emulates bf16 (no AVX-512 BF16 / AMX), bf16 decodes one batch at the
    smallest size only (its matmuls are emulated: ~100x slower than fp32 on large squares,
    ~5x on decode-sized products); fp32 on llama-batched-bench's own workload: the few-shot
    prompt shared by every row, 32 tokens decoded a row, EOS ignored; and the precision
    ``model.dtype=auto`` picks here, with the decode-step timings behind it;
(c) llama.cpp (optional; skipped with the reason when no binary is given): the same checkpoint
    converted to GGUF (f32 and bf16, conversion time reported) and the embedded Q4_1 GGUF, in
    ``llama-batched-bench`` (its converter needs ``pip install sentencepiece``) with a shared
    prompt of the few-shot prefix's length and 32 new tokens a sequence, at the same batch
    sizes up to 256 (the most sequences llama.cpp decodes at once) and 2 threads. Our tokens/s
    as a ratio to its decode tokens/s on the same work (the fixed rows of (b)), batch by batch
    and best batch against best batch; and, for reference,
    our useful tokens/s on held-out questions against it (ours then also prefills each question,
    and llama.cpp's count includes tokens past an answer: not the same work). Then the held-out
    questions themselves through ``llama-server`` (f32, at each ``--server-slots`` setting),
    started as ``generation.backend=openai`` starts it, its slots warmed with the few-shot
    prefix first: useful tokens/s counted as ours are, how many answers equal ours, and our
    useful tokens/s at each batch size as a ratio to its best.

Appends the table, with the date and the machine, to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selftaught.allocator import tune_allocator

ALLOCATOR = tune_allocator()  # as `selftaught` does, before torch's first tensor (SELFTAUGHT_TUNE_ALLOCATOR=0: off)

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, Row, machine, markdown, useful_tokens  # noqa: E402  (benchmarks/run.py)

from selftaught.config import load_config  # noqa: E402
from selftaught.generation import SamplingParams, get_generator  # noqa: E402
from selftaught.generation.precision import MARGIN  # noqa: E402
from selftaught.generation.openai_server import (ServerRequestError, ServerUnavailableError,  # noqa: E402
                                                 convert_to_gguf)
from selftaught.models import embedded_gguf, resolve_base_model  # noqa: E402
from selftaught.tasks import get_task  # noqa: E402
from selftaught.training import TrainExample, get_trainer  # noqa: E402
from selftaught.training.flops import matmul_peak_tflops  # noqa: E402
from selftaught.training.transformers_backend import _bf16_supported  # noqa: E402


LLAMA_NEW_TOKENS = 32  # tokens decoded a sequence in llama-batched-bench (-ntg) and in fixed_decode
LLAMA_MAX_SEQ = 256  # llama.cpp decodes at most this many sequences at once (LLAMA_MAX_SEQ in src/llama-cparams.h)


def training_examples(task, examples) -> list[TrainExample]:
    """What a default iteration keeps: each question with a one-line rationale and its answer.

    Built, not generated, so that (a) needs no decoding first; the shape is the kept
    rationales' (e.g. ``Q: What is 84 + 73?\\nA:`` + `` 84 + 73 = 157. The answer is 157.``).
    """
    return [TrainExample(task.format_question(e),
                         task.format_answer(f"{e.question} = {e.answer}.", e.answer) + task.stop[0])
            for e in examples]


def bench_training(base: str, config, examples: list[TrainExample], steps: int, work: Path) -> list[Row]:
    result = get_trainer(config.training, config.seed).train(base, examples, steps, work / "ft")
    x = result.extra
    step_s = result.seconds / steps
    optimizer = x["seconds_optimizer"] / result.seconds
    later = (x["seconds_optimizer"] - x["seconds_optimizer_first_step"]) / max(steps - 1, 1)
    precision = "bf16" if x["bf16"] else "fp32"
    losses = ", ".join(f"{v:.4f}" for v in result.losses)
    return [
        Row("fine-tuning", f"our trainer, {steps} steps of {config.training.batch_size} sequences",
            result.tokens / result.seconds, "tokens/s",
            f"{step_s:.2f} s a step, {result.tokens / steps:.0f} tokens a step; precision {precision}"),
        Row("fine-tuning", f"MFU against the measured {precision} matmul peak", x["mfu"], "fraction",
            f"peak {x['peak_tflops'] * 1000:.0f} GFLOP/s; FLOPs really run "
            f"(output layer on loss positions only): {x['hardware_flop_utilisation']:.1%}"),
        Row("fine-tuning", "optimizer share of a step", optimizer, "fraction",
            f"optimizer {x['seconds_optimizer'] / steps:.3f} s a step, forward+backward "
            f"{x['seconds_forward_backward'] / steps:.3f} s; losses {losses}"),
        Row("fine-tuning", "optimizer share of a step after the first", later / step_s, "fraction",
            f"{later:.3f} s a step; the first step's {x['seconds_optimizer_first_step']:.3f} s "
            f"includes allocating Adam's two moments"),
        _optimizer_floor(x, step_s, later),
    ]


def _optimizer_floor(x: dict, step_s: float, ours: float) -> Row:
    """The least time Adam can take here: the bytes it must move over the measured bandwidth.

    Fused AdamW reads the weights, their gradients and both moments and writes back all but
    the gradients: 7 fp32 tensors, 28 bytes a parameter. bf16 training adds the trainer's
    copies between bf16 weights and fp32 masters (a bf16 gradient read and an fp32 one
    written, an fp32 master read and a bf16 weight written): 12 more."""
    params = x["trainable_parameters"]
    per_param = 40 if x["bf16"] else 28
    bandwidth = memory_bandwidth()
    floor = params * per_param / bandwidth
    return Row("fine-tuning", "optimizer's floor: its bytes over the memory bandwidth, share of a step",
               floor / step_s, "fraction",
               f"{per_param} bytes a parameter x {params / 1e6:.3g}M = {params * per_param / 1e9:.2f} GB "
               f"a step; in-place add bandwidth {bandwidth / 1e9:.1f} GB/s gives {floor:.3f} s; "
               f"ours after the first step {ours:.3f} s, {ours / floor:.1f}x the floor")


def memory_bandwidth(gib: float = 0.5, seconds: float = 1.0) -> float:
    """Best bytes/s of ``a += b`` on two fp32 arrays far larger than any cache, as Adam's update
    is (read both, write one: 3 bytes moved per byte of ``a``), over ~``seconds``."""
    n = int(gib * 2**30) // 4
    a, b = torch.ones(n), torch.ones(n)
    a.add_(b)  # touch every page before timing
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        a.add_(b)
        best = max(best, 3 * 4 * n / (time.perf_counter() - t))
    return best


def bench_decoding(base: str, config, task, held_out, batches: list[int]) -> tuple[list[Row], list[str]]:
    """Rows, and the fp32 completions at the first batch size (to compare llama-server's with)."""
    g = config.generation
    stop = tuple(g.stop or task.stop)
    prompts = [task.prompt(e) for e in held_out]
    params = SamplingParams(max_new_tokens=g.max_new_tokens, stop=stop)
    tokenizer = AutoTokenizer.from_pretrained(base)
    right = lambda texts: sum(task.is_correct(task.extract_answer(t, e), e)  # noqa: E731
                              for t, e in zip(texts, held_out))
    native_bf16 = _bf16_supported("cpu")
    rows, outputs = [], {}
    for dtype in ("float32", "bfloat16"):
        native = dtype == "float32" or native_bf16
        # An emulated precision has no peak of its own to measure decoding against.
        peak = matmul_peak_tflops(getattr(torch, dtype), "cpu") if native else None
        # Emulated bf16: one batch at the smallest size, to have a measured figure.
        sizes = batches if native else batches[:1]
        generator = get_generator(base, dataclasses.replace(config.model, dtype=dtype), g)
        n_params = sum(p.numel() for p in generator.model.parameters())
        generator.generate(prompts[:2], params, desc="warm-up")
        for b in sizes:
            n = len(prompts) if native else min(len(prompts), b)
            generator.config = dataclasses.replace(g, batch_size=b)  # read at every generate call
            start = time.perf_counter()
            texts = [c[0].text for c in generator.generate(prompts[:n], params, desc=f"{dtype} batch {b}")]
            seconds = time.perf_counter() - start
            tps = useful_tokens(tokenizer, texts) / seconds
            outputs.setdefault(dtype, {})[b] = texts
            same = f"; {right(texts)}/{n} correct"
            if dtype == "bfloat16":
                fp32 = outputs["float32"][batches[0]][:n]
                same += (f" ({right(fp32)} in fp32); {sum(a == c for a, c in zip(texts, fp32))}/{n} "
                         "outputs identical to fp32")
            limit = (f"{2 * n_params * tps / (peak * 1e12):.1%} of the compute limit (2·N FLOPs a "
                     f"useful token over the {dtype} peak of {peak * 1000:.0f} GFLOP/s)") if peak else \
                "bf16 is emulated on this processor (no AVX-512 BF16)"
            rows.append(Row("decoding", f"shared-prefix generator, {dtype}, batch {b}, {n} prompts", tps,
                            "tokens/s", f"{seconds:.1f} s; {limit}{same}"))
        if dtype == "float32":
            same_b = [sum(a == c for a, c in zip(outputs[dtype][b], outputs[dtype][batches[0]])) for b in sizes]
            rows[-1].note += f"; outputs identical across batch sizes: {same_b} of {len(prompts)}"
            rows += fixed_decode(generator, task.fewshot_prompt(), sizes, peak, n_params)
        generator.close()
    rows.append(auto_precision(base, config))
    return rows, outputs["float32"][batches[0]]


def auto_precision(base: str, config) -> Row:
    """What ``model.dtype=auto`` picks on this processor at the configured batch, timed afresh."""
    with tempfile.TemporaryDirectory() as cache:
        model = dataclasses.replace(config.model, dtype="auto", cache_dir=cache)
        generator = get_generator(base, model, config.generation)
        p = generator.precision
        generator.close()
    return Row("decoding", f"model.dtype=auto at batch {p['batch']} picks {p['dtype']}",
               p["float32_s"] / p["bfloat16_s"], "x bf16/fp32 speed",
               f"one decode step took {p['float32_s']:.3f} s in fp32 and {p['bfloat16_s']:.3f} s in bf16; "
               f"bf16 is kept only when it is {MARGIN}x faster")


def fixed_decode(generator, prompt: str, batches: list[int], peak: float, n_params: int,
                 new_tokens: int = LLAMA_NEW_TOKENS) -> list[Row]:
    """Our generator on llama-batched-bench's workload: ``b`` copies of one prompt, whose KV
    cache is shared, each decoding exactly ``new_tokens`` tokens (no stop string, EOS ignored).

    The rows above decode real questions: each row also prefills its question and stops at its
    answer, which llama-batched-bench has no equivalent of, so those and its figures are not the
    same work. Here both do the same work: the few-shot prompt encoded once (not timed: warmed
    up first, as ``-pps`` times it apart), then ``new_tokens`` forward passes of ``b`` rows.
    """
    params = SamplingParams(max_new_tokens=new_tokens)
    eos, generator.eos_ids = generator.eos_ids, set()  # every row runs to new_tokens, as in llama.cpp
    try:
        generator.generate([prompt] * 2, params, desc="warm-up")  # encodes and keeps the prompt's cache
        rows = []
        for b in batches:
            start = time.perf_counter()
            done = generator.generate([prompt] * b, params, desc=f"fixed batch {b}")
            seconds = time.perf_counter() - start
            tokens = sum(c[0].tokens for c in done)
            if tokens != b * new_tokens:
                raise RuntimeError(f"fixed decode: {tokens} tokens, expected {b} x {new_tokens}")
            tps = tokens / seconds
            rows.append(Row("decoding", f"shared-prefix generator, float32, batch {b}, "
                            f"llama-batched-bench's workload", tps, "tokens/s",
                            f"{seconds:.1f} s; {new_tokens} tokens a row after the shared "
                            f"{len(generator.tokenizer(prompt, add_special_tokens=False)['input_ids'])}-token "
                            f"few-shot prompt, EOS ignored; {2 * n_params * tps / (peak * 1e12):.1%} of the "
                            "compute limit"))
        return rows
    finally:
        generator.eos_ids = eos


def bench_llama_cpp(bin_dir: Path, base: str, batches: list[int], prefix_tokens: int,
                    ours: dict[str, dict[int, float]], work: Path) -> list[Row]:
    """llama-batched-bench at each batch size and precision; ``ours`` holds our fp32 tokens/s by
    batch size on the STaR workload ("questions") and on llama.cpp's own ("fixed")."""
    bench = bin_dir / "llama-batched-bench"
    convert = _convert_script(bin_dir)
    rows = []
    models = {}
    for outtype in ("f32", "bf16"):
        out = work / f"model-{outtype}.gguf"
        start = time.perf_counter()
        convert_to_gguf(base, str(convert), outtype, out)
        models[outtype] = (out, time.perf_counter() - start)
    models["q4_1 (the embedded GGUF)"] = (embedded_gguf(), 0.0)
    batches = [b for b in batches if b <= LLAMA_MAX_SEQ]
    if not batches:
        raise LlamaCppError(f"no batch size of --batches is within llama.cpp's {LLAMA_MAX_SEQ} sequences")
    ctx = prefix_tokens + max(batches) * LLAMA_NEW_TOKENS + 64
    best: dict[str, tuple[float, int]] = {}  # precision: (best decode tokens/s, its batch)
    for name, (path, convert_s) in models.items():
        p = subprocess.run([str(bench), "-m", str(path), "-c", str(ctx), "-b", "2048", "-ub", "512",
                            "-npp", str(prefix_tokens), "-ntg", str(LLAMA_NEW_TOKENS), "-npl", ",".join(map(str, batches)),
                            "-pps", "-t", str(torch.get_num_threads()), "--output-format", "jsonl"],
                           capture_output=True, text=True)
        if p.returncode != 0:
            tail = " ".join(p.stderr.strip().splitlines()[-2:]) or f"exit status {p.returncode}"
            raise LlamaCppError(f"llama-batched-bench on the {name} model failed: {tail}")
        for line in p.stdout.splitlines():
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            b, tg = r["pl"], r["speed_tg"]
            note = f"conversion {convert_s:.0f} s; " if convert_s else ""
            rows.append(Row("llama.cpp", f"llama-batched-bench, {name}, batch {b}", tg, "tokens/s",
                            note + f"decode of {r['tg']} tokens a sequence after a shared {r['pp']}-token prompt"))
            best[name] = max(best.get(name, (0.0, 0)), (tg, b))
            if b in ours.get("fixed", {}):
                rows.append(Row("llama.cpp", f"ours (fp32) / llama.cpp {name}, batch {b}, the same work",
                                ours["fixed"][b] / tg, "x", f"both decode {LLAMA_NEW_TOKENS} tokens a row after one shared prompt"))
            if b in ours.get("questions", {}):
                rows.append(Row("llama.cpp", f"ours (fp32, held-out questions) / llama.cpp {name}, batch {b}",
                                ours["questions"][b] / tg, "x",
                                "ours also prefills each question and counts useful tokens only"))
    if ours.get("fixed"):
        b_ours = max(ours["fixed"], key=ours["fixed"].get)
        for name, (tg, b) in best.items():
            rows.append(Row("llama.cpp", f"ours at our best batch / llama.cpp {name} at its best batch, the same work",
                            ours["fixed"][b_ours] / tg, "x", f"ours at batch {b_ours}, llama.cpp at batch {b}"))
    return rows


def bench_llama_server(bin_dir: Path, base: str, config, task, train, held_out, slots: list[int],
                       ours: dict[int, float], our_texts: list[str]) -> list[Row]:
    """llama-server on the held-out questions: the work of (b)'s question rows, on both sides.

    Served as a user of ``generation.backend=openai`` would serve it (``server_command`` with
    ``{gguf}``, f32, ``-np`` slots, 2 threads), the same prompts sent ``-np`` at a time, the same
    stop strings and greedy decoding, and the answers counted with the same ``useful_tokens``.
    Before the timed pass each slot answers one training question (untimed), so that it holds
    the few-shot prefix in its cache, as (b) encodes the prefix before timing: every timed
    prompt then reuses the prefix and encodes only its question, as ours does.
    """
    server = bin_dir / "llama-server"
    prompts = [task.prompt(e) for e in held_out]
    stop = tuple(config.generation.stop or task.stop)
    params = SamplingParams(max_new_tokens=config.generation.max_new_tokens, stop=stop)
    tokenizer = AutoTokenizer.from_pretrained(base)
    longest = max(len(x) for x in tokenizer(prompts, add_special_tokens=False)["input_ids"])
    threads = torch.get_num_threads()
    rows, best = [], (0.0, 0)
    for n in slots:
        ctx = n * (longest + params.max_new_tokens + 16)  # -c is split evenly over the -np slots
        overrides = [
            "generation.backend=openai", "generation.openai.gguf_type=f32",
            f"generation.openai.gguf_converter={_convert_script(bin_dir)}",
            f"generation.openai.server_command={server} -m {{gguf}} --alias {{model}} --port {{port}} "
            f"-np {n} -c {ctx} -t {threads}",
            f"generation.openai.concurrency={n}", "generation.openai.timeout=600",
        ]
        g = load_config(str(ROOT / "configs" / "default.yaml"), overrides).generation
        start = time.perf_counter()
        generator = get_generator(base, config.model, g)  # converts the checkpoint, starts the server
        started = time.perf_counter() - start
        try:
            generator.generate([task.prompt(e) for e in train[:n]], params, desc=f"llama-server -np {n} warm-up")
            start = time.perf_counter()
            texts = [c[0].text for c in generator.generate(prompts, params, desc=f"llama-server -np {n}")]
            seconds = time.perf_counter() - start
        finally:
            generator.close()
        tps = useful_tokens(tokenizer, texts) / seconds
        best = max(best, (tps, n))
        same = sum(a == b for a, b in zip(texts, our_texts))
        rows.append(Row("llama.cpp", f"llama-server, f32, -np {n}, {len(prompts)} held-out prompts", tps, "tokens/s",
                        f"{seconds:.1f} s; useful tokens, as ours; conversion and start {started:.0f} s, not "
                        f"timed; {same}/{len(prompts)} answers identical to ours (fp32)"))
    for b, ours_tps in sorted(ours.items()):
        rows.append(Row("llama.cpp", f"ours (fp32) at batch {b} / llama-server f32 at its best -np, "
                        "held-out questions, the same work", ours_tps / best[0], "x",
                        f"llama-server at -np {best[1]}; both prefill each question after a cached few-shot "
                        "prefix and count useful tokens"))
    return rows


class LlamaCppError(RuntimeError):
    """llama.cpp's benchmark failed; what was measured before it is still written."""


def _convert_script(bin_dir: Path) -> Path:
    """llama.cpp's convert_hf_to_gguf.py, from the source tree the binaries were built in."""
    for folder in [bin_dir, *bin_dir.parents]:
        if (folder / "convert_hf_to_gguf.py").exists():
            return folder / "convert_hf_to_gguf.py"
    raise SystemExit(f"--llama-cpp {bin_dir}: no convert_hf_to_gguf.py above it (give the build's bin folder)")


def _sizes(flag: str, text: str) -> list[int]:
    """'64,128,256' as [64, 128, 256]; anything else is one line saying what to give."""
    try:
        sizes = [int(n) for n in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"{flag} {text}: give positive whole numbers separated by commas, e.g. 64,128,256")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--train-steps", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=512, help="held-out prompts decoded in (b)")
    parser.add_argument("--batches", default="64,128,256,512")
    parser.add_argument("--llama-cpp", type=Path, help="folder with llama.cpp's llama-batched-bench "
                        "(and llama-server, for the held-out questions)")
    parser.add_argument("--server-slots", default="32,64,128",
                        help="llama-server -np settings tried on the held-out questions (its best is compared)")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: training,decoding")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    if args.llama_cpp and not (args.llama_cpp / "llama-batched-bench").exists():
        raise SystemExit(f"--llama-cpp {args.llama_cpp}: no llama-batched-bench there")
    slots = _sizes("--server-slots", args.server_slots)
    if max(slots) > LLAMA_MAX_SEQ:
        raise SystemExit(f"--server-slots {args.server_slots}: llama-server runs at most {LLAMA_MAX_SEQ} slots")
    skip = set(filter(None, args.skip.split(",")))
    batches = _sizes("--batches", args.batches)

    config = load_config(str(ROOT / "configs" / "default.yaml"), args.overrides)
    task = get_task(config.task.name, config.task.options)
    train = task.load("train", config.task.train_size, config.seed)
    held_out = task.load(config.eval.split, max(args.prompts, 1), config.seed)
    base = resolve_base_model(config.model)
    started = time.perf_counter()
    rows: list[Row] = []
    notes: list[str] = []  # what was skipped, and why
    with tempfile.TemporaryDirectory(prefix="selftaught-cpu-") as tmp:
        if "training" not in skip:
            print("(a) fine-tuning ...", file=sys.stderr)
            rows += bench_training(base, config, training_examples(task, train), args.train_steps, Path(tmp))
        ours = {}
        if "decoding" not in skip:
            print("(b) decoding ...", file=sys.stderr)
            decoding, our_texts = bench_decoding(base, config, task, held_out, batches)
            rows += decoding
            for r in decoding:
                if "float32" in r.what:
                    kind = "fixed" if "llama-batched-bench" in r.what else "questions"
                    ours.setdefault(kind, {})[int(re.search(r"batch (\d+)", r.what)[1])] = r.value
        failed = None
        if args.llama_cpp:
            print("(c) llama.cpp ...", file=sys.stderr)
            prefix = len(AutoTokenizer.from_pretrained(base)(task.fewshot_prompt(), add_special_tokens=False)["input_ids"])
            if max(batches) > LLAMA_MAX_SEQ:
                notes.append(f"llama-batched-bench ran the batch sizes up to {LLAMA_MAX_SEQ}, the most sequences "
                             "llama.cpp decodes at once (LLAMA_MAX_SEQ); ours at each size is compared with its best")
            try:
                rows += bench_llama_cpp(args.llama_cpp, base, batches, prefix, ours, Path(tmp))
                if "decoding" in skip:
                    notes.append("llama-server on the held-out questions: skipped (it is compared with (b), "
                                 "which was skipped)")
                elif not (args.llama_cpp / "llama-server").exists():
                    notes.append(f"llama-server on the held-out questions: skipped (no llama-server in {args.llama_cpp})")
                else:
                    rows += bench_llama_server(args.llama_cpp, base, config, task, train, held_out, slots,
                                               ours["questions"], our_texts)
            except (LlamaCppError, ServerUnavailableError, ServerRequestError) as e:
                failed = f"llama.cpp failed, the rows before it are kept: {e}"
                notes.append(failed)
        else:
            print("(c) llama.cpp: skipped (no --llama-cpp folder given)", file=sys.stderr)

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"## {when}: CPU speed (benchmarks/cpu_speed.py)\n\nMachine: {machine()}.\n"
              f"Model `{config.model.name_or_path}`, task `{config.task.name}`; allocator tuned "
              f"(selftaught/allocator.py): {ALLOCATOR}; whole benchmark "
              f"{time.perf_counter() - started:.0f} s." + "".join(f"\n\n{n}." for n in notes))
    text = markdown(rows, header)
    print(text)
    with Path(args.results).open("a") as f:
        f.write("\n" + text)
    if failed:
        print(f"cpu_speed.py: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
