"""``from_pretrained`` options of a 4-bit frozen model (bitsandbytes; on the CPU too), as a config file gives
them, and the micro preset's shape that bitsandbytes can quantize on every CPU."""

FOUR_BIT = {"quantization_config": {"load_in_4bit": True, "bnb_4bit_compute_dtype": "float32"}}

# On a CPU with AVX512-BF16, bitsandbytes repacks 4-bit weights for its own kernel, which needs every linear
# layer's input width to be a multiple of its 64-wide quantization blocks: the micro preset's 32 fails there
# ("shape '[32, 0]' is invalid") and passes on CPUs without the instructions.
QUANTIZABLE_MICRO = {"hidden_size": 64, "intermediate_size": 128}
