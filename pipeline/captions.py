"""Captions on the synthesis side: spatial words in source captions (:class:`SpatialWordMatcher`);
`disse-synth captions` (pipeline/cli.py) previews what the rule table makes of a RIR bank's metadata.

The sentence builder itself (:func:`make_captions`: one phrase per descriptor from the rule table,
drawn with the sample's seeded RNG, joined by a template) lives in :mod:`disse.schemas.captions`,
because the trainer's rotation augmentation rebuilds captions with it too.
"""
from __future__ import annotations

import re

from disse.schemas.captions import CaptionRules

# The caption builder lives in disse.schemas.captions: the trainer rebuilds captions too (rotation
# augmentation), and pipeline and trainer share only schemas.
from disse.schemas.captions import make_captions  # noqa: E402, F401 (re-exported for render)

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
