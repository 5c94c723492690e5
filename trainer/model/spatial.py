"""Physics-informed pieces of DELSA's spatial side: what the intensity vectors and W already hold.

Two learned CNNs on the intensity maps (the original spatial branch) overfit the few hundred source
positions of a corpus instead of learning the physics (issue 11: 27-35 deg on held-out positions
against 4.5 deg median for a parameter-free intensity-vector estimate). The modules here give the
spatial side the physical quantities directly, so what it learns transfers to unseen rooms:

* :class:`IntensityAttentionDirection` - the direction is an attention-weighted mean of the *active
  intensity vectors themselves*. The weights come from rotation-invariant cell features
  (directivity ``|I_act|``, ``|I_rea|``, the vertical components), so the estimate turns exactly
  with the sound field, for any source. It starts as (nearly) a soft version of the "keep near-plane-wave
  cells" estimate (weights ``softmax(sharpness * |I_act|)``) and learns which cells to trust.
* :func:`room_statistics` - fixed, rotation-invariant summaries that room acoustics leave in the
  signal: directivity statistics per band (direct-to-reverberant ratio -> distance, reverberation),
  the directivity just after onsets of W (how long the direct sound stays alone -> room size,
  distance), and the fastest sustained energy decays of W per band (the room's decay rate -> T30).

Shapes: ``iv (B, 6, F, M)`` (I_act xyz, I_rea xyz; x front, y left, z up), ``waveform (B, T)`` float
W at the feature sample rate. Frame rate of ``iv``: one frame per ``hop`` samples of W.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from disse.schemas.errors import SchemaError

#: number of W bands (log-spaced) used by :func:`room_statistics`
N_DECAY_BANDS = 4
#: onset lags (iv frames) at which directivity is read after each onset of W
ONSET_LAGS = 8
#: mel band groups for the directivity statistics
N_BAND_GROUPS = 4
_DECAY_QUANTILES = (0.02, 0.05, 0.1, 0.25, 0.5)
_DECAY_WINDOW = 8   # frames (80 ms at 10 ms) per fitted slope
ROOM_STATS_DIM = N_BAND_GROUPS * 4 + N_BAND_GROUPS * ONSET_LAGS + 1 + N_DECAY_BANDS * len(_DECAY_QUANTILES)


def invariant_cell_features(iv: torch.Tensor) -> torch.Tensor:
    """``iv (B, 6, F, M)`` -> ``(B, 4, F, M)``: ``|I_act|``, ``|I_rea|``, ``I_act,z``, ``I_rea,z``.

    Each is unchanged by a rotation about the vertical axis (and the norms by any rotation)."""
    sq = iv.square()  # one pass; Tensor.norm over the channel dim is several times slower on CPU
    act_n = (sq[:, 0] + sq[:, 1] + sq[:, 2]).sqrt()
    rea_n = (sq[:, 3] + sq[:, 4] + sq[:, 5]).sqrt()
    return torch.stack([act_n, rea_n, iv[:, 2], iv[:, 5]], 1)


class IntensityAttentionDirection(nn.Module):
    """``iv (B, 6, F, M)`` -> direction ``(B, 3)`` unit vectors and attention ``(B, F, M)`` (sums to 1).

    Weights are ``softmax(sharpness * |I_act| + context)`` over every cell at full resolution; the
    context CNN reads the invariant cell features block-averaged over ``pool`` (frames, mel), which
    is where the cost is (40 ms blocks: ~6x cheaper than 20 ms), and its output is repeated back
    over each block. The sum runs over the full-resolution vectors, so pooling costs no precision.
    """

    def __init__(self, hidden: int = 8, pool: tuple[int, int] = (4, 1), init_sharpness: float = 20.0) -> None:
        super().__init__()
        self.pool = tuple(pool)
        self.net = nn.Sequential(nn.Conv2d(4, hidden, 3, padding=1), nn.GELU(),
                                 nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU(),
                                 nn.Conv2d(hidden, 1, 1))
        # near-zero last layer: at init the weights are softmax(sharpness * |I_act|) to within 1e-3 in
        # the logits (not exactly zero, so that every layer receives a gradient from the first step)
        nn.init.normal_(self.net[-1].weight, std=1e-3)
        nn.init.zeros_(self.net[-1].bias)
        self.log_sharpness = nn.Parameter(torch.tensor(math.log(init_sharpness)))

    def forward(self, iv: torch.Tensor, cells: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``cells``: :func:`invariant_cell_features` of ``iv`` when the caller has them already."""
        iv = iv.float()
        cells = invariant_cell_features(iv) if cells is None else cells             # (B, 4, F, M)
        pt, pm = self.pool
        ctx = self.net(block_mean(cells, self.pool))[:, 0]                           # (B, F // pt, M // pm)
        ctx = ctx.repeat_interleave(pt, 1).repeat_interleave(pm, 2)
        nf, nm = cells.shape[2:]
        ctx = F.pad(ctx, (0, nm - ctx.shape[2], 0, nf - ctx.shape[1]), mode="replicate") \
            if ctx.shape[1:] != (nf, nm) else ctx                                    # the ragged tail
        logits = self.log_sharpness.exp() * cells[:, 0] + ctx
        w = torch.softmax(logits.flatten(1), dim=1).view_as(logits)
        d = torch.einsum("bcfm,bfm->bc", iv[:, :3], w)
        return F.normalize(d, dim=-1, eps=1e-6), w


