"""What PPO and the critic-free policy-gradient algorithms (GRPO and its relatives) share, after Schulman et
al. 2017 and the per-token KL reward of Ziegler et al. 2019 / Ouyang et al. 2022.

A round (one Lightning epoch): sample K responses per question (top-k 0, top-p 1, so the sampled
distribution is the temperature-scaled softmax whose log-probs the loss uses); recompute the policy's
log-probs with a training forward and the frozen reference's at the same temperature over the *whole*
rollout (and a critic's values, for PPO; no reference is built or run when ``reward.kl_coef`` is 0; no
policy forward when the update is one step over the whole rollout without a critic or KL reward: that step's
own forward gives them); build per-token rewards (``RewardConfig``)

    reward_t = [t is the last token] * (final reward - truncation penalty if cut off)
               + dense_coef * dense_t - kl_coef * KL_t(policy || reference)   (KL as a reward term)

and the algorithm's advantages; then ``ppo_epochs`` passes of clipped-ratio updates over shuffled
minibatches, one backward of ``PPOLoss`` each (manual optimization).

Every forward over a rollout (scoring and update) runs each distinct prompt once and shares its KV cache with
the rows that repeat it (``cached_forward.response_logits``): a question's K samples cost one prompt.

Loss aggregation: every term is summed over the response tokens of a minibatch and divided by the number of
response tokens (or responses) in that minibatch on *all* ranks together, times the world size (DDP and
FSDP average gradients over ranks), so no denominator is per rank or per micro-batch.

Deviation: dropout is switched off in the trained networks, so a training forward reproduces the rollout's
log-probs (the first ratio is exactly 1).
"""

from __future__ import annotations

import random
from typing import Any

import torch

from lit_reason.adapters import adapters_disabled, has_adapter
from lit_reason.algorithms.base import ReasoningModule
from lit_reason.batches import PPOBatch
from lit_reason.cached_forward import response_logits
from lit_reason.data import TrainData
from lit_reason.distributed import all_reduce, gather_objects, rank_and_world_size, reduce_int
from lit_reason.evaluation import markdown_table
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
from lit_reason.rl.advantages import uniform_group_fraction
from lit_reason.rl.losses import PPOLoss
from lit_reason.run_logs import run_log
from lit_reason.sampling import SampleBatch, SamplingConfig
from lit_reason.tasks import Problem
from lit_reason.tensors import eval_mode, take_rows, token_logprobs, without_tokens


