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

from lit_reason.algorithms.base import ReasoningModule, markdown_cell
from lit_reason.data import TrainData
from lit_reason.distributed import all_reduce, gather_objects, rank_and_world_size
from lit_reason.policy import disable_dropout, load_model
from lit_reason.rewards import batch_steps, final_rewards, heuristic_step_rewards, orm_step_rewards
from lit_reason.sampling import SampleBatch, SamplingConfig, eval_mode, position_ids_from_mask, token_logprobs
from lit_reason.tasks import Problem
from lit_reason.value_model import ValueModel

KLEstimator = Literal["k1", "k2", "k3"]
LossAggregation = Literal["token_mean", "sequence_mean"]
FinalReward = Literal["correctness", "orm"]
DenseReward = Literal["none", "orm", "heuristic"]
Critic = Literal["separate", "shared"]


# ------------------------------------------------------------------------------------------ pure functions
def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is true (0 if nothing is). (B, T), (B, T) -> scalar."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def global_mean_var(
    values: torch.Tensor, mask: torch.Tensor, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance of the masked entries of ``values`` on all ranks together.

    (B, T), (B, T) -> (scalar, scalar); one all-reduce of (sum, sum of squares, count) when distributed, on
    ``device`` (the module's; default: that of ``values``).
    """
    mask = mask.to(values.dtype)
    stats = torch.stack([(values * mask).sum(), (values**2 * mask).sum(), mask.sum()]).double()
    total, squares, count = all_reduce(stats, device or values.device)
    mean = total / count.clamp(min=1)
    variance = (squares / count.clamp(min=1) - mean**2) * count / (count - 1).clamp(min=1)
    return mean.to(values.dtype), variance.clamp(min=0).to(values.dtype)


def whiten(
    values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, device: torch.device | None = None
) -> torch.Tensor:
    """Shift and scale the masked entries to mean 0 and variance 1 over all ranks; 0 elsewhere. (B, T).
    ``device``: where the statistics are reduced (see ``global_mean_var``)."""
    mean, variance = global_mean_var(values, mask, device)
    return (values - mean) * torch.rsqrt(variance + eps) * mask


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the log-probs of the sampled tokens. (B, T) each.

    k1 = log p - log q (unbiased, can be negative); k2 = (log p - log q)^2 / 2; k3 = q/p - 1 - log(q/p)
    (unbiased, non-negative), with p the policy and q the reference (Schulman's estimators).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    return torch.expm1(-log_ratio) + log_ratio


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's contiguous run of response tokens.

    The token after a row's last response token is terminal (value 0).

    Args:
        rewards: (B, T) per-token rewards.
        values: (B, T) critic values of the state before each token.
        mask: (B, T) bool, response tokens.
        gamma: discount.
        lam: GAE lambda.

    Returns:
        advantages (B, T) and returns = advantages + values (B, T), both 0 outside the mask.
    """
    mask = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    columns = values.shape[1]
    for t in reversed(range(columns)):
        next_mask = mask[:, t + 1] if t + 1 < columns else torch.zeros_like(running)
        next_value = values[:, t + 1] * next_mask if t + 1 < columns else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * next_mask * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, per token: ``max(-A r, -A clip(r, 1 - clip, 1 + clip))``, r = p / p_old.

    (B, T) each -> per-token loss (B, T) and whether the clipped term was the larger (B, T) bool.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float
) -> torch.Tensor:
    """``0.5 max((v - R)^2, (clip(v, v_old - clip, v_old + clip) - R)^2)`` per token. (B, T) each -> (B, T)."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax at every position. (B, T, V) -> (B, T)."""
    logprobs = logits.float().log_softmax(-1)
    return -(logprobs.exp() * logprobs).sum(-1)


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: LossAggregation,
    global_tokens: int,
    global_sequences: int,
    world_size: int,
) -> torch.Tensor:
    """Reduce a per-token loss of this rank's share of a minibatch to the scalar whose gradient, averaged
    over ranks (as DDP and FSDP do), is that of the minibatch's mean over all ranks.

    ``token_mean``: sum over tokens / response tokens on all ranks. ``sequence_mean``: every response's
    token mean, summed / responses on all ranks. (B, T), (B, T) -> scalar.
    """
    mask = mask.to(per_token.dtype)
    if mode == "token_mean":
        total, count = (per_token * mask).sum(), global_tokens
    else:
        total, count = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum(), global_sequences
    return total * world_size / max(count, 1)


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, device: torch.device | None = None
) -> float:
    """1 - Var(returns - values) / Var(returns) over the masked entries (all ranks): 1 is a perfect critic.
    ``device``: where the statistics are reduced (see ``global_mean_var``)."""
    _, residual = global_mean_var(returns - values, mask, device)
    _, total = global_mean_var(returns, mask, device)
    return float(1 - residual / total) if total > 0 else float("nan")


