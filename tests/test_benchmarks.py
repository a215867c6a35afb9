"""benchmarks/run.py end to end on the tiny model: every measurement present, results appended."""

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, file: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _bench():
    return _load("bench", "run.py")


def _cpu_speed():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # it imports benchmarks/run.py as `run`
    return _load("cpu_speed", "cpu_speed.py")


def _stand_in_converter(folder: Path) -> None:
    """convert_hf_to_gguf.py's arguments; writes 'TYPE MODEL_PATH' as the "GGUF"."""
    (folder / "convert_hf_to_gguf.py").write_text(
        "import argparse, pathlib\n"
        "p = argparse.ArgumentParser(); p.add_argument('model'); p.add_argument('--outtype'); p.add_argument('--outfile')\n"
        "a = p.parse_args(); pathlib.Path(a.outfile).write_text(a.outtype + ' ' + a.model)\n")


def test_benchmark_writes_every_ratio(tiny_model, tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    argv = [
        f"model.name_or_path={tiny_model}", "model.dtype=float32", "task.options.digits_max=1", "task.train_size=24", "eval.size=8", "eval.validation_size=8",
        "generation.batch_size=8", "generation.max_new_tokens=24", "training.start_steps=2",
        "training.warmup_steps=1", "--prompts", "16", "--batch1-prompts", "2", "--train-steps", "2",
        "--results", str(results),
    ]
    bench = _bench()
    assert bench.main(argv) == 0
    assert bench.main(argv + ["--skip-iteration"]) == 0
    text = results.read_text()
    assert text.startswith("# Benchmark results")
    assert text.count("\n## ") == 2  # appended, not overwritten
    first = text.split("\n## ")[1]
    for what in ["speed-up over plain generate at batch 8", "speed-up over plain generate at batch 1",
                 "speed-up over plain Trainer, question + rationale", "selftaught MFU",
                 "iteration | speed-up", "speed-up, each as it runs by default", "accuracy difference"]:
        assert what in first, what
    ratios = [float(m) for m in re.findall(r"speed-up[^|]*\| ([\d.,]+) x", first)]
    assert len(ratios) == 6 and all(r > 0 for r in ratios)
    assert "iteration" not in text.split("\n## ")[2].split("| section")[1].replace("one STaR iteration", "")
    assert bench.main(argv + ["--only-iteration"]) == 0
    third = results.read_text().split("\n## ")[3].split("| section")[1]
    assert "iteration | speed-up" in third and "generation |" not in third and "fine-tuning |" not in third


def test_cpu_speed_measures_training_and_both_precisions(tiny_model, tmp_path):
    """benchmarks/cpu_speed.py on the tiny model: (a) and (b) measured, (c) refused without a binary."""
    import pytest

    cpu_speed = _cpu_speed()
    results = tmp_path / "RESULTS.md"
    argv = [f"model.name_or_path={tiny_model}", "task.options.digits_max=1", "task.train_size=16",
            "generation.max_new_tokens=16", "--train-steps", "2", "--prompts", "8", "--batches", "4,8",
            "--results", str(results)]
    assert cpu_speed.main(argv) == 0
    text = results.read_text()
    for what in ["our trainer, 2 steps of 8 sequences", "MFU against the measured", "optimizer share of a step",
                 "optimizer's floor: its bytes over the memory bandwidth",
                 "float32, batch 4, 8 prompts", "float32, batch 8, 8 prompts", "bfloat16, batch 4",
                 "outputs identical across batch sizes", "outputs identical to fp32",
                 "float32, batch 4, llama-batched-bench's workload", "float32, batch 8, llama-batched-bench's workload",
                 "torch kernels:", "model.dtype=auto at batch"]:
        assert what in text, what
    # 4 prompts where bf16 is emulated, all 8 where the processor has bf16 matmuls
    assert re.search(r"bfloat16, batch 4, ([48]) prompts .*; \d/\1 correct \(\d in fp32\); \d/\1 outputs identical", text)
    speeds = [float(m.replace(",", "")) for m in re.findall(r"\| ([\d.,]+) tokens/s \|", text)]
    assert len(speeds) >= 4 and all(v > 0 for v in speeds)
    # The floor: 28 bytes a parameter in fp32 (40 with bf16 weights), over a bandwidth a real memory has.
    gbs = float(re.search(r"in-place add bandwidth ([\d.]+) GB/s", text)[1])
    assert 0.5 < gbs < 5000
    assert re.search(r"(28|40) bytes a parameter x [\d.]+M", text)
    with pytest.raises(SystemExit, match="no llama-batched-bench there"):
        cpu_speed.main(argv + ["--llama-cpp", str(tmp_path)])
    for flag, bad in [("--batches", "64,x"), ("--server-slots", "0")]:
        with pytest.raises(SystemExit, match=f"{flag} {bad}: give positive whole numbers"):
            cpu_speed.main(argv + [flag, bad])
    with pytest.raises(SystemExit, match="llama-server runs at most 256 slots"):
        cpu_speed.main(argv + ["--server-slots", "64,512"])
    # llama.cpp failing after (b) ran: its error in the results, (b)'s rows still written; and
    # batch sizes past llama.cpp's 256 sequences (ours runs 300) are not asked of it.
    failing = tmp_path / "bin"
    failing.mkdir()
    (failing / "llama-batched-bench").write_text("#!/bin/sh\necho \"$*\" >&2\necho 'n_seq_max must be <= 256' >&2\nexit 1\n")
    (failing / "llama-batched-bench").chmod(0o755)
    _stand_in_converter(tmp_path)
    assert cpu_speed.main(argv + ["--skip", "training", "--batches", "4,300", "--llama-cpp", str(failing)]) == 1
    last = results.read_text().split("\n## ")[-1]
    assert re.search(r"llama-batched-bench on the f32 model failed: .* -npl 4 -pps .* n_seq_max must be <= 256", last)
    assert "ran the batch sizes up to 256" in last
    assert "float32, batch 300, 8 prompts" in last and "fine-tuning |" not in last


def test_cpu_speed_llama_server_on_the_held_out_questions(tiny_model, tmp_path):
    """(c)'s llama-server part, against a stand-in llama-server (tests/test_server_openai.py's
    completions server, answering with our generator) and a stand-in converter: the server is
    started per -np setting, warmed, timed on the same prompts, and its answers compared with ours."""
    cpu_speed = _cpu_speed()
    bin_dir = tmp_path / "build" / "bin"
    bin_dir.mkdir(parents=True)
    _stand_in_converter(tmp_path)  # found in a folder above the binaries, as in llama.cpp's tree
    server = bin_dir / "llama-server"  # takes llama-server's arguments, serves --alias on --port
    server.write_text(
        f"#!{sys.executable}\n"
        "import argparse, pathlib, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "p = argparse.ArgumentParser()\n"
        "for a in ('-m', '--alias', '-np', '-c', '-t'): p.add_argument(a)\n"
        "p.add_argument('--port', type=int)\n"
        "a = p.parse_args()\n"
        "assert pathlib.Path(a.m).read_text() == 'f32 ' + a.alias, 'not the f32 conversion of the model'\n"
        "from test_server_openai import CompletionsServer\n"
        "CompletionsServer(a.alias, a.port).serve_forever()\n")
    server.chmod(0o755)
    config = cpu_speed.load_config(str(ROOT / "configs" / "default.yaml"), [
        f"model.name_or_path={tiny_model}", "model.dtype=float32", "task.options.digits_max=1",
        "generation.max_new_tokens=16"])
    task = cpu_speed.get_task(config.task.name, config.task.options)
    train, held_out = task.load("train", 8, 0), task.load("test", 6, 0)
    ours = [c[0].text for c in cpu_speed.get_generator(tiny_model, config.model, config.generation).generate(
        [task.prompt(e) for e in held_out],
        cpu_speed.SamplingParams(max_new_tokens=16, stop=tuple(task.stop)))]
    rows = cpu_speed.bench_llama_server(bin_dir, tiny_model, config, task, train, held_out, [2, 3],
                                        {4: 100.0, 8: 150.0}, ours)
    served = [r for r in rows if r.unit == "tokens/s"]
    assert [r.what for r in served] == ["llama-server, f32, -np 2, 6 held-out prompts",
                                        "llama-server, f32, -np 3, 6 held-out prompts"]
    assert all(r.value > 0 and "6/6 answers identical to ours" in r.note for r in served), served
    best = max(served, key=lambda r: r.value)
    best_np = re.search(r"-np (\d+),", best.what)[1]
    ratios = [r for r in rows if r.unit == "x"]
    assert [round(r.value * best.value) for r in ratios] == [100, 150]
    assert all(r.note.startswith(f"llama-server at -np {best_np};") for r in ratios)


def test_llama_cpp_is_built_with_what_the_processor_lists_and_never_amx():
    build = _load("build_llama_cpp", "build_llama_cpp.py")
    intel = build.cpu_flags("processor\t: 0\nflags\t\t: fpu sse avx avx2 fma f16c bmi2 avx512f avx512cd avx512vl "
                            "avx512dq avx512bw avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8\nbugs\t\t:\n")
    amd = {"avx", "avx2", "fma", "f16c", "bmi2"}
    on = lambda flags: {o[2:-3] for o in build.cmake_options(flags) if o.endswith("=ON")}  # noqa: E731
    assert on(intel) == {"GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2", "GGML_AVX512",
                         "GGML_AVX512_VNNI", "GGML_AVX512_BF16"}
    assert on(amd) == {"GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2"}
    assert "GGML_AVX512" not in on(intel - {"avx512bw"})  # ggml's AVX-512 build needs all five subsets
    for flags in (intel, amd):
        options = build.cmake_options(flags)
        assert {"-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"} <= set(options)


def test_plain_baseline_decodes_in_the_precision_auto_chose(tiny_model, tmp_path, monkeypatch):
    """The plain baseline takes the generator's precision for model.dtype=auto on the CPU, not
    whatever the checkpoint holds: here a cached verdict in which bf16 was faster."""
    import torch

    from selftaught.config import GenerationConfig, ModelConfig
    from selftaught.generation import get_generator, precision

    monkeypatch.setattr(precision, "decode_step_seconds",
                        lambda model, *a: 0.5 if model.dtype == torch.bfloat16 else 1.0)
    model = ModelConfig(cache_dir=str(tmp_path))
    ours = get_generator(tiny_model, model, GenerationConfig(batch_size=4))
    plain, _ = _bench().load_plain(tiny_model, model, 4)
    assert ours.dtype == plain.dtype == torch.bfloat16
    assert _bench().load_plain(tiny_model, ModelConfig(dtype="float32"), 4)[0].dtype == torch.float32
