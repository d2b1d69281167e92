"""How much of a [positions x vocabulary] block the CPU objective holds at once (torch-free)."""

DEFAULT_CHUNK_ELEMENTS = 1 << 23  # CPU: ~32 MB of fp32 per full-vocabulary temporary
