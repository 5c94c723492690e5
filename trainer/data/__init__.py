"""disse.trainer.data: shard streams for training and evaluation (reading, decoding, collation, augmentation)."""
from disse.trainer.data.loader import (
    DataConfig,
    ErrorLog,
    EvalStream,
    FEATURE_PRESETS,
    OMNI_DEGAIN,
    ShardList,
    StreamPosition,
    TARGET_KEYS,
    TrainStream,
    collate,
    collate_iv,
    decode_raw,
    eval_loader,
    omni_scale,
    resolve_shards,
    shard_features,
    slot_pass_size,
    slot_plan,
    steps_per_epoch,
    strip_private,
    train_loader,
)

__all__ = ["DataConfig", "ShardList", "resolve_shards", "slot_plan", "slot_pass_size", "ErrorLog", "decode_raw", "omni_scale", "collate_iv", "collate", "StreamPosition", "TrainStream", "EvalStream", "train_loader", "eval_loader", "shard_features", "steps_per_epoch", "strip_private", "TARGET_KEYS", "FEATURE_PRESETS", "OMNI_DEGAIN"]
