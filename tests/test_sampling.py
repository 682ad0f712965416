import pytest
import torch

from lit_reason.conditioning import Conditioning, Guidance
from lit_reason.policy import UNK, PolicySpec, load_model
from lit_reason.sampling import (
    SampleBatch,
    SamplingConfig,
    counter_uniform,
    draw_from_probabilities,
    draw_tokens,
    encode_prompt,
    filter_logits,
    guided_logits,
    inverse_cdf_draw,
    row_seed,
    sample,
    uniform_from_hash,
)
from lit_reason.tensors import position_ids_from_mask

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
        micro_model,
        char_tokenizer,
        PROMPTS,
        config,
        seeds=[0, 0, 0],
        eos_token_ids=[2],
        conditioning=Conditioning("[G]"),
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
    # A token the negative prompt rules out (-inf) keeps the policy's own log-prob: the formula gave NaN, which
    # made the whole row's softmax NaN. One the policy rules out stays out.
    inf = float("inf")
    guided = guided_logits(torch.tensor([[0.0, 1.0, 2.0, -inf]]), torch.tensor([[0.0, -inf, 2.0, 1.0]]), 1.5)
    own = torch.tensor([[0.0, 1.0, 2.0]]).log_softmax(-1)[0, 1]
    assert guided[0, 1] == own and guided[0, 3] == -inf and not guided.isnan().any()
    nearer_the_negative = guided_logits(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[0.0, -inf, 2.0]]), 0.5)
    assert nearer_the_negative[0, 1] == -inf and nearer_the_negative[0, [0, 2]].isfinite().all()


def test_guided_logprobs_match_guided_training_forwards(micro_model, char_tokenizer):
    eos = [char_tokenizer.convert_tokens_to_ids("e"), char_tokenizer.eos_token_id]
    # batch_size 8 holds 4 sampled + 4 negative rows: two chunks, and rows leave the batch as they end
    config = SamplingConfig(num_samples=2, temperature=0.7, top_k=20, max_new_tokens=24, batch_size=8)

    def draw(guidance: Guidance | None):
        conditioning = Conditioning("[G]", guidance=guidance)
        return sample(
            micro_model, char_tokenizer, PROMPTS, config, [1, 2, 3], eos_token_ids=eos, conditioning=conditioning
        )

    batch = draw(Guidance(negative_prefix="[B]", scale=2.5))
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
    plain = draw(None)
    assert plain.texts != batch.texts
    assert draw(Guidance(negative_prefix="[B]", scale=1.0)).texts == plain.texts  # scale 1: the policy as it is


def test_greedy_guidance_matches_generate_with_a_negative_prompt(micro_model, char_tokenizer):
    greedy = SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=10)
    # The random policy hardly reads its prefix: a strong scale, so that guidance changes greedy choices.
    guidance = Guidance(negative_prefix="Zq9", scale=30.0)
    ours = sample(
        micro_model,
        char_tokenizer,
        PROMPTS,
        greedy,
        [0, 1, 2],
        eos_token_ids=[2],
        conditioning=Conditioning("[G]", guidance=guidance),
    )
    plain = sample(
        micro_model, char_tokenizer, PROMPTS, greedy, [0, 1, 2], eos_token_ids=[2], conditioning=Conditioning("[G]")
    )
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


def test_top_p_keeps_every_token_tied_with_the_last_one_kept():
    # Probabilities 0.646 and four of 0.087: the first three of the equal ones in sorted order reach top-p 0.9, but
    # which three a sort puts first can change with the batch's shape or the device. All four are kept, as top-k
    # keeps ties.
    tied = torch.tensor([[1.0, 3.0, 1.0, 1.0, 1.0, -2.0]])
    assert torch.isinf(filter_logits(tied, top_k=0, top_p=0.9)).tolist() == [[False, False, False, False, False, True]]
    assert torch.isinf(filter_logits(tied, top_k=2, top_p=1.0)).tolist() == [[False, False, False, False, False, True]]


