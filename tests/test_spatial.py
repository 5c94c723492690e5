"""The physics-informed spatial side: an intensity-attention direction that turns with the sound
field and starts at the physics estimate, and room statistics that measure what they claim."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from disse.pipeline.features import intensity_features
from disse.pipeline.foa import encode_plane_wave
from disse.schemas import load_feature_params
from disse.trainer.data.augment import rotate_iv
from disse.trainer.model.physics import angular_error_deg, direction_from_angles, intensity_direction
from disse.trainer.model.spatial import (ROOM_STATS_DIM, IntensityAttentionDirection, SpatialBranch, SpatialConfig,
                                   direction_features, room_statistics)

SR = 48000


def _rotate_z(iv: torch.Tensor, angle_rad: float) -> torch.Tensor:
    """Turn the sound field about the vertical axis: the augmentation's own rotation, per item."""
    return torch.stack([torch.from_numpy(rotate_iv(x.numpy(), math.degrees(angle_rad))) for x in iv])


def _reverberant_scene(az: float, el: float, seed: int = 0) -> torch.Tensor:
    """Clicks from (az, el) plus two early reflections and a diffuse tail -> iv (1, 6, F, M)."""
    rng = np.random.default_rng(seed)
    n = SR * 10
    dry = np.zeros(n)
    dry[rng.choice(n - SR, 40, replace=False)] = 1.0
    dry = np.convolve(dry, np.hanning(64), mode="same")
    foa = encode_plane_wave(dry, az, el)
    for delay_ms, (raz, rel), gain in ((4.0, (az + 70, -20), 0.6), (9.0, (az - 130, 30), 0.5)):
        d = int(delay_ms * SR / 1000)
        foa[:, d:] += gain * encode_plane_wave(dry[:-d], raz, rel)
    tail = np.exp(-np.arange(n) / (0.05 * SR)) * rng.standard_normal((4, n)) * 0.02
    foa += np.stack([np.convolve(dry, t[:4800], mode="full")[:n] for t in tail])
    return torch.from_numpy(intensity_features(foa.astype(np.float32), load_feature_params()))[None]


def test_attention_direction_turns_exactly_with_the_sound_field():
    torch.manual_seed(0)
    att = IntensityAttentionDirection()
    for p in att.net.parameters():  # a trained-looking, non-trivial context network
        torch.nn.init.normal_(p, std=0.3)
    iv = torch.rand(2, 6, 101, 16) - 0.5
    d0, _ = att(iv)
    for angle in (0.3, math.pi / 2, 2.5):
        d1, _ = att(_rotate_z(iv, angle))
        c, s = math.cos(angle), math.sin(angle)
        want = torch.stack([c * d0[:, 0] - s * d0[:, 1], s * d0[:, 0] + c * d0[:, 1], d0[:, 2]], 1)
        assert torch.allclose(d1, want, atol=1e-5)


@pytest.mark.parametrize("az, el", [(90, 0), (-120, 10), (30, 60), (170, -35)])
def test_untrained_attention_recovers_a_reverberant_source_like_the_physics_estimate(az, el):
    iv = _reverberant_scene(az, el)
    truth = direction_from_angles(torch.tensor([float(az)]), torch.tensor([float(el)]))
    d, w = IntensityAttentionDirection()(iv)
    assert torch.allclose(w.sum(), torch.tensor(1.0), atol=1e-4)
    err, base = angular_error_deg(d, truth).item(), angular_error_deg(intensity_direction(iv), truth).item()
    plain = angular_error_deg(intensity_direction(iv, 0.0), truth).item()
    assert err < 10.0 and err < plain, (err, base, plain)


def test_direction_features_separate_the_caption_sectors():
    az = torch.linspace(-180, 180, 73)
    f = direction_features(direction_from_angles(az, torch.zeros_like(az)))
    assert f.shape == (73, 10)
    assert torch.allclose(f[:, :3].norm(dim=1), torch.ones(73), atol=1e-5)
    up = direction_features(direction_from_angles(torch.tensor([0.0]), torch.tensor([90.0])))
    assert torch.allclose(up[0, 3:9], torch.zeros(6), atol=1e-4) and up[0, 9] == pytest.approx(1.0, abs=1e-4)


