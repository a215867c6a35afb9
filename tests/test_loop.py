"""The STaR loop end to end on a tiny model: artifacts, the hint, the base model, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from selftaught.cli import main
from selftaught.generation.transformers_backend import TransformersGenerator
from selftaught.stages import Stages
from selftaught.training.transformers_backend import TransformersTrainer

from helpers import read_jsonl, tiny_overrides


def tiny_args(model: str, out: Path, *extra: str) -> list[str]:
    return ["run", *tiny_overrides(model, out, "task.train_size=32", *extra)]


@pytest.fixture
def calls(monkeypatch):
    """Record every generate and train call the loop makes."""
    log: dict[str, list] = {"generate": [], "train": []}
    generate, train = TransformersGenerator.generate, TransformersTrainer.train

    def spy_generate(self, prompts, params, desc="generate", **kwargs):
        log["generate"].append((desc, len(prompts)))
        return generate(self, prompts, params, desc, **kwargs)

    def spy_train(self, base_model, examples, steps, out_dir):
        log["train"].append((base_model, steps, out_dir))
        return train(self, base_model, examples, steps, out_dir)

    monkeypatch.setattr(TransformersGenerator, "generate", spy_generate)
    monkeypatch.setattr(TransformersTrainer, "train", spy_train)
    return log


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("run") / "star"
    # The paper's filter (final answers only): the tiny model's hinted rationales are mostly false
    # arithmetic, which loop.step_checker=auto would reject, leaving the hint tests nothing to see.
    assert main(tiny_args(tiny_model, out, "loop.step_checker=none")) == 0
    return out


def test_two_iterations_write_every_artifact(finished_run):
    metrics = read_jsonl(finished_run / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == [0, 1, 2]
    for m in metrics[1:]:
        it = finished_run / f"iteration-{m['iteration']:02d}"
        for stage in ("generations", "rationalizations", "train", "eval"):
            assert (it / f"{stage}.jsonl").is_file()
        kept = read_jsonl(it / "train.jsonl")
        assert m["kept_generation"] + m["kept_rationalization"] == len(kept) > 0
        assert m["train_fraction"] == pytest.approx(len(kept) / 32)
        eval_records = read_jsonl(it / "eval.jsonl")
        assert m["accuracy"] == pytest.approx(sum(r["correct"] for r in eval_records) / 8)
        assert set(m["seconds"]) == {"generations", "rationalizations", "fine_tune", "validation", "eval"}
        AutoModelForCausalLM.from_pretrained(it / "checkpoint")  # a plain HF checkpoint


def test_only_correct_rationales_are_kept(finished_run):
    for it in ("iteration-01", "iteration-02"):
        generated = {r["id"]: r for r in read_jsonl(finished_run / it / "generations.jsonl")}
        rationalized = {r["id"]: r for r in read_jsonl(finished_run / it / "rationalizations.jsonl")}
        assert set(rationalized) == {i for i, r in generated.items() if not r["correct"]}
        for kept in read_jsonl(finished_run / it / "train.jsonl"):
            source = generated if kept["source"] == "generations" else rationalized
            assert source[kept["id"]]["correct"]
            assert kept["completion"].startswith(source[kept["id"]]["output"])


def test_hint_is_removed_from_training_examples(finished_run):
    seen_rationalized = 0
    for it in ("iteration-01", "iteration-02"):
        rationalized = read_jsonl(finished_run / it / "rationalizations.jsonl")
        assert rationalized and all("(Hint: the answer is" in r["prompt"] for r in rationalized)
        for kept in read_jsonl(finished_run / it / "train.jsonl"):
            assert "Hint" not in kept["prompt"] and "Hint" not in kept["completion"]
            if kept["source"] == "rationalizations":
                seen_rationalized += 1
                question = next(r["question"] for r in rationalized if r["id"] == kept["id"])
                assert kept["prompt"] == f"Q: What is {question}?\nA:"
    assert seen_rationalized > 0, "the tiny model rationalized nothing; the test proves nothing"


def test_every_iteration_fine_tunes_the_base_model(tmp_path, tiny_model, calls):
    assert main(tiny_args(tiny_model, tmp_path / "run", "loop.iterations=3")) == 0
    assert [(base, steps) for base, steps, _ in calls["train"]] == [(tiny_model, 2), (tiny_model, 2), (tiny_model, 3)]
    # ...while generation in iteration n uses M_{n-1}.
    configs = [json.loads((tmp_path / "run" / f"iteration-0{n}" / "train.json").read_text()) for n in (1, 2, 3)]
    assert all(c["base_model"] == tiny_model for c in configs)


def test_keep_checkpoints_selected_leaves_the_newest_and_the_best(tmp_path, tiny_model, calls):
    out = tmp_path / "run"

    def on_disk() -> set[int]:
        return {n for n in (1, 2, 3) if (out / f"iteration-0{n}" / "checkpoint" / "model.safetensors").is_file()}

    assert main(tiny_args(tiny_model, out, "loop.iterations=3")) == 0
    assert on_disk() == {1, 2, 3}  # the default keeps all
    calls["generate"].clear(), calls["train"].clear()
    # Resuming a finished run with the option frees its disk and computes nothing again.
    assert main(["run", "--resume", str(out), "loop.keep_checkpoints=selected"]) == 0
    assert calls == {"generate": [], "train": []}
    selected = read_jsonl(out / "metrics.jsonl")[-1]["selected_iteration"]
    assert on_disk() == {3, selected} and len(on_disk()) < 3
    assert all((out / f"iteration-0{n}" / "train.json").is_file() for n in (1, 2, 3))
    assert not list(out.glob("iteration-*/checkpoint.deleted"))


STAGES = ["generate_rationales", "rationalize", "filter_correct", "fine_tune", "evaluate"]


@pytest.mark.parametrize("stage", STAGES)
def test_resume_after_interruption_recomputes_no_finished_stage(
    tmp_path, tiny_model, finished_run, monkeypatch, calls, stage
):
    out = tmp_path / "run"
    original = getattr(Stages, stage)

    def interrupted(self, n, *args, **kwargs):
        if n == 2:
            raise KeyboardInterrupt
        return original(self, n, *args, **kwargs)

    monkeypatch.setattr(Stages, stage, interrupted)
    assert main(tiny_args(tiny_model, out, "loop.step_checker=none")) == 130  # as finished_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(Stages, stage, original)
    calls["generate"].clear(), calls["train"].clear()

    assert main(["run", "--resume", str(out)]) == 0
    # Nothing finished before the interruption was touched again...
    changed = [p for p, t in before.items() if p.exists() and p.stat().st_mtime_ns != t]
    assert all(p.name in {"stages.json", "metrics.jsonl"} for p in changed), changed
    assert not any(desc.startswith(("iteration 0", "iteration 1")) for desc, _ in calls["generate"])
    # ...only iteration 2 from the interrupted stage on was computed...
    done_before = STAGES.index(stage)
    stage_names = ["generations", "rationalizations", None, None, "eval"]
    for name in stage_names[:done_before]:
        if name:
            assert not any(desc == f"iteration 2 {name}" for desc, _ in calls["generate"])
    assert len(calls["train"]) == (1 if done_before <= STAGES.index("fine_tune") else 0)
    # ...and the result is the uninterrupted run's.
    assert read_jsonl(out / "metrics.jsonl")[-1]["accuracy"] == read_jsonl(finished_run / "metrics.jsonl")[-1]["accuracy"]
    assert (out / "iteration-02" / "train.jsonl").read_text() == (finished_run / "iteration-02" / "train.jsonl").read_text()


def test_interrupted_generation_resumes_after_its_last_batch(tmp_path, tiny_model, finished_run, monkeypatch, calls):
    out = tmp_path / "run"
    real = TransformersGenerator.generate
    seen = []

    def dies_on_second_chunk(self, prompts, params, desc="generate", **kwargs):
        if desc == "iteration 1 generations":
            seen.append(len(prompts))
            if len(seen) == 2:
                raise KeyboardInterrupt
        return real(self, prompts, params, desc, **kwargs)

    monkeypatch.setattr(TransformersGenerator, "generate", dies_on_second_chunk)
    # generation.batch_size=4 makes 16-question chunks, so 32 questions take two.
    assert main(tiny_args(tiny_model, out, "generation.batch_size=4")) == 130
    partial = out / "iteration-01" / "generations.jsonl.partial"
    assert len(partial.read_text().splitlines()) == 16
    monkeypatch.setattr(TransformersGenerator, "generate", real)
    calls["generate"].clear()
    assert main(["run", "--resume", str(out)]) == 0
    assert ("iteration 1 generations", 16) in calls["generate"]
    assert ("iteration 1 generations", 32) not in calls["generate"]
    assert not partial.exists()
    ids = [r["id"] for r in read_jsonl(out / "iteration-01" / "generations.jsonl")]
    assert ids == [f"train-{i}" for i in range(32)]
    assert read_jsonl(out / "iteration-01" / "generations.jsonl") == read_jsonl(finished_run / "iteration-01" / "generations.jsonl")


def test_run_folder_is_never_overwritten_silently(tmp_path, tiny_model, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(tiny_args(tiny_model, out, "loop.iterations=1")) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
    assert main(tiny_args(tiny_model, out, "loop.iterations=1", "--overwrite")) == 0
    assert not (out / "keep.txt").exists()


def test_resume_refuses_to_change_what_was_computed(tmp_path, finished_run, capsys):
    assert main(["run", "--resume", str(finished_run), "training.learning_rate=1"]) == 2
    assert "training.learning_rate cannot change when resuming" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a selftaught run folder" in capsys.readouterr().err


def test_a_run_that_keeps_nothing_says_what_to_do(tmp_path, random_model, capsys):
    out = tmp_path / "run"
    code = main(tiny_args(random_model, out, "loop.rationalize=false", "generation.max_new_tokens=4"))
    assert code == 2
    err = capsys.readouterr().err
    assert "nothing to fine-tune on" in err and "STaR needs a base model" in err
    assert len(read_jsonl(out / "iteration-01" / "generations.jsonl")) == 32  # nothing lost


def test_prompt_longer_than_the_context_is_a_clear_error(tmp_path, tiny_model, capsys):
    code = main(tiny_args(tiny_model, tmp_path / "run", "generation.max_new_tokens=1000"))
    assert code == 2
    assert "exceeds the model's context of 1024 tokens" in capsys.readouterr().err


def test_lora_run_saves_an_adapter_the_next_iteration_generates_with(tmp_path, tiny_model, calls):
    out = tmp_path / "run"
    assert main(tiny_args(tiny_model, out, "training.method=lora", "training.lora_r=4")) == 0
    checkpoint = out / "iteration-01" / "checkpoint"
    assert (checkpoint / "adapter_config.json").is_file()
    assert not (checkpoint / "model.safetensors").exists()
    assert ("iteration 2 generations", 32) in calls["generate"]
    assert [base for base, _, _ in calls["train"]] == [tiny_model, tiny_model]


def test_plateau_stops_early():
    from selftaught.loop import plateaued

    history = [{"validation_accuracy": a} for a in (0.5, 0.6, 0.6, 0.55)]
    assert plateaued(history, patience=2, min_improvement=0.0)
    assert not plateaued(history[:3], patience=2, min_improvement=0.0)
    assert not plateaued(history, patience=0, min_improvement=0.0)
    assert plateaued([{"validation_accuracy": a} for a in (0.5, 0.52)], patience=1, min_improvement=0.05)
    # the held-out accuracy never decides: without validation there is no early stop
    assert not plateaued([{"accuracy": a} for a in (0.5, 0.6, 0.6, 0.55)], patience=2, min_improvement=0.0)
