"""Return-conditioned RL: return tokens (resize, save, reload), batch ratio control, conditioning."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_reason import SFT, PolicySpec, ReturnConditionedRL, RolloutDataModule, SamplingConfig
from lit_reason.algorithms.expert_iteration import KeptSample
from lit_reason.algorithms.rcrl import ratio_batches
from lit_reason.conditioning import Conditioning, Guidance
from lit_reason.tasks import Arithmetic
from tests.helpers.fakes import FakeTrainer
from tests.helpers.trainers import quiet_trainer


def test_return_tokens_are_added_resized_saved_and_reloaded(tmp_path):
    warm_start = tmp_path / "warm_start"  # a saved policy without return tokens, as the shared warm start
    plain = SFT(policy=PolicySpec(name_or_path="micro"))
    plain.configure_model()
    plain.export_policy(warm_start)
    module = ReturnConditionedRL(policy=PolicySpec(name_or_path=str(warm_start)))
    good, bad = (module.tokenizer.convert_tokens_to_ids(t) for t in ("[GOOD]", "[BAD]"))
    assert module.tokenizer("[GOOD]12", add_special_tokens=False).input_ids == [good, 6, 7]  # one token, not split
    module.configure_model()
    embeddings = module.policy.get_input_embeddings().weight
    assert embeddings.shape[0] == len(module.tokenizer) == 102
    old_rows = plain.policy.get_input_embeddings().weight
    assert torch.equal(embeddings[:100], old_rows)
    # New rows start at the old rows' mean plus noise of their spread: apart from each other, so the policy
    # can tell the returns apart (at the mean alone they would be the same vector).
    old_mean, old_std = old_rows.mean(0), old_rows.std(0)
    for row in (good, bad):
        assert ((embeddings[row] - old_mean).abs() < 5 * old_std).all()
    assert (embeddings[good] - embeddings[bad]).norm() > 0.5 * old_std.norm()
    at_mean = ReturnConditionedRL(policy=PolicySpec(name_or_path=str(warm_start)), return_token_spread=0.0)
    at_mean.configure_model()
    assert torch.allclose(at_mean.policy.get_input_embeddings().weight[good], old_mean, atol=1e-3)
    assert module.conditioning("rollout").response_prefix == ""  # untrained return tokens: nothing to condition on yet
    module.conditioned = True
    export = tmp_path / "rcrl"
    module.export_policy(export)
    assert json.loads((export / "lit_reason.json").read_text())["response_prefix"] == "[GOOD]"
    tokenizer, model = AutoTokenizer.from_pretrained(export), AutoModelForCausalLM.from_pretrained(export)
    assert tokenizer.convert_tokens_to_ids("[BAD]") == bad
    assert torch.equal(model.get_input_embeddings().weight, embeddings)
    # Any algorithm evaluating the exported policy conditions on its good token.
    other = SFT(policy=PolicySpec(name_or_path=str(export)))
    other.configure_model()
    assert other.conditioning("evaluation") == Conditioning("[GOOD]", (good, bad))
    # Continuing RCRL from the export keeps the learned return-token rows (they are not new to it).
    again = ReturnConditionedRL(policy=PolicySpec(name_or_path=str(export)))
    again.configure_model()
    assert torch.equal(again.policy.get_input_embeddings().weight, embeddings)
    # Resumed from a checkpoint of lit-reason 0.1.0 (no conditioning flag): the export's record still conditions.
    checkpoint = {}
    again.on_save_checkpoint(checkpoint)
    del checkpoint["return_conditioned"]
    again.on_load_checkpoint(checkpoint)
    assert again.conditioning("rollout").response_prefix == "[GOOD]"


def test_an_export_loaded_by_hub_id_keeps_its_conditioning(tmp_path, hub_unreachable):
    # The export as the hub serves it: a snapshot in huggingface_hub's cache layout, read offline.
    plain = SFT(policy=PolicySpec(name_or_path="micro"))
    plain.configure_model()
    plain.export_policy(tmp_path / "warm_start")
    module = ReturnConditionedRL(policy=PolicySpec(name_or_path=str(tmp_path / "warm_start")))
    module.configure_model()
    module.conditioned = True
    repo = tmp_path / "hub" / "models--someone--rcrl-export"
    revision = "0" * 40
    module.export_policy(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    location = {"cache_dir": str(tmp_path / "hub"), "local_files_only": True}
    loaded = SFT(policy=PolicySpec(name_or_path="someone/rcrl-export", load_kwargs=location))
    loaded.configure_model()
    assert loaded.conditioning("evaluation") == module.conditioning("evaluation")
    assert loaded.conditioning("evaluation").response_prefix == "[GOOD]"


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_return_tokens_start_apart_in_the_spare_rows_of_a_padded_vocabulary(tmp_path, tied):
    # Qwen-style: the embedding matrix has rows past the tokenizer's tokens, untrained (zeros here), which the
    # return tokens take without a resize (they were both all zeros: the same vector, far from the others).
    warm_start = tmp_path / "warm_start"
    plain = SFT(policy=PolicySpec(name_or_path="micro"))
    plain.configure_model()
    plain.export_policy(warm_start)
    padded = AutoModelForCausalLM.from_pretrained(warm_start)
    padded.resize_token_embeddings(108, mean_resizing=False)
    with torch.no_grad():
        padded.get_input_embeddings().weight[:100] += 1.0  # trained rows whose mean is far from the zero rows
        padded.get_input_embeddings().weight[100:] = 0
        if not tied:
            padded.config.tie_word_embeddings = False
            padded.lm_head.weight = torch.nn.Parameter(padded.get_input_embeddings().weight.detach() + 1.0)
    padded.save_pretrained(warm_start)
    module = ReturnConditionedRL(policy=PolicySpec(name_or_path=str(warm_start)))
    module.configure_model()
    embeddings = module.policy.get_input_embeddings().weight
    good, bad = (module.tokenizer.convert_tokens_to_ids(t) for t in ("[GOOD]", "[BAD]"))
    assert embeddings.shape[0] == 108 and (good, bad) == (100, 101)
    old_mean, old_std = embeddings[:100].mean(0), embeddings[:100].std(0)
    for row in (good, bad):
        assert ((embeddings[row] - old_mean).abs() < 5 * old_std).all()
    assert (embeddings[good] - embeddings[bad]).norm() > 0.5 * old_std.norm()
    assert embeddings[102:].abs().sum() == 0  # spare rows no token uses are left alone
    output = module.policy.get_output_embeddings().weight
    assert (output is embeddings) == tied
    if not tied:  # the output rows start at their own mean (no spread: return tokens are never generated)
        assert torch.allclose(output[[good, bad]], output[:100].mean(0).expand(2, -1))


def test_ratio_batches_control_the_share_of_positives():
    positives = [([1], [2, 3]) for _ in range(50)]
    negatives = [([1], [4, 5]) for _ in range(12)]
    batches = ratio_batches(positives, negatives, positive_ratio=0.75, batch_size=8, pad_token_id=0, seed=0)
    assert len(batches) == 6  # 2 negatives a batch: the 12 negatives run out after 6 batches
    for batch in batches:
        first_target = batch.input_ids[:, 1]
        assert (first_target == 2).sum() == 6 and (first_target == 4).sum() == 2
    balanced = ratio_batches(positives, negatives, positive_ratio=0.5, batch_size=8, pad_token_id=0, seed=0)
    assert all((b.input_ids[:, 1] == 2).sum() == 4 for b in balanced) and len(balanced) == 3


def test_examples_carry_their_return_token(small_task):
    module = ReturnConditionedRL(policy=PolicySpec(name_or_path="micro"))
    problem = small_task.problems("train")[0]
    good, bad = (module.tokenizer.convert_tokens_to_ids(t) for t in ("[GOOD]", "[BAD]"))
    module._trainer = FakeTrainer(RolloutDataModule(task=small_task))
    prompt, target = module.encode_sample(problem, KeptSample(problem.id, "#### 3", correct=False))
    assert prompt[-1] == bad and target[-1] == module.tokenizer.eos_token_id and bad not in target
    module.train_return_token = True
    prompt, target = module.encode_sample(problem, KeptSample(problem.id, "#### 3", correct=True))
    assert prompt[-1] != good and target[0] == good


@pytest.mark.parametrize("condition_on", ["good", "bad"])
def test_sampling_conditions_on_the_return_token(condition_on):
    module = ReturnConditionedRL(policy=PolicySpec(name_or_path="micro"), condition_on=condition_on)
    module.configure_model()
    module.conditioned = True
    task = Arithmetic(train_size=50, validation_size=4, test_size=4)
    module._trainer = FakeTrainer(RolloutDataModule(task=task))
    batch = module.generate(
        task.problems("validation"), SamplingConfig(num_samples=2, max_new_tokens=4), ("t",), "rollout"
    )
    token = module.tokenizer.convert_tokens_to_ids({"good": "[GOOD]", "bad": "[BAD]"}[condition_on])
    assert (batch.input_ids[:, batch.prompt_length - 1] == token).all()  # right before every response
    assert not batch.response_mask[:, : batch.prompt_length].any()
    assert all("[GOOD]" not in t and "[BAD]" not in t for t in batch.texts)
    assert sorted(module.conditioning("rollout").suppressed_token_ids) == sorted(
        module.tokenizer.convert_tokens_to_ids(["[GOOD]", "[BAD]"])
    )


@pytest.mark.parametrize("condition_on", ["good", "bad"])
def test_evaluation_is_guided_away_from_the_other_return_and_exports_it(condition_on, tmp_path, monkeypatch):
    short = SamplingConfig(num_samples=2, max_new_tokens=8)
    module = ReturnConditionedRL(
        policy=PolicySpec(name_or_path="micro"), guidance_scale=3.0, condition_on=condition_on, rollout=short,
        evaluation=short, reference_solutions=4,  # the random policy's 8-token samples may all be cut off
    )  # fmt: skip
    module.configure_model()
    assert (
        module.conditioning("evaluation").guidance is None
    )  # untrained return tokens: no conditioning, nothing to contrast
    module.conditioned = True
    other = {"good": "[BAD]", "bad": "[GOOD]"}[condition_on]
    guidance = Guidance(negative_prefix=other, scale=3.0)
    assert module.conditioning("evaluation").guidance == guidance
    task = Arithmetic(train_size=50, validation_size=4, test_size=4)
    module._trainer = FakeTrainer(RolloutDataModule(task=task))
    sampled = []  # (seed parts, samples per question, guidance, batch) of every sampling call
    generate = module.generate

    def recording_generate(problems, config, seed_parts, stage):
        batch = generate(problems, config, seed_parts, stage)
        sampled.append((seed_parts, config.num_samples, module.conditioning(stage).guidance, batch))
        return batch

    monkeypatch.setattr(module, "generate", recording_generate)
    module.evaluate_problems(task.problems("validation"))
    module.make_train_data(task.problems("train")[:4], round_index=1)
    assert [(parts, k, g) for parts, k, g, _ in sampled] == [
        (("eval",), 1, guidance),  # greedy
        (("eval",), 2, guidance),
        (("rollout", 1), 2, None),  # rollouts sample the policy as it is
    ]
    guided = sampled[1][3]
    plain = generate(task.problems("validation"), short, ("eval",), "rollout")
    prompts = guided.input_ids[:, : guided.prompt_length]  # the same prompts, behind the conditioned token
    assert torch.equal(prompts, plain.input_ids[:, : plain.prompt_length])
    first = guided.prompt_length  # the random policy hardly reads the return token: compare probabilities
    assert (guided.logprobs[:, first] - plain.logprobs[:, first]).abs().min() > 1e-3
    module.export_policy(tmp_path)
    recorded = {"negative_prefix": "[BAD]", "scale": 3.0}  # an export conditions on [GOOD], whatever was measured
    assert json.loads((tmp_path / "lit_reason.json").read_text())["guidance"] == recorded
    evaluator = SFT(policy=PolicySpec(name_or_path=str(tmp_path)))
    evaluator.configure_model()
    good, bad = module.tokenizer.convert_tokens_to_ids(["[GOOD]", "[BAD]"])
    assert evaluator.conditioning("evaluation") == Conditioning("[GOOD]", (good, bad), Guidance("[BAD]", 3.0))
    with pytest.raises(ValueError, match="guidance_scale"):
        ReturnConditionedRL(guidance_scale=-1.0)
    # One token for both returns trained wrong answers under the token evaluation conditions on.
    with pytest.raises(ValueError, match=r"good_token and bad_token must differ, both are '\[R\]'"):
        ReturnConditionedRL(good_token="[R]", bad_token="[R]")


def test_keeps_correct_and_incorrect_samples():
    from tests.algorithms.test_expert_iteration import ROUND_0, hand_made_batch

    module = ReturnConditionedRL(policy=PolicySpec(name_or_path="micro"))
    task = Arithmetic(train_size=40, validation_size=4, test_size=4)
    problems = task.problems("train")[:2]
    texts = [
        [t.format(answer=int(p.answer), wrong=int(p.answer) + 1) for t in row]
        for p, row in zip(problems, ROUND_0, strict=True)
    ]
    batch = hand_made_batch(texts, truncated={(0, 3)})
    correct = [p.is_correct(t) for p, row in zip(problems, texts, strict=True) for t in row]
    kept = module.select_samples(problems, batch, correct)
    assert len(kept) == 7  # all but the truncated one
    assert sum(s.correct for s in kept) == 3 and sum(not s.correct for s in kept) == 4


def test_positive_ratio_must_be_a_share():
    with pytest.raises(ValueError, match="positive_ratio"):
        ReturnConditionedRL(positive_ratio=1.5)
    # The batch cannot hold that share: it was rounded to 1 of 4 silently.
    with pytest.warns(
        UserWarning, match=r"positive_ratio 0.1 with batch_size 4: each batch holds 1 correct samples of 4"
    ):
        ReturnConditionedRL(policy=PolicySpec(name_or_path="micro"), positive_ratio=0.1, batch_size=4)
    with pytest.raises(ValueError, match="batch_size must be >= 2, got 1"):  # was a ZeroDivisionError mid-run
        ReturnConditionedRL(positive_ratio=0.5, batch_size=1)


def test_conditioning_starts_after_the_first_round_and_survives_a_checkpoint(tmp_path):
    module = ReturnConditionedRL(
        policy=PolicySpec(name_or_path="micro"), rollout=SamplingConfig(max_new_tokens=4), reference_solutions=4
    )
    module.configure_model()
    task = Arithmetic(train_size=50, validation_size=4, test_size=4)
    module._trainer = FakeTrainer(RolloutDataModule(task=task))
    module.make_train_data(task.problems("train")[:4], round_index=0)
    assert module.conditioning("rollout").response_prefix == ""  # until the round's first batch has trained
    saved_before_the_hook = {}  # a checkpoint callback's on_train_batch_end runs before the module's
    module.trainer.datamodule.batches_started = 1
    module.on_save_checkpoint(saved_before_the_hook)
    assert saved_before_the_hook["return_conditioned"] is True
    module.on_train_batch_end(None, None, 0)
    assert module.conditioning("rollout").response_prefix == "[GOOD]"
    module.add_to_kept([KeptSample(task.problems("train")[0].id, "#### 1", correct=False)])
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    resumed = ReturnConditionedRL(policy=PolicySpec(name_or_path="micro"))
    resumed.configure_model()
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.conditioning("rollout").response_prefix == "[GOOD]"
    assert sorted(resumed.kept.values(), key=repr) == sorted(module.kept.values(), key=repr)


def test_a_round_without_a_training_batch_trains_nothing_and_the_run_goes_on():
    # 4 reference solutions (positives) and the untrained policy's 8 wrong samples fill no balanced batch of 32.
    module = ReturnConditionedRL(
        policy=PolicySpec(name_or_path="micro"),
        rollout=SamplingConfig(num_samples=2, temperature=1.0, max_new_tokens=4),
        positive_ratio=0.5,
        batch_size=32,
        reference_solutions=4,
    )
    trainer = quiet_trainer(max_epochs=2, limit_val_batches=0)
    data = RolloutDataModule(task=Arithmetic(train_size=40, validation_size=4, test_size=4), questions_per_round=4)
    with pytest.warns(UserWarning, match="round 0: ReturnConditionedRL made no training batch"):
        trainer.fit(module, data)
    assert trainer.current_epoch == 2 and trainer.global_step == 0 and data.rounds_built == 2
    # Nothing trained the return tokens: it still samples unconditioned (it conditioned on an untrained [GOOD]).
    assert not module.conditioned and module.conditioning("rollout").response_prefix == ""


@pytest.mark.parametrize(("reference_solutions", "conditioned"), [(0, False), (4, True)])
def test_a_round_that_trained_only_bad_returns_does_not_condition_on_the_good_one(reference_solutions, conditioned):
    # Only wrong samples kept: without reference solutions the round trains [BAD] alone, and [GOOD]'s row is
    # as untrained as before.
    module = ReturnConditionedRL(
        policy=PolicySpec(name_or_path="micro"),
        rollout=SamplingConfig(num_samples=2, max_new_tokens=4),
        reference_solutions=reference_solutions,
    )
    module.configure_model()
    task = Arithmetic(train_size=50, validation_size=4, test_size=4)
    module._trainer = FakeTrainer(RolloutDataModule(task=task))
    module.add_to_kept([KeptSample(problem.id, "#### 1", correct=False) for problem in task.problems("train")[:4]])
    data = module.make_train_data(task.problems("train")[:4], round_index=0)
    assert data.batches and not any(sample.correct for sample in module.kept.values())
    module.on_train_batch_end(None, None, 0)
    assert module.conditioned is conditioned


def test_a_response_that_writes_a_return_token_out_trains_on_its_characters():
    # Re-encoded from its text, "[GOOD]" written out became the return token in the target: the policy learned
    # to predict a token it can never sample.
    module = ReturnConditionedRL(policy=PolicySpec(name_or_path="micro"))
    task = Arithmetic(train_size=10, validation_size=4, test_size=4)
    module._trainer = FakeTrainer(RolloutDataModule(task=task))
    problem = task.problems("train")[0]
    prompt_ids, target_ids = module.encode_sample(problem, KeptSample(problem.id, "So [GOOD] #### 1", correct=False))
    good, bad = module._return_token_ids()
    assert prompt_ids[-1] == bad and good not in target_ids
    assert module.tokenizer.decode(target_ids[:-1]) == "So [GOOD] #### 1"
