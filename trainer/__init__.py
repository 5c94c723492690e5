"""disse.trainer: the DELSA model, losses, streaming data, training loop and evaluation."""
