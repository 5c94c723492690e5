"""`disse-synth captions`: preview what the rule table makes of a RIR bank's metadata.

The sentence builder itself (:func:`make_captions`: one phrase per descriptor from the rule table,
drawn with the sample's seeded RNG, joined by a template) lives in :mod:`disse.schemas.captions`,
because the trainer's rotation augmentation rebuilds captions with it too.
"""
from __future__ import annotations

import re

from disse.schemas.captions import CaptionRules

# The caption builder lives in disse.schemas.captions: the trainer rebuilds captions too (rotation
# augmentation), and pipeline and trainer share only schemas.
from disse.schemas.captions import make_captions  # noqa: E402

#: Words and phrases that, in a *source* caption, already say where the sound is or what the room
#: does (direction, elevation, distance, room, reverberation). Matched whole-word and
#: case-insensitively, together with every phrase of the caption rule table. Documented in
#: docs/synthesis.md ("Caption conflicts").
SPATIAL_WORDS: tuple[str, ...] = (
    # distance
    "distant", "distance", "far", "far away", "faraway", "far off", "nearby", "near", "close",
    "close by", "closeby", "up close",
    # room and reverberation
    "echo", "echoes", "echoed", "echoing", "echoey", "echoy", "reverb", "reverberant",
    "reverberates", "reverberating", "reverberation", "reverberations", "hall", "cave", "tunnel",
    "indoors", "outdoors", "outside", "inside", "large room", "small room", "empty room",
    # direction and elevation
    "left", "right", "front", "behind", "rear", "above", "below", "overhead", "underneath",
    "beneath", "upstairs", "downstairs",
)
#: Phrases removed before matching because a spatial word in them means something else.
NOT_SPATIAL: tuple[str, ...] = ("right after", "right before", "right now", "right away",
                                "all right", "right then", "left over", "close the", "close a")


class SpatialWordMatcher:
    """Finds spatial words (:data:`SPATIAL_WORDS` and the rule table's phrases) in a caption."""

    def __init__(self, rules: CaptionRules | None = None, words: tuple[str, ...] = SPATIAL_WORDS) -> None:
        phrases = set(w.lower() for w in words)
        if rules is not None:
            for attr in rules.attributes.values():
                for b in attr.bins:
                    phrases.update(p.lower() for p in b.phrases)
        # longest first, so "far away" wins over "far"; spaces match any whitespace
        alts = sorted(phrases, key=lambda p: (-len(p), p))
        self._pattern = re.compile(r"\b(" + "|".join(r"\s+".join(map(re.escape, p.split())) for p in alts)
                                   + r")\b", re.IGNORECASE)
        self._ignore = re.compile(r"\b(" + "|".join(r"\s+".join(map(re.escape, p.split())) for p in NOT_SPATIAL)
                                  + r")\b", re.IGNORECASE)

    def __call__(self, caption: str) -> list[str]:
        """The spatial words of ``caption``, lower-case, sorted, each once (``[]`` when none)."""
        text = self._ignore.sub(" ", caption)
        return sorted({" ".join(m.group(1).lower().split()) for m in self._pattern.finditer(text)})


def _make_command():
    import click

    @click.command("captions")
    @click.option("--rirs", "rirs_csv", required=True, type=click.Path(dir_okay=False),
                  help="RIR CSV whose metadata to describe.")
    @click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True)
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--source-caption", default="A dog barks.", show_default=True,
                  help="Source caption to merge into the full caption.")
    @click.option("--rules", "rules_yaml", type=click.Path(dir_okay=False), default=None,
                  help="Caption rule table YAML (default: configs/caption_rules_v1.yaml).")
    def captions_command(rirs_csv, limit, seed, source_caption, rules_yaml):
        """Preview metadata -> language: descriptors, space_id and captions of the first RIRs."""
        from disse.pipeline.splits import per_sample_rng
        from disse.schemas import load_caption_rules, read_rirs_csv

        rules = load_caption_rules(rules_yaml)
        for rir in read_rirs_csv(rirs_csv)[:limit]:
            values = {"azimuth_deg": rir.azimuth_deg, "elevation_deg": rir.elevation_deg,
                      "source_distance_m": rir.source_distance_m, "area_m2": rir.area_m2,
                      "t30_ms": rir.t30_ms}
            descriptors = rules.describe(values)
            caps = make_captions(rules, descriptors, source_caption, per_sample_rng(seed, rir.rir_id))
            click.echo(f"{rir.rir_id}: az {rir.azimuth_deg:.1f} deg, el {rir.elevation_deg:.1f} deg, "
                       f"{rir.source_distance_m:.2f} m, {rir.area_m2:.1f} m2, T30 {rir.t30_ms:.0f} ms")
            click.echo(f"  space_id: {rules.space_id(descriptors)}")
            click.echo(f"  spatial:  {caps.spatial_caption}")
            click.echo(f"  caption:  {caps.caption}")

    return captions_command


captions_command = _make_command()
