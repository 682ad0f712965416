"""The clipped policy-gradient loss of PPO and its critic-free relatives: the clipped surrogate, the clipped
value loss (with a critic), an entropy bonus and optionally a KL penalty to the reference as a loss term
(GRPO's), aggregated so that the gradient averaged over ranks is that of the whole minibatch's mean
(Schulman et al. 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from lit_reason.batches import PPOBatch
from lit_reason.rewards import KLEstimator, kl_penalty
from lit_reason.tensors import entropy_from_logits, masked_mean, token_logprobs

LossAggregation = Literal["token_mean", "sequence_mean", "max_length_mean"]


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


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: LossAggregation,
    global_tokens: int,
    global_sequences: int,
    world_size: int,
    max_length: int = 1,
) -> torch.Tensor:
    """Reduce a per-token loss of this rank's share of a minibatch to the scalar whose gradient, averaged
    over ranks (as DDP and FSDP do), is that of the minibatch's mean over all ranks.

    ``token_mean``: sum over tokens / response tokens on all ranks. ``sequence_mean``: every response's
    token mean, summed / responses on all ranks. ``max_length_mean``: sum over tokens / (responses on all
    ranks x ``max_length``), a constant per response (Dr. GRPO: no response-length normalisation).
    (B, T), (B, T) -> scalar.
    """
    mask = mask.to(per_token.dtype)
    if mode == "token_mean":
        total, count = (per_token * mask).sum(), global_tokens
    elif mode == "max_length_mean":
        total, count = (per_token * mask).sum(), global_sequences * max_length
    else:
        total, count = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum(), global_sequences
    return total * world_size / max(count, 1)


class PPOLossOutput(NamedTuple):
    """The loss to backpropagate and its parts, each a scalar (statistics detached, means over response
    tokens of this rank's share of the minibatch)."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor
    kl_loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor
    ratio_max: torch.Tensor


@dataclass
class PPOLoss:
    """``policy_loss + vf_coef * value_loss - entropy_coef * entropy + kl_coef * KL`` per response token,
    aggregated (the value term with a critic, the KL term when the KL penalty is a loss term).

    Args:
        clip_ratio: PPO's policy ratio clip.
        value_clip: how far a value may move from its rollout value before its loss is clipped.
        vf_coef: weight of the value loss.
        entropy_coef: entropy bonus (0: entropy only reported).
        aggregation: ``token_mean`` (every response token weighs the same), ``sequence_mean`` (every
            response does) or ``max_length_mean`` (token sums over a constant, Dr. GRPO's); denominators count
            the minibatch on all ranks.
    """

    clip_ratio: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.5
    entropy_coef: float = 0.0
    aggregation: LossAggregation = "token_mean"

    def __post_init__(self) -> None:
        if not (self.clip_ratio > 0 and self.value_clip > 0 and self.vf_coef >= 0 and self.entropy_coef >= 0):
            raise ValueError(
                "the loss needs clip_ratio > 0, value_clip > 0, vf_coef >= 0 and entropy_coef >= 0, got "
                f"clip_ratio {self.clip_ratio}, value_clip {self.value_clip}, vf_coef {self.vf_coef}, entropy_coef "
                f"{self.entropy_coef}"
            )

    def __call__(
        self,
        logits: torch.Tensor,
        values: torch.Tensor | None,
        batch: PPOBatch,
        *,
        temperature: float,
        world_size: int,
        max_length: int = 1,
        kl_coef: float = 0.0,
        kl_estimator: KLEstimator = "k3",
    ) -> PPOLossOutput:
        """The loss of a minibatch.

        Args:
            logits: (B, L, V) the policy's logits over the batch (position t predicts token t + 1).
            values: (B, L) the critic's value of the state before each token, or None without a critic.
            batch: the minibatch (its rollout log-probs, advantages, and the values and returns of a critic
                or reference log-probs of a KL loss term).
            temperature: the rollout's sampling temperature (log-probs and entropy are at it).
            world_size: ranks sharing the minibatch.
            max_length: the rollout's token limit (``max_length_mean``'s constant).
            kl_coef: weight of the KL penalty to the reference as a loss term (0: none; needs
                ``batch.ref_logprobs``).
            kl_estimator: its estimator (GRPO's is ``k3``).
        """
        mask = batch.response_mask
        logprobs = token_logprobs(logits, batch.input_ids, temperature)
        # Without rollout-time log-probs the policy has not moved since sampling: they are this forward's.
        old_logprobs = logprobs.detach() if batch.old_logprobs is None else batch.old_logprobs
        policy_losses, clipped = clipped_policy_loss(logprobs, old_logprobs, batch.advantages, self.clip_ratio)
        value_losses = torch.zeros_like(policy_losses)
        if values is not None:
            value_losses = clipped_value_loss(values, batch.old_values, batch.returns, self.value_clip)
        kl = torch.zeros_like(policy_losses)
        if kl_coef:
            # Off the response the estimate must be exactly 0 with a 0 gradient: k3's exp(-log ratio) of an
            # unlikely padding token is inf there, and inf * 0 (the mask, or its backward) is NaN.
            on_response = torch.where(mask, logprobs, batch.ref_logprobs)
            kl = kl_penalty(on_response, batch.ref_logprobs, kl_estimator)
        entropy = torch.nn.functional.pad(entropy_from_logits(logits[:, :-1], temperature), (1, 0))
        per_token = policy_losses + self.vf_coef * value_losses - self.entropy_coef * entropy + kl_coef * kl
        loss = aggregate(
            per_token, mask, self.aggregation, batch.global_tokens, batch.global_sequences, world_size, max_length
        )
        log_ratio = (logprobs - old_logprobs).detach()
        return PPOLossOutput(
            loss=loss,
            policy_loss=masked_mean(policy_losses.detach(), mask),
            value_loss=masked_mean(value_losses.detach(), mask),
            entropy=masked_mean(entropy.detach(), mask),
            kl_loss=masked_mean(kl.detach(), mask),
            clip_fraction=masked_mean(clipped.float(), mask),
            approx_kl=masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
            ratio_max=(torch.exp(log_ratio) * mask).max(),
        )
