"""Recipes: each wires the tfpretrain API together in one main(); run as python -m recipes.<name>."""
