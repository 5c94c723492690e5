"""disse.trainer.cli: the click commands disse-train, disse-eval, disse-embed (library modules never import click)."""