def test_sampled_frequencies_follow_the_temperature_scaled_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    seeds = torch.tensor([row_seed(0, i) for i in range(20000)])
    tokens, logprobs = draw_tokens(logits, SamplingConfig(temperature=2.0), seeds, step=0)
    expected = (logits[0] / 2.0).softmax(-1)
    observed = torch.bincount(tokens, minlength=4).float() / 20000
    assert torch.allclose(observed, expected, atol=0.015)
    assert torch.allclose(logprobs, expected.log()[tokens])


def test_uniforms_are_strictly_inside_0_1_for_every_hash_value():
    # The map is increasing, so its extremes are at the ends of the 32-bit range: check the lowest and highest
    # 2**24 values exhaustively (the old map rounded the top 256 of them to exactly 1.0 in float32).
    for values in (torch.arange(1 << 24), torch.arange((1 << 32) - (1 << 24), 1 << 32)):
        uniforms = uniform_from_hash(values)
        assert uniforms.min() > 0 and uniforms.max() < 1
        assert (uniforms.diff() > 0).all()
    seeds = torch.tensor([row_seed(7, i) for i in range(100_000)])
    noise = torch.cat([counter_uniform(seeds, step) for step in range(2)])
    counts = torch.histc(noise.float(), bins=100, min=0, max=1)
    chi_square = ((counts - 2000) ** 2 / 2000).sum()
    # 99 degrees of freedom: a correct uniform generator exceeds 160 with probability below 1e-4.
    assert chi_square < 160
    assert abs(torch.corrcoef(torch.stack([noise[:100_000], noise[100_000:]]))[0, 1]) < 0.02  # steps independent


@pytest.mark.parametrize("uniform", [2.0**-33, 0.5, 1 - 2.0**-33])  # the extremes of uniform_from_hash
def test_inverse_cdf_never_draws_a_token_at_minus_infinity(uniform):
    finite = torch.tensor([0.0, 0.0, -1.0, 3.0, -30.0, -120.0])
    for allowed in ([0], [5], [1, 2], [0, 5], [3], [4, 5], [0, 1, 2, 3, 4, 5]):
        logits = torch.full((1, 6), float("-inf"))
        logits[0, allowed] = finite[allowed]
        token = inverse_cdf_draw(logits, torch.tensor([uniform], dtype=torch.float64))
        assert token.item() in allowed
    # Guidance where both prompts rule a token out gives -inf, not NaN (which would break the draw).
    guided = guided_logits(torch.tensor([[0.0, float("-inf")]]), torch.tensor([[1.0, float("-inf")]]), 2.0)
    assert (
        guided[0, 1] == float("-inf")
        and inverse_cdf_draw(guided, torch.tensor([uniform], dtype=torch.float64)).item() == 0
    )


