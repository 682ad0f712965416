"""How a policy is conditioned when it samples: the text every response starts behind, the tokens it never
generates, and an optional guidance contrast. One ``Conditioning`` is read from an exported policy, applied
by the sampler and by fine-tuning's encoding, and written with an export, all here.

An export records it in ``lit_reason.json`` beside the weights; the suppressed tokens are also written to the
generation config's standard ``suppress_tokens``, so that ``model.generate`` honours them outside lit-reason.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from lit_reason.files import find_model_file

CONDITIONING_FILE = "lit_reason.json"
Stage = Literal["rollout", "evaluation"]  # what a policy samples for: training data, or to be measured


@dataclass(frozen=True)
class Guidance:
    """Contrast every step's distribution with the same prompt behind another response prefix.

    Args:
        negative_prefix: text placed after the prompt instead of the response prefix in the negative rows
            ("" for the bare prompt, i.e. classic unconditional guidance).
        scale: ``log p_neg + scale * (log p - log p_neg)``: 1 samples the conditioned policy as it is, larger
            values push away from the negative prefix (Hugging Face's ``guidance_scale``).
    """

    negative_prefix: str
    scale: float

    def __post_init__(self) -> None:
        if self.scale < 0:
            raise ValueError(f"the guidance scale must be >= 0, got {self.scale}")


@dataclass(frozen=True)
class Conditioning:
    """What a policy samples behind.

    Args:
        response_prefix: text placed after every prompt and before the sampled tokens (a return-conditioned
            policy's good-return token); part of the prompt for masks and log-probs, never of a response.
        suppressed_token_ids: tokens never generated (return tokens, which only condition).
        guidance: contrast with the prompt behind ``guidance.negative_prefix`` (None, or scale 1: plain).
    """

    response_prefix: str = ""
    suppressed_token_ids: tuple[int, ...] = ()
    guidance: Guidance | None = None

    @property
    def guided(self) -> bool:
        return self.guidance is not None and self.guidance.scale != 1

    def without_guidance(self) -> Conditioning:
        return replace(self, guidance=None)

    def save(self, path: str | Path, model: torch.nn.Module) -> None:
        """Record this conditioning in ``path`` (an exported policy's directory) and in ``model``'s generation
        config's ``suppress_tokens`` (call before ``model.save_pretrained``)."""
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.suppress_tokens = list(self.suppressed_token_ids) or None
        record = asdict(self)
        record["suppressed_token_ids"] = list(self.suppressed_token_ids)
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / CONDITIONING_FILE).write_text(json.dumps(record, indent=2))

    @classmethod
    def load(cls, path: str | Path, model: torch.nn.Module | None = None, **location: Any) -> Conditioning:
        """What the policy exported to ``path`` (a directory, or a hub id found as ``from_pretrained`` finds it:
        ``location`` holds its ``revision``, ``subfolder``, ``cache_dir``, ``token``, ``local_files_only``)
        records. Where that names no suppressed tokens (any other model, or an export of lit-reason 0.1.0),
        those of ``model``'s generation config, which ``generate`` honours."""
        configured = getattr(getattr(model, "generation_config", None), "suppress_tokens", None) or ()
        file = find_model_file(path, CONDITIONING_FILE, **location)
        if file is None:
            return cls(suppressed_token_ids=tuple(int(i) for i in configured))
        try:
            record = json.loads(file.read_text())
            guidance = record.get("guidance")
            return cls(
                response_prefix=str(record.get("response_prefix") or ""),
                suppressed_token_ids=tuple(int(i) for i in record.get("suppressed_token_ids", configured) or ()),
                guidance=Guidance(**guidance) if guidance else None,
            )
        except (ValueError, TypeError, AttributeError) as error:
            raise ValueError(
                f"{file}: not a lit-reason conditioning record ({error}); expected "
                '{"response_prefix": str, "suppressed_token_ids": [int], "guidance": null or '
                '{"negative_prefix": str, "scale": float}}'
            ) from None
