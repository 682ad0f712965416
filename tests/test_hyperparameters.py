"""Hyperparameters as plain data: hparams.yaml shows them, and checkpoints still load with weights_only."""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path

import torch
from peft import LoraConfig

from lit_reason import PPO, PolicySpec
from lit_reason.hyperparameters import plain_data
from lit_reason.rewards import RewardConfig, RewardFunction


def test_objects_become_numbers_strings_lists_and_dicts():
    plain = plain_data(
        {
            "spec": PolicySpec(name_or_path="micro", peft=LoraConfig(r=4, target_modules=["v_proj", "q_proj"])),
            "optimizer": partial(torch.optim.AdamW, lr=1e-3),
            "path": Path("runs/x"),
            "values": (1, float("nan"), {"b", "a"}),
        }
    )
    spec = plain.pop("spec")
    assert plain == {
        "optimizer": {"callable": "torch.optim.adamw.AdamW", "args": [], "lr": 1e-3},
        "path": "runs/x",
        "values": [1, "nan", ["a", "b"]],
    }
    assert spec["name_or_path"] == "micro" and spec["peft"]["r"] == 4
    assert spec["peft"]["target_modules"] == ["q_proj", "v_proj"]
    assert spec["peft"]["peft_type"] == "LORA"  # a str Enum: its value (weights_only refuses the Enum)
    buffer = io.BytesIO()
    torch.save(spec, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == spec


def test_a_modules_hyperparameters_are_its_init_arguments_as_plain_data():
    reward = RewardConfig(final="reward_fn", reward_fn=RewardFunction("tests.helpers.rewards.contains_a_digit"))
    module = PPO(policy=PolicySpec(name_or_path="micro"), reward=reward, minibatch_size=8)
    assert module.hparams["minibatch_size"] == 8 and module.hparams["policy"]["name_or_path"] == "micro"
    assert module.hparams["reward"]["reward_fn"] == {
        "path": "tests.helpers.rewards.contains_a_digit",
        "batched": False,
        "threshold": 1.0,
    }
    buffer = io.BytesIO()
    torch.save({"hyper_parameters": dict(module.hparams)}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["hyper_parameters"] == dict(module.hparams)
