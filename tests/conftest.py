"""Shared fixtures. Tests never touch the network: hubs are forced offline here."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory):
    """A SMALL embedded demo, rendered once per test session (~10-30 s on 2 cores).

    Returns the output folder: ``train/``, ``val/``, ``test/`` (shards + sizes.json), ``manifest.json``
    and ``inputs/`` (dry clips, RIR bank). 8 sound types x 3 variants (one per split), 4 rooms x 3
    positions (one per split), 2 RIRs per clip and 2 clips per RIR: 16 samples per split, in
    shards of 4, every source in 2 spaces and every RIR with 2 sources.
    """
    from disse.pipeline.demo import DemoConfig, run_demo

    out = tmp_path_factory.mktemp("demo") / "demo"
    cfg = DemoConfig(types=8, clips_per_type=3, rooms=4, positions_per_room=3, rirs_per_clip=2,
                     clips_per_rir=2, shard_size=4, seed=0)
    manifest = run_demo(out, cfg, workers=2, progress=False)
    assert manifest["complete"] and manifest["skipped_samples"] == 0, manifest["skipped"]
    return out
