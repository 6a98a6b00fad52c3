"""Sampling: the decoder (`decode`: prefill, cached steps, next-token rules, private generators), the one path from
(model, prompt, settings, seed) to numbered texts (`texts`, used by `gpt2lab sample`, the trainer and serve's
loader), and a completion's text as tokens arrive (`stream`: whole UTF-8 characters, stop strings)."""
