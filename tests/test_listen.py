"""Listen and look (issue 24): the FOA headphone decoders on physics, and `disse-synth inspect --html` on
small shards (selection, bad input, escaping). The pages in a real browser: tests/test_listen_browser.py.
"""
from __future__ import annotations

import io
import json
import math
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.signal import butter, correlate, fftconvolve, sosfilt

from disse.pipeline.cli import main as synth_main
from disse.pipeline.features import direction_track, intensity_features
from disse.pipeline.foa import ambix_to_fuma, binaural_decode, encode_plane_wave, stereo_decode
from disse.pipeline.listen import SITE_MARKER, slug
from disse.pipeline.rirs import FAST, Position, Room, SimParams, rotation_z, simulate_rir
from disse.schemas import ShardMeta, encode_sample
from disse.schemas.features import FeatureParams

SR = 48000
NOISE = np.random.default_rng(0).standard_normal(SR // 2)


def _ild_db(b: np.ndarray) -> float:
    """Left over right energy, dB."""
    return 10 * math.log10(float((b[0].astype(np.float64) ** 2).sum() / (b[1].astype(np.float64) ** 2).sum()))


def _itd_samples(b: np.ndarray) -> int:
    """Lag of the interaural cross-correlation peak below 1.5 kHz (where hearing uses the time difference of
    the waveform itself): negative = the left ear hears it first."""
    sos = butter(4, 1500.0, fs=SR, output="sos")
    low = sosfilt(sos, np.asarray(b, dtype=np.float64), axis=-1)
    c = correlate(low[0], low[1], mode="full", method="fft")
    return int(np.argmax(c)) - (b.shape[1] - 1)


# ---------------------------------------------------------------------------------------------
# decoders
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("azimuth, side", [(90.0, 1), (-90.0, -1), (45.0, 1), (-135.0, -1)])
def test_binaural_left_source_is_louder_and_earlier_at_the_left_ear(azimuth, side):
    b = binaural_decode(encode_plane_wave(NOISE, azimuth, 0.0), SR)
    assert side * _ild_db(b) > 3.0                       # ILD sign (about 7 dB at ±90°)
    assert side * _itd_samples(b) < -5                   # ITD sign: 5 samples = 0.1 ms; Woodworth's ~0.3-0.6 ms


def test_binaural_front_and_back_differ_stereo_does_not():
    front = binaural_decode(encode_plane_wave(NOISE, 0.0, 0.0), SR)
    back = binaural_decode(encode_plane_wave(NOISE, 180.0, 0.0), SR)
    assert abs(_ild_db(front)) < 0.1 and abs(_ild_db(back)) < 0.1  # both on the median plane
    # the pinna shadows sound from behind: 4-8 kHz (where it matters most) is quieter from the back
    band = lambda x: np.abs(np.fft.rfft(x[0]))[len(x[0]) // 12:len(x[0]) // 6].sum()  # noqa: E731  4-8 kHz
    assert 20 * math.log10(band(front) / band(back)) > 3.0
    s_front = stereo_decode(encode_plane_wave(NOISE, 0.0, 0.0))
    s_back = stereo_decode(encode_plane_wave(NOISE, 180.0, 0.0))
    np.testing.assert_allclose(s_front, s_back, atol=1e-6)      # a coincident pair cannot tell them apart
    left = stereo_decode(encode_plane_wave(NOISE, 90.0, 0.0))
    assert np.abs(left[0]).max() > 1.0 and np.abs(left[1]).max() < 1e-6  # the right cardioid's null points left


def test_fuma_input_converted_gives_the_same_decode():
    ambix = encode_plane_wave(NOISE, 60.0, 20.0)
    fuma = ambix_to_fuma(ambix)
    np.testing.assert_allclose(binaural_decode(fuma, SR, foa_format="fuma"), binaural_decode(ambix, SR), atol=1e-5)
    np.testing.assert_allclose(stereo_decode(fuma, foa_format="fuma"), stereo_decode(ambix), atol=1e-6)
    # read as AmbiX by mistake, FuMa's W/X/Y order puts the source elsewhere: the format matters
    assert np.abs(binaural_decode(fuma, SR) - binaural_decode(ambix, SR)).max() > 0.05


def test_room_render_at_plus_90_is_heard_on_the_left():
    """A source rendered through a simulated room RIR at +90° azimuth (AmbiX: positive = left)."""
    room = Room(dims=(6.0, 5.0, 3.0), absorption=(0.35,) * 6, t60_target_s=0.0)
    receiver = np.array([3.0, 2.5, 1.5])
    pos = Position(receiver=receiver, yaw=0.4, source=receiver + 1.2 * rotation_z(0.4) @ np.array([0.0, 1.0, 0.0]))
    rir, _ = simulate_rir(room, pos, np.random.default_rng(1), SimParams(**FAST))
    az, _, _ = pos.direction()
    assert abs(az - 90.0) < 1.0
    foa = np.stack([fftconvolve(NOISE, h)[:len(NOISE)] for h in rir])
    b = binaural_decode(foa, SR)
    assert _ild_db(b) > 2.0 and _itd_samples(b) < -5
    iv = intensity_features(foa.astype(np.float32), FeatureParams(clip_seconds=0.5))
    t_az, t_el, directivity = direction_track(iv)
    strong = directivity > np.percentile(directivity, 75)
    assert abs(np.median(t_az[strong]) - 90.0) < 20.0


# ---------------------------------------------------------------------------------------------
# shards for the site
# ---------------------------------------------------------------------------------------------

XSS_CAPTION = 'a dog <script>window.__pwned = 1</script> "><img src=x onerror="window.__pwned = 2"> barks'
XSS_KEY = '"><img src=x onerror=alert(1)>'
CLIP = 0.5


def make_sample(key: str, split: str, i: int, azimuth: float, *, caption: str | None = None,
                schema_version: int = 4) -> dict:
    """A plane wave of noise bursts from ``azimuth`` (metadata to match), 0.5 s, as a shard sample."""
    params = FeatureParams(clip_seconds=CLIP)
    rng = np.random.default_rng(i)
    n = params.clip_samples
    dry = rng.standard_normal(n) * (0.2 + (np.arange(n) % 4800 < 2400))
    foa = (0.2 * encode_plane_wave(dry / np.abs(dry).max(), azimuth, 0.0)).astype(np.float32)
    iv = intensity_features(foa, params)
    direction = {90.0: "left", -90.0: "right", 0.0: "front", 180.0: "behind"}[azimuth]
    cap = caption or f"sound {i % 3} from the {direction}"
    meta = ShardMeta(key=key, split=split, source_id=f"clip{i % 3}", space_id=direction, rir_id=f"room{i % 2}_p{i}",
                     source_caption=cap, spatial_caption=f"from the {direction}", caption=f"{cap}, {direction}",
                     azimuth_deg=azimuth, elevation_deg=0.0, source_distance_m=1.0 + i % 2, area_m2=40.0 + i,
                     t30_ms=300.0 + 10 * i, descriptors={"direction": direction, "distance": "near"},
                     features=params.to_dict(), render={"seed": i}, schema_version=schema_version)
    return encode_sample(foa, iv if schema_version > 1 else iv.astype(np.float16), meta, SR)


def write_tar(path: Path, samples: list[dict], drop: dict[str, tuple[str, ...]] | None = None) -> Path:
    """``samples`` into one tar; ``drop``: key -> members left out (to make broken samples)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for name in sorted(k for k in s if k != "__key__"):
                if name in (drop or {}).get(s["__key__"], ()):
                    continue
                info = tarfile.TarInfo(f"{s['__key__']}.{name}")
                info.size = len(s[name])
                tar.addfile(info, io.BytesIO(s[name]))
    return path


AZIMUTHS = (90.0, -90.0, 0.0, 180.0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """root/test/test-00000{0,1}.tar (v4, one hostile caption and key), root/old/old-000000.tar (v1, v2),
    a manifest with skipped inputs and a RIR CSV with rooms."""
    root = tmp_path_factory.mktemp("listen")
    test = [make_sample(f"test_{i:03d}", "test", i, AZIMUTHS[i % 4]) for i in range(6)]
    test.append(make_sample(XSS_KEY, "test", 6, 90.0, caption=XSS_CAPTION))
    test.append(make_sample("no_foa", "test", 7, 0.0))
    write_tar(root / "test" / "test-000000.tar", test[:4])
    write_tar(root / "test" / "test-000001.tar", test[4:], drop={"no_foa": ("w.wav", "yzx.flac")})
    write_tar(root / "old" / "old-000000.tar", [make_sample("v1_000", "old", 8, 90.0, schema_version=1),
                                               make_sample("v2_000", "old", 9, -90.0, schema_version=2)])
    (root / "test" / "sizes.json").write_text(json.dumps({"test-000000.tar": 4, "test-000001.tar": 4}))
    (root / "old" / "sizes.json").write_text(json.dumps({"old-000000.tar": 2}))
    (root / "rirs.csv").write_text("rir_id,room_index\n" + "".join(f"room{i % 2}_p{i},{i % 2}\n" for i in range(10)))
    manifest = {"inputs": {"rirs_csv": "rirs.csv"}, "options": {"room_column": "room_index"},
                "skipped": [{"file": "audio/<b>gone</b>.wav", "row": None, "field": None, "reason": "no such file",
                             "input": "clip", "source_id": "gone", "rir_id": "room0_p0", "split": "test",
                             "shard": "test-000000.tar"}],
                "skipped_rows": [{"file": "clips.csv", "row": 7, "field": "caption", "reason": "empty caption"}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def synth(*args) -> "object":
    return CliRunner().invoke(synth_main, [str(a) for a in args])


@pytest.fixture(scope="module")
def site(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    res = synth("inspect", shards, "--html", out, "--limit", 50)
    assert res.exit_code == 0, res.output
    assert "skipped 1 sample(s)" in res.output and "no_foa" in res.output
    return out


# ---------------------------------------------------------------------------------------------
# the site
# ---------------------------------------------------------------------------------------------

def test_site_has_a_page_and_previews_per_sample(site):
    pages = sorted((site / "samples").glob("*.html"))
    assert len(pages) == 9  # 7 readable test samples + v1 + v2, without the one lacking FOA members
    for key in ("test_000", "v1_000", "v2_000", XSS_KEY):
        name = slug(key)
        assert (site / "samples" / f"{name}.html").is_file()
        for ext in ("binaural.ogg", "stereo.ogg", "spectrogram.png", "direction.png"):
            assert (site / "media" / f"{name}.{ext}").stat().st_size > 1000
    assert re.fullmatch(r"[A-Za-z0-9_-]+", slug(XSS_KEY))
    marker = json.loads((site / SITE_MARKER).read_text())
    assert marker["samples"] == 9 and marker["skipped"] == 1
    index = (site / "index.html").read_text()
    assert index.count("<tr data-f0=") == 9
    summary = (site / "summary.html").read_text()
    assert "no such file" in summary and "empty caption" in summary and "&lt;b&gt;gone&lt;/b&gt;" in summary
    assert "missing member" in summary and "no_foa" in summary      # the site's own counted skip
    assert 'name="room"' in index and '<option value="1">1</option>' in index  # rooms from the manifest's RIR CSV


def test_previews_hold_the_direction(site):
    """The binaural preview of the +90° sample is louder and earlier on the left, as decoded; the files are
    compressed (Opus) and as long as the clip."""
    import soundfile as sf

    data, sr = sf.read(site / "media" / f"{slug('test_000')}.binaural.ogg", always_2d=True)
    assert sr == SR and abs(len(data) / sr - CLIP) < 0.03
    assert _ild_db(data.T) > 3.0 and _itd_samples(data.T) < -5
    raw = (site / "media" / f"{slug('test_000')}.binaural.ogg").stat().st_size
    assert raw < 0.25 * CLIP * SR * 2 * 2   # well under a quarter of 16-bit PCM


def test_captions_and_keys_are_escaped(site):
    page = (site / "samples" / f"{slug(XSS_KEY)}.html").read_text()
    assert "<script>window" not in page and "<img src=x" not in page
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    index = (site / "index.html").read_text()
    assert "<script>window" not in index and "<img src=x" not in index
    assert index.count("<script") == 1  # the site's own script only


def test_selection_is_reproducible_and_filters_apply(shards, tmp_path):
    def chosen(out, *extra):
        res = synth("inspect", shards, "--html", out, *extra)
        assert res.exit_code == 0, res.output
        return sorted(p.name for p in (out / "samples").glob("*.html"))

    a = chosen(tmp_path / "a", "--limit", 3, "--seed", 1)
    assert len(a) == 3 and a == chosen(tmp_path / "b", "--limit", 3, "--seed", 1)
    assert a != chosen(tmp_path / "c", "--limit", 3, "--seed", 2)
    left = chosen(tmp_path / "d", "--descriptor", "direction=left", "--split", "test")
    assert left == sorted(f"{slug(k)}.html" for k in ("test_000", "test_004", XSS_KEY))
    assert len(chosen(tmp_path / "e", "--room", "1", "--split", "old")) == 1


@pytest.mark.parametrize("args, needle", [
    (["--split", "nope"], "field '--split': no sample has --split 'nope'; present: old, test"),
    (["--descriptor", "direction=up"], "no sample has --descriptor direction= 'up'"),
    (["--descriptor", "colour=red"], "no descriptor 'colour'"),
    (["--descriptor", "direction"], "expected ATTRIBUTE=LABEL"),
    (["--source", "clip9"], "no sample has --source 'clip9'"),
])
def test_unknown_filter_values_are_one_line_errors(shards, tmp_path, args, needle):
    res = synth("inspect", shards, "--html", tmp_path / "out", *args)
    assert res.exit_code == 2 and needle in res.output, res.output
    assert res.output.startswith("error: ") and res.output.count("\n") == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_existing_output_is_refused_unless_force(shards, tmp_path):
    out = tmp_path / "site"
    assert synth("inspect", shards, "--html", out, "--limit", 2).exit_code == 0
    res = synth("inspect", shards, "--html", out, "--limit", 2)
    assert res.exit_code == 2 and "exists; pass --force" in res.output
    res = synth("inspect", shards, "--html", out, "--split", "old", "--force")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "samples").glob("*.html")) == [f"{slug('v1_000')}.html",
                                                                         f"{slug('v2_000')}.html"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    res = synth("inspect", shards, "--html", other, "--force")
    assert res.exit_code == 2 and "not a site written by" in res.output
    assert (other / "notes.txt").read_text() == "keep me"
    res = synth("inspect", shards, "--split", "test")
    assert res.exit_code == 2 and "applies only with --html" in res.output


def test_no_readable_sample_is_an_error(tmp_path):
    write_tar(tmp_path / "bad" / "x-000000.tar", [make_sample("a", "x", 0, 0.0)], drop={"a": ("json",)})
    res = synth("inspect", tmp_path / "bad", "--html", tmp_path / "out")
    assert res.exit_code == 2 and "no readable samples" in res.output
    # readable, but nothing to play: the staged site is removed, nothing is left behind
    write_tar(tmp_path / "mute" / "x-000000.tar", [make_sample("a", "x", 0, 0.0)], drop={"a": ("yzx.flac",)})
    res = synth("inspect", tmp_path / "mute", "--html", tmp_path / "out")
    assert res.exit_code == 2 and "none of the 1 chosen samples could be shown" in res.output, res.output
    assert "missing member" in res.output and res.output.count("\n") == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


# ---------------------------------------------------------------------------------------------
# the pages in a real browser (headless Chromium, the system package)
# ---------------------------------------------------------------------------------------------

CHECK_MEDIA = """(async () => {
  const wait = (ms) => new Promise((r) => setTimeout(r, ms));
  const audios = await Promise.all(Array.from(document.querySelectorAll("audio")).map((a) => new Promise((resolve) => {
    let finished = false;
    const done = async () => {
      if (finished) { return; }
      finished = true;
      let played = null;
      if (!a.error && a.readyState >= 1) {
        try { await a.play(); await wait(300); played = a.currentTime; a.pause(); } catch (e) { played = String(e); }
      }
      resolve({src: a.currentSrc, duration: a.duration, expected: parseFloat(a.dataset.seconds),
               error: a.error ? a.error.code : null, played: played});
    };
    if (a.readyState >= 1 || a.error) { done(); return; }
    a.addEventListener("loadedmetadata", done);
    a.addEventListener("error", done, true);
    setTimeout(done, 15000);
  })));
  const images = Array.from(document.images).map((i) => ({src: i.currentSrc, ok: i.complete && i.naturalWidth > 0}));
  return {audios: audios, images: images};
})()"""


@pytest.fixture(scope="module")
def browser():
    from browser import CHROMIUM, Chromium  # tests/browser.py: CDP over a pipe, no extra package

    if not CHROMIUM.is_file():
        pytest.skip(f"no browser: {CHROMIUM} is not installed (Debian: apt-get install -y chromium), so the "
                    "generated pages were not opened in a browser")
    with Chromium() as b:
        yield b


def _check_media(page, n_audio: int, n_images: int) -> None:
    media = page.evaluate(CHECK_MEDIA)
    assert len(media["audios"]) == n_audio and len(media["images"]) == n_images, media
    for a in media["audios"]:
        assert a["error"] is None and a["src"].endswith(".ogg"), a
        assert abs(a["duration"] - a["expected"]) < 0.05, a          # Opus: exact up to its padding
        assert isinstance(a["played"], (int, float)) and a["played"] > 0, a  # it decodes and plays
    assert all(i["ok"] for i in media["images"]), media["images"]


def test_pages_in_a_browser(site, browser, tmp_path):
    index = browser.open(site / "index.html")
    assert index.evaluate("document.querySelectorAll('table.items tbody tr').length") == 9
    visible = "Array.from(document.querySelectorAll('table.items tbody tr')).filter((r) => !r.hidden).length"
    assert index.evaluate(visible) == 9
    assert index.evaluate("document.getElementById('filter-count').textContent") == "9 of 9 samples shown"
    # choosing a value in a filter hides the other rows
    index.evaluate("const s = document.querySelector('select[name=direction]'); s.value = 'left';"
                   "s.dispatchEvent(new Event('change'))")
    assert index.evaluate(visible) == 4        # test_000, test_004, the hostile one, v1_000
    index.evaluate("const t = document.querySelector('select[name=split]'); t.value = 'old';"
                   "t.dispatchEvent(new Event('change'))")
    assert index.evaluate(visible) == 1
    shot = index.screenshot(tmp_path / "index.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
    index.drain(0.3)
    assert index.problems == [], index.problems
    # filters preset from the address; an unknown name or value is reported on the page and ignored
    preset = browser.open(site / "index.html", "direction=right&split=nowhere&colour=red")
    assert preset.evaluate(visible) == 3       # test_001, test_005, v2_000
    notice = preset.evaluate("document.getElementById('filter-notice')")
    text = preset.evaluate("document.getElementById('filter-notice').textContent")
    assert notice is not None and "split=nowhere (no such value)" in text and "colour (no such filter)" in text
    assert preset.problems == [], preset.problems
    summary = browser.open(site / "summary.html")
    _check_media(summary, 0, 1)
    assert summary.problems == []
    for page_path in sorted((site / "samples").glob("*.html")):
        page = browser.open(page_path)
        _check_media(page, 2, 2)
        page.drain(0.2)
        assert page.problems == [], (page_path.name, page.problems)
        # only the site's files (data: URLs are the browser's own player icons)
        assert all(u.startswith(("file:", "data:")) for u in page.requests), page.requests
    page.screenshot(tmp_path / "sample.png")


def test_hostile_caption_shows_as_text_and_runs_nothing(site, browser):
    page = browser.open(site / "samples" / f"{slug(XSS_KEY)}.html")
    page.drain(0.5)  # time for any injected image error handler to fire
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("document.images.length") == 2        # no injected <img>
    body = page.evaluate("document.body.innerText")
    assert XSS_CAPTION in body and XSS_KEY in body
    assert page.problems == [], page.problems
    index = browser.open(site / "index.html")
    index.drain(0.5)
    assert index.evaluate("typeof window.__pwned") == "undefined"
    assert XSS_CAPTION in index.evaluate("document.body.innerText")
    assert index.evaluate("document.images.length") == 0


# ---------------------------------------------------------------------------------------------
# disse-eval --html
# ---------------------------------------------------------------------------------------------

def _embeddings(path: Path) -> "object":
    """Embeddings of the fixture's samples (keys as in the shards; "no_foa" has no audio there, "gone" is in
    no shard): source embeddings cluster by source_id, spatial ones by direction; directions with errors."""
    from disse.trainer.evaluation import metrics as M
    from disse.trainer.evaluation.evaluate import Embeddings

    keys = [f"test_{i:03d}" for i in range(6)] + [XSS_KEY, "no_foa", "v1_000", "v2_000", "gone"]
    idx = list(range(10)) + [10]
    rng = np.random.default_rng(0)
    src = np.array([f"clip{i % 3}" for i in idx])
    az = np.array([AZIMUTHS[i % 4] for i in idx])
    space = np.array([{90.0: "left", -90.0: "right", 0.0: "front", 180.0: "behind"}[a] for a in az])
    p_src, p_spa = rng.normal(size=(3, 8)), rng.normal(size=(4, 8))
    s_code = np.array([i % 3 for i in idx])
    a_code = np.array([AZIMUTHS.index(a) for a in az])
    noisy = lambda p, c: (p[c] + 0.5 * rng.normal(size=(len(idx), 8))).astype(np.float32)  # noqa: E731
    el = np.zeros(len(idx))
    emb = Embeddings(noisy(p_src, s_code), noisy(p_spa, a_code), noisy(p_src, s_code), noisy(p_spa, a_code),
                     src, space, physical={"true_azimuth_deg": az, "true_elevation_deg": el,
                                           "pred_direction": M.direction_from_angles(az + 10.0 * np.arange(len(idx)),
                                                                                     el),
                                           "iv_direction": M.direction_from_angles(az + 5.0, el)},
                     keys=np.array(keys))
    emb.save(path)
    return emb


@pytest.fixture(scope="module")
def eval_pages(shards, tmp_path_factory) -> Path:
    from disse.trainer.cli.eval import main as eval_main

    d = tmp_path_factory.mktemp("evalhtml")
    _embeddings(d / "emb.npz")
    every = f"{shards}/{{test/test-000000,test/test-000001,old/old-000000}}.tar"
    res = CliRunner().invoke(eval_main, ["--embeddings", str(d / "emb.npz"), "--shards", every,
                                         "--out", str(d / "out"), "--html", "--html-queries", "4", "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "pages: " in res.output and "2 clip(s) shown without audio" in res.output
    return d / "out"


def test_eval_html_pages(eval_pages):
    html_dir = eval_pages / "html"
    for name in ("index.html", "text.html", "audio.html", "direction.html"):
        assert (html_dir / name).is_file()
    text = (html_dir / "text.html").read_text()
    assert text.count("<h2>Query ") == 4 and text.count('class="pos"') >= 4  # each query retrieves itself at least
    assert "<script>window" not in text and "<img src=x" not in text
    direction = (html_dir / "direction.html").read_text()
    assert "The 10 worst items" in direction and "direction_error.png" in direction
    # the worst item has the largest error: "gone" (index 10, 100° off) is listed first, without audio
    assert direction.index("gone") < direction.index("v2_000")
    oggs = list((html_dir / "media").glob("*.ogg"))
    assert len(oggs) == len(set(oggs)) and 0 < len(oggs) <= 9   # once per clip, only readable clips
    assert "html/index.html" in (eval_pages / "report.md").read_text()
    index = (html_dir / "index.html").read_text()
    assert "no_foa" in index and "gone: not found in the shards" in index


def test_eval_html_bad_input(shards, tmp_path):
    from disse.trainer.cli.eval import main as eval_main

    emb = _embeddings(tmp_path / "emb.npz")
    res = CliRunner().invoke(eval_main, ["--embeddings", str(tmp_path / "emb.npz"), "--out", str(tmp_path / "o"),
                                         "--html"])
    assert res.exit_code == 2 and "field '--html': needs --shards" in res.output
    emb.keys = None
    emb.save(tmp_path / "nokeys.npz")
    res = CliRunner().invoke(eval_main, ["--embeddings", str(tmp_path / "nokeys.npz"), "--shards", str(shards / "test"),
                                         "--out", str(tmp_path / "o2"), "--html", "--no-plots"])
    assert res.exit_code == 2 and "carry no sample keys" in res.output


def test_eval_pages_in_a_browser(eval_pages, browser):
    for name, n_images in (("index.html", 0), ("text.html", 0), ("audio.html", 0), ("direction.html", 9)):
        page = browser.open(eval_pages / "html" / name)
        n_audio = page.evaluate("document.querySelectorAll('audio').length")
        assert (n_audio > 0) == (name != "index.html")
        _check_media(page, n_audio, n_images)
        page.drain(0.2)
        assert page.problems == [], (name, page.problems)
        assert page.evaluate("typeof window.__pwned") == "undefined"


def test_demo_site_size_per_sample(demo_shards, tmp_path):
    """docs/synthesis.md states the site of the demo's test split (288 samples): 46.9 MB measured (163 kB a
    sample), under 72 MB: each sample (10-s clips, as in the full demo) must stay under 250 kB."""
    out = tmp_path / "site"
    res = synth("inspect", demo_shards / "test", "--html", out, "--limit", 3)
    assert res.exit_code == 0, res.output
    pages = sorted((out / "samples").glob("*.html"))
    assert len(pages) == 3
    for p in pages:
        files = [p, *(out / "media").glob(f"{p.stem}.*")]
        assert len(files) == 5
        size = sum(f.stat().st_size for f in files)
        assert 80_000 < size < 250_000, (p.name, size)
