"""Metadata -> language: spatial captions from the rule table (disse.schemas.captions).

Each descriptor label has several phrasings in the rule table; one is drawn per sample with the
sample's own seeded RNG, and one of a few sentence templates joins them. Every caption names all
five descriptors (direction, elevation, distance, room size, reverberation) with a phrase taken
verbatim from the table, so the words always follow the table's thresholds.

``spatial_caption`` is the spatial description alone; ``caption`` merges it with the source
caption into one sentence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from disse.schemas import CaptionRules

_SPATIAL_TEMPLATES = (
    "A sound {direction}, {elevation}, {distance}, {room}.",
    "A sound {distance}, {direction} and {elevation}, {room}.",
    "Heard {direction}, {elevation}, {distance}, {room}.",
    "{Room}: a sound {direction}, {elevation}, {distance}.",
)
_FULL_TEMPLATES = (
    "{Source} {direction}, {elevation}, {distance}, {room}.",
    "{Source}, {distance} and {direction}, {elevation}, {room}.",
    "{Room}, {source} {direction}, {elevation}, {distance}.",
    "{Source} {elevation}, {direction}, {distance}, {room}.",
)


@dataclass(frozen=True)
class Captions:
    spatial_caption: str
    caption: str
    phrases: dict  # attribute -> the phrase used (for inspection and tests)


def _room_phrase(room: str, reverb: str) -> str:
    """'in a small room' + 'with almost no echo' / 'acoustically dampened' -> one noun phrase."""
    if reverb.startswith("with "):
        return f"{room} {reverb}"
    return f"{room} that is {reverb}"


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _decapitalise(text: str) -> str:
    """Lower the first letter unless the first word looks like an acronym or a name ('TV', 'I')."""
    first = text.split(" ", 1)[0]
    if len(first) > 1 and first[1:].islower() or first in ("A",):
        return text[:1].lower() + text[1:]
    return text


def clean_source_caption(caption: str) -> str:
    """Strip whitespace and the final full stop(s) so the caption can be continued."""
    return " ".join(caption.split()).rstrip(" .!")


def choose_phrases(rules: CaptionRules, descriptors: dict[str, str], rng: np.random.Generator) -> dict[str, str]:
    """One phrase per attribute, drawn uniformly from the rule table's phrasings of its label."""
    out = {}
    for attribute in rules.attributes:  # table order: deterministic draws
        options = rules.phrases(attribute, descriptors[attribute])
        out[attribute] = options[int(rng.integers(len(options)))]
    return out


def make_captions(rules: CaptionRules, descriptors: dict[str, str], source_caption: str,
                  rng: np.random.Generator) -> Captions:
    """Spatial caption and full caption for one sample (consumes a fixed number of RNG draws)."""
    ph = choose_phrases(rules, descriptors, rng)
    room = _room_phrase(ph["room_size"], ph["reverberation"])
    slots = {"direction": ph["direction"], "elevation": ph["elevation"], "distance": ph["distance"],
             "room": room, "Room": _capitalise(room)}
    spatial = _SPATIAL_TEMPLATES[int(rng.integers(len(_SPATIAL_TEMPLATES)))].format(**slots)
    src = clean_source_caption(source_caption)
    full = _FULL_TEMPLATES[int(rng.integers(len(_FULL_TEMPLATES)))].format(
        Source=_capitalise(src), source=_decapitalise(src), **slots)
    return Captions(spatial_caption=spatial, caption=full, phrases=ph)


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
