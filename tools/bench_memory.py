"""Peak memory of one PPO round with and without a LoRA adapter on the policy (and on the critic), measured in
one run.

Each variant runs in a process of its own (so each peak is its own): one PPO round (rollout, scoring with the
reference and the critic, one update pass) on the same policy, questions and sampling settings. Reported per
variant: the process's peak memory (resident set on a CPU; ``torch.cuda.max_memory_allocated`` on a GPU),
the bytes of the networks held (policy, reference, critic) and of the optimizer's state, and the trainable
parameters; and each against full fine-tuning, measured in the same run. Variants: ``full`` fine-tuning and
``lora`` with the critic ``--critic`` names, and ``lora-critic`` (the critic a second adapter on the policy's
network, ``critic.kind: lora``).

    python tools/bench_memory.py                                  # the tiny preset, CPU
    python tools/bench_memory.py --critic shared \
        --preset-overrides '{"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8}'
    python tools/bench_memory.py --policy HUB_OR_DIR --device cuda --precision bf16-true
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from functools import partial

import torch
from lightning import Trainer, seed_everything
from peft import LoraConfig

from lit_reason import PPO, PolicySpec, RolloutDataModule
from lit_reason.algorithms.ppo import CriticConfig
from lit_reason.cli import TRAINER_DEFAULTS
from lit_reason.sampling import SamplingConfig
from lit_reason.tasks import Arithmetic

LORA = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear", "lora_dropout": 0.0}
VARIANTS = {"full": (None, None), "lora": (LORA, None), "lora-critic": (LORA, "lora")}  # (policy.peft, critic)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def one_round(args: argparse.Namespace, variant: str) -> dict:
    seed_everything(0)
    peft, critic = VARIANTS[variant]
    policy = PolicySpec(
        name_or_path=args.policy,
        preset_overrides=json.loads(args.preset_overrides),
        peft=LoraConfig(**peft) if peft else None,
    )
    module = PPO(
        policy=policy,
        rollout=SamplingConfig(num_samples=args.samples, temperature=1.0, max_new_tokens=args.max_new_tokens),
        minibatch_size=args.questions * args.samples,
        ppo_epochs=1,
        critic=CriticConfig(kind=critic or args.critic),
        optimizer=partial(torch.optim.AdamW, lr=1e-5),
    )
    trainer = Trainer(
        **{**TRAINER_DEFAULTS, "logger": False},
        accelerator=args.device,
        devices=1,
        precision=args.precision,
        max_epochs=1,
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    data = RolloutDataModule(task=Arithmetic(train_size=1000, validation_size=0), questions_per_round=args.questions)
    trainer.fit(module, data)
    networks = [module.policy, module.value_network] + ([module.reference] if module.reference is not None else [])
    held = {id(p): p for network in networks for p in network.parameters()}  # a shared trunk counts once
    optimizer_state = [
        v for state in trainer.optimizers[0].state.values() for v in state.values() if torch.is_tensor(v)
    ]
    peak = (
        torch.cuda.max_memory_allocated()
        if args.device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    )
    return {
        "variant": variant,
        "peak_bytes": peak,
        "network_bytes": tensor_bytes(held.values()),
        "optimizer_state_bytes": tensor_bytes(optimizer_state),
        "trainable_parameters": sum(p.numel() for p in held.values() if p.requires_grad),
        "reference_copy": module.reference is not None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="tiny", help="a preset, an exported policy or a hub model")
    parser.add_argument("--preset-overrides", default="{}", help="LlamaConfig fields of a preset (JSON)")
    parser.add_argument("--critic", default="separate", choices=["separate", "shared"])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # a child process's
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(one_round(args, args.variant)))
        return
    rows = []
    for variant in VARIANTS:
        command = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    full = rows[0]
    print(f"PPO, one round of {args.questions} questions x {args.samples} samples, {args.policy}, {args.device}")
    print("| variant | peak memory (MiB) | networks (MiB) | optimizer state (MiB) | trainable parameters | "
          "reference copy | peak vs full | networks + optimizer vs full |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        state = row["network_bytes"] + row["optimizer_state_bytes"]
        full_state = full["network_bytes"] + full["optimizer_state_bytes"]
        print(
            f"| {row['variant']} | {row['peak_bytes'] / 2**20:.0f} | {row['network_bytes'] / 2**20:.1f} | "
            f"{row['optimizer_state_bytes'] / 2**20:.1f} | {row['trainable_parameters']:,} | "
            f"{'yes' if row['reference_copy'] else 'no'} | {row['peak_bytes'] / full['peak_bytes']:.2f}x | "
            f"{state / full_state:.2f}x |"
        )


if __name__ == "__main__":
    main()
