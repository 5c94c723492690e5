"""The source adversary (issue: disentangle): gradient reversal flips the sign of the classifier's gradient at
the spatial embedding, the classifier itself still learns, and the loss term is wired through training."""
from __future__ import annotations

import dataclasses

import torch

from disse.trainer.model.adversary import SourceAdversary, SourceCritic, grad_reverse
from disse.trainer.model.delsa import DELSA
from disse.trainer.model.physics import SCALARS, normalize_targets
from disse.trainer.training.losses import (DELSALoss, LossConfig, critic_loss, independence,
                                          independence_penalties, room_parameters)

from test_model import make_batch, small_config


def test_gradient_reversal_flips_the_sign_at_the_embedding():
    torch.manual_seed(0)
    z = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(8, 3)
    (z @ w).pow(2).sum().backward()
    plain = z.grad.clone()
    z.grad = None
    (grad_reverse(z, 0.5) @ w).pow(2).sum().backward()
    assert torch.allclose(z.grad, -0.5 * plain)


def test_the_adversary_learns_while_the_embedding_is_pushed_away():
    torch.manual_seed(0)
    adv = SourceAdversary(dim=8, buckets=4, hidden=16)
    z = torch.randn(32, 8, requires_grad=True)
    ids = torch.randint(-10**12, 10**12, (32,))
    y = adv.targets(ids)
    assert ((y >= 0) & (y < 4)).all()
    loss = torch.nn.functional.cross_entropy(adv(z), y)
    loss.backward()
    # a small step of the classifier lowers its loss; the same step size on the embedding raises it
    with torch.no_grad():
        for p in adv.parameters():
            p -= 0.1 * p.grad
        after_cls = torch.nn.functional.cross_entropy(adv(z), y)
        moved = z - 0.1 * z.grad
        after_emb = torch.nn.functional.cross_entropy(adv(moved), y)
    assert after_cls < loss and after_emb > after_cls


def test_the_loss_term_reaches_the_spatial_embedding_reversed():
    torch.manual_seed(0)
    cfg = dataclasses.replace(small_config(), source_adversary_buckets=8, source_adversary_hidden=16)
    model = DELSA(cfg)
    batch = make_batch(4)
    audio = model.encode_audio(batch["waveform"], batch["iv"])
    audio["space"].retain_grad()
    audio["source_adversary"] = model.source_adversary(audio["space"])
    text = model.encode_text(model.tokenize(batch["caption"]))
    loss = DELSALoss(LossConfig(source_weight=0, space_weight=0, direction_weight=0, area_weight=0,
                                distance_weight=0, t30_weight=0, source_adversary_weight=1.0))
    total, terms = loss(audio, text, batch, model.logit_scale_source, model.logit_scale_space)
    assert "source_adversary" in terms and torch.isclose(total, terms["source_adversary"])
    total.backward()
    g_emb = audio["space"].grad.clone()
    # the same cross-entropy without reversal gives the opposite gradient at the embedding
    space = audio["space"].detach().requires_grad_(True)
    ce = torch.nn.functional.cross_entropy(model.source_adversary.net(space),
                                           model.source_adversary.targets(batch["source_id"]))
    (g_plain,) = torch.autograd.grad(ce, space)
    assert torch.allclose(g_emb, -g_plain, atol=1e-6)


def test_independence_is_zero_for_unrelated_and_high_for_dependent_embeddings():
    torch.manual_seed(0)
    x = torch.randn(64, 16)
    unrelated = independence(x, torch.randn(64, 32))
    dependent = independence(x, torch.tanh(x @ torch.randn(16, 32)))  # a function of x
    assert unrelated < 0.1 and dependent > 0.6
    # the gradient of the penalty moves x towards independence
    x.requires_grad_(True)
    y = torch.tanh(x.detach() @ torch.randn(16, 32))
    before = independence(x, y)
    before.backward()
    with torch.no_grad():
        after = independence(x - 2.0 * x.grad, y)
    assert after < before


