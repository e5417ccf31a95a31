"""Encoder families. Each module exposes ``load_encoder`` returning a ``LoadedEncoder``."""
