"""What every algorithm shares: the policy and its tokenizer, sampling, evaluation, LR schedule and export.

Algorithms subclass ``ReasoningModule`` and implement ``make_train_data`` (what a round trains on) and
``training_step``. Evaluation is the same for all of them: for every validation / test question, one greedy
response (maj@1) and K sampled ones under the shared ``evaluation`` settings (maj@K, pass@K, distinct correct
solutions), so numbers mean the same whichever algorithm produced the policy.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from lightning import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info

from lit_reason.data import TrainData
from lit_reason.distributed import gather_objects, is_distributed, rank_and_world_size
from lit_reason.metrics import DistinctCorrect, MajorityAtK, PassAtK, RerankAtK
from lit_reason.policy import PolicySpec, eos_token_ids, load_model, load_tokenizer, recorded_guidance
from lit_reason.sampling import (
    Guidance,
    SampleBatch,
    SamplingConfig,
    encode_continuation,
    encode_prompt,
    encode_response_prefix,
    eval_mode,
    position_ids_from_mask,
    row_seed,
    sample,
)
from lit_reason.tasks import Problem, Task
from lit_reason.tasks.answers import extract_answer, operation_signature
from lit_reason.value_model import ValueModel


@dataclass
class LRSchedule:
    """Learning rate over a training window (SFT: the run; rounds of Expert Iteration: each round).

    Args:
        warmup_steps: optimizer steps of linear warm-up from 0.
        decay: shape after warm-up, down to ``min_lr_ratio`` x the optimizer's learning rate at the end of the
            window.
        min_lr_ratio: final learning rate as a fraction of the peak.
    """

    warmup_steps: int = 0
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1

    def factor(self, step: int, total: int) -> float:
        """Multiplier of the peak learning rate at optimizer step ``step`` (0-based) of ``total``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "constant" or total <= self.warmup_steps:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, total - self.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.decay == "cosine" else 1 - progress
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * shape


