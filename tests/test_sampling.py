import pytest
import torch

from lit_reason.sampling import (
    Guidance,
    SamplingConfig,
    counter_uniform,
    eval_mode,
    filter_logits,
    guided_logits,
    position_ids_from_mask,
    row_seed,
    sample,
)

PROMPTS = ["Ann has 3 apples.\n", "A much longer prompt that needs left padding here.\n", "Hi\n"]


def training_logprobs(model, batch, temperature: float) -> torch.Tensor:
    """What a training forward assigns to every token: (R, L), logits at t-1 scaled by the temperature."""
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position_ids_from_mask(batch.attention_mask),
    ).logits.float()
    logprobs = (logits[:, :-1] / temperature).log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    return torch.nn.functional.pad(logprobs, (1, 0))


def test_logprobs_match_a_training_forward_with_left_padding_and_early_eos(micro_model, char_tokenizer):
    # A random model rarely emits the real EOS; treating a frequent character as EOS ends some rows early.
    eos = [char_tokenizer.convert_tokens_to_ids("e"), char_tokenizer.eos_token_id]
    config = SamplingConfig(num_samples=4, temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=24, batch_size=5)
    batch = sample(micro_model, char_tokenizer, PROMPTS, config, seeds=[1, 2, 3], eos_token_ids=eos)
    lengths = batch.response_lengths
    assert (lengths < 24).any() and batch.truncated.any(), "the test needs both early-EOS and truncated rows"
    assert (batch.attention_mask[:, 0] == 0).any(), "the test needs left padding"
    ended = ~batch.truncated
    last = batch.input_ids[torch.arange(len(batch)), batch.prompt_length + lengths - 1]
    assert torch.isin(last[ended], torch.tensor(eos)).all()  # EOS is kept as a sampled token
    with torch.no_grad():
        expected = training_logprobs(micro_model, batch, 0.7)
    mask = batch.response_mask
    assert torch.allclose(batch.logprobs[mask], expected[mask], atol=1e-5, rtol=0)
    assert (batch.logprobs[~mask] == 0).all()


def test_batch_layout(micro_model, char_tokenizer):
    config = SamplingConfig(num_samples=2, temperature=1.0, max_new_tokens=6)
    batch = sample(
        micro_model, char_tokenizer, PROMPTS, config, seeds=[0, 0, 0], eos_token_ids=[2], response_prefix="[G]"
    )
    assert batch.input_ids.shape == batch.attention_mask.shape == batch.response_mask.shape == batch.logprobs.shape
    assert batch.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    prefix = char_tokenizer("[G]", add_special_tokens=False).input_ids
    assert batch.input_ids[:, batch.prompt_length - 3 : batch.prompt_length].tolist() == [prefix] * 6
    assert not batch.response_mask[:, : batch.prompt_length].any()  # the prefix is prompt, not sampled
    assert batch.truncated.all() == (batch.response_lengths == 6).all()
    for row, text in enumerate(batch.texts):
        tokens = batch.input_ids[row][batch.response_mask[row]].tolist()
        assert text == char_tokenizer.decode(tokens, skip_special_tokens=True)


def test_samples_depend_only_on_their_seed(micro_model, char_tokenizer):
    config = SamplingConfig(num_samples=3, temperature=1.0, max_new_tokens=12, batch_size=64)
    together = sample(micro_model, char_tokenizer, PROMPTS, config, seeds=[5, 6, 7], eos_token_ids=[2])
    alone = sample(
        micro_model,
        char_tokenizer,
        PROMPTS[1:2],
        SamplingConfig(num_samples=3, temperature=1.0, max_new_tokens=12, batch_size=3),
        seeds=[6],
        eos_token_ids=[2],
    )
    assert together.texts[3:6] == alone.texts
    again = sample(micro_model, char_tokenizer, PROMPTS, config, seeds=[5, 6, 7], eos_token_ids=[2])
    assert again.texts == together.texts
    other = sample(micro_model, char_tokenizer, PROMPTS, config, seeds=[8, 9, 10], eos_token_ids=[2])
    assert other.texts != together.texts
    assert len(set(together.texts[:3])) > 1  # the K samples of a prompt differ


