"""Pretraining objectives that produce encoders the fine-tuning side loads."""
