"""The metadata -> language rule table (configs/caption_rules_v1.yaml).

It lives in schemas because both sides use it: synthesis writes captions and ``space_id`` from it,
evaluation builds zero-shot prompts from it, and the trainer's rotation augmentation rebuilds a
turned sample's captions with the same sentence builder (:func:`make_captions`) as the renderer.

Sentences: each descriptor label has several phrasings in the rule table; one is drawn per sample
with the sample's own seeded RNG, and one of a few sentence templates joins them. Every caption
names all five descriptors with a phrase taken verbatim from the table. ``spatial_caption`` is the
spatial description alone; ``caption`` merges it with the source caption into one sentence.
"""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from disse.configs import config_path
from disse.schemas.errors import SchemaError

_BOUNDS = {"ge": lambda x, b: x >= b, "gt": lambda x, b: x > b,
           "le": lambda x, b: x <= b, "lt": lambda x, b: x < b}


@dataclass(frozen=True)
class DescriptorBin:
    label: str
    ranges: tuple[dict, ...]
    phrases: tuple[str, ...]

    def holds(self, value: float) -> bool:
        return any(all(_BOUNDS[op](value, bound) for op, bound in r.items()) for r in self.ranges)


@dataclass(frozen=True)
class Attribute:
    name: str
    quantity: str  # key in the metadata, e.g. "azimuth_deg"
    bins: tuple[DescriptorBin, ...]

    def label_of(self, value: float) -> str:
        if not math.isfinite(value):
            raise SchemaError(f"not finite: {value!r}", field=self.quantity)
        for b in self.bins:
            if b.holds(value):
                return b.label
        raise SchemaError(f"value {value} matches no bin of '{self.name}'", field=self.quantity)

    @property
    def labels(self) -> list[str]:
        return [b.label for b in self.bins]

    def bin(self, label: str) -> DescriptorBin:
        for b in self.bins:
            if b.label == label:
                return b
        raise KeyError(f"{self.name}: no descriptor {label!r}; known: {self.labels}")


@dataclass(frozen=True)
class CaptionRules:
    version: int
    attributes: dict[str, Attribute]
    space_id_order: tuple[str, ...]
    prompt_template: str

    def describe(self, values: dict[str, float]) -> dict[str, str]:
        """Physical values (keys as in the shard json, e.g. ``azimuth_deg``) -> descriptor labels."""
        out = {}
        for name, attr in self.attributes.items():
            if attr.quantity not in values:
                raise SchemaError(f"missing quantity for '{name}'", field=attr.quantity)
            out[name] = attr.label_of(float(values[attr.quantity]))
        return out

    def space_id(self, descriptors: dict[str, str]) -> str:
        """The spatial condition as language sees it: descriptors joined in a fixed order."""
        return "|".join(descriptors[a] for a in self.space_id_order)

    def phrases(self, attribute: str, label: str) -> tuple[str, ...]:
        return self.attributes[attribute].bin(label).phrases

    def prompts(self, attribute: str) -> dict[str, str]:
        """Zero-shot text prompt for every descriptor of one attribute: ``{label: prompt}``."""
        attr = self.attributes[attribute]
        return {b.label: self.prompt_template.format(phrase=b.phrases[0]) for b in attr.bins}


def _parse(d: dict, source: str) -> CaptionRules:
    try:
        attributes = {}
        for name, spec in d["attributes"].items():
            bins = []
            for b in spec["bins"]:
                for r in b["ranges"]:
                    bad = set(r) - set(_BOUNDS)
                    if bad:
                        raise SchemaError(f"unknown bound(s) {sorted(bad)} in bin {b['label']!r}",
                                          file=source, field=f"attributes.{name}")
                phrases = tuple(str(p) for p in b["phrases"])
                if not phrases:
                    raise SchemaError(f"bin {b['label']!r} has no phrases", file=source,
                                      field=f"attributes.{name}")
                bins.append(DescriptorBin(str(b["label"]), tuple(dict(r) for r in b["ranges"]), phrases))
            attributes[name] = Attribute(name, str(spec["quantity"]), tuple(bins))
        order = tuple(d["space_id_order"])
        for a in order:
            if a not in attributes:
                raise SchemaError(f"space_id_order names unknown attribute {a!r}", file=source,
                                  field="space_id_order")
        return CaptionRules(int(d["version"]), attributes, order, str(d.get("prompt_template", "{phrase}")))
    except KeyError as exc:
        raise SchemaError(f"missing key {exc}", file=source) from None


