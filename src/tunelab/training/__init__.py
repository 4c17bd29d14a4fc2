"""Fine-tuning: full, LoRA and soft-prompt methods on the user's data, with the HF Trainer."""
