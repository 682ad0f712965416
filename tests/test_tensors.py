import math

import pytest
import torch

from lit_reason.tensors import eval_mode, masked_mean, next_token_nll, position_ids_from_mask, take_rows


def test_next_token_nll_by_hand():
    # Vocabulary of 3; sequence [0, 1, 2]; the loss covers only the last token (2), predicted at position 1.
    logits = torch.zeros(1, 3, 3)
    logits[0, 1] = torch.tensor([0.0, 0.0, math.log(2.0)])  # p(2) = 2 / 4
    input_ids = torch.tensor([[0, 1, 2]])
    loss_mask = torch.tensor([[False, False, True]])
    total, count = next_token_nll(logits, input_ids, loss_mask)
    assert count.item() == 1
    assert total.item() == pytest.approx(-math.log(0.5))
    total, count = next_token_nll(
        logits, input_ids, torch.tensor([[True, True, True]])
    )  # position 0 is never predicted
    assert count.item() == 2
    assert total.item() == pytest.approx(math.log(3.0) - math.log(0.5))


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]


def test_masked_mean_by_hand():
    values = torch.tensor([[1.0, 2.0, 30.0], [4.0, 50.0, 60.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert masked_mean(values, mask).item() == pytest.approx(7.0 / 3)
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0


def test_take_rows_drops_columns_that_are_padding_in_every_chosen_row():
    # Three rows in the sampler's layout (left-padded prompt, response, right padding).
    attention_mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    values = torch.arange(15).view(3, 5)
    mask, picked = take_rows(torch.tensor([2, 0]), attention_mask, values)
    assert mask.tolist() == [[1, 1, 1, 0], [0, 0, 1, 1]]  # column 4 is padding in rows 2 and 0
    assert picked.tolist() == [[10, 11, 12, 13], [0, 1, 2, 3]]
    mask, picked = take_rows(torch.tensor([0]), attention_mask, values)
    assert mask.tolist() == [[1, 1]] and picked.tolist() == [[2, 3]]


def test_eval_mode_restores_each_submodule(micro_model):
    micro_model.train()
    frozen = micro_model.model.layers[0]
    frozen.eval()
    with eval_mode(micro_model):
        assert not micro_model.training and not torch.is_grad_enabled()
    assert micro_model.training and not frozen.training