def _decaying_bursts(t60_s: float, seed: int = 0) -> np.ndarray:
    """Noise bursts that stop abruptly, each followed by an exponential tail of the given T60."""
    rng = np.random.default_rng(seed)
    n = SR * 10
    x = np.zeros(n)
    tail = np.exp(-6.9078 * np.arange(int(1.5 * t60_s * SR)) / (t60_s * SR))  # -60 dB at t60
    for start in np.arange(0.2, 9.0, 1.6):
        i = int(start * SR)
        burst = rng.standard_normal(int(0.3 * SR))
        x[i:i + burst.size] += burst
        j = i + burst.size
        m = min(tail.size, n - j)
        x[j:j + m] += rng.standard_normal(m) * tail[:m]
    return x


def test_room_statistics_measure_the_decay_rate():
    iv = torch.zeros(2, 6, 1001, 64)
    iv[:, 0] = 0.5
    w = torch.from_numpy(np.stack([_decaying_bursts(0.3), _decaying_bursts(1.2)])).float() * 0.1
    stats = room_statistics(iv, w)
    assert stats.shape == (2, ROOM_STATS_DIM) and torch.isfinite(stats).all()
    # decay rates in units of 1 / T60 (-slope / 60 dB per s, log1p-compressed), quantile-major:
    # (98, 95, 90, 75, 50 %) x 4 bands. The 75 % quantile - a typical decaying window - reads 1 / T60
    rates = torch.expm1(stats[:, -5 * 4:].reshape(2, 5, 4))
    typical = rates[:, 3].median(1).values
    assert typical[0] == pytest.approx(1 / 0.3, rel=0.3)
    assert typical[1] == pytest.approx(1 / 1.2, rel=0.3)
    assert (rates[0, :4] > rates[1, :4]).all()  # a faster room decay reads faster at every upper quantile


def test_spatial_branch_outputs_and_config_errors():
    from disse.schemas import SchemaError

    cfg = SpatialConfig(channels=[4, 4, 4, 4, 4, 4], input_pool=[4, 1], mlp_hidden=16)
    branch = SpatialBranch(cfg)
    out = branch(torch.rand(3, 6, 1001, 64) - 0.5, torch.randn(3, 480000) * 0.1)
    assert out["features"].shape == (3, cfg.out_dim) and out["direction"].shape == (3, 3)
    head = SpatialBranch(SpatialConfig(channels=[4] * 6, direction="head", room_stats=False))
    assert head(torch.rand(2, 6, 101, 16))["direction"] is None
    with pytest.raises(SchemaError, match="direction"):
        SpatialBranch(SpatialConfig(direction="cnn"))
    with pytest.raises(ValueError, match="waveform"):
        branch(torch.rand(1, 6, 1001, 64))


def test_room_dim_lets_only_a_few_room_summaries_into_the_spatial_features():
    """``room_dim=k``: the branch's features see the room statistics only through a rank-k map (what the spatial
    embedding can learn of the source's fingerprint is capped), while ``room`` keeps every statistic for the
    physical heads."""
    from disse.schemas import SchemaError

    torch.manual_seed(0)
    branch = SpatialBranch(SpatialConfig(channels=[], input_pool=[4, 1], mlp_hidden=16, room_dim=4)).eval()
    iv, w = torch.rand(2, 6, 1001, 64) - 0.5, torch.randn(2, 480000) * 0.1
    base = branch(iv, w)
    assert base["room"].shape == (2, ROOM_STATS_DIM)
    weight = branch.room_proj.weight.detach()                       # (4, ROOM_STATS_DIM)
    null = torch.randn(2, ROOM_STATS_DIM)
    null -= null @ torch.linalg.pinv(weight) @ weight               # remove the row-space part
    for delta, same in ((null * 10.0, True), (weight.sum(0, keepdim=True).expand(2, -1), False)):
        hook = branch.room_norm.register_forward_hook(lambda m, i, o, d=delta: o + d)
        moved = branch(iv, w)["features"]
        hook.remove()
        assert torch.allclose(moved, base["features"], atol=1e-4) is same
    with pytest.raises(SchemaError, match="room_dim"):
        SpatialBranch(SpatialConfig(channels=[], room_stats=False, room_dim=4))
