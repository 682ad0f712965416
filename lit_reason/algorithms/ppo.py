"""Proximal Policy Optimization (PPO) with a critic, GAE and a KL penalty to a frozen reference policy, as
compared in Havrilla et al. 2024 (arXiv 2403.04642), after Schulman et al. 2017 and the per-token KL reward
of Ziegler et al. 2019 / Ouyang et al. 2022.

A round (one Lightning epoch): sample K responses per question (top-k 0, top-p 1 by default, so the sampled
distribution is the temperature-scaled softmax whose log-probs PPO uses); recompute the policy's log-probs
with a training forward, the frozen reference's at the same temperature, and the critic's values, over the
*whole* rollout; build per-token rewards

    reward_t = [t is the last token] * (final reward - truncation penalty if cut off)
               + dense_coef * dense_t - kl_coef * KL_t(policy || reference)

and GAE advantages (whitened over all ranks' rollouts); then ``ppo_epochs`` passes of clipped-ratio policy
and clipped value updates over minibatches, one backward of ``policy_loss + vf_coef * value_loss`` each.

The loss (``PPOLoss``), advantages (``GAE``) and rewards (``RewardConfig``) are components below this
module (``lit_reason.rl``, ``lit_reason.rewards``); this file samples, scores and schedules.

Loss aggregation: every term is summed over the response tokens of a minibatch and divided by the number of
response tokens (or responses) in that minibatch on *all* ranks together, times the world size (DDP and
FSDP average gradients over ranks), so no denominator is per rank or per micro-batch.

Deviation: dropout is switched off in the policy and critic, so a training forward reproduces the rollout's
log-probs (PPO's first ratio is exactly 1).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

import torch

from lit_reason.algorithms.base import ReasoningModule
from lit_reason.batches import PPOBatch
from lit_reason.data import TrainData
from lit_reason.distributed import all_reduce, gather_objects, rank_and_world_size
from lit_reason.evaluation import markdown_table, tensorboard_writer
from lit_reason.policy import disable_dropout, load_model
from lit_reason.rewards import (
    RewardConfig,
    batch_steps,
    grade,
    heuristic_step_rewards,
    kl_penalty,
    orm_step_rewards,
    reward_on_last_token,
)
from lit_reason.rl.advantages import GAE, explained_variance
from lit_reason.rl.losses import PPOLoss
from lit_reason.sampling import SampleBatch, SamplingConfig
from lit_reason.tasks import Problem
from lit_reason.tensors import eval_mode, masked_mean, position_ids_from_mask, take_rows, token_logprobs
from lit_reason.value_model import ValueModel


@dataclass
class CriticConfig:
    """PPO's critic.

    Args:
        kind: ``separate``: a value head on its own copy of the policy trunk; ``shared``: a value head on the
            policy's own hidden states.
        lr: learning rate of the critic (``None``: the optimizer's).
        head_std: initial scale of the value head's weights (0: zeros).
        warmup_rounds: rounds that train only the critic, the actor's learning rate held at 0.
    """

    kind: Literal["separate", "shared"] = "separate"
    lr: float | None = None
    head_std: float = 0.0
    warmup_rounds: int = 0


class PPO(ReasoningModule):
    """PPO with a critic, GAE and a KL penalty to the starting policy, on correctness, ORM or dense rewards.

    Args:
        rollout: sampling of training responses (``num_samples`` per question). Keep top_k 0 and top_p 1:
            PPO's log-probs are those of the full temperature-scaled softmax.
        ppo_epochs: passes over each rollout.
        minibatch_size: responses per optimizer step on each rank.
        loss: the clipped policy and value losses, the entropy bonus and how they are aggregated.
        reward: the final and dense rewards, truncation penalty and KL penalty.
        advantage: GAE's discount and lambda, and whether advantages are whitened.
        critic: the value network and its learning rate, initialisation and warm-up.
        max_grad_norm: gradient clipping (norm) of each optimizer step (0: off).
        **kwargs: the shared options (policy, optimizer, lr_schedule, evaluation, text_samples, orm, seed:
            shuffles minibatches).
    """

    def __init__(
        self,
        rollout: SamplingConfig = SamplingConfig(num_samples=4, temperature=1.0, max_new_tokens=128),
        ppo_epochs: int = 2,
        minibatch_size: int = 64,
        loss: PPOLoss = PPOLoss(),
        reward: RewardConfig = RewardConfig(),
        advantage: GAE = GAE(),
        critic: CriticConfig = CriticConfig(),
        max_grad_norm: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if reward.needs_orm and self.orm_path is None:
            raise ValueError(
                "reward.final: orm and reward.dense: orm need an ORM: set orm to an exported ORM directory"
            )
        if rollout.top_k or rollout.top_p < 1:
            raise ValueError(
                "PPO's rollout must sample the full softmax (top_k 0, top_p 1): its log-probs are that distribution's"
            )
        self.automatic_optimization = False
        self.rollout = rollout
        self.ppo_epochs = ppo_epochs
        self.minibatch_size = minibatch_size
        self.loss = loss
        self.reward = reward
        self.advantage = advantage
        self.critic = critic
        self.max_grad_norm = max_grad_norm
        self.reference: torch.nn.Module | None = None
        self.value_network: torch.nn.Module | None = None  # a ValueModel, or the shared value head

    # ------------------------------------------------------------------------------------------- models
    def build_extra_models(self) -> None:
        self.reference = load_model(self.policy_spec, self.tokenizer).eval()
        self.reference.requires_grad_(False)
        if self.critic.kind == "separate":
            trunk = load_model(self.policy_spec, self.tokenizer).train()
            self.value_network = ValueModel(trunk, head_std=self.critic.head_std)
        else:
            self.value_network = torch.nn.Linear(self.policy.config.get_text_config().hidden_size, 1)
            torch.nn.init.normal_(self.value_network.weight, std=self.critic.head_std)
            torch.nn.init.zeros_(self.value_network.bias)
        for network in (self.policy, self.value_network):
            disable_dropout(network)

    def networks_to_shard(self) -> list[torch.nn.Module]:
        return [self.policy, self.reference, self.value_network]

    def trainable_parameters(self) -> list[dict[str, Any]]:
        """The policy (group 0) at the optimizer's learning rate, the critic at ``critic.lr``."""
        critic = {"params": list(self.value_network.parameters())}
        if self.critic.lr is not None:
            critic["lr"] = self.critic.lr
        return [{"params": list(self.policy.parameters())}, critic]

    def group_lr_factor(self, group: int, step: int) -> float:
        """The policy's learning rate is held at 0 during the critic's warm-up rounds."""
        round_index = self.current_epoch + int(self.steps.in_next_round(step))
        if group == 0 and round_index < self.critic.warmup_rounds:
            return 0.0
        return super().group_lr_factor(group, step)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # lit-reason 0.1.0 named the value network "critic" (now the critic's options).
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("critic.")]:
            state["value_network." + key.removeprefix("critic.")] = state.pop(key)

    def forward_policy_and_values(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy logits (B, L, V) and the critic's value of the state before each token (B, L; column 0 is 0)."""
        shared = self.critic.kind == "shared"
        output = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            output_hidden_states=shared,
        )
        if shared:
            values = self.value_network(output.hidden_states[-1]).squeeze(-1).float()
        else:
            values, _ = self.value_network(input_ids, attention_mask)  # plain critic: no likelihood features
        # The value of acting with token t is that of the state before it: read at position t - 1.
        return output.logits, torch.nn.functional.pad(values[:, :-1], (1, 0))

    # ---------------------------------------------------------------------------------------------- rollout
    def make_train_data(self, problems: list[Problem], round_index: int) -> TrainData:
        sampled = self.generate(problems, self.rollout, ("rollout", round_index), "rollout")
        mask, reward = sampled.response_mask, self.reward
        logprobs, ref_logprobs, values = self._score_rollout(sampled)
        correct = grade(problems, sampled)
        final = self.outcome_rewards(sampled, correct) - reward.truncation_penalty * sampled.truncated.float()
        dense = self.dense_rewards(problems, sampled)
        kl = kl_penalty(logprobs, ref_logprobs, reward.kl_estimator) * mask
        rewards = reward_on_last_token(final, mask) + reward.dense_coef * dense - reward.kl_coef * kl
        advantages, returns = self.advantage(rewards, values, mask, device=self.device)
        batches = self._minibatches(sampled, logprobs, values, advantages, returns, round_index)
        self._log_samples(problems, sampled, final)
        stats = {
            "reward_final": final.mean().item(),
            "reward_dense": (dense.sum(-1) * reward.dense_coef).mean().item(),
            "reward_total": rewards.sum(-1).mean().item(),
            "correct_fraction": correct.float().mean().item(),
            "kl_to_reference": (kl_penalty(logprobs, ref_logprobs, "k1") * mask).sum(-1).mean().item(),
            "response_length": sampled.response_lengths.float().mean().item(),
            "truncated_fraction": sampled.truncated.float().mean().item(),
            "explained_variance": explained_variance(values, returns, mask, device=self.device),
            "value_mean": masked_mean(values, mask).item(),
            # Sampler and training forward should agree; a gap means mismatched numerics (e.g. precision).
            "logprob_gap_to_sampler": ((logprobs - sampled.logprobs).abs() * mask).max().item(),
        }
        return TrainData(batches, samples_drawn=len(sampled), stats=stats)

    def _score_rollout(self, sampled: SampleBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Policy and reference log-probs at the sampling temperature, and values, of the whole rollout
        (eval mode, no gradients, ``rollout.batch_size`` rows at a time): (R, L) each, 0 off the responses."""
        temperature = self.rollout.temperature
        parts = []
        with eval_mode(self), self._precision_context():
            for start in range(0, len(sampled), self.rollout.batch_size):
                rows = slice(start, start + self.rollout.batch_size)
                input_ids = sampled.input_ids[rows].to(self.device)
                attention_mask = sampled.attention_mask[rows].to(self.device)
                logits, values = self.forward_policy_and_values(input_ids, attention_mask)
                ref_logits = self.reference(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids_from_mask(attention_mask),
                ).logits
                parts.append(
                    (
                        token_logprobs(logits, input_ids, temperature).cpu(),
                        token_logprobs(ref_logits, input_ids, temperature).cpu(),
                        values.float().cpu(),
                    )
                )
        mask = sampled.response_mask
        return tuple(torch.cat(part) * mask for part in zip(*parts, strict=True))

    def outcome_rewards(self, sampled: SampleBatch, correct: torch.Tensor) -> torch.Tensor:
        """(R,) reward of each whole response: 1/0 correctness, or the ORM's score at its last token."""
        if self.reward.final == "orm":
            return self.orm_last_token_scores(sampled)
        return correct.float()

    def dense_rewards(self, problems: list[Problem], sampled: SampleBatch) -> torch.Tensor:
        """(R, L) dense rewards on step-end tokens (zeros for ``reward.dense: none``)."""
        if self.reward.dense == "none":
            return torch.zeros(sampled.input_ids.shape)
        steps = batch_steps(self.tokenizer, sampled.input_ids, sampled.response_mask, sampled.prompt_length)
        if self.reward.dense == "orm":
            scores = self.reward_scores(sampled)
            return orm_step_rewards(scores, [[c for c, _ in row] for row in steps], sampled.prompt_length)
        references = [problems[int(p)].intermediate_results for p in sampled.prompt_index]
        return heuristic_step_rewards(steps, references, tuple(sampled.input_ids.shape))

    def _minibatches(self, sampled, logprobs, values, advantages, returns, round_index: int) -> list[PPOBatch]:
        """``ppo_epochs`` shuffled passes over the rollout, cut into minibatches of ``minibatch_size`` rows."""
        plan = []
        for epoch in range(self.ppo_epochs):
            order = list(range(len(sampled)))
            random.Random(f"{self.seed}-{round_index}-{epoch}").shuffle(order)
            plan += [
                torch.tensor(order[i : i + self.minibatch_size]) for i in range(0, len(order), self.minibatch_size)
            ]
        # Every minibatch's denominators count all ranks' share of it (one all-reduce for all of them).
        counts = all_reduce(
            torch.tensor([[int(sampled.response_mask[rows].sum()), len(rows)] for rows in plan]), self.device
        )
        batches = []
        for rows, (tokens, sequences) in zip(plan, counts.tolist(), strict=True):
            attention_mask, *picked = take_rows(
                rows, sampled.attention_mask, sampled.input_ids, sampled.response_mask, logprobs, values,
                advantages, returns,
            )  # fmt: skip
            input_ids, response_mask, old_logprobs, old_values, row_advantages, row_returns = picked
            batches.append(
                PPOBatch(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    response_mask=response_mask,
                    old_logprobs=old_logprobs,
                    old_values=old_values,
                    advantages=row_advantages,
                    returns=row_returns,
                    global_tokens=tokens,
                    global_sequences=sequences,
                )
            )
        return batches

    def _log_samples(self, problems: list[Problem], sampled: SampleBatch, final: torch.Tensor) -> None:
        rows = zip(sampled.prompt_index.tolist(), sampled.texts, final.tolist(), strict=True)
        shown = gather_objects([(problems[p].question, text, f"{r:.3f}") for p, text, r in rows][: self.text_samples])
        writer = tensorboard_writer(self.loggers)
        if writer is not None and shown:
            table = markdown_table(["question", "response", "final reward"], shown)
            writer.add_text("rollout/samples", table, self.global_step)

    # --------------------------------------------------------------------------------------------- training
    def training_step(self, batch: PPOBatch, batch_idx: int) -> None:
        optimizer = self.optimizers()
        logits, values = self.forward_policy_and_values(batch.input_ids, batch.attention_mask)
        output = self.loss(logits, values, batch, self.rollout.temperature, rank_and_world_size()[1])
        self.manual_backward(output.loss)
        if self.max_grad_norm > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad()
        self.lr_schedulers().step()  # manual optimization: Lightning leaves the scheduler to the module
        self.log_dict(
            {f"train/{name}": value.detach() for name, value in output._asdict().items()}, batch_size=len(batch)
        )
