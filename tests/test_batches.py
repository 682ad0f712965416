import pytest
import torch

from lit_reason.batches import batch_examples, fits_context, make_token_batch


def test_make_token_batch_masks_targets_only():
    batch = make_token_batch([([1, 5, 6], [7, 2]), ([1, 5], [8, 9, 2])], pad_token_id=0)
    assert batch.input_ids.tolist() == [[1, 5, 6, 7, 2], [1, 5, 8, 9, 2]]
    assert batch.loss_mask.tolist() == [[False, False, False, True, True], [False, False, True, True, True]]
    short = make_token_batch([([1], [2]), ([1, 5, 6], [2])], pad_token_id=0)
    assert short.input_ids.tolist() == [[1, 2, 0, 0], [1, 5, 6, 2]]
    assert short.attention_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert short.loss_mask.tolist() == [[False, True, False, False], [False, False, False, True]]


def test_batch_examples_drops_examples_longer_than_the_context():
    examples = [([1, 5], [7, 2]), ([1] * 6, [2]), ([1], [2])]
    assert [fits_context(e, 4) for e in examples] == [True, False, True]
    batches = batch_examples(examples, batch_size=4, max_length=4, pad_token_id=0, seed=0)
    assert len(batches) == 1 and len(batches[0]) == 2


def test_batches_round_trip_through_a_weights_only_checkpoint(tmp_path):
    from lit_reason.batches import LabelledBatch, PPOBatch, TokenBatch, batch_from_state, batch_state

    ids = torch.arange(6).view(2, 3)
    tokens = TokenBatch(ids, torch.ones_like(ids), ids > 2)
    batches = [
        tokens,
        LabelledBatch(ids, torch.ones_like(ids), ids > 0, torch.tensor([1.0, 0.0]), references=tokens),
        PPOBatch(ids, torch.ones_like(ids), ids > 0, ids.float(), global_tokens=5, global_sequences=2, prompt_length=1),
    ]
    torch.save([batch_state(batch) for batch in batches], tmp_path / "state.pt")
    loaded = [batch_from_state(state) for state in torch.load(tmp_path / "state.pt", weights_only=True)]
    assert [type(batch) for batch in loaded] == [TokenBatch, LabelledBatch, PPOBatch]
    assert torch.equal(loaded[1].references.loss_mask, tokens.loss_mask) and loaded[2].old_logprobs is None
    assert (loaded[2].global_tokens, loaded[2].prompt_length) == (5, 1) and torch.equal(
        loaded[2].advantages, ids.float()
    )


def test_a_rank_other_than_the_first_says_what_it_drops(monkeypatch):
    # Warned through rank_zero_warn: a rank other than 0 dropping over-long examples said nothing.
    from lightning.pytorch.utilities import rank_zero_only

    import lit_reason.batches

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    monkeypatch.setattr(lit_reason.batches, "rank_and_world_size", lambda: (1, 2))
    examples = [([1, 2], [3, 4]), ([1] * 50, [2])]
    with pytest.warns(UserWarning, match="rank 1: dropped 1 of 2 examples longer than 8 tokens"):
        batches = batch_examples(examples, batch_size=2, max_length=8, pad_token_id=0, seed=0)
    assert [len(batch) for batch in batches] == [1]
