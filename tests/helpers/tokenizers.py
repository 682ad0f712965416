"""Subword tokenizers built locally, in the two families real checkpoints use, for tests that must see what a
character vocabulary hides (word-start markers, merges across spaces)."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]


def _wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def byte_level_bpe(texts: Iterable[str], vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A GPT-2-style tokenizer: byte-level pre-tokenization (spaces join the following word), BPE merges."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(texts, trainer)
    return _wrap(backend)


def sentencepiece_style(texts: Iterable[str], vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A Llama-2-style tokenizer: spaces become "▁" and a text starts with one (Metaspace), BPE merges, and
    newlines stand alone (Llama's are byte tokens that no merge includes)."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL)
    backend.train_from_iterator(texts, trainer)
    return _wrap(backend)
