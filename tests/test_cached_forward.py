import functools

import pytest
import torch

from lit_reason.cached_forward import response_logits
from lit_reason.tensors import position_ids_from_mask

PAD = 0


def rollout(prompts: list[list[int]], responses: list[list[int]], samples: int) -> tuple[torch.Tensor, ...]:
    """The sampler's layout: each prompt left-padded to the longest and repeated ``samples`` times, one response
    per row, right-padded. Returns input_ids, attention_mask (R, L) and P."""
    width = max(map(len, prompts))
    length = width + max(map(len, responses))
    input_ids = torch.full((len(responses), length), PAD)
    attention_mask = torch.zeros((len(responses), length), dtype=torch.long)
    for row, response in enumerate(responses):
        prompt = prompts[row // samples]
        input_ids[row, width - len(prompt) : width] = torch.tensor(prompt)
        input_ids[row, width : width + len(response)] = torch.tensor(response)
        attention_mask[row, width - len(prompt) : width + len(response)] = 1
    return input_ids, attention_mask, width


@pytest.mark.parametrize("samples", [1, 3])
def test_response_logits_and_gradients_equal_a_full_forward(micro_model, samples):
    generator = torch.Generator().manual_seed(0)
    vocabulary = micro_model.config.vocab_size

    def tokens(count: int) -> list[int]:
        return torch.randint(1, vocabulary, (count,), generator=generator).tolist()

    # Prompts of different lengths (left padding differs), a prompt whose first token is the pad id (its mask,
    # not its tokens, tells it from a padded one), responses of different lengths (right padding).
    prompts = [tokens(7), tokens(4), [PAD, *tokens(3)]]
    responses = [tokens(1 + (3 * row) % 6) for row in range(len(prompts) * samples)]
    input_ids, attention_mask, prompt_length = rollout(prompts, responses, samples)
    micro_model.train()
    full = micro_model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
    ).logits[:, prompt_length - 1 :]
    weights = torch.randn(full.shape, generator=generator)
    predicting = attention_mask[:, prompt_length - 1 :].bool()  # columns whose next token is a response's
    (full * weights)[predicting].sum().backward()
    full_grads = {name: parameter.grad.clone() for name, parameter in micro_model.named_parameters()}
    micro_model.zero_grad()

    shared = response_logits(micro_model, input_ids, attention_mask, prompt_length)
    (shared * weights)[predicting].sum().backward()
    assert shared.shape == full.shape
    torch.testing.assert_close(shared[predicting], full[predicting], atol=1e-5, rtol=1e-5)
    for name, parameter in micro_model.named_parameters():
        torch.testing.assert_close(parameter.grad, full_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_response_logits_run_each_prompt_once(micro_model):
    prompt_rows = []
    original = micro_model.forward

    @functools.wraps(original)  # keeps the signature the cache argument is read from
    def counting(**kwargs):
        prompt_rows.append(kwargs["input_ids"].shape)
        return original(**kwargs)

    micro_model.forward = counting
    input_ids, attention_mask, prompt_length = rollout([[5, 6, 7], [8, 9]], [[3, 4]] * 8, samples=4)
    logits = response_logits(micro_model, input_ids, attention_mask, prompt_length)
    assert prompt_rows == [torch.Size([2, 3]), torch.Size([8, 2])]  # 2 distinct prompts, then the 8 responses
    assert logits.shape[:2] == (8, 3)
