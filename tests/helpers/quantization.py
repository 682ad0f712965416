"""``from_pretrained`` options of a 4-bit frozen model (bitsandbytes; on the CPU too), as a config file gives
them."""

FOUR_BIT = {"quantization_config": {"load_in_4bit": True, "bnb_4bit_compute_dtype": "float32"}}