class PolicyGradient(ReasoningModule):
    """Base of the clipped policy-gradient algorithms: rollouts, rewards, minibatches and the update.

    Args:
        rollout: sampling of training responses (``num_samples`` per question). Keep top_k 0 and top_p 1:
            the loss's log-probs are those of the full temperature-scaled softmax.
        ppo_epochs: passes over each rollout.
        minibatch_size: responses per optimizer step on each rank.
        loss: the clipped policy loss (and value loss, with a critic), the entropy bonus and how they are
            aggregated.
        reward: the final and dense rewards, truncation penalty and KL penalty.
        max_grad_norm: gradient clipping (norm) of each optimizer step (0: off).
        reference_load_kwargs: ``from_pretrained`` options of the frozen reference policy (the KL penalty's),
            over the policy's: e.g. ``{"dtype": "bfloat16"}`` (half the memory), or 4-bit weights with
            ``{"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": true}}`` (needs
            ``lit-reason[quantization]``; bitsandbytes 0.50 runs it on CPUs too). Unset: loaded as the policy is.
        **kwargs: the shared options (policy, optimizer, lr_schedule, evaluation, text_samples, orm, seed:
            shuffles minibatches).
    """

    has_critic = False  # whether forward_policy_and_values gives values

    def __init__(
        self,
        rollout: SamplingConfig = SamplingConfig(num_samples=4, temperature=1.0, max_new_tokens=128),
        ppo_epochs: int = 2,
        minibatch_size: int = 64,
        loss: PPOLoss = PPOLoss(),
        reward: RewardConfig = RewardConfig(),
        max_grad_norm: float = 1.0,
        reference_load_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if reward.needs_orm and self.orm_path is None:
            raise ValueError(
                "reward.final: orm and reward.dense: orm need an ORM: set orm to an exported ORM directory"
            )
        if reference_load_kwargs is not None and self.policy_spec.peft is not None:
            raise ValueError(
                "reference_load_kwargs: with policy.peft the reference is the policy's base model (the adapter "
                "disabled), not a model of its own; drop reference_load_kwargs"
            )
        init = getattr(self.policy_spec.peft, "init_lora_weights", True)
        if reward.kl_coef and init not in (True, False, "gaussian"):
            raise ValueError(
                f"policy.peft.init_lora_weights={init!r} rewrites the base weights, and with policy.peft the KL "
                "reference is the base model read through the disabled adapter: it would not be the pretrained "
                "model. Use the default initialisation, or reward.kl_coef 0"
            )
        if rollout.greedy or rollout.top_k or rollout.top_p < 1:
            raise ValueError(
                f"{type(self).__name__}'s rollout must sample the full softmax (temperature > 0, top_k 0, top_p 1): "
                "its log-probs are that distribution's"
            )
        if minibatch_size < 1 or ppo_epochs < 1:
            raise ValueError(
                f"model.init_args.minibatch_size and ppo_epochs must be at least 1, got {minibatch_size} and "
                f"{ppo_epochs}"
            )
        self.automatic_optimization = False
        self.rollout = rollout
        self.ppo_epochs = ppo_epochs
        self.minibatch_size = minibatch_size
        self.loss = loss
        self.reward = reward
        self.max_grad_norm = max_grad_norm
        self.reference_load_kwargs = reference_load_kwargs
        self.reference: torch.nn.Module | None = None
        self._suppressed_ids: torch.Tensor | None = None  # ``sampled_distribution``'s, on the logits' device

    # ------------------------------------------------------------------------------------------- models
    def build_extra_models(self) -> None:
        disable_dropout(self.policy)
        # Without a KL penalty nothing reads the reference: no copy, no forward. With an adapter it is the
        # policy's base model, the adapter disabled (``reference_logits``): no copy either.
        if self.reward.kl_coef and not has_adapter(self.policy):
            spec = self.policy_spec
            if self.reference_load_kwargs is not None:
                spec = spec.with_load_kwargs(self.reference_load_kwargs)
            self.reference = load_model(spec, self.tokenizer).eval()
            self.reference.requires_grad_(False)

    @property
    def has_reference(self) -> bool:
        """Whether a reference policy is read (for the KL penalty): its own copy, or the adapter's base."""
        return self.reference is not None or (bool(self.reward.kl_coef) and has_adapter(self.policy))

    def reference_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int):
        """The reference policy's logits over a rollout's response columns (``response_logits``)."""
        if self.reference is not None:
            return response_logits(self.reference, input_ids, attention_mask, prompt_length)
        with adapters_disabled(self.policy):
            return response_logits(self.policy, input_ids, attention_mask, prompt_length)

    def networks_to_shard(self) -> list[torch.nn.Module]:
        return [self.policy] if self.reference is None else [self.policy, self.reference]

    def forward_policy_and_values(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Over the response columns (P - 1 .. L - 1 of a (B, L) rollout, ``response_logits``' layout): policy
        logits (B, L - P + 1, V) and a critic's value of the state before each token (B, L - P + 1), or None
        without a critic."""
        return response_logits(self.policy, input_ids, attention_mask, prompt_length), None

    def held_parameter_groups(self) -> tuple[int, ...]:
        """The optimizer's parameter groups this step leaves as they are (their gradients dropped): none."""
        return ()

    def sampled_distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits of the distribution rollouts draw from: the policy's conditioning's suppressed tokens (an
        RCRL policy's return tokens) at -inf, so that log-probs, ratios, KL and entropy are of the softmax
        the sampler drew from. (..., V) -> (..., V)."""
        suppressed = self.conditioning("rollout").suppressed_token_ids
        if not suppressed:
            return logits
        if self._suppressed_ids is None or self._suppressed_ids.device != logits.device:  # one copy to the device
            self._suppressed_ids = torch.tensor(suppressed, device=logits.device)
        return without_tokens(logits, self._suppressed_ids)

    def advantages(
        self, rewards: torch.Tensor, values: torch.Tensor | None, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
        """(R, L) advantages of a rollout's tokens from its per-token rewards (and values), the critic's value
        targets (or None) and statistics of the round."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------------- rollout
    def make_train_data(self, problems: list[Problem], round_index: int) -> TrainData:
        sampled = self.generate(problems, self.rollout, ("rollout", round_index), "rollout")
        mask, reward = sampled.response_mask, self.reward
        logprobs, ref_logprobs, values = self._score_rollout(sampled)
        reuse_sampled_logprobs = logprobs is None
        if reuse_sampled_logprobs:  # the sampler's log-probs (equal to a forward's) for the round's statistics
            logprobs = sampled.logprobs * mask
            ref_logprobs = logprobs if ref_logprobs is None else ref_logprobs
        correct = grade(problems, sampled)
        final = self.outcome_rewards(problems, sampled, correct) - reward.truncation_penalty * sampled.truncated.float()
        dense = self.dense_rewards(problems, sampled)
        kl = kl_penalty(logprobs, ref_logprobs, reward.kl_estimator) * mask
        rewards = reward_on_last_token(final, mask) + reward.dense_coef * dense - reward.reward_kl_coef * kl
        advantages, returns, advantage_stats = self.advantages(rewards, values, mask)
        tensors = {
            "old_logprobs": None if reuse_sampled_logprobs else logprobs,
            "advantages": advantages,
            "old_values": values,
            "returns": returns,
        }
        if reward.loss_kl_coef:
            tensors["ref_logprobs"] = ref_logprobs
        batches = self._minibatches(sampled, tensors, round_index)
        self._log_samples(problems, sampled, final)
        stats = {
            "reward_final": final.mean().item(),
            "reward_dense": (dense.sum(-1) * reward.dense_coef).mean().item(),
            "reward_total": rewards.sum(-1).mean().item(),
            "correct_fraction": correct.float().mean().item(),
            "kl_to_reference": (kl_penalty(logprobs, ref_logprobs, "k1") * mask).sum(-1).mean().item(),
            "response_length": sampled.response_lengths.float().mean().item(),
            "truncated_fraction": sampled.truncated.float().mean().item(),
            **advantage_stats,
        }
        if self.rollout.num_samples > 1:  # on the task's reward: a KL reward term never ties
            task_scores = final + reward.dense_coef * dense.sum(-1)
            stats["uniform_group_fraction"] = uniform_group_fraction(task_scores, sampled.prompt_index)
        if not reuse_sampled_logprobs:
            # Sampler and training forward should agree; a gap means mismatched numerics (e.g. precision).
            stats["logprob_gap_to_sampler"] = ((logprobs - sampled.logprobs).abs() * mask).max().item()
        return TrainData(batches, samples_drawn=len(sampled), stats=stats)

    def _score_rollout(
        self, sampled: SampleBatch
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Policy and reference log-probs at the sampling temperature and values of the whole rollout (eval
        mode, no gradients, ``rollout.batch_size`` rows at a time): (R, L) each, 0 off the responses. The
        policy's are None when ``_update_gives_old_logprobs`` (then the reference's too without a KL term, or
        the policy's twice without a reference); values None without a critic."""
        temperature, mask, start = self.rollout.temperature, sampled.response_mask, sampled.prompt_length - 1
        score_policy = not self._update_gives_old_logprobs(len(sampled))
        if not score_policy and not self.has_reference:
            return None, None, None

        def logprobs_of(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
            chosen = token_logprobs(self.sampled_distribution(logits), input_ids[:, start:], temperature)
            return torch.nn.functional.pad(chosen, (start, 0))

        parts = []
        with eval_mode(self), self._precision_context():
            for first in range(0, len(sampled), self.rollout.batch_size):
                rows = slice(first, first + self.rollout.batch_size)
                input_ids = sampled.input_ids[rows].to(self.device)
                attention_mask = sampled.attention_mask[rows].to(self.device)
                logprobs = values = None
                if score_policy:
                    logits, values = self.forward_policy_and_values(input_ids, attention_mask, sampled.prompt_length)
                    logprobs = logprobs_of(logits, input_ids).cpu()
                    if values is not None:
                        values = torch.nn.functional.pad(values.float(), (start, 0)).cpu()
                ref_logprobs = logprobs
                if self.has_reference:
                    ref_logits = self.reference_logits(input_ids, attention_mask, sampled.prompt_length)
                    ref_logprobs = logprobs_of(ref_logits, input_ids).cpu()
                parts.append((logprobs, ref_logprobs, values))
        logprobs, ref_logprobs, values = (
            torch.cat(part) * mask if part[0] is not None else None for part in zip(*parts, strict=True)
        )
        return logprobs, ref_logprobs, values

    def _update_gives_old_logprobs(self, rows: int) -> bool:
        """Whether the update is one optimizer step over the whole rollout on every rank, with no critic and
        no KL reward term: its log-probs at rollout time are then the first forward's (the ratio is exactly 1),
        so no scoring forward of the policy is needed (TRL's ``GRPOTrainer`` does the same)."""
        if self.ppo_epochs != 1 or self.reward.reward_kl_coef or self.has_critic:
            return False
        # Decided alike on every rank: a forward that one rank skips would stall another's FSDP all-gather.
        return reduce_int(rows, "max", self.device) <= self.minibatch_size

    def outcome_rewards(self, problems: list[Problem], sampled: SampleBatch, correct: torch.Tensor) -> torch.Tensor:
        """(R,) reward of each whole response: 1/0 correctness, the ORM's score at its last token, or the
        user's ``reward_fn``."""
        if self.reward.final == "orm":
            return self.orm_last_token_scores(sampled).float()
        if self.reward.final == "reward_fn":
            return self.reward.reward_fn(problems, sampled)
        return correct.float()

    def dense_rewards(self, problems: list[Problem], sampled: SampleBatch) -> torch.Tensor:
        """(R, L) dense rewards on step-end tokens (zeros for ``reward.dense: none``)."""
        if self.reward.dense == "none":
            return torch.zeros(sampled.input_ids.shape)
        steps = batch_steps(self.tokenizer, sampled.input_ids, sampled.response_mask, sampled.prompt_length)
        if self.reward.dense == "orm":
            scores = self.reward_scores(sampled).float()
            return orm_step_rewards(scores, [[c for c, _ in row] for row in steps], sampled.prompt_length)
        references = [problems[int(p)].intermediate_results for p in sampled.prompt_index]
        return heuristic_step_rewards(steps, references, tuple(sampled.input_ids.shape))

    def _minibatches(
        self, sampled: SampleBatch, tensors: dict[str, torch.Tensor | None], round_index: int
    ) -> list[PPOBatch]:
        """``ppo_epochs`` passes over the rollout, its questions shuffled and each question's samples kept
        together (as verl counts minibatches in prompts: with ``minibatch_size`` a multiple of K, a minibatch runs
        each of its prompts once), cut into minibatches of ``minibatch_size`` rows; ``tensors``: the (R, L)
        ``PPOBatch`` fields beyond the sampled tokens (None: left out)."""
        rows_of_question: dict[int, list[int]] = {}
        for row, question in enumerate(sampled.prompt_index.tolist()):
            rows_of_question.setdefault(question, []).append(row)
        plan = []
        for epoch in range(self.ppo_epochs):
            questions = list(rows_of_question)
            random.Random(f"{self.seed}-{round_index}-{epoch}").shuffle(questions)
            order = [row for question in questions for row in rows_of_question[question]]
            plan += [
                torch.tensor(order[i : i + self.minibatch_size]) for i in range(0, len(order), self.minibatch_size)
            ]
        # Every minibatch's denominators count all ranks' share of it (one all-reduce for all of them).
        counts = all_reduce(
            torch.tensor([[int(sampled.response_mask[rows].sum()), len(rows)] for rows in plan]), self.device
        )
        names = [name for name, tensor in tensors.items() if tensor is not None]
        batches = []
        for rows, (tokens, sequences) in zip(plan, counts.tolist(), strict=True):
            # take_rows drops the columns that are padding in every row, left padding of the prompts included.
            prompt_length = int(sampled.attention_mask[rows, : sampled.prompt_length].bool().any(0).sum())
            attention_mask, input_ids, response_mask, *picked = take_rows(
                rows, sampled.attention_mask, sampled.input_ids, sampled.response_mask, *(tensors[n] for n in names)
            )
            batches.append(
                PPOBatch(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    response_mask=response_mask,
                    global_tokens=tokens,
                    global_sequences=sequences,
                    prompt_length=prompt_length,
                    **dict(zip(names, picked, strict=True)),
                )
            )
        return batches

    def _log_samples(self, problems: list[Problem], sampled: SampleBatch, final: torch.Tensor) -> None:
        rows = zip(sampled.prompt_index.tolist(), sampled.texts, final.tolist(), strict=True)
        shown = gather_objects([(problems[p].question, text, f"{r:.3f}") for p, text, r in rows][: self.text_samples])
        log = run_log(self.trainer)
        if log is not None and shown:
            table = markdown_table(["question", "response", "final reward"], shown)
            log.text("rollout/samples", table, self.global_step)

    # --------------------------------------------------------------------------------------------- training
    def training_step(self, batch: PPOBatch, batch_idx: int) -> None:
        optimizer = self.optimizers()
        logits, values = self.forward_policy_and_values(batch.input_ids, batch.attention_mask, batch.prompt_length)
        batch = batch.response_columns()
        output = self.loss(
            self.sampled_distribution(logits),
            values,
            batch,
            temperature=self.rollout.temperature,
            world_size=rank_and_world_size()[1],
            max_length=self.rollout.max_new_tokens,
            kl_coef=self.reward.loss_kl_coef,
            kl_estimator=self.reward.kl_estimator,
        )
        self.manual_backward(output.loss)
        for group in self.held_parameter_groups():  # no step, no optimizer state, no share of the clipped norm
            for parameter in optimizer.param_groups[group]["params"]:
                parameter.grad = None
        if self.max_grad_norm > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad()
        self.lr_schedulers().step()  # manual optimization: Lightning leaves the scheduler to the module
        self.log_dict(
            {f"train/{name}": value.detach() for name, value in output._asdict().items()}, batch_size=len(batch)
        )
