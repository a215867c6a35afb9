"""The Python API: the README's example, run as written on the tiny model; config and data checks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import selftaught
from selftaught.config import ConfigError
from selftaught.tasks import DataError

from helpers import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    section = re.search(r"## Python API\n(.*?)\n## ", (ROOT / "README.md").read_text(), re.S).group(1)
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_on_the_tiny_model(tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # model.dtype=auto keeps its verdict there
    code = readme_example()
    assert '"smollm2-135m-instruct"' in code and '"runs/python-api"' in code
    # Only where the model and the run folder are: the rest runs exactly as the README shows it.
    code = code.replace('"smollm2-135m-instruct"', repr(tiny_model))
    code = code.replace('"runs/python-api"', repr(str(tmp_path / "run")))
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)
    result = namespace["result"]
    assert isinstance(result, selftaught.STaRResult)
    assert result.run_dir == tmp_path / "run"
    assert [m["iteration"] for m in result.metrics][0] == 0 and len(result.metrics) >= 2
    assert result.metrics == read_jsonl(result.run_dir / "metrics.jsonl")
    assert result.last_checkpoint == result.run_dir / f"iteration-0{len(result.metrics) - 1}" / "checkpoint"
    assert (result.last_checkpoint / "config.json").is_file()
    # selected on validation, never on the held-out split
    best = max(m["validation_accuracy"] for m in result.metrics if m["iteration"] > 0)
    assert result.selected_iteration > 0
    assert result.metrics[result.selected_iteration]["validation_accuracy"] == best
    assert result.selected_checkpoint == result.run_dir / f"iteration-0{result.selected_iteration}" / "checkpoint"
    # The in-memory data and the callable checker were the ones used.
    saved = read_jsonl(result.run_dir / "data" / "test.jsonl")
    assert [r["question"] for r in saved] == [namespace["test"][i]["question"] for i in range(20)]
    evaluated = read_jsonl(result.run_dir / "iteration-01" / "eval.jsonl")
    assert {r["question"] for r in evaluated} == {r["question"] for r in namespace["test"]}
    check = namespace["same_number"]
    assert all(r["correct"] == (r["predicted"] is not None and check(r["predicted"], r["answer"])) for r in evaluated)
    assert any(r["correct"] for r in evaluated), "the tiny model got nothing right; the test proves little"
    out = capsys.readouterr().out
    assert "iteration 1: " in out and "% held out" in out  # the callback saw iteration 1
    # model.dtype=auto (the example sets none): the precision was timed once, for the whole run
    (verdict,) = json.loads((tmp_path / "cache" / "selftaught" / "decode-precision.json").read_text()).values()
    assert verdict["dtype"] in ("float32", "bfloat16") and verdict["float32_s"] > 0


def tiny_config(tiny_model: str, tmp_path: Path, *overrides: str) -> selftaught.STaRConfig:
    """A small run on the tiny model in tmp_path/run; ``overrides`` add to or replace these."""
    return selftaught.STaRConfig.from_yaml(overrides=[
        f"model.name_or_path={tiny_model}", "model.dtype=float32", f"output_dir={tmp_path / 'run'}",
        "task.options.digits_max=1", "eval.size=8", "eval.validation_size=8", "training.start_steps=2",
        "training.batch_size=4", "training.learning_rate=1e-3", *overrides,
    ])


def test_a_callback_stops_the_run(tmp_path, tiny_model):
    seen = []
    config = tiny_config(tiny_model, tmp_path, "task.train_size=24", "loop.iterations=3", "loop.patience=0",
                         "generation.max_new_tokens=24", "training.micro_batch_size=4")
    result = selftaught.STaR(config, callbacks=[lambda m: seen.append(m["iteration"]) or True]).run()
    assert seen == [1]
    assert [m["iteration"] for m in result.metrics] == [0, 1]
    assert not (tmp_path / "run" / "iteration-02").exists()


def test_callbacks_see_the_iteration_an_early_stop_ends_on(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setattr("selftaught.loop.plateaued", lambda *args: True)  # stop after iteration 1
    seen = []
    config = tiny_config(tiny_model, tmp_path, "task.train_size=24", "loop.iterations=3",
                         "generation.max_new_tokens=24")
    result = selftaught.STaR(config, callbacks=[lambda m: seen.append(m["iteration"])]).run()
    assert [m["iteration"] for m in result.metrics] == [0, 1]  # stopped early
    assert seen == [1]


def test_callbacks_see_the_direct_finetune_baseline(tmp_path, tiny_model):
    seen = []
    config = tiny_config(tiny_model, tmp_path, "method=direct_finetune", "task.train_size=16",
                         "generation.max_new_tokens=8")
    result = selftaught.STaR(config, callbacks=[seen.append]).run()
    assert [m["iteration"] for m in seen] == [1]
    assert seen[0] == result.metrics[1] and "accuracy" in seen[0]


def test_bad_in_memory_data_is_refused_before_the_run_folder_exists(tmp_path):
    config = selftaught.STaRConfig(output_dir=str(tmp_path / "run"))
    with pytest.raises(DataError, match=r"train_data\[1\]: missing field 'answer'"):
        selftaught.STaR(config, train_data=[{"question": "a", "answer": "1"}, {"question": "b"}],
                        test_data=[{"question": "c", "answer": "2"}])
    bad_choice = [{"question": "q", "answer": "Z", "choices": ["x", "y"]}]
    star = selftaught.STaR(config, train_data=bad_choice, test_data=bad_choice)
    with pytest.raises(DataError, match=r"(train|test)_data\[0\]: field 'answer' is 'Z'"):
        star.run()
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="train_data and test_data together"):
        selftaught.STaR(config, train_data=bad_choice)
    with pytest.raises(ConfigError, match="loop.iterations"):
        selftaught.STaRConfig(loop={"iterations": 0})
    with pytest.raises(ConfigError, match="unknown config key loop.iteration"):
        selftaught.STaRConfig(loop={"iteration": 2})