@pytest.mark.parametrize("vocab", [7, 1_024, 49_152, 1_024 + 255])  # one cumulative sum; blocks (one partial)
def test_the_blockwise_search_picks_the_token_of_the_whole_cumulative_sum(vocab):
    """Against the plain inversion, by hand: the first token whose cumulative count of floor(p * 2**30) exceeds
    floor(u * total), over every token at once; with probability-0 tokens and whole zero blocks."""
    generator = torch.Generator().manual_seed(vocab)
    logits = torch.randn(64, vocab, generator=generator) * 4
    logits[torch.rand(64, vocab, generator=generator) < 0.3] = float("-inf")
    logits[:8, : vocab // 2] = float("-inf")  # leading blocks without mass
    logits[:, vocab // 2] = 1.0  # every row has some mass
    logits[8, :] = float("-inf")
    logits[8, vocab - 1] = 0.0  # all mass on the last token (a partial block when 256 does not divide V)
    probabilities = logits.softmax(-1)
    uniforms = torch.cat(
        [torch.tensor([2.0**-33, 1 - 2.0**-33], dtype=torch.float64), torch.rand(62, generator=generator).double()]
    )
    counts = (probabilities * 2.0**30).to(torch.int64).cumsum(-1)
    targets = (uniforms * counts[:, -1].double()).long()
    expected = torch.searchsorted(counts, targets[:, None], side="right")[:, 0]
    drawn = draw_from_probabilities(probabilities, uniforms)
    assert torch.equal(drawn, expected)
    assert (probabilities.gather(1, drawn[:, None]) > 0).all() and drawn[8] == vocab - 1


@pytest.mark.slow
def test_sampler_matches_its_distribution_on_a_realistic_vocabulary():
    """30,000 draws over 50,000 tokens with top-k, top-p and suppressed tokens: no disallowed token is ever
    drawn, and the frequencies pass a chi-square test against softmax(filtered logits / T) whose false-alarm
    rate is 1e-4."""
    vocab, rows, steps = 50_000, 1_000, 30
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(vocab, generator=generator) * 3
    suppressed = torch.randperm(vocab, generator=generator)[: vocab // 2]
    logits[suppressed] = float("-inf")
    config = SamplingConfig(temperature=1.3, top_k=10_000, top_p=0.98)
    seeds = torch.tensor([row_seed(0, row) for row in range(rows)])
    # draw_tokens filters (top-k, top-p) and scales, then draws with inverse_cdf_draw: the whole step once, ...
    tokens, logprobs = draw_tokens(logits.expand(200, -1), config, seeds[:200], step=0)
    allowed = filter_logits((logits / config.temperature)[None], config.top_k, config.top_p)[0]
    probabilities = allowed.double().softmax(-1)
    assert (probabilities[tokens] > 0).all()
    assert torch.allclose(logprobs, (logits / config.temperature).log_softmax(-1)[tokens])
    # ... then the draws alone, 30 steps of 1,000 rows: sorting 50,000 x 1,000 logits thirty times for
    # top-k / top-p (checked by hand above) would dominate the test.
    counts = torch.zeros(vocab, dtype=torch.float64)
    for step in range(steps):
        tokens = inverse_cdf_draw(allowed.expand(rows, -1), counter_uniform(seeds, step))
        counts += torch.bincount(tokens, minlength=vocab)
    assert counts.sum() == rows * steps
    assert counts[probabilities == 0].sum() == 0  # filtered and suppressed tokens: never
    # Chi-square over bins of tokens (in order of probability) expecting at least 20 draws each.
    order = probabilities.argsort(descending=True)
    expected = probabilities[order] * counts.sum()
    observed = counts[order]
    # Token i goes to bin floor(cumulative expected / 20), renumbered consecutively: in descending order each
    # bin expects at least 10 draws (the last, partial, bin joins the one before).
    raw = (expected.cumsum(0) / 20).floor().clamp(max=(expected.sum() / 20).floor() - 1)
    bins = torch.unique_consecutive(raw, return_inverse=True)[1]
    expected_bins = torch.zeros(int(bins.max()) + 1, dtype=torch.float64).index_add_(0, bins, expected)
    observed_bins = torch.zeros_like(expected_bins).index_add_(0, bins, observed)
    chi_square = ((observed_bins - expected_bins) ** 2 / expected_bins).sum()
    degrees = torch.tensor(len(expected_bins) - 1.0, dtype=torch.float64)
    p_value = torch.special.gammaincc(degrees / 2, chi_square / 2)
    assert len(expected_bins) > 1000 and p_value > 1e-4, (chi_square.item(), degrees.item(), p_value.item())


def test_a_row_seed_is_the_same_for_an_integer_of_any_type():
    # It hashed repr(parts): NumPy's 5 or a 0-d tensor's gave other noise than Python's 5.
    import numpy

    expected = row_seed(5, "eval", 0)
    assert expected == 3520503937671317537  # Python integers' seeds are unchanged: runs reproduce as before
    assert row_seed(numpy.int64(5), "eval", numpy.int32(0)) == expected
    assert row_seed(torch.tensor(5), "eval", 0) == expected
    with pytest.raises(TypeError):
        row_seed(5.0, "eval", 0)


def test_stop_strings_end_a_response(micro_model, char_tokenizer):
    config = SamplingConfig(num_samples=4, temperature=1.0, max_new_tokens=30)
    free = sample(micro_model, char_tokenizer, PROMPTS[:1], config, seeds=[3], eos_token_ids=[2])
    stop = next(c for c in free.texts[0][2:] if c.strip())  # a character this sample produces
    stopped = sample(
        micro_model, char_tokenizer, PROMPTS[:1], config, seeds=[3], eos_token_ids=[2], stop_strings=[stop]
    )
    assert stop not in stopped.texts[0] and stopped.response_lengths[0] < free.response_lengths[0]
    assert not stopped.truncated[0]


def test_a_stop_string_that_is_a_special_token_ends_a_response_as_its_eos_does(micro_model, char_tokenizer):
    # Decoding drops special tokens, so the text check never saw one (a chat model's <|eot_id|>): responses ran on.
    unk = char_tokenizer.convert_tokens_to_ids(UNK)
    config = SamplingConfig(num_samples=32, temperature=1.0, max_new_tokens=30)

    def responses(stop_strings):
        batch = sample(
            micro_model, char_tokenizer, PROMPTS[:1], config, [5], eos_token_ids=[2], stop_strings=stop_strings
        )
        return [
            row[mask].tolist() for row, mask in zip(batch.input_ids, batch.response_mask, strict=True)
        ], batch.truncated

    free, _ = responses([])
    assert any(unk in tokens[:-1] for tokens in free)  # the random policy draws it mid-response
    stopped, truncated = responses([UNK])
    for tokens, stopped_tokens, cut in zip(free, stopped, truncated, strict=True):
        if unk in tokens:  # before any EOS: a response ends at its EOS
            assert stopped_tokens == tokens[: tokens.index(unk) + 1] and not cut  # the same draws, ended there
        else:
            assert stopped_tokens == tokens


def test_only_the_special_tokens_that_decoding_drops_become_end_tokens(char_tokenizer):
    from lit_reason.policy import build_char_tokenizer
    from lit_reason.sampling import _special_stops_as_end_tokens

    assert _special_stops_as_end_tokens(char_tokenizer, [2], [UNK, UNK, "x", "</s>"]) == [2, 3]
    renamed = build_char_tokenizer()
    renamed.pad_token = "<newpad>"  # named but in no vocabulary: convert_tokens_to_ids would have given <unk>'s id
    assert _special_stops_as_end_tokens(renamed, [2], ["<newpad>"]) == [2]


def test_checking_for_finished_rows_every_few_steps_changes_no_sample(micro_model, char_tokenizer, monkeypatch):
    """Rows ended by EOS or by a stop string between two checks keep only what they sampled up to their end,
    and the host waits for the device only at the checks (what an accelerator needs)."""
    eos = [char_tokenizer.convert_tokens_to_ids("e"), char_tokenizer.eos_token_id]
    guided = Conditioning(guidance=Guidance(negative_prefix="[B]", scale=1.5))
    batches = {}
    for every in (1, 3, 7):
        config = SamplingConfig(num_samples=4, temperature=1.0, max_new_tokens=20, finished_check_every=every)
        for name, conditioning in (("plain", Conditioning()), ("guided", guided)):
            batches[every, name] = sample(
                micro_model,
                char_tokenizer,
                PROMPTS,
                config,
                [4, 5, 6],
                eos_token_ids=eos,
                stop_strings=["a", "o"],
                conditioning=conditioning,
            )
    for name in ("plain", "guided"):
        batch = batches[1, name]
        last = batch.input_ids[torch.arange(len(batch)), batch.prompt_length + batch.response_lengths - 1]
        by_eos = torch.isin(last, torch.tensor(eos)) & ~batch.truncated
        by_stop = ~by_eos & ~batch.truncated
        assert by_eos.sum() >= 2 and by_stop.sum() >= 2, "the test needs rows ended each way"
    for (every, name), batch in batches.items():
        reference = batches[1, name]
        assert batch.texts == reference.texts, (every, name)
        for field in ("input_ids", "response_mask", "truncated"):
            assert torch.equal(getattr(batch, field), getattr(reference, field)), (every, name, field)
        # Rows leave the batch at other steps, so the matmuls have other shapes: rounding differs.
        assert torch.allclose(batch.logprobs, reference.logprobs, atol=1e-5, rtol=0)
    checks = []
    monkeypatch.setattr(
        "lit_reason.sampling._ChunkDecoder._any_rank_sampling", lambda self, n: checks.append(n) or n > 0
    )
    config = SamplingConfig(num_samples=2, temperature=1.0, max_new_tokens=20, finished_check_every=7)
    sample(micro_model, char_tokenizer, PROMPTS[:1], config, [4], eos_token_ids=[char_tokenizer.eos_token_id])
    assert len(checks) == 2  # after steps 7 and 14; the 20th step ends the loop


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_suppressed_tokens_are_never_generated(micro_model, char_tokenizer, temperature):
    config = SamplingConfig(num_samples=4, temperature=temperature, max_new_tokens=16)
    free = sample(micro_model, char_tokenizer, PROMPTS, config, seeds=[1, 2, 3], eos_token_ids=[0])
    favourite = free.input_ids[free.response_mask].mode().values  # what the model generates most
    held = sample(
        micro_model,
        char_tokenizer,
        PROMPTS,
        config,
        seeds=[1, 2, 3],
        eos_token_ids=[0],
        conditioning=Conditioning(suppressed_token_ids=(favourite,)),
    )
    assert not (held.input_ids[held.response_mask] == favourite).any()


def test_bad_arguments():
    with pytest.raises(ValueError):
        SamplingConfig(top_p=0.0)
    # logits / 1e-38 overflow float32: NaN log-probs, and a draw from them.
    with pytest.raises(ValueError, match="temperature 1e-38 draws the greedy token .* use temperature 0"):
        SamplingConfig(temperature=1e-38)
    with pytest.raises(ValueError):
        SamplingConfig(num_samples=0)
    with pytest.raises(ValueError, match="guidance scale"):
        Guidance(negative_prefix="[B]", scale=-1.0)


def test_a_prompt_and_response_longer_than_the_model_s_context_is_refused(char_tokenizer):
    """Rotary models decode past their positions without failing: the sampler must refuse instead. A guided
    run's negative rows count; a scaled RoPE reaches past ``max_position_embeddings`` by design."""
    model = load_model(PolicySpec(name_or_path="micro", max_length=64), char_tokenizer).eval()
    longest = max(len(encode_prompt(char_tokenizer, p)) for p in PROMPTS)
    fitting = SamplingConfig(num_samples=1, max_new_tokens=64 - longest)
    assert len(sample(model, char_tokenizer, PROMPTS, fitting, [0, 1, 2], eos_token_ids=[])) == 3
    too_long = SamplingConfig(num_samples=1, max_new_tokens=64 - longest + 1)
    with pytest.raises(ValueError, match=rf"a prompt of {longest} tokens plus max_new_tokens=\d+ exceeds .* of 64"):
        sample(model, char_tokenizer, PROMPTS, too_long, [0, 1, 2], eos_token_ids=[])
    guided = Conditioning(guidance=Guidance(negative_prefix="[BAD]", scale=1.5))
    with pytest.raises(ValueError, match=rf"a prompt of {longest + 5} tokens"):
        sample(model, char_tokenizer, PROMPTS, fitting, [0, 1, 2], eos_token_ids=[], conditioning=guided)
    scaled_rope = {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}}
    scaled = PolicySpec(name_or_path="micro", max_length=64, preset_overrides=scaled_rope)
    scaled_model = load_model(scaled, char_tokenizer).eval()
    assert len(sample(scaled_model, char_tokenizer, PROMPTS, too_long, [0, 1, 2], eos_token_ids=[])) == 3


def test_a_batch_without_the_end_of_its_prompts_keeps_its_response_columns():
    batch = SampleBatch.from_token_lists([[5, 6, 7, 8], [7, 8]], [[9, 2], [2]], ["a", ""], pad_token_id=0)
    input_ids, attention_mask = batch.without_prompt_end(2, pad_token_id=0)
    assert input_ids.tolist() == [[0, 0, 5, 6, 9, 2], [0, 0, 0, 0, 2, 0]]
    assert attention_mask.tolist() == [[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 0]]
    unchanged = batch.without_prompt_end(0, pad_token_id=0)
    assert torch.equal(unchanged[0], batch.input_ids) and torch.equal(unchanged[1], batch.attention_mask)
