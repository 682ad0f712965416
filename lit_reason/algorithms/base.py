"""What every algorithm shares: the policy and its tokenizer, how it is conditioned and sampled, the learning-rate
schedule, the evaluation (``lit_reason.evaluation``, the same for all of them) and the export. Algorithms subclass
``ReasoningModule`` and implement ``make_train_data`` (what a round trains on) and ``training_step``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info

from lit_reason.adapters import with_adapter
from lit_reason.batches import Example
from lit_reason.conditioning import Conditioning, Stage
from lit_reason.data import COMPLETED_ROUND, EMPTY_ROUND, TrainData
from lit_reason.distributed import full_state_dict, rank_and_world_size, shard_models
from lit_reason.evaluation import Evaluator, GradedQuestions, record_training_end, trained_to, write_outputs
from lit_reason.hyperparameters import plain_data
from lit_reason.policy import PolicySpec, eos_token_ids, load_model, load_tokenizer, response_end_id, save_policy
from lit_reason.sampling import SampleBatch, SamplingConfig, encode_example, encode_response_prefix, row_seed, sample
from lit_reason.schedule import LRSchedule, StepCounter
from lit_reason.seeds import EVALUATION_SEED, run_seed
from lit_reason.tasks import Problem, Task
from lit_reason.tensors import eval_mode
from lit_reason.value_model import ValueModel, load_frozen_orm


class ReasoningModule(LightningModule):
    """Base of every algorithm: a policy (and its tokenizer), sampling and the shared evaluation.

    Args:
        policy: which language model to train.
        optimizer: builds the optimizer from parameters, e.g. ``torch.optim.AdamW`` or
            ``bitsandbytes.optim.AdamW8bit`` (``lit-reason[quantization]``) with its ``init_args``.
        lr_schedule: warm-up and decay of the learning rate.
        evaluation: sampling for validation and test, the same for every algorithm: ``num_samples`` is K
            of maj@K / pass@K (8 on a CPU; 96 in the paper). maj@1 always decodes greedily.
        text_samples: validation responses shown in TensorBoard's text tab each time.
        orm: an outcome reward model exported by ``lit-reason fit --config configs/orm.yaml`` (the run's
            ``policy/`` directory, or its hub id): frozen, never trained or checkpointed; adds ``rerank@K``
            to evaluation and is available to algorithms as a reward.
        orm_load_kwargs: the ORM trunk's ``from_pretrained`` options (``{"dtype": "bfloat16"}``, 4-bit); head: fp32.
        seed: the algorithm's shuffles (of examples, minibatches, kept samples); unset: ``seed_everything``'s.
    """

    trains_reward_model = False  # the ORM module scores with the network it trains

    def __init__(
        self,
        policy: PolicySpec = PolicySpec(),
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_schedule: LRSchedule = LRSchedule(),
        evaluation: SamplingConfig = SamplingConfig(num_samples=8, temperature=0.7, max_new_tokens=128),
        text_samples: int = 4,
        orm: str | None = None,
        orm_load_kwargs: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # every class's __init__ arguments, then as plain data (weights_only loads)
        self.save_hyperparameters(plain_data(dict(self.hparams)))
        self.policy_spec = policy
        self.optimizer_factory = optimizer
        self.lr_schedule = lr_schedule
        self.evaluation = evaluation
        self.text_samples = text_samples
        self.orm_path, self.orm_load_kwargs = orm, orm_load_kwargs or {}
        self._seed = seed
        self.tokenizer = load_tokenizer(self.policy_spec)
        self.policy: torch.nn.Module | None = None  # built in configure_model
        self.recorded_conditioning = Conditioning()  # what the starting policy's export records
        self._frozen_orm: list[ValueModel] = []  # the frozen ORM, out of the module tree: optimizer, checkpoint, DDP
        self.evaluator = Evaluator(evaluation.num_samples, rerank=orm is not None or self.trains_reward_model)
        self.steps = StepCounter()  # the run's and the current round's optimizer steps

    # ------------------------------------------------------------------------------------------- models
    def configure_model(self) -> None:
        """Build the networks (once; Lightning may call this again) and shard them under FSDP2."""
        if self.policy is not None:
            return
        self.policy = with_adapter(self.load_policy_network(self.policy_spec), self.policy_spec.peft).train()
        if not self.policy_spec.is_preset:
            spec = self.policy_spec
            self.recorded_conditioning = Conditioning.load(spec.resolved(), self.policy, **spec.location)
        if self.orm_path is not None:
            self._frozen_orm.append(load_frozen_orm(self.orm_path, self.tokenizer, self.orm_load_kwargs))
        self.build_extra_models()
        if self.device_mesh is not None:
            shard_models(self.networks_to_shard(), self.device_mesh)

    def load_policy_network(self, spec: PolicySpec) -> torch.nn.Module:
        """The policy network ``spec`` names, fitted to this module's tokenizer."""
        return load_model(spec, self.tokenizer)

    def build_extra_models(self) -> None:
        """Subclasses build what else they need here (reference policy, critic), after the policy."""

    def networks_to_shard(self) -> list[torch.nn.Module]:
        """The networks FSDP2 shards (each decoder layer, then the whole)."""
        return [self.policy]

    def reward_network(self) -> ValueModel | None:
        """The outcome reward model that scores samples, on this module's device, or None."""
        if self._frozen_orm and next(self._frozen_orm[0].parameters()).device != self.device:
            self._frozen_orm[0].to(self.device)
        return self._frozen_orm[0] if self._frozen_orm else None

    def reward_scores(self, batch: SampleBatch) -> torch.Tensor:
        """(R, L) the reward network's probability of a correct final answer at every column of a sampled
        batch (``evaluation.batch_size`` rows at a time); it judges the response behind the prompt alone, as
        it was trained, without the response prefix the policy sampled behind."""
        prefix_ids = encode_response_prefix(self.tokenizer, self.conditioning("rollout").response_prefix)
        input_ids, attention_mask = batch.without_prompt_end(len(prefix_ids), self.tokenizer.pad_token_id)
        with self._precision_context():
            return self.reward_network().score(
                input_ids, attention_mask, batch.response_mask, batch_size=self.evaluation.batch_size
            )

    def orm_last_token_scores(self, batch: SampleBatch) -> torch.Tensor | None:
        """(R,) the reward network's score at each sample's last token (None without a reward network)."""
        return None if self.reward_network() is None else batch.at_last_token(self.reward_scores(batch))

    @property
    def seed(self) -> int:
        return run_seed(self._seed)

    @property
    def max_length(self) -> int:
        """Longest prompt + response the policy takes."""
        spec = self.policy_spec
        return spec.max_length if spec.is_preset else int(getattr(self.policy.config, "max_position_embeddings", 2**30))

    # ------------------------------------------------------------------------------- task & conditioning
    @property
    def task(self) -> Task:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "task"):
            raise RuntimeError(f"{type(self).__name__} needs a RolloutDataModule (its task grades the answers)")
        return datamodule.task

    def conditioning(self, stage: Stage) -> Conditioning:
        """What the policy samples behind in rollouts or in evaluation: what its export records (an RCRL policy's
        good token, suppressed return tokens and guidance), guidance only in evaluation (what exports record)."""
        recorded = self.recorded_conditioning
        return recorded if stage == "evaluation" else recorded.without_guidance()

    def encode_example(self, problem: Problem, target: str, response_prefix: str | None = None) -> Example:
        """(prompt ids, target ids + EOS) of ``target`` as the response to ``problem``, behind
        ``response_prefix`` (default: the one rollouts sample behind), tokenized as the sampler does."""
        prefix = self.conditioning("rollout").response_prefix if response_prefix is None else response_prefix
        end = response_end_id(self.tokenizer, self.task.prompt_style)
        return encode_example(self.tokenizer, self.task.prompt(problem, self.tokenizer), prefix, target, end)

    def generate(
        self, problems: Sequence[Problem], config: SamplingConfig, seed_parts: Sequence[Any], stage: Stage
    ) -> SampleBatch:
        """``config.num_samples`` responses per problem from the policy conditioned for ``stage`` (eval mode, no
        gradients); sample k of problem p seeded by ``(seed, *seed_parts, p.id, k)``, ``seed`` ``config.seed``
        or, unset, the run's (rollouts) or ``EVALUATION_SEED`` (evaluation)."""
        seed = config.seed if config.seed is not None else run_seed(None) if stage == "rollout" else EVALUATION_SEED
        seeds = [row_seed(seed, *seed_parts, problem.id) for problem in problems]
        with eval_mode(self), self._precision_context():
            return sample(
                self.policy,
                self.tokenizer,
                [self.task.prompt(problem, self.tokenizer) for problem in problems],
                config,
                seeds,
                eos_token_ids=eos_token_ids(self.policy, self.tokenizer),
                conditioning=self.conditioning(stage),
                stop_strings=self.task.stop_strings,
                progress=True,
                description=f"{'-'.join(map(str, seed_parts))}: {config.num_samples} per question",
            )

    def _precision_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self._trainer is None else self.trainer.precision_plugin.forward_context()

    # ----------------------------------------------------------------------------------------- training
    def make_train_data(self, problems: list[Problem], round_index: int) -> TrainData:
        """Turn this rank's questions of a round into training batches (called by the RolloutDataModule)."""
        raise NotImplementedError

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.trainable_parameters())
        factors = [partial(self._scheduled_lr_factor, group) for group in range(len(optimizer.param_groups))]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter] | list[dict[str, Any]]:
        """What the optimizer trains: parameters, or parameter groups with their own options (a ``lr``)."""
        return (p for p in self.policy.parameters() if p.requires_grad)

    def _scheduled_lr_factor(self, group: int, scheduler_steps: int) -> float:
        # The global step, not LambdaLR's own count: one counter, right even after resuming without its state.
        return self.group_lr_factor(group, self.global_step)

    def group_lr_factor(self, group: int, step: int) -> float:
        """Multiplier of parameter group ``group``'s learning rate at optimizer step ``step``: the LR
        schedule's, over the window ``lr_window`` gives (LambdaLR asks once the step before is taken)."""
        return self.lr_schedule.factor(*self.lr_window(step))

    def lr_window(self, step: int) -> tuple[int, int]:
        """(place of optimizer step ``step`` in the LR schedule's window, the window's length): the run."""
        return step, self.steps.run_steps

    def on_train_epoch_start(self) -> None:
        self.steps.count_round(self.trainer)
        data = self.trainer.datamodule.round_data
        if data is not None:
            stats = {f"round/{n}": float(v) for n, v in data.stats.items()} | {"round/index": float(self.current_epoch)}
            self.log_dict(stats, on_step=False, on_epoch=True, sync_dist=True, batch_size=1)
        # Identical on every rank: a mean keeps it so (batch_size: an empty round's placeholder has none).
        samples = float(self.trainer.datamodule.samples_drawn)
        self.log("samples_drawn", samples, on_step=False, on_epoch=True, sync_dist=True, batch_size=1)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        if isinstance(batch, str) and batch in (EMPTY_ROUND, COMPLETED_ROUND):
            return -1  # Lightning: skip the rest of this epoch (a round with nothing (more) to train on)
        if self.trainer.datamodule.resumed_mid_round:  # Lightning starts no epoch there: its first batch does
            self.trainer.datamodule.resumed_mid_round = False
            self.on_train_epoch_start()  # count the round, log its statistics
        self.steps.count_round(self.trainer)
        self.trainer.datamodule.batches_started += 1  # a checkpoint from here on has trained on this batch
        # Dropout's generator, seeded per batch and rank: checkpoints do not hold it, so a resumed run reseeds it.
        torch.manual_seed(row_seed(self.seed, "dropout", self.current_epoch, batch_idx, rank_and_world_size()[0]))
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=1)

    # ------------------------------------------------------------------------------------------ evaluation
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, list) and all(isinstance(item, Problem) for item in batch):
            return batch  # questions are text; the sampler moves its own tensors
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def validation_step(self, problems: list[Problem], batch_idx: int) -> None:
        self.evaluate_problems(problems)

    test_step = validation_step

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # Lightning's check of a few batches: no evaluation, nothing kept
            return self.evaluator.reset()
        self.log_evaluation("test" if self.trainer.testing else "val")

    on_test_epoch_end = on_validation_epoch_end

    def evaluate_problems(self, problems: list[Problem]) -> None:
        """Greedy and K sampled responses for each problem, graded into the evaluation metrics."""
        self.evaluator.start_batch()
        greedy_config = replace(self.evaluation, num_samples=1, temperature=0.0)
        greedy = self.generate(problems, greedy_config, ("eval",), "evaluation")
        sampled = self.generate(problems, self.evaluation, ("eval",), "evaluation")
        graded = self.evaluator.update(problems, greedy, sampled, self.orm_last_token_scores(sampled))
        if graded.scores is not None and not self.trainer.sanity_checking:  # the sanity check's are never logged
            self.update_reward_metrics(graded)

    def update_reward_metrics(self, graded: GradedQuestions) -> None:
        """Where a subclass adds metrics of the reward network's scores; the ORM does."""

    def log_evaluation(self, stage: str, extra: dict[str, torch.Tensor] | None = None) -> None:
        """Log every evaluation metric as ``{stage}/name`` (and ``extra`` values of subclasses), write the
        per-question predictions, and TensorBoard's samples and figures."""
        metrics, records = self.evaluator.compute()
        values = {f"{stage}/{name}": value for name, value in metrics.items()} | (extra or {})
        values[f"{stage}/samples_drawn"] = torch.tensor(float(self.trainer.datamodule.samples_drawn))
        # Identical on every rank (gathered); the mean keeps them so. NCCL reduces only on the rank's GPU.
        self.log_dict({name: value.float().to(self.device) for name, value in values.items()}, sync_dist=True)
        seconds = self.evaluator.seconds_since_start()
        rank_zero_info(
            f"{stage} step {trained_to(self.trainer)[1]} ({seconds:.0f}s): "
            + ", ".join(f"{n.split('/', 1)[1]}={v.item():.4f}" for n, v in values.items())
        )
        write_outputs(self.trainer, stage, values, records, seconds=seconds, text_samples=self.text_samples)

    def on_fit_end(self) -> None:
        record_training_end(self.trainer)

    # ------------------------------------------------------------------------------------------ export
    def export_conditioning(self) -> Conditioning:
        """What an export of this module records: the conditioning evaluation applies."""
        return self.conditioning("evaluation")

    def export_policy(self, path: str | Path) -> None:
        """Save the policy and tokenizer where ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``
        load them, with its ``export_conditioning``. Call on every rank (sharded weights are gathered)."""
        state = full_state_dict(self.policy)
        if rank_and_world_size()[0] != 0:
            return
        self.export_conditioning().save(path, self.policy)
        save_policy(self.policy, state, path, self.policy_spec, lambda: self.load_policy_network(self.policy_spec))
        self.tokenizer.save_pretrained(path)
