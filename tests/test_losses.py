"""Multi-positive contrastive loss against a brute-force reference and CLIP's InfoNCE; DELSALoss terms."""
import math

import pytest
import torch
import torch.nn.functional as F

from disse.trainer.training.losses import DELSALoss, LossConfig, multi_positive_contrastive
from disse.trainer.model.physics import direction_from_angles


def _features(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    t = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    return a, t


def _brute_force(a: torch.Tensor, t: torch.Tensor, ids: list[int], scale: float) -> float:
    """Loop over queries and positives, straight from the definition in the docstring."""
    n = len(ids)
    total_a2t = total_t2a = 0.0
    for i in range(n):
        pos = [j for j in range(n) if ids[j] == ids[i]]
        row_a = [scale * float(a[i] @ t[k]) for k in range(n)]   # audio i against every text
        row_t = [scale * float(t[i] @ a[k]) for k in range(n)]   # text i against every audio
        lse_a, lse_t = math.log(sum(math.exp(x) for x in row_a)), math.log(sum(math.exp(x) for x in row_t))
        total_a2t += sum(lse_a - row_a[j] for j in pos) / len(pos)
        total_t2a += sum(lse_t - row_t[j] for j in pos) / len(pos)
    return 0.5 * (total_a2t / n + total_t2a / n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multi_positive_equals_brute_force_with_repeated_ids(seed):
    g = torch.Generator().manual_seed(100 + seed)
    n = 13
    ids = torch.randint(0, 5, (n,), generator=g)  # several positives per query, some singletons possible
    a, t = _features(n, 8, seed)
    scale = 7.5
    got = multi_positive_contrastive(a, t, ids, scale)
    want = _brute_force(a, t, ids.tolist(), scale)
    assert got.item() == pytest.approx(want, rel=1e-5)
    assert len(set(ids.tolist())) < n  # the test really exercises repeated ids


def test_reduces_to_clip_infonce_when_ids_are_distinct():
    a, t = _features(16, 12, 3)
    scale = torch.tensor(14.0, dtype=torch.float64)
    logits = scale * a.float() @ t.float().T
    labels = torch.arange(16)
    clip = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    got = multi_positive_contrastive(a, t, torch.arange(100, 116), scale)
    assert got.item() == pytest.approx(clip.item(), rel=1e-6)


def test_loss_is_invariant_to_sample_order_and_gathered_concatenation():
    a, t = _features(10, 6, 4)
    ids = torch.tensor([0, 1, 1, 2, 0, 3, 3, 3, 4, 1])
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    base = multi_positive_contrastive(a, t, ids, 10.0)
    assert multi_positive_contrastive(a[perm], t[perm], ids[perm], 10.0).item() == pytest.approx(base.item(), rel=1e-9)
    # Two "ranks" gathered by concatenation give the same loss as one big batch.
    gathered = multi_positive_contrastive(torch.cat([a[:4], a[4:]]), torch.cat([t[:4], t[4:]]),
                                          torch.cat([ids[:4], ids[4:]]), 10.0)
    assert gathered.item() == pytest.approx(base.item(), rel=1e-9)


def test_matching_pairs_score_lower_than_mismatched():
    a, _ = _features(8, 16, 5)
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    aligned = multi_positive_contrastive(a, a.clone(), ids, 50.0)
    shuffled = multi_positive_contrastive(a, a.flip(0), ids, 50.0)
    assert aligned.item() < shuffled.item()


def _outputs(n: int, seed: int, requires_grad: bool = True) -> tuple[dict, dict, dict]:
    g = torch.Generator().manual_seed(seed)
    az = torch.rand(n, generator=g) * 360 - 180
    el = torch.rand(n, generator=g) * 120 - 60
    targets = {"azimuth_deg": az, "elevation_deg": el, "direction": direction_from_angles(az, el),
               "area_m2": torch.rand(n, generator=g) * 200 + 10, "distance_m": torch.rand(n, generator=g) * 4 + 0.5,
               "t30_ms": torch.rand(n, generator=g) * 1500 + 100}
    audio = {"source": F.normalize(torch.randn(n, 8, generator=g), dim=-1).requires_grad_(requires_grad),
             "space": F.normalize(torch.randn(n, 4, generator=g), dim=-1).requires_grad_(requires_grad),
             "phys": {"direction": F.normalize(torch.randn(n, 3, generator=g), dim=-1),
                      "area": torch.randn(n, generator=g), "distance": torch.randn(n, generator=g),
                      "t30": torch.randn(n, generator=g)}}
    text = {"source": F.normalize(torch.randn(n, 8, generator=g), dim=-1),
            "space": F.normalize(torch.randn(n, 4, generator=g), dim=-1)}
    batch = {"source_id": torch.arange(n) % 3, "space_id": torch.arange(n) % 2, "targets": targets}
    return audio, text, batch


def test_delsa_loss_terms_and_weights():
    from disse.trainer.model.physics import normalize_targets

    audio, text, batch = _outputs(6, 0)
    ls = torch.tensor(math.log(20.0), requires_grad=True)
    cfg = LossConfig(source_weight=1.0, space_weight=2.0, direction_weight=0.5, area_weight=0.25,
                     distance_weight=0.0, t30_weight=1.0)
    total, terms = DELSALoss(cfg)(audio, text, batch, ls, ls)
    want = (terms["source"] + 2 * terms["space"] + 0.5 * terms["direction"] + 0.25 * terms["area"]
            + terms["t30"])
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    assert terms["source"].item() == pytest.approx(
        multi_positive_contrastive(audio["source"], text["source"], batch["source_id"], 20.0).item(), rel=1e-6)
    assert all(not v.requires_grad for v in terms.values())
    # Perfect physical predictions give zero physical loss.
    audio["phys"] = normalize_targets(batch["targets"])
    _, terms = DELSALoss(cfg)(audio, text, batch, ls, ls)
    for k in ("direction", "area", "distance", "t30"):
        assert terms[k].item() == pytest.approx(0.0, abs=1e-6)
    # Opposite direction: 1 - cos = 2.
    audio["phys"]["direction"] = -audio["phys"]["direction"]
    _, terms = DELSALoss(cfg)(audio, text, batch, ls, ls)
    assert terms["direction"].item() == pytest.approx(2.0, abs=1e-6)


def test_logit_scale_is_clamped():
    audio, text, batch = _outputs(5, 1)
    cfg = LossConfig(max_logit_scale=100.0, min_logit_scale=1.0)
    high = torch.tensor(10.0, requires_grad=True)    # exp(10) >> 100
    low = torch.tensor(-3.0, requires_grad=True)     # exp(-3) < 1
    total, terms = DELSALoss(cfg)(audio, text, batch, high, low)
    assert terms["scale_source"].item() == pytest.approx(100.0)
    assert terms["scale_space"].item() == pytest.approx(1.0)
    total.backward()
    assert high.grad.item() == 0.0 and low.grad.item() == 0.0  # outside the clamp: no push further out
    inside = torch.tensor(math.log(30.0), requires_grad=True)
    DELSALoss(cfg)(audio, text, batch, inside, inside)[0].backward()
    assert inside.grad.item() != 0.0


def test_targets_must_match_predictions():
    audio, text, batch = _outputs(4, 2)
    batch["targets"] = {k: v[:3] for k, v in batch["targets"].items()}
    with pytest.raises(ValueError, match="targets hold 3"):
        DELSALoss()(audio, text, batch, torch.tensor(2.0), torch.tensor(2.0))


def test_shared_descriptor_classifier_pulls_both_modalities_into_the_same_regions():
    """loss.descriptor_weight: one classifier per descriptor scores the audio AND the text space
    embedding. Training only that term from random embeddings puts the two modalities' items of a
    label in the same half-spaces: text prototypes (class means of text) then classify audio."""
    from disse.trainer.model.delsa import DescriptorClassifier

    torch.manual_seed(0)
    n, dim, labels = 64, 16, torch.arange(64) % 4
    audio_e = torch.randn(n, dim, requires_grad=True)
    text_e = torch.randn(n, dim, requires_grad=True)
    head = DescriptorClassifier(dim, 4)
    loss_fn = DELSALoss(LossConfig(source_weight=0, space_weight=0, descriptor_weight=1.0))
    opt = torch.optim.Adam([audio_e, text_e, *head.parameters()], lr=0.05)
    ids = torch.arange(n)
    ls = torch.tensor(math.log(10.0))

    def step() -> float:
        a, t = F.normalize(audio_e, dim=-1), F.normalize(text_e, dim=-1)
        audio = {"source": a, "space": a, "descriptors": {"direction": head(a)}}
        text = {"source": t, "space": t, "descriptors": {"direction": head(t)}}
        batch = {"source_id": ids, "space_id": ids, "descriptor_index": labels[:, None]}
        total, terms = loss_fn(audio, text, batch, ls, ls)
        opt.zero_grad()
        total.backward()
        opt.step()
        return terms["descriptors"].item()

    first = step()
    for _ in range(150):
        last = step()
    assert last < 0.2 * first
    with torch.no_grad():
        a, t = F.normalize(audio_e, dim=-1), F.normalize(text_e, dim=-1)
        protos = torch.stack([t[labels == k].mean(0) for k in range(4)])
        assert ((a @ protos.T).argmax(1) == labels).float().mean() == 1.0
    # an unknown label (-1) is ignored, and a batch without any known label adds nothing
    batch = {"source_id": ids, "space_id": ids, "descriptor_index": torch.full((n, 1), -1)}
    out = {"source": a, "space": a, "descriptors": {"direction": head(a)}}
    _, terms = loss_fn(out, out, batch, ls, ls)
    assert "descriptors" not in terms


def test_balanced_cross_entropy_weights_every_present_label_equally():
    from disse.trainer.training.losses import balanced_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(7, 3)
    target = torch.tensor([0, 0, 0, 0, 1, 1, -1])
    per_item = F.cross_entropy(logits, target.clamp_min(0), reduction="none")
    want = (per_item[:4].mean() + per_item[4:6].mean()) / 2  # label 2 absent, the -1 item ignored
    assert balanced_cross_entropy(logits, target).item() == pytest.approx(want.item(), rel=1e-6)
