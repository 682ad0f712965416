"""The model card (``README.md``, Hugging Face's format) written beside every export: what was trained from
what, by which method, on which task, how well it did, and how to prompt it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from lit_reason.conditioning import CONDITIONING_FILE
from lit_reason.version import __version__

CARD_FILE = "README.md"


@dataclass(frozen=True)
class ModelCard:
    """What a model card states.

    Args:
        title: the card's heading, e.g. the run's directory.
        method: the algorithm's class name, e.g. ``ExpertIteration``.
        method_summary: what the method is (the first paragraph of its module's docstring).
        base_model: the policy the run started from (a hub id, a directory or a preset).
        task: the task and its options, e.g. ``Arithmetic (prompt_style plain)``.
        exported_because: why this export was written (the validation metric that improved, or the end of fit).
        step: the optimizer step of the export.
        samples_drawn: training samples drawn until then.
        metrics: the last validation's metrics by name, e.g. ``{"val/maj@1": 0.98}``.
        example_prompt: the exact text the model continues, for one validation question.
        response_prefix: text to append after every prompt (RCRL's return token), or "".
        guidance_scale: the classifier-free guidance evaluation applied (1: none).
        negative_prefix: under guidance, what the contrasted prompt has in place of ``response_prefix``.
        stop_strings: text that ends a response besides EOS.
        sampling: how evaluation sampled (``num_samples``, ``temperature``, ``max_new_tokens``).
        config_file: the run's saved config, or None.
        kind: ``policy`` (a causal LM) or ``reward model`` (an ORM).
    """

    title: str
    method: str
    method_summary: str
    base_model: str
    task: str
    exported_because: str
    step: int
    samples_drawn: int
    metrics: dict[str, float] = field(default_factory=dict)
    example_prompt: str = ""
    response_prefix: str = ""
    guidance_scale: float = 1.0
    negative_prefix: str = ""
    stop_strings: tuple[str, ...] = ()
    sampling: dict[str, float] = field(default_factory=dict)
    config_file: str | None = None
    kind: str = "policy"

    def markdown(self) -> str:
        """The card: YAML front matter for the hub, then Markdown."""
        front = ["---", "library_name: transformers", "tags:", "- lit-reason", f"- {self.method}", "- math-reasoning"]
        if self.kind == "policy":
            front += ["pipeline_tag: text-generation"]
        if _hub_id(self.base_model):  # the hub checks that base_model names a repository
            front += [f"base_model: {json.dumps(self.base_model)}"]
        front += ["---", ""]
        lines = [
            f"# {self.title}",
            "",
            f"A {self.kind} trained with lit-reason {__version__} by `{self.method}` from `{self.base_model}` on "
            f"{self.task}. Exported at optimizer step {self.step:,}, after {self.samples_drawn:,} training "
            f"samples: {self.exported_because}.",
            "",
            "## Method",
            "",
            self.method_summary,
            "",
            "## Validation at export",
            "",
        ]
        if self.metrics:
            lines += ["| metric | value |", "| --- | --- |"]
            lines += [f"| {name} | {value:.4f} |" for name, value in sorted(self.metrics.items())]
            settings = ", ".join(f"{name} {value}" for name, value in self.sampling.items())
            lines += ["", f"maj@1 decodes greedily; the other metrics sample with {settings}."]
        else:
            lines += ["No validation ran before this export."]
        lines += ["", *self._usage()]
        if self.config_file:
            lines += ["", "## Training configuration", "", f"The run's full config: `{self.config_file}`."]
        return "\n".join(front + lines) + "\n"

    def _usage(self) -> list[str]:
        if self.kind != "policy":
            return [
                "## How to use it",
                "",
                "Give the directory to an algorithm's `orm` option (`--model.init_args.orm DIR`): it scores every "
                "response token with the probability that the final answer is correct, for rerank@K and as a "
                "reward.",
            ]
        prefix_note = []
        if self.response_prefix:
            prefix_note = [
                f"Append `{self.response_prefix}` after the prompt: the model was trained to condition on it (it is "
                f"recorded in `{CONDITIONING_FILE}`, which lit-reason's evaluation applies; plain `generate` does "
                "not).",
                "",
            ]
        if self.guidance_scale != 1:
            negative = (
                f"the prompt behind `{self.negative_prefix}` instead" if self.negative_prefix else "the bare prompt"
            )
            prefix_note += [
                f"lit-reason evaluated it with classifier-free guidance of scale {self.guidance_scale:g} against "
                f"{negative} (also in `{CONDITIONING_FILE}`): the snippet passes both to `generate`, which contrasts "
                "them as lit-reason does.",
                "",
            ]
        stops = f" Stop at EOS or at any of {list(self.stop_strings)}." if self.stop_strings else " Stop at EOS."
        return [
            "## How to prompt it",
            "",
            "The model continues this text (one validation question, exactly as in training):",
            "",
            "```text",
            self.example_prompt + self.response_prefix,
            "```",
            "",
            *prefix_note,
            f"It answers with its reasoning and a last line `#### <answer>`.{stops}",
            "",
            *self._snippet(),
        ]

    def _snippet(self) -> list[str]:
        """Python that decodes the example prompt greedily with ``generate``, as lit-reason's evaluation does."""
        max_new_tokens = int(self.sampling.get("max_new_tokens", 256))
        if self.guidance_scale != 1:
            generation = [
                f"negative = {self.example_prompt + self.negative_prefix!r}",
                'negative_ids = tokenizer(negative, return_tensors="pt", add_special_tokens=not has_bos).input_ids',
                f"output = model.generate(**inputs, do_sample=False, max_new_tokens={max_new_tokens}, "
                f"guidance_scale={self.guidance_scale!r}, negative_prompt_ids=negative_ids)",
            ]
        else:
            generation = [f"output = model.generate(**inputs, do_sample=False, max_new_tokens={max_new_tokens})"]
        return [
            "```python",
            "import torch",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'tokenizer = AutoTokenizer.from_pretrained("PATH")',
            "# Greedy and in float32, as lit-reason loads an export (a base's generation_config may say to sample).",
            'model = AutoModelForCausalLM.from_pretrained("PATH", dtype=torch.float32)',
            # A Python literal: JSON writes an emoji as two surrogate escapes, which Python reads as two characters.
            f"prompt = {self.example_prompt + self.response_prefix!r}",
            "# As lit-reason tokenizes prompts: with the tokenizer's BOS unless the prompt starts with it already.",
            "has_bos = tokenizer.bos_token is not None and prompt.startswith(tokenizer.bos_token)",
            'inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=not has_bos)',
            *generation,
            "print(tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True))",
            "```",
        ]


def _hub_id(name: str) -> bool:
    """Whether ``name`` reads as a hub repository ("owner/name"), not a local directory or a preset."""
    return re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not Path(name).exists()