RULE_SETS = {"project": "caption_rules_v1.yaml", "v1": "caption_rules_v1.yaml",
             "official": "caption_rules_official.yaml"}


def load_caption_rules(path: str | Path | None = None) -> "CaptionRules | OfficialCaptionRules":
    """Load a rule table; the packaged ``configs/caption_rules_v1.yaml`` by default.

    ``path`` may also be a rule-set name (``project`` / ``v1`` or ``official``). A table with
    ``preset: official`` loads as :class:`OfficialCaptionRules`.
    """
    if path is None:
        path = config_path("caption_rules_v1.yaml")
    elif str(path) in RULE_SETS and not Path(path).is_file():
        path = config_path(RULE_SETS[str(path)])
    if not Path(path).is_file():
        raise SchemaError(f"caption rule table not found (a YAML file or one of {sorted(RULE_SETS)})",
                          file=str(path))
    with open(path) as f:
        d = yaml.safe_load(f)
    if isinstance(d, dict) and d.get("preset") == "official":
        return _parse_official(d, str(path))
    return _parse(d, str(path))


def rule_set_of_version(version: object) -> str | None:
    """The packaged rule set (``"v1"``, ``"official"``) whose table has ``version`` (what a shard's
    ``render.rules_version`` records), or None for a table that is not packaged."""
    for name in ("v1", "official"):
        if str(load_caption_rules(name).version) == str(version):
            return name
    return None


# ------------------------------------------------------------------------------------------------
# The DISSE release's rule set (reference §3.1), reproduced exactly

NO_DESCRIPTOR = "none"  # label of a value that no official rule matches (no words, no RNG draw)


@dataclass(frozen=True)
class OfficialCaptionRules:
    """The release's lexicon, templates and draw order (configs/caption_rules_official.yaml).

    Its labels call positive azimuth (FOA +Y) "right": left/right mirrored against AmbiX.
    :meth:`caption` is the release's ``augment_caption`` given a ``random.Random``; over a
    manifest, one ``random.Random(42)`` advancing row by row reproduces the release's texts.
    """

    version: str
    attributes: dict[str, Attribute]
    draw_order: tuple[str, ...]
    loc_order: tuple[str, ...]
    templates: tuple[str, ...]
    space_id_order: tuple[str, ...]
    preset: str = "official"

    def describe(self, values: dict[str, float]) -> dict[str, str]:
        """Physical values -> labels; ``"none"`` where no rule matches (the release's empty string)."""
        out = {}
        for name, attr in self.attributes.items():
            if attr.quantity not in values:
                raise SchemaError(f"missing quantity for '{name}'", field=attr.quantity)
            value = float(values[attr.quantity])
            if not math.isfinite(value):
                raise SchemaError(f"not finite: {value!r}", field=attr.quantity)
            out[name] = next((b.label for b in attr.bins if b.holds(value)), NO_DESCRIPTOR)
        return out

    def space_id(self, descriptors: dict[str, str]) -> str:
        return "|".join(descriptors[a] for a in self.space_id_order)

    def phrases(self, attribute: str, label: str) -> tuple[str, ...]:
        return () if label == NO_DESCRIPTOR else self.attributes[attribute].bin(label).phrases

    def caption(self, orig: str, descriptors: dict[str, str], rng) -> tuple[str, dict[str, str]]:
        """The release's caption for one row; ``rng`` is a ``random.Random`` (advanced in place).

        Returns the sentence and the drawn phrase per attribute ("" where no rule matched).
        """
        words = {}
        for attribute in self.draw_order:
            options = self.phrases(attribute, descriptors[attribute])
            words[attribute] = rng.choice(list(options)) if options else ""
        loc = " ".join(words[a] for a in self.loc_order if words[a])
        room = " ".join(w for w in (words["room_size"], words["reverberation"]) if w) + " room"
        template = rng.choice(list(self.templates))
        return template.format(orig=orig, loc=loc, room=room), words

    def prompts(self, attribute: str) -> dict[str, str]:
        """Zero-shot prompt per label: the first template with that descriptor alone (an addition of
        this project; the release defines no prompts)."""
        attr = self.attributes[attribute]
        out = {}
        for b in attr.bins:
            loc = b.phrases[0] if attribute in self.loc_order else ""
            room = (b.phrases[0] + " room") if attribute not in self.loc_order else "room"
            out[b.label] = self.templates[0].format(orig="a sound", loc=loc, room=room)
        return out


