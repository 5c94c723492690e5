"""The metadata -> language rule table (configs/caption_rules_v1.yaml).

It lives in schemas because both sides use it: synthesis writes captions and ``space_id`` from it,
evaluation builds zero-shot prompts from it. Sentence generation itself is synthesis's business.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

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


def load_caption_rules(path: str | Path | None = None) -> CaptionRules:
    """Load a rule table; the packaged ``configs/caption_rules_v1.yaml`` by default."""
    if path is None:
        from disse.configs import config_path
        path = config_path("caption_rules_v1.yaml")
    if not Path(path).is_file():
        raise SchemaError("caption rule table not found", file=str(path))
    with open(path) as f:
        return _parse(yaml.safe_load(f), str(path))
