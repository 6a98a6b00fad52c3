"""Hugging Face interop: what a MODEL names (`resolve`), the GPT-2 files (`format`: config.json and weights, read
and written), and GPT-2's tokenizer as HF files beside every checkpoint (`tokenizer_files`)."""
