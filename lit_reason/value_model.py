"""A language-model trunk with a scalar head read at every token.

The outcome reward model reads ``sigmoid(value)`` at a token as the probability that the solution's final
answer will be correct given the text so far (Cobbe et al. 2021's token-level verifier); PPO's critic reads
the raw value. Saved as a Hugging Face model directory (trunk and tokenizer) plus the head's weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_reason.files import find_model_file, hub_location, with_adapter_location
from lit_reason.tensors import eval_mode, position_ids_from_mask, token_logprobs, token_logprobs_by_rows

HEAD_FILE = "value_head.safetensors"
CONFIG_FILE = "value_model.json"


LIKELIHOOD_FEATURES = 5


class ValueModel(torch.nn.Module):
    """A causal LM trunk (any ``AutoModelForCausalLM``) with a linear scalar head on its last hidden state.

    With ``likelihood_features`` the head also reads, at every response token, the trunk's own log-probability
    of that token and the running mean, minimum and sum of those log-probabilities over the response so far,
    with the number of tokens so far: the generator's confidence in what it wrote, which an ORM initialised
    from the policy can use at once instead of having to learn to extract it. (The sum and count let one
    linear head weigh the mean differently early and late in a response.)

    Args:
        trunk: the language model whose hidden states the head reads.
        head_std: initial weight scale of the head (0: zeros, so every value starts at 0).
        likelihood_features: feed the head the response's token log-probabilities as above.
    """

    def __init__(self, trunk: torch.nn.Module, head_std: float = 0.0, likelihood_features: bool = False) -> None:
        super().__init__()
        self.trunk = trunk
        self.likelihood_features = likelihood_features
        extra = LIKELIHOOD_FEATURES if likelihood_features else 0
        self.head = torch.nn.Linear(trunk.config.get_text_config().hidden_size + extra, 1)
        torch.nn.init.normal_(self.head.weight, std=head_std)
        torch.nn.init.zeros_(self.head.bias)

    @property
    def max_length(self) -> int:
        return int(getattr(self.trunk.config.get_text_config(), "max_position_embeddings", 1 << 30))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_mask: torch.Tensor | None = None,
        lm_logits: bool = False,
        detach_trunk: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Values of every position, and optionally the trunk's next-token logits.

        Args:
            input_ids: (B, L) long, left padding allowed.
            attention_mask: (B, L) long.
            response_mask: (B, L) bool, the response tokens whose log-probabilities the likelihood features
                summarise (default: every attended token).
            lm_logits: also return the language-model logits.
            detach_trunk: the head reads the trunk's outputs (hidden states, likelihood features) without
                backpropagating into them: a loss on the values trains the head alone.

        Returns:
            values (B, L) float32 and logits (B, L, V) or None.
        """
        if input_ids.shape[1] > self.max_length:
            raise ValueError(
                f"{input_ids.shape[1]} tokens exceed the value model's context of {self.max_length}; "
                "shorten prompts or max_new_tokens"
            )
        hidden = self.trunk.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
        ).last_hidden_state
        output_layer = self.trunk.get_output_embeddings()
        logits = output_layer(hidden) if lm_logits else None
        if self.likelihood_features:
            mask = attention_mask.bool() if response_mask is None else response_mask
            # Scoring needs no logits: they are made a few rows at a time, never (B, L, V) at once.
            logprobs = (
                token_logprobs(logits, input_ids, temperature=1.0)
                if logits is not None
                else token_logprobs_by_rows(hidden, output_layer, input_ids, temperature=1.0)
            )
            features = likelihood_features(logprobs, mask)
        hidden = hidden.to(self.head.weight.dtype)  # a trunk loaded in half precision or quantized
        if self.likelihood_features:
            hidden = torch.cat([hidden, features.to(hidden.dtype)], dim=-1)
        values = self.head(hidden.detach() if detach_trunk else hidden).squeeze(-1).float()
        return values, (logits if lm_logits else None)

    @torch.no_grad()
    def score(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor, *, batch_size: int
    ) -> torch.Tensor:
        """``sigmoid`` of the values of a batch of any size, ``batch_size`` rows at a time, in eval mode and
        on this model's device: (R, L) ids, masks -> (R, L) float64 on the CPU. Float64 because float32's
        sigmoid is exactly 1 for every value above about 17, which a confident ORM reaches: its best samples
        would tie, and a rerank would take the first of them."""
        device = next(self.parameters()).device
        scores = []
        with eval_mode(self):
            for start in range(0, len(input_ids), batch_size):
                rows = slice(start, start + batch_size)
                values, _ = self(
                    input_ids[rows].to(device), attention_mask[rows].to(device), response_mask[rows].to(device)
                )
                scores.append(torch.sigmoid(values.double()).cpu())
        return torch.cat(scores)

    def save(self, path: str | Path, tokenizer, state: dict[str, torch.Tensor] | None = None) -> None:
        """Write the trunk and tokenizer (loadable with ``from_pretrained``) and the head to ``path``.

        ``state``: a full state dict to write instead of this module's own (gathered from shards)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = state if state is not None else self.state_dict()
        trunk_state = {k.removeprefix("trunk."): v for k, v in state.items() if k.startswith("trunk.")}
        self.trunk.save_pretrained(path, state_dict=trunk_state)
        tokenizer.save_pretrained(path)
        save_file(
            {k.removeprefix("head."): v.contiguous() for k, v in state.items() if k.startswith("head.")},
            path / HEAD_FILE,
        )
        config = {"kind": "value_model", "head": HEAD_FILE, "likelihood_features": self.likelihood_features}
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))

    @classmethod
    def load(cls, path: str | Path, load_kwargs: dict[str, Any] | None = None) -> tuple[ValueModel, object]:
        """A saved value model and its tokenizer, from a directory or the hub; ``load_kwargs``: the trunk's
        ``from_pretrained`` options (their ``revision``, ``subfolder``, ``cache_dir``, ``token`` find the head)."""
        load_kwargs = load_kwargs or {}
        location = hub_location(load_kwargs)
        head_file = find_model_file(path, HEAD_FILE, **location)
        if head_file is None:
            raise FileNotFoundError(
                f"{path} is not a saved reward/value model (no {HEAD_FILE}); export one with "
                "`lit-reason fit --config configs/orm.yaml` and pass its policy/ directory (or its hub id)"
            )
        config_file = find_model_file(path, CONFIG_FILE, **location)
        config = json.loads(config_file.read_text()) if config_file is not None else {}
        model = cls(
            AutoModelForCausalLM.from_pretrained(str(path), **with_adapter_location(load_kwargs)),
            likelihood_features=config.get("likelihood_features", False),
        )
        head = load_file(head_file)
        if head["weight"].shape != model.head.weight.shape:
            raise ValueError(
                f"{head_file} holds a head over {head['weight'].shape[-1]} inputs but this model's reads "
                f"{model.head.weight.shape[-1]} (hidden size plus likelihood features): it was exported by another "
                "version of lit-reason; train it again with `lit-reason fit --config configs/orm.yaml`"
            )
        model.head.load_state_dict(head)
        return model, AutoTokenizer.from_pretrained(str(path), **location)


def freeze_unused_output_head(trunk: torch.nn.Module, used: bool) -> None:
    """Freeze ``trunk``'s output head when no loss reads it (``used`` False) and it is a matrix of its own (an
    untied head; a tied one is the input embeddings): DDP needs every trained weight to get a gradient, and
    the optimizer would keep state for a (V, D) matrix for nothing."""
    output, embeddings = trunk.get_output_embeddings(), trunk.get_input_embeddings()
    if not used and output.weight is not embeddings.weight:
        output.requires_grad_(False)


def load_frozen_orm(path: str, tokenizer, load_kwargs: dict[str, Any] | None = None) -> ValueModel:
    """An exported outcome reward model (its trunk loaded with ``load_kwargs``), frozen and in eval mode; its
    tokenizer must agree with the policy's (``tokenizer``) on every token it knows."""
    network, orm_tokenizer = ValueModel.load(path, load_kwargs)
    policy_vocab = tokenizer.get_vocab()
    mismatched = [token for token, index in orm_tokenizer.get_vocab().items() if policy_vocab.get(token) != index]
    if mismatched:
        raise ValueError(
            f"the ORM at {path} uses another tokenizer than the policy ({len(mismatched)} tokens differ, e.g. "
            f"{mismatched[:3]}); train the ORM from the same model family as the policy"
        )
    network.requires_grad_(False)
    return network.eval()


def likelihood_features(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per position: the log-prob of its token under the previous position's logits, the running mean,
    minimum and sum of those over the masked tokens so far, and how many masked tokens there were so far;
    zeros before the first masked token.

    Args:
        token_logprobs: (B, L) each token's log-prob (``lit_reason.tensors.token_logprobs`` at temperature 1).
        mask: (B, L) bool, the tokens to summarise.

    Returns:
        (B, L, 5) float32.
    """
    logprobs = token_logprobs.float() * mask
    running_sum = logprobs.cumsum(-1)
    count = mask.cumsum(-1).float()
    running_mean = running_sum / count.clamp(min=1)
    running_min = torch.cummin(logprobs, dim=-1).values  # unmasked entries are 0, the largest log-prob
    return torch.stack([logprobs, running_mean, running_min, running_sum, count], dim=-1)
