"""Recipes: each says what is specific to it and hands the rest to ``tfpretrain.Run``; run one as
``python -m recipes.<name>``."""
