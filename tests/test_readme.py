"""The README's front door stays true: CI runs its test command, its config keys exist."""

import re
from pathlib import Path

from selftaught.config import RunConfig, describe

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_ci_runs_the_readme_test_command():
    install_and_run, test = _quick_start_commands()
    assert "selftaught run" in install_and_run
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci


def test_config_keys_named_in_the_readme_exist():
    keys = {key for key, _, _ in describe(RunConfig)}
    text = (ROOT / "README.md").read_text()
    # a backend's own section is one level deeper: generation.vllm.tensor_parallel_size
    named = set(re.findall(r"`((?:model|task|loop|generation|training|eval)(?:\.[a-z_0-9]+)+)", text))
    named |= set(re.findall(r"\b((?:loop|generation|training|model|eval)(?:\.[a-z_0-9]+)+)=", text))
    named = {k for k in named if not k.startswith("task.options.")}
    sections = {k.rsplit(".", 1)[0] for k in keys}  # `generation.vllm.*`
    assert named and named <= keys | sections | {"task.options"}, named - keys - sections