def test_the_critic_learns_to_find_the_source_while_the_embedding_defeats_it():
    torch.manual_seed(0)
    critic = SourceCritic(space_dim=8, source_dim=6, hidden=32)
    source = torch.nn.functional.normalize(torch.randn(16, 6), dim=-1)
    space = (source @ torch.randn(6, 8)).requires_grad_(True)      # the spatial embedding leaks the source
    ids = torch.arange(16)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    first = critic_loss(critic(space), source, ids).item()
    for _ in range(100):
        opt.zero_grad()
        critic_loss(critic(space), source, ids).backward()
        opt.step()
    learned = critic_loss(critic(space), source, ids)
    assert learned < 0.5 * first                                     # the critic reads the leak
    space.grad = None
    learned.backward()                                               # reversed at the embedding:
    with torch.no_grad():                                            # a step along it raises the critic's loss
        assert critic_loss(critic(space - 0.5 * space.grad), source, ids) > learned


def test_critic_and_independence_terms_are_wired_through_the_loss():
    torch.manual_seed(0)
    cfg = dataclasses.replace(small_config(), source_critic_hidden=16)
    model = DELSA(cfg)
    batch = make_batch(4)
    audio = model.encode_audio(batch["waveform"], batch["iv"])
    audio["source_critic"] = model.source_critic(audio["space"])
    text = model.encode_text(model.tokenize(batch["caption"]))
    off = dict(source_weight=0, space_weight=0, direction_weight=0, area_weight=0, distance_weight=0, t30_weight=0)
    total, terms = DELSALoss(LossConfig(**off, source_critic_weight=1.0, independence_weight=1.0))(
        audio, text, batch, model.logit_scale_source, model.logit_scale_space)
    assert {"source_critic", "independence"} <= set(terms)
    assert torch.isclose(total, terms["source_critic"] + terms["independence"])
    total.backward()
    # the source embedding is a detached target: neither term trains the source head
    assert all(p.grad is None or not p.grad.any() for p in model.audio_source_head.parameters())


def _only_penalty(**weight: float):
    """A small model's audio and text outputs on 6 samples and the loss with every term off but ``weight``:
    ``(model, audio, text, total, terms)``."""
    torch.manual_seed(0)
    model = DELSA(small_config())
    batch = make_batch(6)
    audio = model.encode_audio(batch["waveform"], batch["iv"])
    text = model.encode_text(model.tokenize(batch["caption"]))
    off = dict(source_weight=0, space_weight=0, direction_weight=0, area_weight=0, distance_weight=0, t30_weight=0)
    total, terms = DELSALoss(LossConfig(**off, **weight))(audio, text, batch, model.logit_scale_source,
                                                          model.logit_scale_space)
    return model, audio, text, total, terms


def _moved(module: torch.nn.Module) -> bool:
    return any(p.grad is not None and p.grad.any() for p in module.parameters())


def test_source_independence_trains_the_source_embedding_away_from_the_room_and_leaves_the_space_side():
    model, audio, _, total, terms = _only_penalty(source_independence_weight=1.0)
    assert set(terms) >= {"source_independence"} and "independence" not in terms
    assert torch.isclose(total, independence(audio["source"], audio["space"]))
    total.backward()
    # the spatial embedding is the detached target: the space head gets no gradient, the source head does
    assert not _moved(model.audio_space_head) and _moved(model.audio_source_head)


def test_text_source_independence_trains_the_text_source_head_and_leaves_the_text_space_head():
    model, _, text, total, _ = _only_penalty(text_source_independence_weight=1.0)
    assert torch.isclose(total, independence(text["source"], text["space"]))
    total.backward()
    assert not _moved(model.text_space_head) and _moved(model.text_source_head)
    assert not _moved(model.audio)  # the audio side is untouched


