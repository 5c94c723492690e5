"""`disse-synth render --features official --rules official` with A-format RIRs: one renderer, two presets."""
from __future__ import annotations

import numpy as np
import soundfile as sf
from click.testing import CliRunner

from disse.pipeline.aformat import coincident_capsule_gains
from disse.pipeline.cli import main
from disse.pipeline.official_features import official_direction, split_official_iv
from disse.pipeline.shards import read_tar_samples
from disse.schemas import decode_sample
from disse.schemas.features import OfficialFeatureParams, feature_params_from_dict


def test_render_official_preset_with_aformat_rirs(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "audio").mkdir()
    (tmp_path / "rirs").mkdir()
    for name in ("a", "b"):
        sf.write(tmp_path / "audio" / f"{name}.wav", rng.standard_normal(48000 * 2) * 0.1, 48000)
    (tmp_path / "clips.csv").write_text("audiocap_id,caption\na,Rain is falling continuously\nb,A dog barks\n")
    rows = []
    for i, (az, el) in enumerate([(77.0, -46.0), (-100.0, 42.0)]):
        rir = np.zeros((4, 960), np.float32)
        rir[:, 20] = coincident_capsule_gains(az, el) * 0.5    # an anechoic A-format plane wave
        sf.write(tmp_path / "rirs" / f"t{i}.wav", rir.T, 48000, subtype="FLOAT")
        rows.append(f"rirs/t{i}.wav,{az},{el},0.84,198.65,1167.6,aformat,{i}")
    (tmp_path / "rirs.csv").write_text("rir_path,azimuth_deg,elevation_deg,source_distance_m,area_m2,"
                                       "fullband_T30_ms,foa_format,room_index\n" + "\n".join(rows) + "\n")
    res = CliRunner().invoke(main, [
        "render", "--clips", str(tmp_path / "clips.csv"), "--audio-dir", str(tmp_path / "audio"),
        "--rirs", str(tmp_path / "rirs.csv"), "--out", str(tmp_path / "out"), "--features", "official",
        "--rules", "official", "--val-fraction", "0", "--test-fraction", "0", "--rirs-per-clip", "2",
        "--no-progress"])
    assert res.exit_code == 0, res.output
    samples = [decode_sample(s, audio=False) for t in sorted((tmp_path / "out").glob("*/*.tar"))
               for s in read_tar_samples(t)]
    assert len(samples) == 4
    for _, iv, meta in samples:
        assert feature_params_from_dict(meta.features) == OfficialFeatureParams()
        assert iv.shape == (6, 201, 1601)
        act, _ = split_official_iv(iv)
        az, el = official_direction(act[:, :150])
        assert abs(az - meta.azimuth_deg) < 1 and abs(el - meta.elevation_deg) < 1
        # the release's words: positive azimuth is "right", 0.84 m near, 198.65 m2 large, 1167.6 ms reverberant
        assert meta.descriptors["direction"] == ("right" if meta.azimuth_deg > 0 else "left")
        assert meta.descriptors["distance"] == "near" and meta.descriptors["room_size"] == "large"
        assert meta.caption == meta.spatial_caption and meta.source_caption in meta.caption
        assert meta.caption.split(meta.source_caption)[0] in ("The sound: ", "You can hear ")
