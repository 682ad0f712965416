"""The outcome reward model: its loss by hand, training from a rollout file, export, rerank@K elsewhere."""

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lit_reason import SFT, OutcomeRewardModel, PolicySpec, RolloutDataModule, SamplingConfig
from lit_reason.algorithms.orm import orm_loss, reliability_table
from lit_reason.metrics import WithinQuestionAUROC, concordant_pairs
from lit_reason.sampling import encode_prompt
from lit_reason.tensors import next_token_nll, token_logprobs, token_logprobs_by_rows
from lit_reason.value_model import HEAD_FILE, ValueModel, likelihood_features, load_frozen_orm
from tests.conftest import sft_fixture_task
from tests.helpers.quantization import FOUR_BIT, QUANTIZABLE_MICRO
from tests.helpers.trainers import quiet_trainer


def _orm_metrics_on_rank(rank: int, world_size: int) -> dict[str, float]:
    from lit_reason.evaluation import GradedQuestions

    module = OutcomeRewardModel(policy=PolicySpec(name_or_path="micro"))
    answered = torch.tensor([[True, True]]) if rank == 0 else torch.tensor([[False, False]])  # rank 1: none
    graded = GradedQuestions(
        question_ids=torch.tensor([rank]),
        correct=torch.tensor([[True, False]]),
        answered=answered,
        scores=torch.tensor([[0.8, 0.3]]),
    )
    module.update_reward_metrics(graded)
    values, scores, _ = module.reward_metric_values("val")
    return {**{name: value.item() for name, value in values.items()}, "samples": len(scores)}


@pytest.mark.slow
def test_orm_metrics_agree_across_ranks_when_one_rank_has_no_answered_sample():
    # torchmetrics' synchronisation of a never-updated AUROC sent other dtypes than the updated rank's: gloo
    # aborted the process, NCCL would hang.
    from tests.helpers.distributed import run_in_processes

    results = run_in_processes(_orm_metrics_on_rank, timeout=120)
    assert results[0] == results[1]
    assert results[0]["samples"] == 2 and results[0]["val/orm_auroc"] == 1.0 and results[0]["val/orm_accuracy"] == 1.0


def test_lightning_s_sanity_check_leaves_nothing_in_the_orm_s_metrics():
    # Its samples stayed in the ORM's own metric states, and as the first of their questions they were the ones
    # the first real validation counted (val/orm_auroc, which orm.yaml exports on).
    from lightning import Callback

    from lit_reason import RolloutDataModule
    from lit_reason.tasks import Arithmetic
    from tests.helpers.trainers import quiet_trainer

    left = []

    class AfterTheSanityCheck(Callback):
        def on_sanity_check_end(self, trainer, module):
            left.append((len(module._answered), len(module.within_question_auroc.question_ids)))

    sampling = SamplingConfig(num_samples=2, max_new_tokens=6)
    module = OutcomeRewardModel(policy=PolicySpec(name_or_path="micro"), rollout=sampling, evaluation=sampling)
    data = RolloutDataModule(
        task=Arithmetic(train_size=8, validation_size=4, test_size=4), questions_per_round=2, eval_batch_size=2
    )
    trainer = quiet_trainer(max_epochs=1, max_steps=1, num_sanity_val_steps=1, callbacks=[AfterTheSanityCheck()])
    trainer.fit(module, data)
    assert left == [(0, 0)]


def test_orm_loss_by_hand():
    values = torch.tensor([[0.0, 0.0, 2.0], [0.0, -1.0, 0.0]])
    mask = torch.tensor([[False, True, True], [False, True, False]])
    labels = torch.tensor([1.0, 0.0])
    # Three response tokens: -log(sigmoid(0)), -log(sigmoid(2)), -log(1 - sigmoid(-1)).
    expected = (
        torch.log(torch.tensor(2.0))
        + torch.log1p(torch.exp(torch.tensor(-2.0)))
        + torch.log1p(torch.exp(torch.tensor(-1.0)))
    ) / 3
    total, count = orm_loss(values, labels, mask)
    assert count.item() == 3 and (total / 3).item() == pytest.approx(expected.item(), rel=1e-6)


