"""Training: `loop` (the one training loop every stage uses), `checkpointing` (exact resume), `distributed`
(torchrun / DDP), `runlog` (the logging interface the loop writes to)."""
