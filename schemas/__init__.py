"""Data contracts shared by synthesis (disse.pipeline) and training (disse.trainer).

The shard format defined here is the only thing the two sides share (DESIGN.md).
"""
from disse.schemas.errors import SchemaError
from disse.schemas.features import FeatureParams, load_feature_params
from disse.schemas.records import DryClip, RirRecord, read_clips_csv, read_rirs_csv
from disse.schemas.shard import (
    SCHEMA_VERSION,
    ShardMeta,
    decode_sample,
    encode_sample,
    stable_id_int,
)
from disse.schemas.captions import CaptionRules, load_caption_rules

__all__ = [
    "SchemaError",
    "FeatureParams",
    "load_feature_params",
    "DryClip",
    "RirRecord",
    "read_clips_csv",
    "read_rirs_csv",
    "SCHEMA_VERSION",
    "ShardMeta",
    "encode_sample",
    "decode_sample",
    "stable_id_int",
    "CaptionRules",
    "load_caption_rules",
]
