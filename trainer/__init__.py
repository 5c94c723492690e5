"""disse.trainer: the DELSA model, its streaming data, training and evaluation, each a package.

=====================  =====================================================================  ==================
package                owns                                                                   may import
=====================  =====================================================================  ==================
``model``              DELSA and the official DISSE model, encoders, physics heads, foreign   schemas
                       weights (LAION-CLAP, the release), the one checkpoint loader
``data``               shard streams, decoding, collation, augmentation                        schemas, model
``evaluation``         embedding loop, embeddings files, metrics, report, ``Embedder``         schemas, model, data,
                                                                                              pipeline.frontend
``training``           config, loop, losses, distributed, resumable checkpoints, run log       schemas, model, data,
                                                                                              evaluation
``cli``                ``disse-train``, ``disse-eval``, ``disse-embed`` (click lives here)      everything above
=====================  =====================================================================  ==================

The layers are contracts in pyproject.toml (``[tool.importlinter]``), checked by the test suite.
The flat module names of earlier releases (``disse.trainer.embed``, ``disse.trainer.evaluate``, ...)
still import: :data:`OLD_NAMES` maps each to the module that now holds it (the same module object).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# earlier flat module -> its home now; importing the old name returns the new module itself
OLD_NAMES = {
    "audio_encoder": "model.audio_encoder", "htsat": "model.htsat", "spatial": "model.spatial",
    "text_encoder": "model.text_encoder", "physics": "model.physics", "official_model": "model.official",
    "clap_checkpoint": "model.clap_checkpoint",
    "augment": "data.augment",
    "train": "training.loop", "config": "training.config", "losses": "training.losses",
    "distributed": "training.distributed", "logging_utils": "training.logging_utils",
    "checkpoint": "training.checkpoint",
    "evaluate": "evaluation.evaluate", "metrics": "evaluation.metrics",
    "official_metrics": "evaluation.official_metrics", "report": "evaluation.report",
    "embed": "evaluation.embedder", "eval_cli": "cli.eval", "train_cli": "cli.train",
}


class _OldNameLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:  # the target module is already executed
        pass

    def get_code(self, fullname):  # ``python -m`` of an old name runs the new module's code
        return importlib.util.find_spec(self.target).loader.get_code(self.target)


class _OldNameFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.rpartition(".")
        if prefix != __name__ or name not in OLD_NAMES:
            return None
        new = f"{__name__}.{OLD_NAMES[name]}"
        # the new file as origin: ``python -m`` (runpy) sets ``__file__`` from it
        return importlib.util.spec_from_loader(fullname, _OldNameLoader(new), origin=importlib.util.find_spec(new).origin)


if not any(isinstance(f, _OldNameFinder) for f in sys.meta_path):
    sys.meta_path.append(_OldNameFinder())