def block_mean(x: torch.Tensor, pool: tuple[int, int] | list[int]) -> torch.Tensor:
    """Mean over ``(pt, pm)`` blocks of the last two dims of ``(B, C, F, M)``; a ragged tail is dropped.
    (A reshape-mean: ~5x faster than avg_pool2d on CPU.)"""
    pt, pm = pool
    if (pt, pm) == (1, 1):
        return x
    b, c, nf, nm = x.shape
    return x[:, :, : nf - nf % pt, : nm - nm % pm].reshape(b, c, nf // pt, pt, nm // pm, pm).mean((3, 5))


def _band_log_energy(waveform: torch.Tensor, hop: int, n_bands: int, sample_rate: int) -> torch.Tensor:
    """W ``(B, T)`` -> log10 energy in dB per frame ``(B, n_bands, T // hop + 1)`` in log-spaced bands
    from 100 Hz to 12 kHz (frames centred like the intensity features)."""
    n_fft = 512  # 10.7 ms at 48 kHz: enough for band levels, half the cost of a 2-hop window
    win = torch.hann_window(n_fft, periodic=True, device=waveform.device)
    spec = torch.stft(waveform.float(), n_fft, hop, window=win, center=True, return_complex=True)
    power = spec.real.square() + spec.imag.square()                              # (B, K, frames)
    freqs = torch.arange(power.shape[1], device=waveform.device) * sample_rate / n_fft
    edges = torch.logspace(math.log10(100.0), math.log10(12000.0), n_bands + 1, device=waveform.device)
    bands = torch.stack([power[:, (freqs >= lo) & (freqs < hi)].sum(1) for lo, hi in zip(edges[:-1], edges[1:])], 1)
    return 10.0 * torch.log10(bands + 1e-10)


@torch.no_grad()
def room_statistics(iv: torch.Tensor, waveform: torch.Tensor, hop: int = 480,
                    sample_rate: int = 48000, cells: torch.Tensor | None = None) -> torch.Tensor:
    """Fixed rotation-invariant room features ``(B, ROOM_STATS_DIM)`` float32 (no parameters).

    * directivity per mel-band group: mean ``|I_act|``, mean ``|I_rea|``, share of cells with
      ``|I_act|`` > 0.8 and > 0.95;
    * mean ``|I_act|`` over the band groups at lags 0..7 frames after each onset of W (a frame whose
      broadband level rises >= 9 dB within 20 ms), and the onset rate;
    * quantiles of the 80 ms level slopes of W per band, in units of -60 dB per second (the
      fastest sustained decays approach the room's decay rate, i.e. 1 / T60), over 80 ms windows
      that start within 50 dB of the band's peak and stay within 60 dB of it.

    ``cells``: :func:`invariant_cell_features` of ``iv`` when the caller has them already.
    """
    iv = iv.float()
    b, _, nf, nm = iv.shape
    cells = invariant_cell_features(iv) if cells is None else cells
    act_n, rea_n = cells[:, 0], cells[:, 1]                                     # (B, F, M)
    groups = nm // N_BAND_GROUPS
    a_g = act_n[:, :, : groups * N_BAND_GROUPS].reshape(b, nf, N_BAND_GROUPS, groups)
    r_g = rea_n[:, :, : groups * N_BAND_GROUPS].reshape(b, nf, N_BAND_GROUPS, groups)
    dir_stats = torch.cat([a_g.mean((1, 3)), r_g.mean((1, 3)), (a_g > 0.8).float().mean((1, 3)),
                           (a_g > 0.95).float().mean((1, 3))], 1)                # (B, 4G)

    level = _band_log_energy(waveform, hop, N_DECAY_BANDS, sample_rate)[..., :nf]  # (B, D, F)
    broad = 10.0 * torch.log10((10.0 ** (level / 10.0)).sum(1) + 1e-10)         # (B, F)
    rise = broad[:, 2:] - broad[:, :-2]
    onset = torch.zeros_like(broad, dtype=torch.bool)
    onset[:, 2:] = rise >= 9.0
    onset[:, 1:] &= ~onset[:, :-1].clone()                                      # first frame of a rise
    onset[:, nf - ONSET_LAGS:] = False
    a_frames = a_g.mean(3)                                                       # (B, F, G)
    n_on = onset.sum(1).clamp_min(1).float()                                    # (B,)
    prof = []
    for lag in range(ONSET_LAGS):
        shifted = torch.zeros_like(a_frames)
        shifted[:, : nf - lag] = a_frames[:, lag:]
        prof.append((shifted * onset[..., None]).sum(1) / n_on[:, None])        # (B, G)
    onset_stats = torch.cat([torch.stack(prof, 2).flatten(1), (onset.sum(1).float() / nf * 100)[:, None]], 1)

    # least-squares slope over _DECAY_WINDOW frames, dB per second
    k = _DECAY_WINDOW
    t = torch.arange(k, device=iv.device, dtype=torch.float32) - (k - 1) / 2
    kernel = (t / t.square().sum()).view(1, 1, k) * (sample_rate / hop)  # conv1d correlates: no flip
    slopes = F.conv1d(level.reshape(-1, 1, level.shape[-1]), kernel).view(b, N_DECAY_BANDS, -1)
    peak = level.amax(-1, keepdim=True)
    win_max = F.max_pool1d(level, k, 1)
    win_min = -F.max_pool1d(-level, k, 1)
    # the whole window within 60 dB of the band's peak: a drop into silence or the noise floor
    # is not a room decay
    active = (win_max >= peak - 50.0) & (win_min >= peak - 60.0)
    rates = torch.where(active, -slopes / 60.0, torch.nan)                      # 1/s: 1 / T60 for a pure decay
    levels = torch.tensor([1.0 - x for x in _DECAY_QUANTILES], device=iv.device)  # 0.98 ... 0.5
    q = torch.nanquantile(rates, levels, dim=-1)                                # (Q, B, D), fastest first
    q = torch.nan_to_num(q, nan=0.0).permute(1, 0, 2).flatten(1)                # (B, Q * D), quantile-major
    decay_stats = torch.sign(q) * torch.log1p(q.abs())
    return torch.cat([dir_stats, onset_stats, decay_stats], 1)


# ------------------------------------------------------------------------------------------------
# the spatial branch

def mlp(dims: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear layers ``dims[0] -> ... -> dims[-1]`` with GELU (and dropout) between them."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.GELU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


DIRECTIONS = ("attention", "head")
DIRECTION_FEATURES = 10


@dataclass
class SpatialConfig:
    """Spatial branch: one CNN per intensity stream (I_act, I_rea), then an MLP -> bottleneck -> out_dim;
    optionally the physics-informed inputs of this module (see the module docstring)."""

    channels: list[int] = field(default_factory=lambda: [32, 32, 64, 64, 128, 128])  # one per conv layer (6)
    pools: list[list[int]] = field(default_factory=lambda: [[2, 2], [2, 2], [2, 2], [2, 2], [1, 1], [1, 1]])
    input_pool: list[int] = field(default_factory=lambda: [1, 1])  # (frames, mel) block mean before the CNN
    freq_out: int = 4            # mel positions kept after the CNN (time is averaged)
    mlp_hidden: int = 256
    bottleneck: int = 44
    out_dim: int = 192
    # "attention": the direction is the intensity-attention estimate (IntensityAttentionDirection), and
    # the branch MLP also reads it; "head": an MLP head on the spatial embedding predicts it (DESIGN.md v1)
    direction: str = "attention"
    attention_hidden: int = 8
    attention_pool: list[int] = field(default_factory=lambda: [4, 1])  # 40 ms frames: 6x cheaper than 20 ms
    room_stats: bool = True      # the MLP also reads room_statistics(iv, W) (batch-normalised)
    # > 0: the MLP reads the room statistics through a linear map to this many dims (the physical heads still
    # read all of them): the spatial embedding gets a few room summaries, not the source's fingerprint that
    # the full statistics also carry (docs/spatial.md, leakage ablation); 0 = all ROOM_STATS_DIM of them
    room_dim: int = 0


def direction_features(d: torch.Tensor) -> torch.Tensor:
    """Unit vectors ``(B, 3)`` -> ``(B, 10)``: the vector, cos / sin of 2, 3, 4 x azimuth (weighted by
    cos(elevation), so they fade where azimuth is undefined) and the elevation in radians / (pi / 2):
    the azimuth harmonics let a small MLP draw the eight direction sectors of the captions."""
    x, y, z = d.unbind(-1)
    horiz = torch.sqrt(x * x + y * y).clamp_min(1e-6)
    az = torch.atan2(y, x)
    harm = [f(k * az) * horiz for k in (2, 3, 4) for f in (torch.cos, torch.sin)]
    return torch.stack([x, y, z, *harm, torch.asin(z.clamp(-1, 1)) / (math.pi / 2)], -1)


def _stream_cnn(cfg: SpatialConfig) -> nn.Sequential:
    if len(cfg.pools) != len(cfg.channels):
        raise SchemaError("one pool per conv layer is needed", field="model.audio.spatial.pools")
    layers: list[nn.Module] = []
    c_in = 3
    for c_out, pool in zip(cfg.channels, cfg.pools):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        if tuple(pool) != (1, 1):
            layers.append(nn.AvgPool2d(tuple(pool), ceil_mode=True))
        c_in = c_out
    # Average over time (direction is stationary in a clip), keep freq_out mel regions.
    layers.append(nn.AdaptiveAvgPool2d((1, cfg.freq_out)))
    return nn.Sequential(*layers)


class SpatialBranch(nn.Module):
    """``(iv (B, 6, F, M), waveform (B, T) float W) -> {"features": (B, out_dim), "direction": (B, 3) | None,
    "room": (B, ROOM_STATS_DIM) batch-normalised room statistics | None}``.

    I_act and I_rea each through a CNN; with ``direction="attention"`` the intensity-attention
    direction (detached: only the direction loss trains it) and with ``room_stats`` the room
    statistics join the CNN features before the MLP -> bottleneck -> out_dim.
    """

    def __init__(self, cfg: SpatialConfig) -> None:
        super().__init__()
        if len(cfg.input_pool) != 2 or min(cfg.input_pool) < 1:
            raise SchemaError("need [frames, mel] >= 1", field="model.audio.spatial.input_pool")
        if len(cfg.attention_pool) != 2 or min(cfg.attention_pool) < 1:
            raise SchemaError("need [frames, mel] >= 1", field="model.audio.spatial.attention_pool")
        if not cfg.channels and not (cfg.direction == "attention" or cfg.room_stats):
            raise SchemaError("with no CNN channels the branch needs the attention direction or room_stats",
                              field="model.audio.spatial.channels")
        if cfg.direction not in DIRECTIONS:
            raise SchemaError(f"must be one of {list(DIRECTIONS)}, got {cfg.direction!r}",
                              field="model.audio.spatial.direction")
        self.cfg = cfg
        # channels: [] = no intensity CNNs: the branch reads the direction and room statistics only,
        # which carry little of the source's spectro-temporal pattern (the CNN maps carry a lot)
        self.act_cnn = _stream_cnn(cfg) if cfg.channels else None
        self.rea_cnn = _stream_cnn(cfg) if cfg.channels else None
        flat = 2 * cfg.channels[-1] * cfg.freq_out if cfg.channels else 0
        self.direction = (IntensityAttentionDirection(cfg.attention_hidden, tuple(cfg.attention_pool))
                          if cfg.direction == "attention" else None)
        if self.direction is not None:
            flat += DIRECTION_FEATURES
        self.room_norm = nn.BatchNorm1d(ROOM_STATS_DIM) if cfg.room_stats else None
        if cfg.room_dim < 0 or (cfg.room_dim and not cfg.room_stats):
            raise SchemaError("must be >= 0, and 0 without room_stats", field="model.audio.spatial.room_dim")
        self.room_proj = nn.Linear(ROOM_STATS_DIM, cfg.room_dim) if cfg.room_dim else None
        if cfg.room_stats:
            flat += cfg.room_dim or ROOM_STATS_DIM
        self.mlp = nn.Sequential(nn.Linear(flat, cfg.mlp_hidden), nn.GELU(),
                                 nn.Linear(cfg.mlp_hidden, cfg.bottleneck))
        self.proj = nn.Linear(cfg.bottleneck, cfg.out_dim)
        self.out_dim = cfg.out_dim

    def forward(self, iv: torch.Tensor, waveform: torch.Tensor | None = None) -> dict:
        if iv.dim() != 4 or iv.shape[1] != 6:
            raise ValueError(f"iv must be (B, 6, frames, mel), got {tuple(iv.shape)}")
        iv = iv.float()
        parts = []
        if self.act_cnn is not None:
            pooled = block_mean(iv, self.cfg.input_pool)
            parts += [self.act_cnn(pooled[:, :3]).flatten(1), self.rea_cnn(pooled[:, 3:]).flatten(1)]
        direction = None
        # one pass over the full-resolution cells serves the attention and the room statistics
        cells = invariant_cell_features(iv) if self.direction is not None or self.room_norm is not None else None
        if self.direction is not None:
            direction, _ = self.direction(iv, cells)
            parts.append(direction_features(direction.detach()))
        if self.room_norm is not None:
            if waveform is None:
                raise ValueError("room_stats needs the W waveform")
            hop = waveform.shape[-1] // max(iv.shape[2] - 1, 1)
            room = self.room_norm(room_statistics(iv, waveform, hop=hop, cells=cells))
            parts.append(room if self.room_proj is None else self.room_proj(room))
        return {"features": self.proj(self.mlp(torch.cat(parts, dim=1))), "direction": direction,
                "room": room if self.room_norm is not None else None}
