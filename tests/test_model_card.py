import ast
import contextlib
import io

import torch

from lit_reason.conditioning import Conditioning, Guidance
from lit_reason.model_card import ModelCard
from lit_reason.policy import PolicySpec, build_char_tokenizer, load_model
from lit_reason.sampling import SamplingConfig, sample


def card(**overrides) -> ModelCard:
    facts = dict(
        title="seed0",
        method="RCRL",
        method_summary="Return-Conditioned RL.",
        base_model="runs/sft/version_0/policy",
        task="Arithmetic (prompt_style plain)",
        exported_because="val/maj@1=0.9800 at step 40",
        step=40,
        samples_drawn=4800,
        metrics={"val/pass@8": 0.99, "val/maj@1": 0.98},
        example_prompt="What is 2 + 3?\n",
        response_prefix="[GOOD]",
        sampling={"num_samples": 8, "temperature": 0.7, "max_new_tokens": 80},
        config_file="runs/rcrl/version_0/config.yaml",
    )
    return ModelCard(**{**facts, **overrides})


def snippet_prompt(body: str) -> str:
    """The prompt the card's code snippet continues, as Python reads it."""
    line = next(line for line in body.splitlines() if line.startswith("prompt = "))
    return ast.literal_eval(line.removeprefix("prompt = "))


def test_the_snippet_s_prompt_is_the_prompt_for_any_character():
    """JSON wrote an emoji as two surrogate escapes, which Python reads as two lone surrogates: the tokenizer
    refused the snippet's prompt."""
    prompt = 'Ann has 3 \U0001f34e and "2" more?\n\\'
    assert snippet_prompt(card(example_prompt=prompt, response_prefix="").markdown()) == prompt


def test_a_policy_card_says_what_how_how_well_and_how_to_prompt():
    text = card().markdown()
    front, body = text.split("---\n")[1], text.split("---\n", 2)[2]
    assert "library_name: transformers" in front and "- RCRL" in front
    assert "base_model" not in front and "pipeline_tag: text-generation" in front  # a local path: not a hub id
    assert "by `RCRL` from `runs/sft/version_0/policy`" in body and "after 4,800 training samples" in body
    # Metrics sorted by name, with the sampling that produced them.
    assert body.index("| val/maj@1 | 0.9800 |") < body.index("| val/pass@8 | 0.9900 |")
    assert "temperature 0.7" in body
    # The exact text to continue: the prompt and the return token the policy was trained behind.
    assert "```text\nWhat is 2 + 3?\n[GOOD]\n```" in body and "Append `[GOOD]`" in body
    assert snippet_prompt(body) == "What is 2 + 3?\n[GOOD]" and "max_new_tokens=80" in body
    assert "`runs/rcrl/version_0/config.yaml`" in body


def test_a_reward_model_card_says_how_to_use_it_and_no_validation_is_stated():
    text = card(kind="reward model", response_prefix="", metrics={}).markdown()
    assert "pipeline_tag" not in text and "A reward model trained" in text
    assert "--model.init_args.orm DIR" in text and "No validation ran before this export." in text
    assert "How to prompt it" not in text


def test_only_a_hub_repository_is_the_cards_base_model(tmp_path):
    assert (
        'base_model: "HuggingFaceTB/SmolLM2-135M-Instruct"'
        in card(base_model="HuggingFaceTB/SmolLM2-135M-Instruct").markdown()
    )
    (tmp_path / "policy").mkdir()
    for local in ("tiny", str(tmp_path / "policy")):
        assert "base_model:" not in card(base_model=local).markdown()


def test_the_snippet_of_a_guided_policy_generates_what_lit_reason_s_guided_greedy_decoding_does(tmp_path):
    """A policy evaluated with guidance (RCRL's ``guidance_scale``): the card said nothing of it, and its
    snippet's plain ``generate`` decoded another policy than the one validated (and sampled, where the base
    model's generation config said so)."""
    tokenizer = build_char_tokenizer()
    model = load_model(PolicySpec(name_or_path="tiny", seed=2), tokenizer).eval()  # one whose decoding guidance changes
    # An export in bfloat16 whose base model's generation config samples: lit-reason loads it in float32 and
    # decodes greedily, and so must the snippet.
    model.generation_config.update(do_sample=True, temperature=0.7, top_k=5)
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    model.float()
    tokenizer.save_pretrained(tmp_path)
    guided = card(guidance_scale=3.0, negative_prefix="[BAD]", sampling={"max_new_tokens": 24})
    body = guided.markdown()
    assert "classifier-free guidance of scale 3 against the prompt behind `[BAD]`" in body
    snippet = body.split("```python\n", 1)[1].split("```", 1)[0].replace('"PATH"', repr(str(tmp_path)))
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(snippet, namespace)  # the card's own code, as a user runs it
    conditioning = Conditioning("[GOOD]", guidance=Guidance("[BAD]", 3.0))
    with torch.no_grad():
        ours = sample(
            model, tokenizer, ["What is 2 + 3?\n"], SamplingConfig(num_samples=1, temperature=0, max_new_tokens=24),
            [0], eos_token_ids=[tokenizer.eos_token_id], conditioning=conditioning,
        )  # fmt: skip
        unguided = sample(
            model, tokenizer, ["What is 2 + 3?\n"], SamplingConfig(num_samples=1, temperature=0, max_new_tokens=24),
            [0], eos_token_ids=[tokenizer.eos_token_id], conditioning=conditioning.without_guidance(),
        )  # fmt: skip
    assert ours.texts[0] != unguided.texts[0]  # guidance changes what this model decodes
    assert printed.getvalue() == ours.texts[0] + "\n"
