"""disse.trainer.evaluation: the standalone evaluator and embedder (never imports the training loop or losses)."""