def test_greedy_matches_generate_and_top_k_1(micro_model, char_tokenizer):
    greedy = SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=10)
    ours = sample(micro_model, char_tokenizer, PROMPTS, greedy, seeds=[0, 1, 2], eos_token_ids=[2])
    top1 = sample(
        micro_model,
        char_tokenizer,
        PROMPTS,
        SamplingConfig(temperature=1.0, top_k=1, max_new_tokens=10),
        seeds=[0, 1, 2],
        eos_token_ids=[2],
    )
    assert ours.texts == top1.texts
    encoded = char_tokenizer(PROMPTS, padding=True, return_tensors="pt")  # left padding
    output = micro_model.generate(**encoded, do_sample=False, max_new_tokens=10, eos_token_id=2, pad_token_id=0)
    expected = char_tokenizer.batch_decode(output[:, encoded.input_ids.shape[1] :], skip_special_tokens=True)
    assert ours.texts == expected


def test_guided_logits_by_hand():
    probs, negative_probs = torch.tensor([[0.5, 0.3, 0.2]]), torch.tensor([[0.2, 0.3, 0.5]])
    # log 0.2 + 2 (log 0.5 - log 0.2) = log(0.5^2 / 0.2): guidance sharpens away from the negative prompt
    expected = torch.log(torch.tensor([[0.5**2 / 0.2, 0.3, 0.2**2 / 0.5]]))
    assert torch.allclose(guided_logits(probs.log() + 7.0, negative_probs.log() - 1.0, 2.0), expected, atol=1e-6)
    assert torch.allclose(guided_logits(probs.log(), negative_probs.log(), 1.0), probs.log(), atol=1e-6)
    assert torch.allclose(guided_logits(probs.log(), negative_probs.log(), 0.0), negative_probs.log(), atol=1e-6)


def test_guided_logprobs_match_guided_training_forwards(micro_model, char_tokenizer):
    eos = [char_tokenizer.convert_tokens_to_ids("e"), char_tokenizer.eos_token_id]
    # batch_size 8 holds 4 sampled + 4 negative rows: two chunks, and rows leave the batch as they end
    config = SamplingConfig(num_samples=2, temperature=0.7, top_k=20, max_new_tokens=24, batch_size=8)
    guidance = Guidance(negative_prefix="[B]", scale=2.5)
    batch = sample(
        micro_model, char_tokenizer, PROMPTS, config, [1, 2, 3], eos_token_ids=eos, response_prefix="[G]",
        guidance=guidance,
    )  # fmt: skip
    assert (batch.response_lengths < 24).any() and batch.truncated.any()
    negative = batch.input_ids.clone()  # the same rows behind [B]: both prefixes are three characters
    negative[:, batch.prompt_length - 3 : batch.prompt_length] = torch.tensor(
        char_tokenizer("[B]", add_special_tokens=False).input_ids
    )
    position_ids = position_ids_from_mask(batch.attention_mask)
    with torch.no_grad():
        logits, negative_logits = (
            micro_model(input_ids=ids, attention_mask=batch.attention_mask, position_ids=position_ids).logits[:, :-1]
            for ids in (batch.input_ids, negative)
        )
    guided = guided_logits(logits.float(), negative_logits.float(), 2.5) / 0.7
    expected = guided.log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    mask = batch.response_mask[:, 1:]
    assert torch.allclose(batch.logprobs[:, 1:][mask], expected[mask], atol=1e-5, rtol=0)
    plain = sample(micro_model, char_tokenizer, PROMPTS, config, [1, 2, 3], eos_token_ids=eos, response_prefix="[G]")
    assert plain.texts != batch.texts
    unit = Guidance(negative_prefix="[B]", scale=1.0)  # scale 1: the conditioned policy as it is
    same = sample(
        micro_model, char_tokenizer, PROMPTS, config, [1, 2, 3], eos_token_ids=eos, response_prefix="[G]",
        guidance=unit,
    )  # fmt: skip
    assert same.texts == plain.texts