def test_room_independence_compares_the_source_embedding_with_the_true_room_and_trains_only_the_source_side():
    model, audio, _, total, terms = _only_penalty(room_independence_weight=1.0)
    tgt = normalize_targets(make_batch(6)["targets"])
    room = room_parameters(tgt["direction"], [tgt[k] for k in SCALARS])
    assert room.shape == (6, 6) and set(terms) >= {"room_independence"}
    assert torch.isclose(total, independence(audio["source"], room))
    total.backward()
    assert _moved(model.audio_source_head) and not _moved(model.audio_space_head)
    assert not _moved(model.text_source_head) and not _moved(model.text_space_head)


def test_room_independence_drives_an_embedding_that_encodes_the_room_towards_independence():
    # a linear "source head" that starts out reading the room: minimising the term alone makes its output
    # forget the room while the sound it also reads stays in it
    torch.manual_seed(0)
    n, sound = 64, torch.randn(64, 4)
    room = torch.cat([torch.nn.functional.normalize(torch.randn(n, 3), dim=-1), torch.randn(n, 3)], dim=1)
    head = torch.nn.Linear(10, 8)
    x = torch.cat([sound, room], dim=1)
    cfg = LossConfig(room_independence_weight=1.0)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    start = None
    for _ in range(150):
        emb = torch.nn.functional.normalize(head(x), dim=-1)
        value = independence_penalties(cfg, {"source": emb, "space": emb}, {"source": emb, "space": emb}, room)["room_independence"][1]
        start = float(value.detach()) if start is None else start
        opt.zero_grad()
        value.backward()
        opt.step()
    emb = torch.nn.functional.normalize(head(x), dim=-1).detach()
    assert start > 0.3 and float(independence(emb, room)) < 0.05, (start, float(independence(emb, room)))
    assert float(independence(emb, sound)) > 0.3


def test_full_caption_samples_train_only_the_text_side_of_the_space_pair():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1).requires_grad_(True)
    t = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1).requires_grad_(True)
    dropped = torch.tensor([True, False, True, False, False, True])  # True: the space head read the spatial caption
    batch = {"source_id": torch.arange(6), "space_id": torch.arange(6), "space_caption_dropped": dropped}
    off = dict(source_weight=0, direction_weight=0, area_weight=0, distance_weight=0, t30_weight=0)
    scale = torch.tensor(2.0)
    for grad_all in (True, False):
        a.grad = t.grad = None
        total, _ = DELSALoss(LossConfig(**off, full_caption_space_grad=grad_all))(
            {"space": a, "source": a}, {"space": t, "source": t}, batch, scale, scale)
        total.backward()
        rows = a.grad.abs().sum(1) > 0
        assert rows.all() if grad_all else torch.equal(rows, dropped)   # full-caption rows: no audio gradient
        assert (t.grad.abs().sum(1) > 0).all()                          # the text side always learns


def test_caption_distillation_moves_only_the_full_caption_rows_of_dropped_samples():
    torch.manual_seed(0)
    full = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1).requires_grad_(True)
    spatial = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1).requires_grad_(True)
    dropped = torch.tensor([True, False, True, True, False])
    batch = {"source_id": torch.arange(5), "space_id": torch.arange(5), "space_caption_dropped": dropped}
    off = dict(source_weight=0, space_weight=0, direction_weight=0, area_weight=0, distance_weight=0, t30_weight=0)
    a = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    total, terms = DELSALoss(LossConfig(**off, caption_distill_weight=1.0))(
        {"space": a, "source": a}, {"space": spatial, "source": spatial, "space_of_caption": full}, batch, torch.tensor(1.0), torch.tensor(1.0))
    expected = (1 - torch.nn.functional.cosine_similarity(full[dropped], spatial[dropped], dim=-1)).mean()
    assert torch.isclose(terms["caption_distill"], expected)
    total.backward()
    assert torch.equal(full.grad.abs().sum(1) > 0, dropped)   # only samples that have a spatial caption to copy
    assert spatial.grad is None or not spatial.grad.any()     # the spatial caption's embedding is the target