def _orm_training_loss_on_rank(rank: int, world_size: int) -> tuple[float, float, int]:
    from lit_reason.batches import LabelledBatch

    module = OutcomeRewardModel(policy=PolicySpec(name_or_path="micro"), lm_loss_coef=1.0)
    module.configure_model()
    tokens = 1 if rank == 0 else 9  # response tokens on this rank
    input_ids = torch.randint(4, 60, (1, 3 + tokens), generator=torch.Generator().manual_seed(rank))
    response_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    response_mask[:, 3:] = True
    batch = LabelledBatch(input_ids, torch.ones_like(input_ids), response_mask, labels=torch.tensor([float(rank)]))
    loss = module.training_step(batch, 0)
    values, logits = module.network(input_ids, batch.attention_mask, response_mask, lm_logits=True)
    total = orm_loss(values, batch.labels, response_mask)[0] + next_token_nll(logits, input_ids, response_mask)[0]
    return loss.item(), total.item(), tokens


@pytest.mark.slow
def test_the_orm_s_losses_weigh_every_rank_s_tokens_the_same():
    # Rank 0 holds 1 response token, rank 1 nine: the ranks' losses, averaged as DDP averages their gradients,
    # must be the mean over all ten tokens (each rank's mean weighed rank 0's token nine times as much).
    from tests.helpers.distributed import run_in_processes

    (loss_0, total_0, tokens_0), (loss_1, total_1, tokens_1) = run_in_processes(_orm_training_loss_on_rank, timeout=120)
    assert (loss_0 + loss_1) / 2 == pytest.approx((total_0 + total_1) / (tokens_0 + tokens_1), rel=1e-5)


def test_reference_solutions_are_read_without_the_policy_s_response_prefix(monkeypatch):
    # The ORM reads sampled responses without the policy's response prefix (an RCRL policy's [GOOD]); its
    # trunk's language-modelling loss on reference solutions learned them behind that prefix.
    from lit_reason.conditioning import Conditioning
    from lit_reason.tasks import Arithmetic

    task = Arithmetic(train_size=8, validation_size=2, test_size=2)
    monkeypatch.setattr(OutcomeRewardModel, "task", property(lambda self: task))
    module = OutcomeRewardModel(policy=PolicySpec(name_or_path="micro"), reference_lm_coef=1.0)
    module.configure_model()
    module.recorded_conditioning = Conditioning(response_prefix="@@")
    plain = [module.encode_example(p, task.target(p), response_prefix="") for p in task.problems("train")]
    assert sorted(module._reference_examples(8, round_index=0)) == sorted(plain)


def test_within_question_auroc_by_hand():
    assert concordant_pairs([0.9, 0.2, 0.5], [True, False, False]) == (2.0, 2)
    assert concordant_pairs([0.5, 0.5], [True, False]) == (0.5, 1)
    metric = WithinQuestionAUROC()
    scores = torch.tensor([[0.9, 0.2, 0.5], [0.1, 0.8, 0.3], [0.5, 0.4, 0.3]])
    correct = torch.tensor([[True, False, False], [True, False, True], [True, True, True]])  # last: no pairs
    keep = torch.tensor([[True, True, True], [True, True, False], [True, True, True]])
    metric.update(scores, correct, keep, torch.tensor([0, 1, 2]))
    assert metric.compute().item() == pytest.approx((2 + 0) / (2 + 1))


def test_reliability_table_bins():
    table = reliability_table(torch.tensor([0.05, 0.07, 0.95]), torch.tensor([False, True, True]))
    assert "| 0.0-0.1 | 0.060 | 0.500 | 2 |" in table and "| 0.9-1.0 | 0.950 | 1.000 | 1 |" in table


def test_likelihood_features_by_hand():
    log3 = torch.log(torch.tensor(3.0)).item()
    # Two-token vocabulary; position t's logits predict token t + 1. Position 0 is the prompt.
    logits = torch.tensor([[[0.0, log3], [0.0, log3], [log3, 0.0], [0.0, 0.0]]])  # p(1) = 0.75, 0.75, 0.25
    input_ids = torch.tensor([[0, 1, 0, 1]])
    mask = torch.tensor([[False, True, True, True]])
    a, b = torch.log(torch.tensor(0.75)).item(), torch.log(torch.tensor(0.25)).item()
    expected = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0],  # token log-prob, running mean, running min, running sum, count
            [a, a, a, a, 1.0],
            [b, (a + b) / 2, b, a + b, 2.0],
            [b, (a + 2 * b) / 3, b, a + 2 * b, 3.0],
        ]
    )
    logprobs = token_logprobs(logits, input_ids, temperature=1.0)
    assert torch.allclose(likelihood_features(logprobs, mask)[0], expected, atol=1e-6)