def test_greedy_guidance_matches_generate_with_a_negative_prompt(micro_model, char_tokenizer):
    greedy = SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=10)
    # The random policy hardly reads its prefix: a strong scale, so that guidance changes greedy choices.
    guidance = Guidance(negative_prefix="Zq9", scale=30.0)
    ours = sample(
        micro_model, char_tokenizer, PROMPTS, greedy, [0, 1, 2], eos_token_ids=[2], response_prefix="[G]",
        guidance=guidance,
    )  # fmt: skip
    plain = sample(micro_model, char_tokenizer, PROMPTS, greedy, [0, 1, 2], eos_token_ids=[2], response_prefix="[G]")
    assert ours.texts != plain.texts
    for prompt, text in zip(PROMPTS, ours.texts, strict=True):  # Hugging Face's guidance runs one prompt
        encoded = char_tokenizer(prompt + "[G]", return_tensors="pt")
        negative = char_tokenizer(prompt + "Zq9", return_tensors="pt").input_ids
        output = micro_model.generate(
            **encoded, do_sample=False, max_new_tokens=10, eos_token_id=2, pad_token_id=0, guidance_scale=30.0,
            negative_prompt_ids=negative,
        )  # fmt: skip
        assert text == char_tokenizer.decode(output[0, encoded.input_ids.shape[1] :], skip_special_tokens=True)


def test_filter_logits_top_k_and_top_p_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2, top_p=1.0)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_k=0, top_p=0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_k=0, top_p=0.81)).tolist() == [[False, False, False, True]]
    assert torch.isinf(filter_logits(logits, top_k=0, top_p=0.1)).tolist() == [[False, True, True, True]]


def test_sampled_frequencies_follow_the_temperature_scaled_softmax():
    from lit_reason.sampling import draw_tokens

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    seeds = torch.tensor([row_seed(0, i) for i in range(20000)])
    tokens, logprobs = draw_tokens(logits, SamplingConfig(temperature=2.0), seeds, step=0)
    expected = (logits[0] / 2.0).softmax(-1)
    observed = torch.bincount(tokens, minlength=4).float() / 20000
    assert torch.allclose(observed, expected, atol=0.015)
    assert torch.allclose(logprobs, expected.log()[tokens])
    noise = counter_uniform(seeds[:1000], step=3, vocab_size=50)
    assert noise.min() > 0 and noise.max() < 1 and abs(noise.mean().item() - 0.5) < 0.01


def test_stop_strings_end_a_response(micro_model, char_tokenizer):
    config = SamplingConfig(num_samples=4, temperature=1.0, max_new_tokens=30)
    free = sample(micro_model, char_tokenizer, PROMPTS[:1], config, seeds=[3], eos_token_ids=[2])
    stop = next(c for c in free.texts[0][2:] if c.strip())  # a character this sample produces
    stopped = sample(
        micro_model, char_tokenizer, PROMPTS[:1], config, seeds=[3], eos_token_ids=[2], stop_strings=[stop]
    )
    assert stop not in stopped.texts[0] and stopped.response_lengths[0] < free.response_lengths[0]
    assert not stopped.truncated[0]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_suppressed_tokens_are_never_generated(micro_model, char_tokenizer, temperature):
    config = SamplingConfig(num_samples=4, temperature=temperature, max_new_tokens=16)
    free = sample(micro_model, char_tokenizer, PROMPTS, config, seeds=[1, 2, 3], eos_token_ids=[0])
    favourite = free.input_ids[free.response_mask].mode().values  # what the model generates most
    held = sample(
        micro_model, char_tokenizer, PROMPTS, config, seeds=[1, 2, 3], eos_token_ids=[0], suppress_token_ids=[favourite]
    )
    assert not (held.input_ids[held.response_mask] == favourite).any()


def test_eval_mode_restores_each_submodule(micro_model):
    micro_model.train()
    frozen = micro_model.model.layers[0]
    frozen.eval()
    with eval_mode(micro_model):
        assert not micro_model.training and not torch.is_grad_enabled()
    assert micro_model.training and not frozen.training


def test_bad_arguments():
    with pytest.raises(ValueError):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError):
        SamplingConfig(num_samples=0)
    with pytest.raises(ValueError, match="guidance scale"):
        Guidance(negative_prefix="[B]", scale=-1.0)
