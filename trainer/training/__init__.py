"""disse.trainer.training: the training config, loop, losses, distributed helpers, resumable checkpoints."""