def test_caption_distillation_needs_spatial_captions():
    import pytest

    from disse.schemas import SchemaError
    from disse.trainer.training.config import load_train_config

    with pytest.raises(SchemaError, match="space_caption_drop"):
        load_train_config(None, ["data.train=x", "loss.caption_distill_weight=1.0"])


def test_caption_distillation_features_have_the_same_keys_whether_or_not_a_batch_drops_captions():
    """Under DDP every rank gathers the same keys; whether a rank's batch has a spatial caption to read
    (2B text rows) or not (B rows) depends on its data, so the keys must not."""
    from disse.trainer.training.loop import DualEncoder, micro_inputs

    torch.manual_seed(0)
    model = DELSA(dataclasses.replace(small_config(), text_input="full")).eval()
    net = DualEncoder(model, space_of_caption=True)
    batch = make_batch(3)
    none = dict(batch, space_head_text=list(batch["caption"]), space_caption_dropped=torch.zeros(3, dtype=torch.bool))
    some = dict(batch, space_head_text=[batch["space_text"][0], *batch["caption"][1:]],
                space_caption_dropped=torch.tensor([True, False, False]))
    with torch.no_grad():
        out_none = net(*micro_inputs(model, none, torch.device("cpu")))["text"]
        out_some = net(*micro_inputs(model, some, torch.device("cpu")))["text"]
        caption = model.encode_text(model.tokenize(list(batch["caption"])))
    assert out_none.keys() == out_some.keys() and "space_of_caption" in out_none
    assert {k: v.shape for k, v in out_none.items()} == {k: v.shape for k, v in out_some.items()}
    torch.testing.assert_close(out_none["space_of_caption"], caption["space"])   # B rows: the caption itself
    torch.testing.assert_close(out_some["space_of_caption"], caption["space"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_some["space"][1:], caption["space"][1:], rtol=1e-4, atol=1e-5)
    assert "space_of_caption" not in DualEncoder(model)(*micro_inputs(model, some, torch.device("cpu")))["text"]


def _full_caption_model_and_inputs():
    from disse.trainer.training.loop import DualEncoder, micro_inputs

    torch.manual_seed(0)
    model = DELSA(dataclasses.replace(small_config(), text_input="full"))
    batch = make_batch(6)
    batch["caption"] = [f"{src} in a large reverberant hall, far to the left" if i % 2 else f"{src}, close behind"
                        for i, src in enumerate(batch["source_text"])]
    return model, batch, DualEncoder(model), micro_inputs(model, batch, torch.device("cpu"), source_text=True)


def test_source_caption_distillation_pulls_the_full_caption_to_the_clips_own_caption_on_the_text_source_side():
    model, batch, net, inputs = _full_caption_model_and_inputs()
    assert len(inputs) == 4  # waveform, iv, the captions' tokens and the clips' own captions' tokens
    out = net(*inputs)
    with torch.no_grad():
        full = model.encode_text(model.tokenize(batch["caption"]))["source"]
        own = model.encode_text(model.tokenize(batch["source_text"]))["source"]
    torch.testing.assert_close(out["text"]["source_of_source_text"], own, rtol=1e-4, atol=1e-5)
    off = dict(source_weight=0, space_weight=0, direction_weight=0, area_weight=0, distance_weight=0, t30_weight=0)
    total, terms = DELSALoss(LossConfig(**off, source_caption_distill_weight=1.0))(
        out["audio"], out["text"], batch, model.logit_scale_source, model.logit_scale_space)
    expected = (1 - torch.nn.functional.cosine_similarity(full, own, dim=-1)).mean()
    assert torch.isclose(terms["source_caption_distill"], expected, rtol=1e-4) and float(expected) > 0
    total.backward()
    assert _moved(model.text_source_head)
    assert not _moved(model.text_space_head) and not _moved(model.audio)


def _train_caption_head(distill_weight: float) -> dict[str, float]:
    """A linear text source head over [what the clip's own caption says; the caption's spatial words], trained
    1000 steps with the source contrast against fixed audio embeddings (6 sounds x 4 captions) and
    ``distill_weight``. -> distillation gap, SRC R@1 and the spread of one sound's captions (1 - cosine)."""
    F = torch.nn.functional
    torch.manual_seed(0)
    ids = torch.arange(6).repeat_interleave(4)
    words = F.normalize(torch.randn(6, 16), dim=-1)[ids]
    spatial = F.normalize(torch.randn(len(ids), 16), dim=-1)
    audio = F.normalize(torch.randn(6, 8), dim=-1)[ids]
    head = torch.nn.Linear(32, 8)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    off = dict(space_weight=0, direction_weight=0, area_weight=0, distance_weight=0, t30_weight=0, physics=False)
    loss_fn = DELSALoss(LossConfig(**off, source_caption_distill_weight=distill_weight))
    batch = {"source_id": ids, "space_id": torch.arange(len(ids))}
    enc = lambda sp: F.normalize(head(torch.cat([words, sp], dim=1)), dim=-1)  # noqa: E731
    scale = torch.tensor(10.0)
    for _ in range(1000):
        text = {"source": enc(spatial), "space": enc(spatial), "source_of_source_text": enc(torch.zeros_like(spatial))}
        total, _ = loss_fn({"source": audio, "space": audio}, text, batch, scale, scale)
        opt.zero_grad()
        total.backward()
        opt.step()
    with torch.no_grad():
        full, own = enc(spatial), enc(torch.zeros_like(spatial))
    same = (ids[:, None] == ids[None, :]) & ~torch.eye(len(ids), dtype=torch.bool)
    return {"gap": float((1 - F.cosine_similarity(full, own, dim=-1)).mean()),
            "r1": float((ids[(full @ audio.T).argmax(1)] == ids).float().mean()),
            "spread": float(1 - (full @ full.T)[same].mean())}


def test_source_caption_distillation_makes_the_text_source_embedding_deaf_to_spatial_words():
    # the contrast alone leaves one sound's captions apart by their spatial words (what X-SPA a2t rides on);
    # the distillation brings them together, and every caption still finds its sound
    without, with_ = _train_caption_head(0.0), _train_caption_head(1.0)
    assert without["r1"] == with_["r1"] == 1.0
    assert without["spread"] > 0.05 and with_["spread"] < 0.2 * without["spread"], (without, with_)
    assert with_["gap"] < 0.2 * without["gap"], (without, with_)


def test_source_caption_distillation_needs_full_captions():
    import pytest

    from disse.schemas import SchemaError
    from disse.trainer.training.config import load_train_config

    with pytest.raises(SchemaError, match="source_caption_distill_weight"):
        load_train_config(None, ["data.train=x", "loss.source_caption_distill_weight=1.0"])
    # the official preset's text heads read the full caption by construction
    assert load_train_config(None, ["data.train=x", "model.preset=official", "data.rotate_azimuth=false",
                                    "loss.source_caption_distill_weight=1.0"]).loss.source_caption_distill_weight == 1


def test_split_source_contrast_gives_the_audio_side_the_own_captions_and_the_text_side_the_full_ones():
    from disse.trainer.training.losses import multi_positive_contrastive, source_contrast

    F = torch.nn.functional
    torch.manual_seed(0)
    ids = torch.tensor([0, 0, 1, 1, 2, 3])
    own = F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(5.0)

    def grads(full_words: torch.Tensor, split: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(1)), dim=-1).requires_grad_(True)
        full = F.normalize(own + full_words, dim=-1).detach().requires_grad_(True)
        value = source_contrast(a, {"source": full, "source_of_source_text": own}, ids, scale, not split)
        value.backward()
        return value.detach(), a.grad, full.grad

    # without spatial words the split is the single contrast counted twice, with the same gradients on both sides
    one, a_one, t_one = grads(torch.zeros(6, 8), split=False)
    two, a_two, t_two = grads(torch.zeros(6, 8), split=True)
    assert torch.isclose(two, 2 * one)
    torch.testing.assert_close(a_two, a_one)
    torch.testing.assert_close(t_two, t_one)
    # with spatial words the audio side's gradient is the own captions' contrast, whatever the words are
    words = 0.5 * torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    _, a_split, t_split = grads(words, split=True)
    _, a_full, _ = grads(words, split=False)
    torch.testing.assert_close(a_split, a_one)
    assert not torch.allclose(a_full, a_one, atol=1e-3)            # the single contrast hands the words to the audio
    a = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    full = F.normalize(own + words, dim=-1).requires_grad_(True)
    multi_positive_contrastive(a, full, ids, scale).backward()
    torch.testing.assert_close(t_split, full.grad)                  # the text side: the full captions vs the audio