def _parse_official(d: dict, source: str) -> OfficialCaptionRules:
    try:
        base = _parse({**d, "version": 0, "space_id_order": d["space_id_order"]}, source)
        rules = OfficialCaptionRules(
            version=str(d["version"]), attributes=base.attributes, draw_order=tuple(d["draw_order"]),
            loc_order=tuple(d["loc_order"]), templates=tuple(str(t) for t in d["templates"]),
            space_id_order=base.space_id_order)
    except KeyError as exc:
        raise SchemaError(f"missing key {exc}", file=source) from None
    needed = {"distance", "direction", "elevation", "room_size", "reverberation"}
    for key in ("draw_order", "space_id_order"):
        if set(getattr(rules, key)) != needed or len(getattr(rules, key)) != len(needed):
            raise SchemaError(f"must name each of {sorted(needed)} once", file=source, field=key)
    if not set(rules.loc_order) <= needed:
        raise SchemaError("names an unknown attribute", file=source, field="loc_order")
    if set(rules.attributes) != needed:
        raise SchemaError(f"attributes must be exactly {sorted(needed)}", file=source, field="attributes")
    for t in rules.templates:
        try:
            t.format(orig="", loc="", room="")
        except (KeyError, IndexError) as exc:
            raise SchemaError(f"template {t!r} uses an unknown slot {exc}", file=source,
                              field="templates") from None
    return rules


# ------------------------------------------------------------------------------------------------
# metadata -> language (used by disse-synth render and by the trainer's rotation augmentation)

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
    """Spatial caption and full caption for one sample (consumes a fixed number of RNG draws).

    With :class:`OfficialCaptionRules` the release's sentence, drawn with a ``random.Random``
    seeded from one draw of ``rng``; ``spatial_caption`` is then the same sentence (the release
    trains both text heads on the one caption) and the source caption is used unchanged.
    """
    if isinstance(rules, OfficialCaptionRules):
        text, words = rules.caption(source_caption, descriptors, random.Random(int(rng.integers(2 ** 63))))
        return Captions(spatial_caption=text, caption=text, phrases=words)
    ph = choose_phrases(rules, descriptors, rng)
    room = _room_phrase(ph["room_size"], ph["reverberation"])
    slots = {"direction": ph["direction"], "elevation": ph["elevation"], "distance": ph["distance"],
             "room": room, "Room": _capitalise(room)}
    spatial = _SPATIAL_TEMPLATES[int(rng.integers(len(_SPATIAL_TEMPLATES)))].format(**slots)
    src = clean_source_caption(source_caption)
    full = _FULL_TEMPLATES[int(rng.integers(len(_FULL_TEMPLATES)))].format(
        Source=_capitalise(src), source=_decapitalise(src), **slots)
    return Captions(spatial_caption=spatial, caption=full, phrases=ph)


def prompt_ensemble(rules: CaptionRules, template: int = 0) -> list[tuple[dict[str, str], str]]:
    """Every combination of descriptor labels as a spatial caption (first phrase of each label, one
    template): ``[(descriptors, caption), ...]`` (864 for the v1 table).

    Zero-shot classification of one attribute averages the text embeddings of all captions that
    carry a label (CLIP's prompt ensembling): the class prototype is an in-distribution sentence
    marginalised over the other attributes, where a lone "A sound to the left." is not what the
    text heads were trained on.
    """
    names = list(rules.attributes)
    out = []
    if isinstance(rules, OfficialCaptionRules):  # the release's first template, first synonyms, no source
        for labels in itertools.product(*(rules.attributes[a].labels for a in names)):
            descriptors = dict(zip(names, labels))
            words = {a: rules.phrases(a, descriptors[a])[0] for a in names}
            loc = " ".join(words[a] for a in rules.loc_order)
            room = f"{words['room_size']} {words['reverberation']} room"
            out.append((descriptors, rules.templates[template].format(orig="a sound", loc=loc, room=room)))
        return out
    for labels in itertools.product(*(rules.attributes[a].labels for a in names)):
        descriptors = dict(zip(names, labels))
        ph = {a: rules.phrases(a, descriptors[a])[0] for a in names}
        room = _room_phrase(ph["room_size"], ph["reverberation"])
        slots = {"direction": ph["direction"], "elevation": ph["elevation"], "distance": ph["distance"],
                 "room": room, "Room": _capitalise(room)}
        out.append((descriptors, _SPATIAL_TEMPLATES[template].format(**slots)))
    return out
