"""How a policy is conditioned: written with an export, read back, and read from exports of lit-reason 0.1.0."""

import json

import pytest

from lit_reason.conditioning import CONDITIONING_FILE, Conditioning, Guidance
from lit_reason.policy import PolicySpec, load_model


@pytest.fixture
def micro(char_tokenizer):
    return load_model(PolicySpec(name_or_path="micro"), char_tokenizer)


def test_an_export_records_and_restores_its_conditioning(tmp_path, micro):
    conditioning = Conditioning("[GOOD]", (100, 101), Guidance(negative_prefix="[BAD]", scale=2.0))
    conditioning.save(tmp_path, micro)
    assert micro.generation_config.suppress_tokens == [100, 101]  # what model.generate honours
    assert Conditioning.load(tmp_path) == conditioning
    (tmp_path / "elsewhere").mkdir()
    assert Conditioning.load(tmp_path / "elsewhere") == Conditioning()


def test_exports_of_lit_reason_0_1_0_keep_their_suppressed_tokens(tmp_path, micro):
    # 0.1.0 recorded the prefix and guidance in lit_reason.json and the suppressed tokens only in the
    # generation config (any model's generation config may list some).
    micro.generation_config.suppress_tokens = [100, 101]
    assert Conditioning.load(tmp_path, micro) == Conditioning(suppressed_token_ids=(100, 101))
    old = {"response_prefix": "[GOOD]", "bad_token": "[BAD]", "algorithm": "ReturnConditionedRL"}
    (tmp_path / CONDITIONING_FILE).write_text(json.dumps({**old, "guidance": {"negative_prefix": "[BAD]", "scale": 3}}))
    assert Conditioning.load(tmp_path, micro) == Conditioning("[GOOD]", (100, 101), Guidance("[BAD]", 3.0))


def test_a_malformed_record_names_its_file(tmp_path):
    (tmp_path / CONDITIONING_FILE).write_text('{"guidance": {"scale": 2}}')
    with pytest.raises(ValueError, match=CONDITIONING_FILE):
        Conditioning.load(tmp_path)
