"""The sampler under DDP and FSDP2 with 2 CPU processes whose rows end at different times."""

import pytest
import torch

from tests.helpers.distributed import run_in_processes

pytestmark = pytest.mark.slow  # several processes each

PROMPTS = ["Ann has 3 apples.\n", "Ben has 12 coins. He finds 7 more.\n", "Hi\n"]


def _guidance(guided: bool) -> dict:
    from lit_reason.conditioning import Conditioning, Guidance

    return {"conditioning": Conditioning("[G]", guidance=Guidance(negative_prefix="[B]", scale=2.0))} if guided else {}


def _sample_on_rank(rank: int, world_size: int, shard: bool, guided: bool, decoding: str):
    import torch.distributed as dist

    from lit_reason.distributed import shard_model
    from lit_reason.policy import PolicySpec, build_char_tokenizer, load_model
    from lit_reason.sampling import SamplingConfig, sample

    tokenizer = build_char_tokenizer()
    model = load_model(PolicySpec(name_or_path="micro", seed=3), tokenizer).eval()
    if shard:
        from torch.distributed.device_mesh import init_device_mesh

        shard_model(model, init_device_mesh("cpu", (world_size,)))
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append(1))
    # Guided, the ranks also look for finished rows only every third step (as on an accelerator).
    config = SamplingConfig(
        num_samples=2,
        temperature=1.0,
        max_new_tokens=16,
        batch_size=2,
        finished_check_every=3 if guided else None,
        decoding=decoding,
    )
    if rank == 0:  # three prompts, one per chunk, run to the token limit
        prompts, eos = PROMPTS, [tokenizer.eos_token_id]
    else:  # one prompt whose rows end at their first token (every token counts as EOS here)
        prompts, eos = PROMPTS[:1], list(range(len(tokenizer)))
    seeds = list(range(len(prompts)))
    batch = sample(model, tokenizer, prompts, config, seeds=seeds, eos_token_ids=eos, **_guidance(guided))
    counts = torch.tensor([len(forwards)])
    gathered = [torch.zeros_like(counts) for _ in range(world_size)]
    dist.all_gather(gathered, counts)
    return {"texts": batch.texts, "lengths": batch.response_lengths.tolist(), "forwards": [int(c) for c in gathered]}


@pytest.mark.parametrize(
    ("shard", "guided", "decoding"),
    [(False, False, "dynamic"), (True, False, "dynamic"), (True, True, "dynamic"), (True, False, "static")],
    ids=["ddp", "fsdp2", "fsdp2-guided", "fsdp2-static"],
)
def test_ranks_keep_stepping_until_all_are_done(shard, guided, decoding):
    # Guided, the placeholder rows of a rank out of prompts run beside negative rows too. Static, a rank whose
    # rows are done runs one spare slot of its preallocated room.
    results = run_in_processes(_sample_on_rank, shard, guided, decoding, timeout=180)
    forwards = results[0]["forwards"]
    assert forwards[0] == forwards[1], "every rank must run the same number of forward passes"
    assert results[1]["lengths"] == [1, 1] and max(results[0]["lengths"]) == 16, "lengths must differ across ranks"
    # Sharding changes nothing about the samples: compare with one process and an unsharded model.
    from lit_reason.policy import PolicySpec, build_char_tokenizer, load_model
    from lit_reason.sampling import SamplingConfig, sample

    tokenizer = build_char_tokenizer()
    model = load_model(PolicySpec(name_or_path="micro", seed=3), tokenizer).eval()
    config = SamplingConfig(num_samples=2, temperature=1.0, max_new_tokens=16, batch_size=2)
    eos = [tokenizer.eos_token_id]
    single = sample(model, tokenizer, PROMPTS, config, seeds=[0, 1, 2], eos_token_ids=eos, **_guidance(guided))
    assert results[0]["texts"] == single.texts
