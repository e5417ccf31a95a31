"""Recipes: each says what is specific to it and hands the rest to ``tfpretrain.Run``; run one as
``python -m recipes.<name>``."""

# Loads tfpretrain before a recipe imports TensorFlow, so TensorFlow's C++ logging is quiet
# (tfpretrain/_entry.py).
import tfpretrain  # noqa: E402, F401