@dataclass
class TokenBatch:
    """Sequences to fine-tune on, right-padded to the longest (B sequences of L tokens).

    Attributes:
        input_ids: (B, L) long. Prompt then target tokens (EOS included), pad id after.
        attention_mask: (B, L) long. 1 on real tokens.
        loss_mask: (B, L) bool. True on the tokens that are predicted and trained on (the target).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.input_ids)


def fits_context(example: tuple[list[int], list[int]], max_length: int) -> bool:
    """Whether a (prompt ids, target ids) pair fits in ``max_length`` tokens."""
    return len(example[0]) + len(example[1]) <= max_length


def make_token_batch(examples: Sequence[tuple[list[int], list[int]]], pad_token_id: int) -> TokenBatch:
    """Right-pad (prompt ids, target ids) pairs into a ``TokenBatch`` whose loss covers the targets."""
    width = max(len(prompt) + len(target) for prompt, target in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    loss_mask = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, (prompt, target) in enumerate(examples):
        end = len(prompt) + len(target)
        input_ids[row, :end] = torch.tensor(prompt + target, dtype=torch.long)
        attention_mask[row, :end] = 1
        loss_mask[row, len(prompt) : end] = True
    return TokenBatch(input_ids, attention_mask, loss_mask)


def next_token_nll(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of the masked tokens, and how many there are.

    Args:
        logits: (B, L, V) logits; position t predicts token t + 1.
        input_ids: (B, L) long.
        loss_mask: (B, L) bool, True on tokens to predict (position 0 is never predicted).

    Returns:
        (scalar sum of -log p over masked tokens, scalar count of masked tokens).
    """
    targets = input_ids[:, 1:]
    mask = loss_mask[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none")
    return (nll * mask.flatten()).sum(), mask.sum()


class ReasoningModule(LightningModule):
    """Base of every algorithm: a policy (and its tokenizer), sampling and the shared evaluation.

    Args:
        policy: which language model to train.
        optimizer: builds the optimizer from parameters, e.g. ``torch.optim.AdamW`` or
            ``bitsandbytes.optim.AdamW8bit`` with its ``init_args`` (lr, weight_decay, betas).
        lr_schedule: warm-up and decay of the learning rate.
        evaluation: sampling for validation and test, the same for every algorithm: ``num_samples`` is K
            of maj@K / pass@K (8 on a CPU; 96 in the paper). maj@1 always decodes greedily.
        text_samples: validation responses shown in TensorBoard's text tab each time.
        orm: an outcome reward model exported by ``lit-reason fit --config configs/orm.yaml`` (the run's
            ``policy/`` directory): frozen, never trained or checkpointed; adds ``rerank@K`` to evaluation
            and is available to algorithms as a reward.
    """

    def __init__(
        self,
        policy: PolicySpec = PolicySpec(),
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_schedule: LRSchedule = LRSchedule(),
        evaluation: SamplingConfig = SamplingConfig(num_samples=8, temperature=0.7, max_new_tokens=128),
        text_samples: int = 4,
        orm: str | None = None,
    ) -> None:
        super().__init__()
        self.policy_spec = policy
        self.optimizer_factory = optimizer
        self.lr_schedule = lr_schedule
        self.evaluation = evaluation
        self.text_samples = text_samples
        self.orm_path = orm
        self.tokenizer = load_tokenizer(self.policy_spec)
        self.policy: torch.nn.Module | None = None  # built in configure_model
        # The frozen ORM is kept out of the module tree: out of the optimizer, the checkpoint and DDP.
        self._frozen_orm: list[ValueModel] = []
        k = self.evaluation.num_samples
        self.eval_metrics = torch.nn.ModuleDict(
            {
                "maj@1": MajorityAtK(k=1),
                f"maj@{k}": MajorityAtK(k=k),
                f"pass@{k}": PassAtK(k=k),
                "pass@1": PassAtK(k=1),
                f"distinct_correct@{k}": DistinctCorrect(k=k),
            }
        )
        if self.orm_path is not None or self.trains_reward_model:
            self.eval_metrics[f"rerank@{k}"] = RerankAtK(k=k)
        self._eval_records: list[dict[str, Any]] = []
        self._eval_started = time.perf_counter()

    # ------------------------------------------------------------------------------------------- models
    def configure_model(self) -> None:
        """Build the networks (once; Lightning may call this again) and shard them under FSDP2."""
        if self.policy is not None:
            return
        self.policy = self.load_policy_network(self.policy_spec).train()  # from_pretrained gives eval mode
        if self.orm_path is not None:
            self._frozen_orm.append(load_frozen_orm(self.orm_path, self.tokenizer))
        self.build_extra_models()
        if self.device_mesh is not None:
            mesh = (
                self.device_mesh["data_parallel"]
                if "data_parallel" in self.device_mesh.mesh_dim_names
                else self.device_mesh
            )
            for network in self.networks_to_shard():
                shard_model(network, mesh)

    def load_policy_network(self, spec: PolicySpec) -> torch.nn.Module:
        """The policy network ``spec`` names, fitted to this module's tokenizer."""
        return load_model(spec, self.tokenizer)

    def build_extra_models(self) -> None:
        """Subclasses build what else they need here (reference policy, critic), after the policy."""

    def networks_to_shard(self) -> list[torch.nn.Module]:
        """The networks FSDP2 shards (each decoder layer, then the whole)."""
        return [self.policy]

    trains_reward_model = False  # the ORM module scores with the network it trains

    def reward_network(self) -> ValueModel | None:
        """The outcome reward model that scores samples, on this module's device, or None."""
        if not self._frozen_orm:
            return None
        network = self._frozen_orm[0]
        if next(network.parameters()).device != self.device:
            network.to(self.device)
        return network

    def reward_scores(self, batch: SampleBatch) -> torch.Tensor:
        """(R, L) probability of a correct final answer at every column of a sampled batch, from the reward
        network (eval mode, no gradients, ``evaluation.batch_size`` rows at a time)."""
        network = self.reward_network()
        input_ids, attention_mask = batch.input_ids, batch.attention_mask
        prefix = len(encode_response_prefix(self.tokenizer, self.response_prefix))
        if prefix:  # the ORM judges the response, not the return token a conditioned policy was given
            input_ids, attention_mask = input_ids.clone(), attention_mask.clone()
            input_ids[:, batch.prompt_length - prefix : batch.prompt_length] = self.tokenizer.pad_token_id
            attention_mask[:, batch.prompt_length - prefix : batch.prompt_length] = 0
        scores = []
        with eval_mode(network), self._precision_context():
            for start in range(0, len(batch), self.evaluation.batch_size):
                rows = slice(start, start + self.evaluation.batch_size)
                values, _ = network(
                    input_ids[rows].to(self.device),
                    attention_mask[rows].to(self.device),
                    batch.response_mask[rows].to(self.device),
                )
                scores.append(torch.sigmoid(values.float()))
        return torch.cat(scores).cpu()

    def final_reward_scores(self, batch: SampleBatch) -> torch.Tensor | None:
        """(R,) the reward network's score at each sample's last token (None without a reward network)."""
        if self.reward_network() is None:
            return None
        scores = self.reward_scores(batch)
        last = batch.prompt_length + batch.response_lengths - 1
        return scores.gather(1, last[:, None])[:, 0]

    @property
    def eos_token_ids(self) -> list[int]:
        return eos_token_ids(self.policy, self.tokenizer)

    @property
    def max_length(self) -> int:
        """Longest prompt + response the policy takes."""
        if self.policy_spec.is_preset:
            return self.policy_spec.max_length
        return int(getattr(self.policy.config, "max_position_embeddings", 1 << 30))

    # ----------------------------------------------------------------------------------- task & prompts
    @property
    def task(self) -> Task:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "task"):
            raise RuntimeError(f"{type(self).__name__} needs a RolloutDataModule (its task grades the answers)")
        return datamodule.task

    @property
    def response_prefix(self) -> str:
        """Text every sampled response starts with: what an exported return-conditioned policy records in its
        generation config (its good-return token), else nothing."""
        return getattr(getattr(self.policy, "generation_config", None), "response_prefix", None) or ""

    @property
    def suppressed_token_ids(self) -> list[int]:
        """Tokens the policy never generates: what its generation config lists in ``suppress_tokens`` (an
        exported return-conditioned policy's return tokens)."""
        return list(getattr(getattr(self.policy, "generation_config", None), "suppress_tokens", None) or [])

    @property
    def evaluation_guidance(self) -> Guidance | None:
        """How evaluation contrasts the response prefix with another: what the policy's export records (a
        return-conditioned policy exported with guidance), else None. Rollouts sample the policy as it is."""
        return recorded_guidance(self.policy) if self.response_prefix else None

    def prompt(self, problem: Problem) -> str:
        return self.task.prompt(problem, self.tokenizer)

    def encode_example(
        self, problem: Problem, target: str, response_prefix: str | None = None
    ) -> tuple[list[int], list[int]]:
        """(prompt ids, target ids + EOS) for fine-tuning: the prompt and the response prefix (default: the
        one the policy samples behind) as the sampler encodes them, and the target as the tokens that continue
        them."""
        response_prefix = self.response_prefix if response_prefix is None else response_prefix
        prompt = self.prompt(problem)
        prompt_ids = encode_prompt(self.tokenizer, prompt) + encode_response_prefix(self.tokenizer, response_prefix)
        target_ids = encode_continuation(self.tokenizer, prompt + response_prefix, prompt_ids, target)
        return prompt_ids, target_ids + [self.tokenizer.eos_token_id]

    # ----------------------------------------------------------------------------------------- sampling
    def generate(
        self,
        problems: Sequence[Problem],
        config: SamplingConfig,
        seed_parts: Sequence[Any],
        description: str,
        guidance: Guidance | None = None,
    ) -> SampleBatch:
        """Sample ``config.num_samples`` responses per problem from the policy (eval mode, no gradients),
        behind its response prefix, with ``guidance`` if given.

        Sample k of problem p is seeded by ``(config.seed, *seed_parts, p.id, k)``.
        """
        seeds = [row_seed(config.seed, *seed_parts, problem.id) for problem in problems]
        with eval_mode(self), self._precision_context():
            return sample(
                self.policy,
                self.tokenizer,
                [self.prompt(problem) for problem in problems],
                config,
                seeds,
                eos_token_ids=self.eos_token_ids,
                response_prefix=self.response_prefix,
                stop_strings=self.task.stop_strings,
                suppress_token_ids=self.suppressed_token_ids,
                guidance=guidance,
                progress=True,
                description=description,
            )

    def _precision_context(self) -> contextlib.AbstractContextManager:
        if self._trainer is None:
            return contextlib.nullcontext()
        return self.trainer.precision_plugin.forward_context()

    # ----------------------------------------------------------------------------------------- training
    def make_train_data(self, problems: list[Problem], round_index: int) -> TrainData:
        """Turn this rank's questions of a round into training batches (called by the RolloutDataModule)."""
        raise NotImplementedError

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.trainable_parameters())
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        return optimizer

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter] | list[dict[str, Any]]:
        """What the optimizer trains: parameters, or parameter groups with their own options (a ``lr``)."""
        return (p for p in self.policy.parameters() if p.requires_grad)

    def set_learning_rate(self, step: int, total: int) -> float:
        """Apply the LR schedule at optimizer step ``step`` of a ``total``-step window; returns the LR."""
        factor = self.lr_schedule.factor(step, total)
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        return optimizers[0].param_groups[0]["lr"]

    def forward_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids and mask -> (B, L, V) logits, with positions that skip left padding."""
        output = self.policy(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
        )
        return output.logits

    def token_batch_loss(self, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean next-token NLL over the batch's target tokens, and the number of target tokens."""
        logits = self.forward_logits(batch.input_ids, batch.attention_mask)
        total, count = next_token_nll(logits, batch.input_ids, batch.loss_mask)
        return total / count.clamp(min=1), count

    def on_train_epoch_start(self) -> None:
        datamodule = self.trainer.datamodule
        data = datamodule.round_data
        if data is not None:
            stats = {f"round/{name}": float(value) for name, value in data.stats.items()}
            stats["round/index"] = float(self.current_epoch)
            self.log_dict(stats, on_step=False, on_epoch=True, sync_dist=True)
        # Identical on every rank; reducing (a mean) keeps it so and satisfies Lightning's distributed logging.
        self.log("samples_drawn", float(datamodule.samples_drawn), on_step=False, on_epoch=True, sync_dist=True)

    # ------------------------------------------------------------------------------------------ evaluation
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, list) and all(isinstance(item, Problem) for item in batch):
            return batch  # questions are text; the sampler moves its own tensors
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def validation_step(self, problems: list[Problem], batch_idx: int) -> None:
        self.evaluate_problems(problems)

    def test_step(self, problems: list[Problem], batch_idx: int) -> None:
        self.evaluate_problems(problems)

    def on_validation_epoch_end(self) -> None:
        self.log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self.log_evaluation("test")

    def on_validation_epoch_start(self) -> None:
        self._eval_started = time.perf_counter()

    def on_test_epoch_start(self) -> None:
        self._eval_started = time.perf_counter()

    def evaluate_problems(self, problems: list[Problem]) -> None:
        """Greedy and K sampled responses for each problem; updates the evaluation metrics."""
        greedy_config = replace(self.evaluation, num_samples=1, temperature=0.0)
        guidance = self.evaluation_guidance
        greedy = self.generate(problems, greedy_config, ("eval",), "greedy", guidance)
        sampled = self.generate(
            problems, self.evaluation, ("eval",), f"{self.evaluation.num_samples} samples", guidance
        )
        k = self.evaluation.num_samples
        ids = torch.tensor([p.id for p in problems], device=self.device)
        targets = torch.tensor([p.answer for p in problems], dtype=torch.float64, device=self.device)
        greedy_answers = _answers(greedy.texts).view(-1, 1)
        greedy_correct = [problem.is_correct(text) for problem, text in zip(problems, greedy.texts, strict=True)]
        answers = _answers(sampled.texts).view(len(problems), k)
        correct = torch.tensor([problems[i // k].is_correct(t) for i, t in enumerate(sampled.texts)]).view(-1, k)
        signatures = torch.tensor([operation_signature(t) for t in sampled.texts]).view(-1, k)
        metrics = self.eval_metrics
        metrics["maj@1"].update(greedy_answers.to(self.device), targets, ids)
        metrics[f"maj@{k}"].update(answers.to(self.device), targets, ids)
        metrics[f"pass@{k}"].update(correct.to(self.device), ids)
        metrics["pass@1"].update(correct.to(self.device), ids)
        metrics[f"distinct_correct@{k}"].update(correct.to(self.device), signatures.to(self.device), ids)
        scores = self.final_reward_scores(sampled)
        if scores is not None:
            scores = scores.view(-1, k)
            metrics[f"rerank@{k}"].update(correct.to(self.device), scores.to(self.device), ids)
            self.update_reward_metrics(problems, sampled, correct, scores, ids)
        self._eval_records.extend(
            {
                "id": problem.id,
                "question": problem.question,
                "greedy": greedy.texts[i],
                "greedy_correct": greedy_correct[i],
                "answered": float(torch.isfinite(answers[i]).float().mean()),
                "truncated": float(sampled.truncated[i * k : (i + 1) * k].float().mean()),
                "lengths": sampled.response_lengths[i * k : (i + 1) * k].tolist(),
                "samples": sampled.texts[i * k : (i + 1) * k],
                "samples_correct": correct[i].tolist(),
            }
            for i, problem in enumerate(problems)
        )

    def update_reward_metrics(
        self,
        problems: list[Problem],
        sampled: SampleBatch,
        correct: torch.Tensor,
        scores: torch.Tensor,
        ids: torch.Tensor,
    ) -> None:
        """Where a subclass adds metrics of the reward network's final scores ((questions, K)); the ORM does."""

    def log_evaluation(self, stage: str, extra: dict[str, torch.Tensor] | None = None) -> None:
        """Log every evaluation metric as ``{stage}/name`` (and ``extra`` values of subclasses), response
        statistics, lengths and text samples."""
        values = {f"{stage}/{name}": metric.compute() for name, metric in self.eval_metrics.items()}
        values.update(extra or {})
        for metric in self.eval_metrics.values():
            metric.reset()
        records = {r["id"]: r for r in gather_objects(self._eval_records)}  # padded repeats count once
        self._eval_records.clear()
        if records:
            values[f"{stage}/answered"] = torch.tensor(sum(r["answered"] for r in records.values()) / len(records))
            values[f"{stage}/truncated"] = torch.tensor(sum(r["truncated"] for r in records.values()) / len(records))
        values[f"{stage}/samples_drawn"] = torch.tensor(float(self._samples_drawn()))
        # Identical on every rank already (metrics and records are gathered); the mean keeps them so. Lightning
        # reduces each value on the device it is on, and NCCL takes only the rank's GPU: move them all there.
        self.log_dict({name: value.float().to(self.device) for name, value in values.items()}, sync_dist=True)
        rank_zero_info(
            f"{stage} step {self.global_step} ({time.perf_counter() - self._eval_started:.0f}s): "
            + ", ".join(f"{n.split('/', 1)[1]}={v.item():.4f}" for n, v in values.items())
        )
        self.write_predictions(stage, records)
        experiment = self._tensorboard()
        if experiment is None or not records:
            return
        samples_drawn = self._samples_drawn()
        for name, value in values.items():
            if "maj@" in name or "pass@" in name:
                experiment.add_scalar(f"by_samples_drawn/{name}", value.item(), global_step=samples_drawn)
        lengths = torch.tensor([n for r in records.values() for n in r["lengths"]], dtype=torch.float32)
        experiment.add_histogram(f"{stage}/response_length", lengths, global_step=self.global_step)
        shown = list(records.values())[: self.text_samples]
        table = "\n".join(
            f"| {r['id']} | {markdown_cell(r['question'])} | {markdown_cell(r['greedy'])} | {r['greedy_correct']} |"
            for r in shown
        )
        experiment.add_text(
            f"{stage}/greedy_samples",
            "| id | question | greedy response | correct |\n|---|---|---|---|\n" + table,
            self.global_step,
        )

    def write_predictions(self, stage: str, records: dict[int, dict[str, Any]]) -> None:
        """Per-question results beside the run's logs (rank 0): ``<log_dir>/predictions/<stage>-step<N>.jsonl``,
        one line per question (id, greedy response and its correctness, the K samples and theirs), so that two
        runs can be compared question by question (``tools/compare_policies.py --baseline-predictions``)."""
        if self._trainer is None or not self.trainer.loggers:  # no run directory to write into
            return
        log_dir = self.trainer.log_dir  # a broadcast from rank 0: every rank asks
        if rank_and_world_size()[0] != 0 or not records or log_dir is None:
            return
        path = Path(log_dir) / "predictions" / f"{stage}-step{self.global_step}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = ("id", "question", "greedy", "greedy_correct", "samples", "samples_correct")
        with path.open("w") as file:
            for record in sorted(records.values(), key=lambda r: r["id"]):
                file.write(json.dumps({field: record[field] for field in fields}) + "\n")

    def _samples_drawn(self) -> int:
        datamodule = getattr(self.trainer, "datamodule", None)
        return int(getattr(datamodule, "samples_drawn", 0))

    def _tensorboard(self):
        """The TensorBoard SummaryWriter on rank 0, or None."""
        if rank_and_world_size()[0] != 0:
            return None
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text") and hasattr(experiment, "add_histogram"):
                return experiment
        return None

    # ------------------------------------------------------------------------------------------ export
    def export_policy(self, path: str | Path) -> None:
        """Save the policy and tokenizer where ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``
        load them. Call on every rank (sharded weights are gathered); rank 0 writes."""
        state = full_state_dict(self.policy)
        if rank_and_world_size()[0] != 0:
            return
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(path, state_dict=state)
        self.tokenizer.save_pretrained(path)


def shard_model(model: torch.nn.Module, mesh) -> None:
    """FSDP2: shard each transformer block (the classes a HF model lists in ``_no_split_modules``), then the
    whole model."""
    from torch.distributed.fsdp import fully_shard

    block_names = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in block_names:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state on CPU, gathering FSDP2 shards (a collective: call on every rank)."""
    from torch.distributed.tensor import DTensor

    if is_distributed() and any(isinstance(p, DTensor) for p in model.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}


def load_frozen_orm(path: str, tokenizer) -> ValueModel:
    """An exported outcome reward model, frozen and in eval mode; its tokenizer must agree with the policy's
    on every token it knows."""
    network, orm_tokenizer = ValueModel.load(path)
    policy_vocab = tokenizer.get_vocab()
    mismatched = [token for token, index in orm_tokenizer.get_vocab().items() if policy_vocab.get(token) != index]
    if mismatched:
        raise ValueError(
            f"the ORM at {path} uses another tokenizer than the policy ({len(mismatched)} tokens differ, e.g. "
            f"{mismatched[:3]}); train the ORM from the same model family as the policy"
        )
    network.requires_grad_(False)
    return network.eval()


def load_full_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole (unsharded) state into ``model``, sharded by FSDP2 or not (call on every rank)."""
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
    else:
        model.load_state_dict(state)


def _answers(texts: Sequence[str]) -> torch.Tensor:
    """(N,) float64 answers, NaN where a text states none."""
    return torch.tensor([float("nan") if (a := extract_answer(t)) is None else a for t in texts], dtype=torch.float64)


def markdown_cell(text: str) -> str:
    """Text for one cell of a Markdown table."""
    return text.replace("|", "\\|").replace("\n", "<br>")
