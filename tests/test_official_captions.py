"""The release's caption rule set (reference §3.1), selectable beside this project's own."""
from __future__ import annotations

import random

import numpy as np
import pytest

from disse.schemas import SchemaError, load_caption_rules
from disse.schemas.captions import CaptionRules, OfficialCaptionRules, make_captions

GOLDEN_ROW = {"source_distance_m": 0.84, "azimuth_deg": 77, "elevation_deg": -46, "area_m2": 198.65,
              "t30_ms": 1167.6}


@pytest.fixture(scope="module")
def official() -> OfficialCaptionRules:
    rules = load_caption_rules("official")
    assert isinstance(rules, OfficialCaptionRules)
    return rules


def test_golden_vector(official):
    rng = random.Random(42)
    text, words = official.caption("Rain is falling continuously", official.describe(GOLDEN_ROW), rng)
    assert text == ("The sound: Rain is falling continuously is coming from the nearby down right "
                    "of a spacious highly reverberant room.")
    assert words == {"distance": "nearby", "direction": "right", "elevation": "down",
                     "room_size": "spacious", "reverberation": "highly reverberant"}


def test_seed_3_area_101_is_large_never_mid_sized(official):
    row = {"area_m2": 101, "source_distance_m": 1.5, "azimuth_deg": 0, "elevation_deg": 0, "t30_ms": 500}
    assert official.describe(row)["room_size"] == "large"
    text, _ = official.caption("A dog barks", official.describe(row), random.Random(3))
    assert ("large room" in text or "spacious room" in text) and "mid-sized" not in text
    for seed in range(50):
        assert "mid-sized" not in official.caption("x", official.describe(row), random.Random(seed))[0]


def test_positive_azimuth_is_right_and_thresholds(official):
    d = official.describe
    base = dict(GOLDEN_ROW)
    assert d({**base, "azimuth_deg": 90})["direction"] == "right"       # +Y: the release's "right"
    assert d({**base, "azimuth_deg": -90})["direction"] == "left"
    assert d({**base, "azimuth_deg": 145})["direction"] == "back"       # inclusive +-145
    assert d({**base, "azimuth_deg": -145})["direction"] == "back"
    assert d({**base, "azimuth_deg": 45})["direction"] == "none"        # gap: no word, no draw
    assert d({**base, "area_m2": 100})["room_size"] == "medium"         # large is > 100
    assert d({**base, "area_m2": 50})["room_size"] == "medium"
    assert d({**base, "t30_ms": 1000})["reverberation"] == "none"
    # the project's own rules stay physical: positive azimuth is left
    assert load_caption_rules().describe({**base, "azimuth_deg": 90})["direction"] == "left"


def test_empty_loc_keeps_the_double_space_and_skips_draws(official):
    row = {"source_distance_m": 1.5, "azimuth_deg": 45, "elevation_deg": 0, "area_m2": 75, "t30_ms": 500}
    rng = random.Random(0)
    text, words = official.caption("Birds chirp", official.describe(row), rng)
    ref = random.Random(0)
    size = ref.choice(["mid-sized", "medium"])          # the only descriptor draw
    template = ref.choice([0, 1, 2])
    assert words["room_size"] == size and words["distance"] == words["direction"] == ""
    expected = official.templates[template].format(orig="Birds chirp", loc="", room=f"{size} room")
    assert text == expected
    assert "from the  of a" in official.templates[0].format(orig="x", loc="", room="r")  # not collapsed
    assert rng.getstate() == ref.getstate()


def test_manifest_order_one_rng(official):
    """Two rows drawn with one advancing RNG differ from two fresh RNGs: the release's protocol."""
    rng = random.Random(42)
    first = official.caption("Rain is falling continuously", official.describe(GOLDEN_ROW), rng)[0]
    second = official.caption("Rain is falling continuously", official.describe(GOLDEN_ROW), rng)[0]
    assert first.startswith("The sound: Rain is falling continuously is coming from the nearby down right")
    assert second == official.caption("Rain is falling continuously", official.describe(GOLDEN_ROW),
                                      _advanced(42, official))[0]


def _advanced(seed: int, official) -> random.Random:
    rng = random.Random(seed)
    official.caption("x", official.describe(GOLDEN_ROW), rng)
    return rng


def test_make_captions_dispatch_and_project_rules_unchanged(official):
    caps = make_captions(official, official.describe(GOLDEN_ROW), "Rain is falling continuously",
                         np.random.default_rng(0))
    assert caps.caption == caps.spatial_caption and "Rain is falling continuously" in caps.caption
    assert caps.caption == make_captions(official, official.describe(GOLDEN_ROW),
                                         "Rain is falling continuously", np.random.default_rng(0)).caption
    project = load_caption_rules("project")
    assert isinstance(project, CaptionRules) and project == load_caption_rules()
    a = make_captions(project, project.describe(GOLDEN_ROW), "A dog barks.", np.random.default_rng(5))
    b = make_captions(load_caption_rules(), load_caption_rules().describe(GOLDEN_ROW), "A dog barks.",
                      np.random.default_rng(5))
    assert a == b


def test_bad_official_table_names_the_field(tmp_path):
    import yaml
    from disse.configs import config_path

    d = yaml.safe_load(open(config_path("caption_rules_official.yaml")))
    d["draw_order"] = ["distance", "direction"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(SchemaError, match="draw_order"):
        load_caption_rules(path)


def test_prompt_ensemble_of_the_official_rules(official):
    from disse.schemas.captions import prompt_ensemble

    combos = prompt_ensemble(official)
    assert len(combos) == 2 * 4 * 2 * 3 * 2  # every labelled cell (the 96 of the grid)
    desc, text = combos[0]
    assert desc == {"distance": "near", "direction": "front", "elevation": "up", "room_size": "small",
                    "reverberation": "dampened"}
    assert text == "The sound: a sound is coming from the near up front of a small acoustically dampened room."
