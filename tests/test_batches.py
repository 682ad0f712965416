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
