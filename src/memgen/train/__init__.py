"""Training: GPT-2 from scratch or LoRA fine-tuning, with behaviour-aware checkpoint selection."""
