"""The source adversary (issue: disentangle): gradient reversal flips the sign of the classifier's gradient at
the spatial embedding, the classifier itself still learns, and the loss term is wired through training."""
from __future__ import annotations

import dataclasses

import torch

from disse.trainer.model.adversary import SourceAdversary, grad_reverse
from disse.trainer.model.delsa import DELSA
from disse.trainer.training.losses import DELSALoss, LossConfig

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
