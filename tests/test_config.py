import pytest

from selftaught.cli import main
from selftaught.config import ConfigError, RunConfig, TrainingConfig, load_config


def test_defaults_load_and_overrides_apply(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loop:\n  iterations: 5\ntraining:\n  learning_rate: 1.0e-5\n")
    config = load_config(path, ["loop.iterations=7", 'generation.stop=["\\n"]', "training.max_steps=50"])
    assert config.loop.iterations == 7
    assert config.training.learning_rate == 1e-5
    assert config.generation.stop == ["\n"]
    assert config.training.max_steps == 50
    assert load_config().to_dict() == RunConfig().to_dict()


def test_yaml_exponent_without_dot_is_a_number():
    assert load_config(overrides=["training.learning_rate=1e-6"]).training.learning_rate == 1e-6


@pytest.mark.parametrize(
    "override, message",
    [
        ("loop.iteratons=3", "unknown config key loop.iteratons"),
        ("nonsense.key=1", "unknown config key nonsense"),
        ("loop.iterations=three", "loop.iterations must be an integer"),
        ("loop.iterations=0", "loop.iterations must be a positive integer"),
        ("loop.rationalize=maybe", "loop.rationalize must be true or false"),
        ("generation.temperature=-1", "generation.temperature must be >= 0"),
        ("generation.samples_per_question=4", "needs generation.temperature > 0"),
        ("training.batch_size=8", None),
        ("training.micro_batch_size=3", "must be a multiple of training.micro_batch_size"),
        ("training.method=qlora", "training.method must be one of full, lora"),
        ("training.step_growth=0.5", "training.step_growth must be >= 1"),
        ("model.dtype=int4", "model.dtype must be one of"),
        ("loop.keep_checkpoints=best", "loop.keep_checkpoints must be one of all, selected"),
        ("loop=3", "loop must be a mapping"),
        ("iterations", "must look like section.key=value"),
    ],
)
def test_invalid_configs_are_one_clear_error(override, message):
    if message is None:
        load_config(overrides=[override])
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(overrides=[override])


def test_micro_batch_defaults_to_each_process_share_of_the_step():
    assert TrainingConfig().micro_batch_size == 8
    assert TrainingConfig(num_processes=2).micro_batch_size == 4
    assert TrainingConfig(num_processes=2, micro_batch_size=2).accumulation == 2
    with pytest.raises(ConfigError, match=r"training.batch_size \(8\) does not split evenly over training.num_processes \(3\)"):
        TrainingConfig(num_processes=3)


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("loop: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_rejects_bad_config_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", f"output_dir={out}", "loop.iterations=-2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "selftaught: error: loop.iterations must be a positive integer, got -2"
    assert not out.exists()
    assert main(["run", f"output_dir={out}", "task.name=nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert main(["run", f"output_dir={out}", "task.options.digits_max=0"]) == 2
    assert "digits_min <= digits_max" in capsys.readouterr().err
    assert main(["run", f"output_dir={out}", "task.options.digitz=3"]) == 2
    assert "unknown config key task.options.digitz" in capsys.readouterr().err
    assert not out.exists()


def test_step_schedule_is_forty_growing_twenty_percent():
    t = TrainingConfig()
    assert [t.steps(n) for n in range(1, 7)] == [40, 48, 58, 69, 83, 100]  # round(40 * 1.2^(n-1))
    capped = TrainingConfig(max_steps=60)
    assert [capped.steps(n) for n in range(1, 6)] == [40, 48, 58, 60, 60]
    assert TrainingConfig(start_steps=10, step_growth=1.0).steps(9) == 10


def test_help_documents_every_key(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for key in ("loop.rationalize", "training.start_steps", "training.keep_fewshot_prompt",
                "generation.samples_per_question", "eval.size", "model.name_or_path", "output_dir"):
        assert key in text
