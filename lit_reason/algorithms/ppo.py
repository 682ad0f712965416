"""Proximal Policy Optimization (PPO) with a critic, GAE and a KL penalty to a frozen reference policy, as
compared in Havrilla et al. 2024 (arXiv 2403.04642), after Schulman et al. 2017.

Rounds, rewards and the clipped update are ``PolicyGradient``'s; PPO adds the critic (a value head on its own
copy of the trunk, on the policy's hidden states, or on the policy's base model run with an adapter of the
critic's own), GAE advantages whitened over all ranks' rollouts
(``GAE``), and the clipped value loss (``PPOLoss``'s ``vf_coef`` term).

Deviation: dropout is switched off in the critic as in the policy, so a training forward reproduces the
rollout's values and log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from lit_reason.adapters import CRITIC_ADAPTER, adapter_active, add_adapter, below_the_head, of_adapter
from lit_reason.algorithms.policy_gradient import PolicyGradient
from lit_reason.cached_forward import final_hidden_states, response_logits
from lit_reason.policy import disable_dropout, load_model
from lit_reason.rl.advantages import GAE, explained_variance
from lit_reason.tensors import masked_mean, position_ids_from_mask
from lit_reason.value_model import ValueModel, freeze_unused_output_head


@dataclass
class CriticConfig:
    """PPO's critic.

    Args:
        kind: ``separate``: a value head on its own copy of the policy trunk; ``shared``: a value head on the
            policy's own hidden states; ``lora`` (with ``policy.peft``): a value head on the policy's base
            model run with a second LoRA adapter (``policy.peft``'s, on the same layers but the output head) that
            only the critic trains: one copy of the model serves the policy, the reference and the critic.
        lr: learning rate of the critic (``None``: the optimizer's).
        head_std: initial scale of the value head's weights (0: zeros).
        warmup_rounds: rounds that train only the critic: the policy's parameters are left out of the optimizer
            step (its gradients dropped), so neither its weights nor its optimizer state move.
    """

    kind: Literal["separate", "shared", "lora"] = "separate"
    lr: float | None = None
    head_std: float = 0.0
    warmup_rounds: int = 0

    def __post_init__(self) -> None:
        if (self.lr is not None and self.lr <= 0) or self.head_std < 0 or self.warmup_rounds < 0:
            raise ValueError(
                f"critic needs lr > 0 (or null), head_std >= 0 and warmup_rounds >= 0, got lr {self.lr}, head_std "
                f"{self.head_std}, warmup_rounds {self.warmup_rounds}"
            )


class PPO(PolicyGradient):
    """PPO with a critic, GAE and a KL penalty to the starting policy, on correctness, ORM or dense rewards.

    Args:
        advantage: GAE's discount and lambda, and whether advantages are whitened.
        critic: the value network and its learning rate, initialisation and warm-up.
        **kwargs: ``PolicyGradient``'s options (rollout, ppo_epochs, minibatch_size, loss, reward,
            max_grad_norm) and the shared ones (policy, optimizer, lr_schedule, evaluation, text_samples, orm,
            seed).
    """

    has_critic = True

    def __init__(self, advantage: GAE = GAE(), critic: CriticConfig = CriticConfig(), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if critic.kind == "lora" and self.policy_spec.peft is None:
            raise ValueError(
                "critic.kind=lora puts a LoRA adapter for the critic on the policy's base model: give the policy "
                "one too (policy.peft, e.g. --model.init_args.policy.peft.r=8), or use critic.kind=separate/shared"
            )
        self.advantage = advantage
        self.critic = critic
        self.value_network: torch.nn.Module | None = None  # a ValueModel, or the shared value head

    # ------------------------------------------------------------------------------------------- models
    def build_extra_models(self) -> None:
        super().build_extra_models()
        if self.critic.kind == "separate":
            trunk = load_model(self.policy_spec, self.tokenizer).train()
            freeze_unused_output_head(trunk, used=False)  # a plain critic reads hidden states only
            self.value_network = ValueModel(trunk, head_std=self.critic.head_std)
        else:
            if self.critic.kind == "lora":
                add_adapter(self.policy, below_the_head(self.policy_spec.peft, self.policy), CRITIC_ADAPTER)
                disable_dropout(self.policy)  # the new adapter's LoRA dropout
            self.value_network = torch.nn.Linear(self.policy.config.get_text_config().hidden_size, 1)
            torch.nn.init.normal_(self.value_network.weight, std=self.critic.head_std)
            torch.nn.init.zeros_(self.value_network.bias)
        disable_dropout(self.value_network)

    def networks_to_shard(self) -> list[torch.nn.Module]:
        return [*super().networks_to_shard(), self.value_network]

    def trainable_parameters(self) -> list[dict[str, Any]]:
        """The policy (group 0) at the optimizer's learning rate, the critic (with its adapter) at ``critic.lr``."""
        trainable = [(name, p) for name, p in self.policy.named_parameters() if p.requires_grad]
        critic_adapter = [p for name, p in trainable if of_adapter(name, CRITIC_ADAPTER)]
        critic = {"params": [*self.value_network.parameters(), *critic_adapter]}
        if self.critic.lr is not None:
            critic["lr"] = self.critic.lr
        return [{"params": [p for name, p in trainable if not of_adapter(name, CRITIC_ADAPTER)]}, critic]

    def group_lr_factor(self, group: int, step: int) -> float:
        """The policy's learning rate is held at 0 during the critic's warm-up rounds."""
        round_index = self.current_epoch + int(self.steps.in_next_round(step))
        if group == 0 and round_index < self.critic.warmup_rounds:
            return 0.0
        return super().group_lr_factor(group, step)

    def held_parameter_groups(self) -> tuple[int, ...]:
        """The policy (group 0) during the critic's warm-up rounds: a learning rate of 0 alone would still let
        AdamW's moments gather the policy's gradients (steered by the untrained critic) and spend them on the
        first steps after the warm-up, and the joint gradient clipping shrink the critic's steps by them."""
        return (0,) if self.current_epoch < self.critic.warmup_rounds else ()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # lit-reason 0.1.0 named the value network "critic" (now the critic's options). Under FSDP2 Lightning
        # loads the weights itself and passes no state dict: a 0.1.0 checkpoint resumes under DDP or one device.
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("critic.")]:
            state["value_network." + key.removeprefix("critic.")] = state.pop(key)

    def forward_policy_and_values(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Over the response columns (P - 1 .. L - 1 of a (B, L) rollout): policy logits (B, L - P + 1, V) and
        the critic's value of the state before each token (B, L - P + 1)."""
        start = prompt_length - 1
        if self.critic.kind == "shared":  # the value head reads the policy's hidden states: one full forward
            output = self.policy(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask),
                output_hidden_states=True,
            )
            logits = output.logits[:, start:]
            values = self.value_head(output.hidden_states[-1])
        elif self.critic.kind == "lora":  # the same network twice: the policy's adapter, then the critic's
            logits = response_logits(self.policy, input_ids, attention_mask, prompt_length)
            with adapter_active(self.policy, CRITIC_ADAPTER):
                hidden = final_hidden_states(self.policy, input_ids, attention_mask)
            values = self.value_head(hidden)
        else:
            logits = response_logits(self.policy, input_ids, attention_mask, prompt_length)
            values, _ = self.value_network(input_ids, attention_mask)  # plain critic: no likelihood features
        # The value of acting with token t is that of the state before it: read at position t - 1.
        return logits, torch.nn.functional.pad(values[:, :-1], (1, 0))[:, start:]

    def value_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, L, D) hidden states of the policy's network, in its precision -> (B, L) float32 values."""
        return self.value_network(hidden.to(self.value_network.weight.dtype)).squeeze(-1).float()

    def advantages(
        self, rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        advantages, returns = self.advantage(rewards, values, mask, device=self.device)
        stats = {
            "explained_variance": explained_variance(values, returns, mask, device=self.device),
            "value_mean": masked_mean(values, mask).item(),
        }
        return advantages, returns, stats
