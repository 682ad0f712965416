"""tools/compare_policies.py: the paired comparison of two policies, on the questions of the run a config names."""

import sys

import pytest
import yaml

from lit_reason.tasks import Arithmetic
from tests.conftest import SFT_TASK
from tools import compare_policies


def write_config(path, task: dict | None, validation_questions: int | None = 5) -> str:
    data = {"validation_questions": validation_questions} | ({"task": task} if task is not None else {})
    config = {"data": data, "model": {"init_args": {"evaluation": {"max_new_tokens": 24}}}}
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_a_run_s_config_gives_its_task_question_count_and_response_length(tmp_path):
    task = {"class_path": "lit_reason.tasks.Arithmetic", "init_args": {"max_operand": 15, "validation_size": 7}}
    found, settings = compare_policies.run_settings(write_config(tmp_path / "config.yaml", task))
    assert isinstance(found, Arithmetic) and found.problems("validation") == Arithmetic(**task["init_args"]).problems(
        "validation"
    )
    assert settings == {"validation": 5, "max_new_tokens": 24}
    default, settings = compare_policies.run_settings(write_config(tmp_path / "plain.yaml", None, None))
    assert isinstance(default, Arithmetic) and settings == {"validation": None, "max_new_tokens": 24}  # None: all


def test_a_config_naming_a_task_that_cannot_be_built_names_the_file_and_the_option(tmp_path):
    path = write_config(tmp_path / "config.yaml", {"class_path": "lit_reason.tasks.Arithmetic", "init_args": {"x": 1}})
    with pytest.raises(SystemExit, match=r"config\.yaml: data\.task: "):
        compare_policies.run_settings(path)


def test_two_policies_are_compared_on_the_config_s_questions(tmp_path, sft_policy_dir, monkeypatch, capsys):
    task = {"class_path": "lit_reason.tasks.Arithmetic", "init_args": SFT_TASK}
    config = write_config(tmp_path / "config.yaml", task, validation_questions=6)
    policy = str(sft_policy_dir)
    monkeypatch.setattr(
        sys, "argv", ["compare_policies.py", "--baseline", policy, "--candidate", policy, "--config", config]
    )
    compare_policies.main()
    out = capsys.readouterr().out
    assert f"6 validation questions of Arithmetic ({config})" in out
    assert "difference +0.0000, paired 95% interval" in out  # a policy against itself