def test_scoring_makes_the_logits_a_few_rows_at_a_time_and_scores_as_a_training_forward(monkeypatch, char_tokenizer):
    from lit_reason.policy import load_model

    # Scoring read the likelihood features from (B, L, V) logits, 60 GB in float32 for 256 rows of 1,200 tokens
    # of a 49,152-token vocabulary; now the output layer sees at most about 2^27 logits at once (here 2 rows).
    trunk = load_model(PolicySpec(name_or_path="micro"), char_tokenizer)
    network = ValueModel(trunk, head_std=0.1, likelihood_features=True).eval()
    input_ids = torch.randint(4, 100, (5, 12), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    vocabulary = network.trunk.get_output_embeddings().out_features
    monkeypatch.setattr(token_logprobs_by_rows, "__defaults__", (2 * 12 * vocabulary,))
    rows_seen = []
    network.trunk.get_output_embeddings().register_forward_hook(lambda _, args, __: rows_seen.append(len(args[0])))
    with torch.no_grad():
        scored, _ = network(input_ids, attention_mask)
        trained, logits = network(input_ids, attention_mask, lm_logits=True)
    assert rows_seen == [2, 2, 1, 5] and logits.shape == (5, 12, vocabulary)
    torch.testing.assert_close(scored, trained)


def test_value_model_save_load_and_bad_inputs(tmp_path, char_tokenizer):
    from lit_reason.policy import load_model

    with torch.random.fork_rng():  # seeded head: how far 4-bit weights move the values depends on the weights
        torch.manual_seed(0)
        spec = PolicySpec(name_or_path="micro", seed=0, preset_overrides=QUANTIZABLE_MICRO)
        network = ValueModel(load_model(spec, char_tokenizer), head_std=0.1)
    network.save(tmp_path, char_tokenizer)
    loaded, tokenizer = ValueModel.load(tmp_path)
    ids = torch.tensor([char_tokenizer("Q\n12").input_ids + [char_tokenizer.eos_token_id]])
    mask = torch.ones_like(ids)
    assert torch.allclose(network(ids, mask)[0], loaded(ids, mask)[0])
    assert tokenizer.get_vocab() == char_tokenizer.get_vocab()
    # orm_load_kwargs: a half-precision or 4-bit trunk under the float32 head scores as the float32 model does,
    # roughly.
    half = load_frozen_orm(str(tmp_path), char_tokenizer, {"dtype": "bfloat16"})
    assert half.trunk.dtype == torch.bfloat16 and half.head.weight.dtype == torch.float32
    assert torch.allclose(half(ids, mask)[0], loaded(ids, mask)[0], atol=0.05)
    four_bit = load_frozen_orm(str(tmp_path), char_tokenizer, FOUR_BIT)
    assert type(four_bit.trunk.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    gap = (four_bit(ids, mask)[0] - loaded(ids, mask)[0]).abs().max().item()
    # Rounded weights move values of about 1 by 0.11-0.12 here (with and without bitsandbytes' AVX512-BF16 kernel);
    # a broken quantization moves them by about as much as their size.
    assert 0 < gap < 0.25, gap
    too_long = torch.ones(1, network.max_length + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="exceed the value model's context"):
        network(too_long, torch.ones_like(too_long))
    with pytest.raises(FileNotFoundError, match="not a saved reward/value model"):
        ValueModel.load(tmp_path / "missing")
    stale = tmp_path / "stale"  # a head exported with another number of likelihood features
    network.save(stale, char_tokenizer)
    save_file({"weight": torch.zeros(1, 3), "bias": torch.zeros(1)}, stale / HEAD_FILE)
    with pytest.raises(ValueError, match="exported by another version of lit-reason"):
        ValueModel.load(stale)


def test_scores_of_a_confident_orm_stay_apart(char_tokenizer):
    """Float32's sigmoid is exactly 1 for every value above about 17: a rerank of confident samples took the first."""
    from lit_reason.policy import load_model

    network = ValueModel(load_model(PolicySpec(name_or_path="micro"), char_tokenizer))
    ids = torch.tensor([char_tokenizer("Q\n12").input_ids])
    scores = []
    for value in (18.0, 20.0):
        torch.nn.init.constant_(network.head.bias, value)  # the head's weights are 0: every value is the bias
        scores.append(network.score(ids, torch.ones_like(ids), torch.ones_like(ids, dtype=torch.bool), batch_size=1))
    assert scores[0].dtype == torch.float64
    assert (scores[0] < scores[1]).all() and (scores[1] < 1).all()


def test_an_orm_is_loaded_by_hub_id_as_from_pretrained_finds_it(tmp_path, char_tokenizer, hub_unreachable):
    from lit_reason.policy import load_model

    network = ValueModel(load_model(PolicySpec(name_or_path="micro"), char_tokenizer), head_std=0.1)
    repo = tmp_path / "hub" / "models--someone--orm"  # huggingface_hub's cache layout, read offline
    revision = "0" * 40
    network.save(repo / "snapshots" / revision, char_tokenizer)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    location = {"cache_dir": str(tmp_path / "hub"), "local_files_only": True}
    loaded = load_frozen_orm("someone/orm", char_tokenizer, location)
    ids = torch.tensor([char_tokenizer("Q\n12").input_ids])
    assert torch.allclose(loaded(ids, torch.ones_like(ids))[0], network(ids, torch.ones_like(ids))[0])
    with pytest.raises(FileNotFoundError, match="not a saved reward/value model"):
        load_frozen_orm("someone/other", char_tokenizer, location)


def test_reward_scores_ignore_the_response_prefix_the_policy_sampled_behind(tmp_path, char_tokenizer):
    """The ORM judges the response behind the prompt, as it was trained: a return token the policy sampled
    behind changes no score. (Blanked to padding in place, the prefix left the likelihood features' first
    log-prob and the dense reward's baseline reading a padding column.)"""
    from lit_reason.conditioning import Conditioning
    from lit_reason.policy import load_model
    from lit_reason.sampling import SampleBatch

    trunk = load_model(PolicySpec(name_or_path="micro"), char_tokenizer)
    ValueModel(trunk, head_std=0.1, likelihood_features=True).save(tmp_path / "orm", char_tokenizer)
    module = SFT(policy=PolicySpec(name_or_path="micro"), orm=str(tmp_path / "orm"))
    module.configure_model()
    module.recorded_conditioning = Conditioning("[G]")
    prompt = char_tokenizer("Q: 1+1?\n").input_ids
    response = char_tokenizer("1+1=2\n#### 2", add_special_tokens=False).input_ids + [char_tokenizer.eos_token_id]
    batches = [
        SampleBatch.from_token_lists(
            [prompt + char_tokenizer(prefix, add_special_tokens=False).input_ids],
            [response],
            ["1+1=2\n#### 2"],
            pad_token_id=char_tokenizer.pad_token_id,
        )
        for prefix in ("[G]", "[B]", "")
    ]
    scores = [module.reward_scores(batch) for batch in batches[:2]]
    assert torch.equal(scores[0], scores[1])
    # From the prompt's last column on, what the ORM gives the layout it was trained on (no prefix).
    plain = batches[2]
    trained_layout = module.reward_network().score(
        plain.input_ids, plain.attention_mask, plain.response_mask, batch_size=8
    )
    prefix_length = batches[0].prompt_length - plain.prompt_length
    torch.testing.assert_close(scores[0][:, len(prompt) + prefix_length - 1 :], trained_layout[:, len(prompt) - 1 :])


def test_detach_trunk_trains_the_head_alone(char_tokenizer):
    from lit_reason.policy import load_model

    network = ValueModel(
        load_model(PolicySpec(name_or_path="micro"), char_tokenizer), head_std=0.1, likelihood_features=True
    )
    ids = torch.tensor([char_tokenizer("Q\n12").input_ids + [char_tokenizer.eos_token_id]])
    mask = torch.ones_like(ids)
    for detach, trunk_learns in ((False, True), (True, False)):
        network.zero_grad(set_to_none=True)
        values, _ = network(ids, mask, detach_trunk=detach)
        orm_loss(values, torch.ones(1), mask.bool())[0].backward()
        trunk_grads = [p.grad for p in network.trunk.parameters() if p.grad is not None]
        assert any(g.abs().sum() > 0 for g in trunk_grads) == trunk_learns
        assert network.head.weight.grad.abs().sum() > 0


def test_a_frozen_trunk_gives_the_head_the_features_it_scores_with(char_tokenizer):
    # Lightning trains in train mode: a frozen trunk's dropout fed the head noisy features, and scoring (in eval
    # mode) other ones.
    dropout = {"attention_dropout": 0.5}
    module = OutcomeRewardModel(
        policy=PolicySpec(name_or_path="micro", preset_overrides=dropout), trunk_training="frozen"
    )
    module.configure_model()
    torch.nn.init.normal_(module.network.head.weight)  # as trained: it starts at 0, which reads no feature
    ids = torch.tensor([char_tokenizer("Q: 1+2?\n1+2=3\n#### 3").input_ids])
    mask = torch.ones_like(ids)
    module.network.train()
    training, _ = module.network(ids, mask)
    module.network.eval()
    scoring, _ = module.network(ids, mask)
    torch.testing.assert_close(training, scoring)


def test_trunk_training_options_are_checked():
    with pytest.raises(ValueError, match="reference_lm_coef > 0 trains the trunk's language model"):
        OutcomeRewardModel(reference_lm_coef=1.0, trunk_training="frozen")
    with pytest.raises(ValueError, match="lm_loss_coef and reference_lm_coef are both 0"):
        OutcomeRewardModel(trunk_training="language_model")


@pytest.mark.slow
def test_reference_lm_trains_the_trunk_on_solutions(tmp_path, sft_policy_dir):
    """trunk_training language_model: every batch of samples comes with a batch of reference solutions of
    training questions (different in each round), and the trunk learns from them."""
    task = sft_fixture_task()
    rows = [{"question_id": p.id, "response": p.solution} for p in task.problems("train")[:32]]
    path = tmp_path / "rollouts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    module = OutcomeRewardModel(
        policy=PolicySpec(name_or_path=str(sft_policy_dir)),
        rollout_file=str(path),
        reference_lm_coef=1.0,
        trunk_training="language_model",
        trunk_lr=1e-3,
        batch_size=8,
        optimizer=partial(torch.optim.AdamW, lr=3e-2),
    )
    data = RolloutDataModule(task=task, validation_questions=8)
    trainer = quiet_trainer(max_epochs=2, inference_mode=False, default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(module, data)
    groups = trainer.optimizers[0].param_groups
    assert [g["initial_lr"] for g in groups] == [3e-2, 1e-3]  # head, trunk

    solutions = {module.tokenizer.decode(module.encode_example(p, task.target(p))[1]) for p in task.problems("train")}
    rounds = [module.make_train_data([], round_index).batches for round_index in (0, 1)]
    for batches in rounds:
        assert len(batches) == 4
        for batch in batches:
            refs = batch.references
            assert refs.input_ids.shape[0] == 8
            for row in range(8):
                target = refs.input_ids[row][refs.loss_mask[row]].tolist()
                assert module.tokenizer.decode(target) in solutions
    first, second = (torch.cat([b.references.input_ids.flatten() for b in batches]) for batches in rounds)
    assert not torch.equal(first, second)

    before = load_file(sft_policy_dir / "model.safetensors")
    after = module.network.trunk.state_dict()
    assert any(not torch.equal(before[name], after[name]) for name in before)
    assert "train/reference_lm_loss" in trainer.logged_metrics


def train_orm(tmp_path, rollout_file, sft_policy_dir, steps=60):
    module = OutcomeRewardModel(
        policy=PolicySpec(name_or_path=str(sft_policy_dir)),
        rollout_file=str(rollout_file),
        trunk_training="frozen",  # a head on the policy's states and likelihoods: learns in seconds
        batch_size=16,
        optimizer=partial(torch.optim.AdamW, lr=3e-2),
        evaluation=SamplingConfig(num_samples=8, temperature=1.0, max_new_tokens=64),
    )
    trainer = quiet_trainer(
        max_steps=steps,
        inference_mode=False,
        default_root_dir=tmp_path,
    )
    data = RolloutDataModule(task=sft_fixture_task(), validation_questions=64, eval_batch_size=64)
    trainer.fit(module, data)
    return module, trainer, data


def final_score(module: OutcomeRewardModel, problem, response: str) -> float:
    """The ORM's value at the last token (EOS) of ``response`` to ``problem``."""
    prompt = encode_prompt(module.tokenizer, module.task.prompt(problem, module.tokenizer))
    target = module.tokenizer(response, add_special_tokens=False).input_ids + [module.tokenizer.eos_token_id]
    ids = torch.tensor([prompt + target])
    response_mask = torch.tensor([[False] * len(prompt) + [True] * len(target)])
    with torch.no_grad():
        values, _ = module.network(ids, torch.ones_like(ids), response_mask)
    return values[0, -1].item()


def test_orm_learns_from_a_rollout_file_and_reranks(tmp_path, sft_policy_dir):
    # Hand-made responses: the reference solution (correct) and the same with a wrong final step.
    task = sft_fixture_task()
    rows = []
    for problem in task.problems("train")[:600]:
        rows.append({"question_id": problem.id, "response": problem.solution})
        wrong = problem.solution.rsplit("#### ", 1)[0] + f"#### {int(problem.answer) + 3}"
        rows.append({"question_id": problem.id, "response": wrong})
    rows.append({"question_id": task.problems("train")[0].id, "response": ""})  # empty: scored, no crash
    path = tmp_path / "rollouts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    module, trainer, data = train_orm(tmp_path, path, sft_policy_dir)
    # Held-out questions, the same kind of pair: the ORM ranks the correct solution above the wrong one.
    held_out = task.problems("validation")[:60]
    ranked_right = [
        final_score(module, p, p.solution)
        > final_score(module, p, p.solution.rsplit("#### ", 1)[0] + f"#### {int(p.answer) + 3}")
        for p in held_out
    ]
    assert sum(ranked_right) / len(held_out) > 0.8
    metrics = trainer.validate(module, data, verbose=False)[0]
    assert {"val/orm_auroc", "val/orm_within_question_auroc", "val/rerank@8"} <= metrics.keys()
    module.export_policy(tmp_path / "orm")

    # Any algorithm takes the exported ORM: rerank@K in its validation, nothing of it trained or saved.
    policy = SFT(
        policy=PolicySpec(name_or_path=str(sft_policy_dir)),
        orm=str(tmp_path / "orm"),
        evaluation=SamplingConfig(num_samples=4, temperature=1.0, max_new_tokens=64),
    )
    other = quiet_trainer(inference_mode=False)
    result = other.validate(policy, RolloutDataModule(task=task, validation_questions=16), verbose=False)[0]
    assert "val/rerank@4" in result
    assert all(key.startswith(("policy.", "evaluator.")) for key in policy.state_dict())  # no ORM weights
    assert all(p.requires_grad is False for p in policy.reward_network().parameters())


def test_a_rollout_file_gives_every_rank_as_many_batches(tmp_path, monkeypatch):
    """15 responses on 2 ranks in batches of 4: the shares (8 and 7) were each floored to whole batches (2 and 1),
    and the round ran the fewest, 1 a rank: 8 of the 15 responses trained on, the same 7 left out every round."""
    task = sft_fixture_task()
    path = tmp_path / "rollouts.jsonl"
    path.write_text(
        "".join(json.dumps({"question_id": p.id, "response": p.solution}) + "\n" for p in task.problems("train")[:15])
    )
    module = OutcomeRewardModel(policy=PolicySpec(name_or_path="micro"), rollout_file=str(path), batch_size=4)
    data = RolloutDataModule(task=task, validation_questions=0)
    quiet_trainer(max_steps=1, inference_mode=False, limit_val_batches=0).fit(module, data)

    def batch_sizes(rank: int, world_size: int) -> list[int]:
        monkeypatch.setattr("lit_reason.distributed.rank_and_world_size", lambda: (rank, world_size))
        return sorted((len(batch.labels) for batch in module._batches_from_file(0)), reverse=True)

    assert batch_sizes(0, 1) == [4, 4, 4, 3]  # every response, the last batch partial
    with pytest.warns(UserWarning, match="responses: the last 1 of 15 are left out"):
        assert batch_sizes(0, 2) == batch_sizes(1, 2) == [4, 3]
    with pytest.raises(ValueError, match="responses: 15, fewer than the 16 ranks"):
        batch_sizes(0, 16)


def test_rollout_file_errors_name_the_line(tmp_path, sft_policy_dir):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question_id": 999999999, "response": "#### 1"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: question_id 999999999 is not in the task's training split"):
        train_orm(tmp_path, path, sft_policy_dir, steps=1)
    path.write_text('{"question_id": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: expected"):
        train_orm(tmp_path, path, sft_policy_dir, steps=1)
    path.write_text('{"question_id": 1.7, "response": "#### 1"}\n')  # not truncated to question 1
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: expected .*question_id.: 1\.7"):
        train_orm(tmp_path, path, sft_policy_dir, steps=1)
    path.write_text('{"question_id": 1, "response": "#### 1", "truncated": "no"}\n')  # a string is truthy
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: expected .*optionally .truncated.: bool"):
        train_orm(tmp_path, path, sft_policy_dir, steps=1)


def test_rollouts_written_beside_a_run_read_back_with_eos_only_where_the_policy_ended(tmp_path, monkeypatch):
    # The rollouts a run writes dropped the truncated flag, and every response of a rollout_file got an EOS: a
    # response the token limit cut off was judged as one the policy had ended. And a run without a logger wrote
    # them into the working directory.
    from lightning.pytorch.loggers import CSVLogger

    def fit(rollout_file=None, logged=True):
        module = OutcomeRewardModel(
            policy=PolicySpec(name_or_path="micro"),
            rollout=SamplingConfig(num_samples=4, temperature=1.0, max_new_tokens=6),
            rollout_file=rollout_file,
            batch_size=64,
        )
        data = RolloutDataModule(task=sft_fixture_task(), questions_per_round=16, validation_questions=0)
        logger = CSVLogger(tmp_path, name="from_file" if rollout_file else "sampled") if logged else False
        quiet_trainer(max_steps=1, inference_mode=False, logger=logger, limit_val_batches=0).fit(module, data)
        return module, Path(logger.log_dir) if logged else None

    monkeypatch.chdir(tmp_path)
    fit(logged=False)
    assert not (tmp_path / "rollouts").exists()
    module, log_dir = fit()
    rollouts = log_dir / "rollouts" / "round0-rank0.jsonl"
    rows = [json.loads(line) for line in rollouts.read_text().splitlines()]
    assert 0 < sum(row["truncated"] for row in rows) < len(rows)  # both kinds, at 6 new tokens
    reread, _ = fit(str(rollouts))
    batches = reread._first_round
    eos = reread.tokenizer.eos_token_id
    ends_with_eos = {}
    for batch in batches:
        for ids, mask in zip(batch.input_ids, batch.response_mask, strict=True):
            response = ids[mask].tolist()
            text = reread.tokenizer.decode(response, skip_special_tokens=True)
            ends_with_eos.setdefault(text, set()).add(response[-1:] == [eos])
    for row in rows:
        assert ends_with_eos[row["response"]] == {not row["truncated"]}, row


def test_orm_takes_no_other_orm():
    with pytest.raises(ValueError, match="orm must be null"):
        OutcomeRewardModel(orm="somewhere")


@pytest.mark.slow
def test_a_resumed_orm_that_keeps_its_first_round_trains_on_the_same_samples(tmp_path):
    """resample_every_round false: the first round's labelled samples are in the checkpoint, so a run resumed
    after round 1 neither samples again nor counts samples twice, and ends with the uninterrupted run's
    weights."""
    from lightning import Callback, seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint

    class StopAfterFirstRound(Callback):  # the run is interrupted once round 1's checkpoint is written
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    def run(max_epochs: int, ckpt_path=None, callbacks=()):
        seed_everything(0)
        module = OutcomeRewardModel(
            policy=PolicySpec(name_or_path="micro"),
            rollout=SamplingConfig(num_samples=2, temperature=1.0, max_new_tokens=8, batch_size=64),
            resample_every_round=False,
            reference_lm_coef=0.0,
            batch_size=8,
        )
        data = RolloutDataModule(task=sft_fixture_task(), questions_per_round=8, validation_questions=2)
        trainer = quiet_trainer(
            max_epochs=max_epochs,
            limit_val_batches=0,
            enable_checkpointing=bool(callbacks),
            callbacks=list(callbacks),
            default_root_dir=tmp_path,
        )
        trainer.fit(module, data, ckpt_path=ckpt_path)
        return module, data

    uninterrupted, uninterrupted_data = run(2)
    run(2, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True), StopAfterFirstRound()])
    resumed, resumed_data = run(2, ckpt_path=tmp_path / "last.ckpt")
    assert resumed_data.samples_drawn == uninterrupted_data.samples_drawn == 16
    for name, value in uninterrupted.network.state_dict().items():
        assert torch.equal(value, resumed.network.state_dict()[name]), name


def _first_round_saved_and_loaded(rank: int, world_size: int) -> tuple[list[int], list[list[int]]]:
    """Every rank saves a checkpoint (as Lightning's do) from its own first-round batch; each rank loads rank
    0's checkpoint, the one written to disk."""
    from lit_reason.batches import LabelledBatch
    from lit_reason.distributed import gather_objects

    module = OutcomeRewardModel(policy=PolicySpec(name_or_path="micro"), resample_every_round=False)
    ids = torch.full((1, 3), 10 + rank)
    module._first_round = [LabelledBatch(ids, torch.ones_like(ids), ids > 0, torch.tensor([float(rank)]))]
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    (written, *_) = gather_objects([checkpoint])  # rank 0's
    module._first_round = None
    module.on_load_checkpoint(written)
    saved = [batches[0]["fields"]["input_ids"][0].tolist() for batches in written["orm_first_round_by_rank"]]
    return module.first_round_from_checkpoint()[0].input_ids[0].tolist(), saved


def test_each_rank_resumes_with_its_own_first_round():
    """Only rank 0 writes the checkpoint: the first round of every rank must be in it (every rank resumed with
    rank 0's samples: rank 1's were lost and rank 0's counted twice)."""
    from tests.helpers.distributed import run_in_processes

    (rank0, saved), (rank1, _) = run_in_processes(_first_round_saved_and_loaded, timeout=120)
    assert saved == [[10, 10, 10], [11, 11, 11]]
    assert rank0 == [10, 10, 10] and rank1 == [11, 11, 11]


def test_a_first_round_saved_on_other_ranks_stops_a_resumed_fit_on_one_rank_not_a_test():
    module = OutcomeRewardModel(policy=PolicySpec(name_or_path="micro"), resample_every_round=False)
    module.on_load_checkpoint({"orm_first_round_by_rank": [[], []]})  # what testing the checkpoint does: fine
    with pytest.raises(ValueError, match="first-round samples of 2 ranks, each its own: resume it on 2 ranks"):
        module.make_train_data([], round_index=1)  # what a resumed fit does first
    ids = torch.ones(1, 3, dtype=torch.long)  # lit-reason 0.1.0 saved one rank's batches as plain fields
    old = {"input_ids": ids, "attention_mask": ids, "response_mask": ids > 0, "labels": torch.ones(1)}
    module.on_load_checkpoint({"orm_first_round": [old]})
    (batch,) = module.first_round_from_checkpoint()
    assert torch.equal(batch.input_ids, ids) and batch.references is None


def test_an_orm_trains_on_responses_behind_the_prompt_alone_as_it_scores_them():
    """Samples of a policy that samples behind a response prefix (an RCRL policy's return token): the ORM is
    trained on them without it, as ``reward_scores`` scores (it was trained behind it, scored without)."""
    from lightning import Callback

    from lit_reason.conditioning import Conditioning

    module = OutcomeRewardModel(
        policy=PolicySpec(name_or_path="micro"),
        rollout=SamplingConfig(num_samples=2, temperature=1.0, max_new_tokens=6, batch_size=64),
        reference_lm_coef=0.0,
        batch_size=8,
    )
    configure_model = module.configure_model

    def behind_a_return_token():
        configure_model()
        module.recorded_conditioning = Conditioning("[G]")

    module.configure_model = behind_a_return_token
    trained = []

    class Batches(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            trained.append(batch)

    data = RolloutDataModule(task=sft_fixture_task(), questions_per_round=4, validation_questions=2)
    quiet_trainer(max_epochs=1, limit_val_batches=0, callbacks=[Batches()]).fit(module, data)
    texts = [
        module.tokenizer.decode(row[mask.bool()])
        for b in trained
        for row, mask in zip(b.input_ids, b.attention_mask, strict=True)
    ]
    assert len(texts) == 8 and not any("[G]" in text for text in texts)
