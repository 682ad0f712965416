import functools

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from lit_reason.cached_forward import response_logits, shares_prompt_cache
from lit_reason.tensors import position_ids_from_mask

PAD = 0


def rollout(prompts: list[list[int]], responses: list[list[int]], samples: list[int]) -> tuple[torch.Tensor, ...]:
    """The sampler's layout: each prompt left-padded to the longest and repeated ``samples[i]`` times, one
    response per row, right-padded. Returns input_ids, attention_mask (R, L) and P."""
    width = max(map(len, prompts))
    length = width + max(map(len, responses))
    row_prompts = [prompt for prompt, count in zip(prompts, samples, strict=True) for _ in range(count)]
    input_ids = torch.full((len(responses), length), PAD)
    attention_mask = torch.zeros((len(responses), length), dtype=torch.long)
    for row, (prompt, response) in enumerate(zip(row_prompts, responses, strict=True)):
        input_ids[row, width - len(prompt) : width] = torch.tensor(prompt)
        input_ids[row, width : width + len(response)] = torch.tensor(response)
        attention_mask[row, width - len(prompt) : width + len(response)] = 1
    return input_ids, attention_mask, width


def sliding_window_model() -> torch.nn.Module:
    """A micro Mistral whose attention window (3) is shorter than its prompts: a sliding-window cache."""
    config = MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=3, max_position_embeddings=64,
    )  # fmt: skip
    return MistralForCausalLM(config)


@pytest.mark.parametrize("architecture", ["llama", "sliding_window"])
@pytest.mark.parametrize("samples", [[1, 1, 1], [3, 3, 3], [3, 1, 2]], ids=["distinct", "repeated", "mixed"])
def test_response_logits_and_gradients_equal_a_full_forward(micro_model, architecture, samples):
    torch.manual_seed(0)
    model = micro_model if architecture == "llama" else sliding_window_model()
    generator = torch.Generator().manual_seed(0)
    vocabulary = model.config.vocab_size

    def tokens(count: int) -> list[int]:
        return torch.randint(1, vocabulary, (count,), generator=generator).tolist()

    # Prompts of different lengths (left padding differs), a prompt whose first token is the pad id (its mask,
    # not its tokens, tells it from a padded one), responses of different lengths (right padding).
    prompts = [tokens(7), tokens(4), [PAD, *tokens(3)]]
    responses = [tokens(1 + (3 * row) % 6) for row in range(sum(samples))]
    input_ids, attention_mask, prompt_length = rollout(prompts, responses, samples)
    model.train()
    full = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
    ).logits[:, prompt_length - 1 :]
    weights = torch.randn(full.shape, generator=generator)
    predicting = attention_mask[:, prompt_length - 1 :].bool()  # columns whose next token is a response's
    (full * weights)[predicting].sum().backward()
    full_grads = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    model.zero_grad()

    assert shares_prompt_cache(model)
    shared = response_logits(model, input_ids, attention_mask, prompt_length)
    (shared * weights)[predicting].sum().backward()
    assert shared.shape == full.shape
    torch.testing.assert_close(shared[predicting], full[predicting], atol=1e-5, rtol=1e-5)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, full_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_models_whose_cache_cannot_be_shared_take_the_full_forward(micro_model):
    input_ids, attention_mask, prompt_length = rollout([[5, 6, 7]], [[3, 4]] * 2, samples=[2])
    full = micro_model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
    ).logits[:, prompt_length - 1 :]
    micro_model.config.rope_parameters = {**micro_model.config.rope_parameters, "rope_type": "dynamic", "factor": 2.0}
    assert not shares_prompt_cache(micro_model)
    torch.testing.assert_close(response_logits(micro_model, input_ids, attention_mask, prompt_length), full)


def test_response_logits_run_each_prompt_once(micro_model):
    prompt_rows = []
    original = micro_model.forward

    @functools.wraps(original)  # keeps the signature the cache argument is read from
    def counting(**kwargs):
        prompt_rows.append(kwargs["input_ids"].shape)
        return original(**kwargs)

    micro_model.forward = counting
    input_ids, attention_mask, prompt_length = rollout([[5, 6, 7], [8, 9]], [[3, 4]] * 8, samples=[4, 4])
    logits = response_logits(micro_model, input_ids, attention_mask, prompt_length)
    assert prompt_rows == [torch.Size([2, 3]), torch.Size([8, 2])]  # 2 distinct prompts, then the 8 responses
    assert logits.shape[:2] == (8, 3)