def _train_audio_source_head(split: bool) -> float:
    """A linear audio source head over [the sound's features; the room's features] (24 sounds, 6 in each of 4
    rooms, one render each, as in a batch), trained 300 steps with the source contrast against fixed text
    embeddings: the full caption is the own caption plus a room-dependent shift (what its spatial words leave in
    the text source embedding). -> how much the spatial words draw an audio query to its own room: the mean of
    cos(audio, full caption) - cos(audio, own caption) over other sounds' captions of the query's room, minus
    the same over those of other rooms (0: the words pull every query alike)."""
    F = torch.nn.functional
    torch.manual_seed(0)
    sound, room = torch.arange(24), torch.arange(4).repeat(6)
    x = torch.cat([torch.randn(24, 16), torch.randn(4, 16)[room]], dim=1)
    own = F.normalize(torch.randn(24, 8), dim=-1)
    full = F.normalize(own + 0.6 * F.normalize(torch.randn(4, 8), dim=-1)[room], dim=-1)
    head = torch.nn.Linear(32, 8)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    off = dict(space_weight=0, direction_weight=0, area_weight=0, distance_weight=0, t30_weight=0, physics=False)
    loss_fn = DELSALoss(LossConfig(**off, full_caption_source_grad=not split))
    batch = {"source_id": sound, "space_id": room}
    scale = torch.tensor(10.0)
    for _ in range(300):
        a = F.normalize(head(x), dim=-1)
        total, _ = loss_fn({"source": a, "space": a}, {"source": full, "space": full, "source_of_source_text": own},
                           batch, scale, scale)
        opt.zero_grad()
        total.backward()
        opt.step()
    with torch.no_grad():
        a = F.normalize(head(x), dim=-1)
    pull = a @ full.T - a @ own.T                                     # what the spatial words add, per pair
    same_room, other = room[:, None] == room[None, :], sound[:, None] != sound[None, :]
    return float(pull[same_room & other].mean() - pull[~same_room].mean())


def test_split_source_contrast_stops_rewarding_the_audio_source_embedding_for_knowing_the_room():
    # the single contrast pulls each audio embedding to its full caption, spatial shift included, so the words
    # draw an audio query to other sounds' captions of its own room (X-SPA a2t); against the own captions not
    single, split = _train_audio_source_head(False), _train_audio_source_head(True)
    assert single > 0.1 and abs(split) < 0.2 * single, (single, split)


def test_split_source_contrast_needs_full_captions_and_feeds_the_own_captions():
    import pytest

    from disse.schemas import SchemaError
    from disse.trainer.training.config import load_train_config
    from disse.trainer.training.loop import objective_for

    with pytest.raises(SchemaError, match="full_caption_source_grad"):
        load_train_config(None, ["data.train=x", "loss.full_caption_source_grad=false"])
    cfg = load_train_config(None, ["data.train=x", "model.text_input=full", "loss.full_caption_source_grad=false"])
    assert objective_for(cfg).source_text                              # the own captions' pass is made
    assert not objective_for(load_train_config(None, ["data.train=x"])).source_text