# ------------------------------------------------------------------------------------------------ module
@dataclass
class PPOBatch:
    """One minibatch of a rollout on this rank: B responses over L columns (sampler layout).

    Attributes:
        input_ids: (B, L) long.
        attention_mask: (B, L) long.
        response_mask: (B, L) bool. Sampled tokens, EOS included: the actions.
        old_logprobs: (B, L) float32. Log-probs of the actions when sampled (training forward, rollout time).
        old_values: (B, L) float32. Critic values of the state before each action, at rollout time.
        advantages: (B, L) float32. GAE advantages, whitened over the whole rollout.
        returns: (B, L) float32. Value targets.
        global_tokens: response tokens in this minibatch on all ranks together.
        global_sequences: responses in this minibatch on all ranks together.
        warmup: a critic warm-up step: the actor is not updated.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    old_logprobs: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    global_tokens: int
    global_sequences: int
    warmup: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)


class PPO(ReasoningModule):
    """PPO with a critic, GAE and a KL penalty to the starting policy, on correctness, ORM or dense rewards.

    Args:
        rollout: sampling of training responses (``num_samples`` per question). Keep top_k 0 and top_p 1:
            PPO's log-probs are those of the full temperature-scaled softmax.
        ppo_epochs: passes over each rollout.
        minibatch_size: responses per optimizer step on each rank.
        clip_ratio: PPO's policy ratio clip.
        value_clip: how far a value may move from its rollout value before its loss is clipped.
        vf_coef: weight of the value loss.
        entropy_coef: entropy bonus (0: entropy only logged).
        kl_coef: weight of the per-token KL penalty in the reward (the paper: 0.05).
        kl_estimator: ``k1`` (log-ratio, the usual reward penalty), ``k2`` or ``k3``.
        gamma: discount.
        lam: GAE lambda.
        whiten_advantages: normalise advantages over the whole rollout of all ranks.
        loss_aggregation: ``token_mean`` (every response token weighs the same) or ``sequence_mean``.
        final_reward: ``correctness`` (1 if the final answer is right, else 0) or ``orm`` (the ORM's score
            at the last token; needs ``orm``).
        dense_reward: ``none``; ``orm``: the change of the ORM's score at every step (line) end; or
            ``heuristic``: credit for intermediate results matching the reference's.
        dense_coef: weight of the dense reward.
        truncation_penalty: subtracted from the final reward of a response cut off at the token limit.
        critic: ``separate``: a value head on its own copy of the policy trunk; ``shared``: a value head on the
            policy's own hidden states.
        critic_lr: learning rate of the critic (``None``: the optimizer's).
        value_head_std: initial scale of the value head's weights (0: zeros).
        critic_warmup_rounds: rounds that train only the critic, the actor frozen.
        max_grad_norm: gradient clipping (norm) of each optimizer step (0: off).
        seed: shuffles minibatches.
        **kwargs: the shared options (policy, optimizer, lr_schedule, evaluation, text_samples, orm).
    """

    def __init__(
        self,
        rollout: SamplingConfig = SamplingConfig(num_samples=4, temperature=1.0, max_new_tokens=128),
        ppo_epochs: int = 2,
        minibatch_size: int = 64,
        clip_ratio: float = 0.2,
        value_clip: float = 0.2,
        vf_coef: float = 0.5,
        entropy_coef: float = 0.0,
        kl_coef: float = 0.05,
        kl_estimator: KLEstimator = "k1",
        gamma: float = 1.0,
        lam: float = 0.95,
        whiten_advantages: bool = True,
        loss_aggregation: LossAggregation = "token_mean",
        final_reward: FinalReward = "correctness",
        dense_reward: DenseReward = "none",
        dense_coef: float = 0.0,
        truncation_penalty: float = 0.0,
        critic: Critic = "separate",
        critic_lr: float | None = None,
        value_head_std: float = 0.0,
        critic_warmup_rounds: int = 0,
        max_grad_norm: float = 1.0,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (final_reward == "orm" or dense_reward == "orm") and self.orm_path is None:
            raise ValueError(
                "final_reward='orm' and dense_reward='orm' need an ORM: set orm to an exported ORM directory"
            )
        if rollout.top_k or rollout.top_p < 1:
            raise ValueError(
                "PPO's rollout must sample the full softmax (top_k 0, top_p 1): its log-probs are that distribution's"
            )
        self.automatic_optimization = False
        self.rollout = rollout
        self.ppo_epochs = ppo_epochs
        self.minibatch_size = minibatch_size
        self.clip_ratio = clip_ratio
        self.value_clip = value_clip
        self.vf_coef = vf_coef
        self.entropy_coef = entropy_coef
        self.kl_coef = kl_coef
        self.kl_estimator = kl_estimator
        self.gamma = gamma
        self.lam = lam
        self.whiten_advantages = whiten_advantages
        self.loss_aggregation = loss_aggregation
        self.final_reward = final_reward
        self.dense_reward = dense_reward
        self.dense_coef = dense_coef
        self.truncation_penalty = truncation_penalty
        self.critic_kind = critic
        self.critic_lr = critic_lr
        self.value_head_std = value_head_std
        self.critic_warmup_rounds = critic_warmup_rounds
        self.max_grad_norm = max_grad_norm
        self.seed = seed
        self.reference: torch.nn.Module | None = None
        self.critic: torch.nn.Module | None = None  # a ValueModel, or the shared value head

    # ------------------------------------------------------------------------------------------- models
    def build_extra_models(self) -> None:
        self.reference = load_model(self.policy_spec, self.tokenizer).eval()
        self.reference.requires_grad_(False)
        hidden = self.policy.config.get_text_config().hidden_size
        if self.critic_kind == "separate":
            self.critic = ValueModel(load_model(self.policy_spec, self.tokenizer).train(), head_std=self.value_head_std)
        else:
            self.critic = torch.nn.Linear(hidden, 1)
            torch.nn.init.normal_(self.critic.weight, std=self.value_head_std)
            torch.nn.init.zeros_(self.critic.bias)
        for network in (self.policy, self.critic):
            disable_dropout(network)

    def networks_to_shard(self) -> list[torch.nn.Module]:
        return [self.policy, self.reference, self.critic]

    def configure_optimizers(self):
        critic = {"params": list(self.critic.parameters())}
        if self.critic_lr is not None:
            critic["lr"] = self.critic_lr
        optimizer = self.optimizer_factory([{"params": list(self.policy.parameters())}, critic])
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        return optimizer

    def forward_policy_and_values(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy logits (B, L, V) and the critic's value of the state before each token (B, L; column 0 is 0)."""
        position_ids = position_ids_from_mask(attention_mask)
        output = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=self.critic_kind == "shared",
        )
        if self.critic_kind == "shared":
            values = self.critic(output.hidden_states[-1]).squeeze(-1).float()
        else:
            values, _ = self.critic(input_ids, attention_mask)  # plain critic: no likelihood features
        # The value of acting with token t is that of the state before it: read at position t - 1.
        return output.logits, torch.nn.functional.pad(values[:, :-1], (1, 0))

    # ---------------------------------------------------------------------------------------------- rollout
    def make_train_data(self, problems: list[Problem], round_index: int) -> TrainData:
        sampled = self.generate(problems, self.rollout, ("rollout", round_index), f"round {round_index} rollout")
        mask = sampled.response_mask
        logprobs, ref_logprobs, values = self._score_rollout(sampled)
        correct = torch.tensor(
            [problems[int(p)].is_correct(t) for p, t in zip(sampled.prompt_index, sampled.texts, strict=True)]
        )
        final = self.final_reward_values(sampled, correct) - self.truncation_penalty * sampled.truncated.float()
        dense = self.dense_rewards(problems, sampled)
        kl = kl_penalty(logprobs, ref_logprobs, self.kl_estimator) * mask
        rewards = final_rewards(final, mask) + self.dense_coef * dense - self.kl_coef * kl
        advantages, returns = gae(rewards, values, mask, self.gamma, self.lam)
        if self.whiten_advantages:
            advantages = whiten(advantages, mask, device=self.device)
        batches = self._minibatches(sampled, logprobs, values, advantages, returns, round_index)
        self._log_samples(problems, sampled, final, round_index)
        lengths = sampled.response_lengths.float()
        stats = {
            "reward_final": final.mean().item(),
            "reward_dense": (dense.sum(-1) * self.dense_coef).mean().item(),
            "reward_total": rewards.sum(-1).mean().item(),
            "correct_fraction": correct.float().mean().item(),
            "kl_to_reference": (kl_penalty(logprobs, ref_logprobs, "k1") * mask).sum(-1).mean().item(),
            "response_length": lengths.mean().item(),
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

    def final_reward_values(self, sampled: SampleBatch, correct: torch.Tensor) -> torch.Tensor:
        """(R,) reward of each whole response: 1/0 correctness, or the ORM's final score."""
        if self.final_reward == "orm":
            return self.final_reward_scores(sampled)
        return correct.float()

    def dense_rewards(self, problems: list[Problem], sampled: SampleBatch) -> torch.Tensor:
        """(R, L) dense rewards on step-end tokens (zeros for ``dense_reward: none``)."""
        if self.dense_reward == "none":
            return torch.zeros(sampled.input_ids.shape)
        steps = batch_steps(self.tokenizer, sampled.input_ids, sampled.response_mask, sampled.prompt_length)
        if self.dense_reward == "orm":
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
        warmup = self.current_epoch < self.critic_warmup_rounds
        batches = []
        for rows, (tokens, sequences) in zip(plan, counts.tolist(), strict=True):
            columns = sampled.attention_mask[rows].any(0)  # drop columns that are padding in every row

            def pick(tensor: torch.Tensor, rows=rows, columns=columns) -> torch.Tensor:
                return tensor[rows][:, columns]

            batches.append(
                PPOBatch(
                    input_ids=pick(sampled.input_ids),
                    attention_mask=pick(sampled.attention_mask),
                    response_mask=pick(sampled.response_mask),
                    old_logprobs=pick(logprobs),
                    old_values=pick(values),
                    advantages=pick(advantages),
                    returns=pick(returns),
                    global_tokens=tokens,
                    global_sequences=sequences,
                    warmup=warmup,
                )
            )
        return batches

    def _log_samples(
        self, problems: list[Problem], sampled: SampleBatch, final: torch.Tensor, round_index: int
    ) -> None:
        shown = gather_objects(
            [
                (problems[int(p)].question, text, float(r))
                for p, text, r in list(zip(sampled.prompt_index, sampled.texts, final, strict=True))[
                    : self.text_samples
                ]
            ]
        )
        experiment = self._tensorboard()
        if experiment is not None and shown:
            rows = "\n".join(f"| {markdown_cell(q)} | {markdown_cell(t)} | {r:.3f} |" for q, t, r in shown)
            experiment.add_text(
                "rollout/samples", "| question | response | final reward |\n|---|---|---|\n" + rows, self.global_step
            )

    # --------------------------------------------------------------------------------------------- training
    def training_step(self, batch: PPOBatch, batch_idx: int) -> None:
        optimizer = self.optimizers()
        lr = self.set_learning_rate(self.global_step, self._total_steps())
        if batch.warmup:
            optimizer.param_groups[0]["lr"] = 0.0  # the actor waits while the critic warms up
        mask = batch.response_mask
        logits, values = self.forward_policy_and_values(batch.input_ids, batch.attention_mask)
        logprobs = token_logprobs(logits, batch.input_ids, self.rollout.temperature)
        policy_losses, clipped = clipped_policy_loss(logprobs, batch.old_logprobs, batch.advantages, self.clip_ratio)
        value_losses = clipped_value_loss(values, batch.old_values, batch.returns, self.value_clip)
        entropy = entropy_from_logits(logits[:, :-1] / (self.rollout.temperature or 1.0))
        entropy = torch.nn.functional.pad(entropy, (1, 0))
        per_token = policy_losses + self.vf_coef * value_losses - self.entropy_coef * entropy
        world_size = rank_and_world_size()[1]
        loss = aggregate(
            per_token, mask, self.loss_aggregation, batch.global_tokens, batch.global_sequences, world_size
        )
        self.manual_backward(loss)
        if self.max_grad_norm > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad()
        log_ratio = (logprobs - batch.old_logprobs).detach()
        size = len(batch)
        self.log_dict(
            {
                "train/loss": loss.detach(),
                "train/policy_loss": masked_mean(policy_losses.detach(), mask),
                "train/value_loss": masked_mean(value_losses.detach(), mask),
                "train/entropy": masked_mean(entropy.detach(), mask),
                "train/clip_fraction": masked_mean(clipped.float(), mask),
                "train/approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
                "train/ratio_max": (torch.exp(log_ratio) * mask).max(),
                "train/lr": torch.tensor(lr),
            },
            batch_size=size,
            prog_bar=False,
        )

    def _total_steps(self) -> int:
        trainer = self.trainer
        if trainer.max_steps > 0:
            return trainer.max_steps
        return trainer.max_epochs * trainer.num_training_batches
