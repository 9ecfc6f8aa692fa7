"""Distillation: CoFi's layer pairing, the fixed pairing, the losses and their padding masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pruned_upstream.config import DistillConfig
from pruned_upstream.training.distill import (Distiller, default_teacher_layers, l1_cos_loss, learned_pairing, mse_loss,
                                     valid_frames)
from pruned_upstream.model.wavlm import frame_padding_mask


def test_default_teacher_layers_every_third_and_the_last():
    assert default_teacher_layers(12) == [3, 6, 9, 12]  # CoFi's layers of a 12-layer teacher
    assert default_teacher_layers(24) == [3, 6, 9, 12, 15, 18, 21, 24]
    assert default_teacher_layers(4) == [3, 4]
    assert default_teacher_layers(2) == [2]
    assert default_teacher_layers(4, every=2) == [2, 4]


def test_learned_pairing_takes_each_rows_minimum_when_they_are_in_order():
    losses = torch.rand(4, 12) + 1.0
    best = [2, 5, 8, 11]
    for k, j in enumerate(best):
        losses[k, j] = 0.1
    assert learned_pairing(losses) == best


def test_learned_pairing_is_monotone_searching_from_the_top():
    # Row 1's minimum (column 9) lies above row 2's choice (column 6): CoFi's search,
    # from the last teacher layer down, gives row 1 its best column BELOW 6.
    losses = torch.full((3, 10), 5.0)
    losses[2, 6] = 0.0
    losses[1, 9], losses[1, 4], losses[1, 2] = 0.0, 1.0, 2.0
    losses[0, 5], losses[0, 1] = 0.0, 3.0
    assert learned_pairing(losses) == [1, 4, 6]
    assert torch.argmin(losses, dim=1).tolist() == [5, 9, 6]  # the unconstrained choice is not monotone


def test_learned_pairing_skips_dead_layers_and_falls_back():
    losses = torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, 1.0]])
    assert learned_pairing(losses) == [0, 1]
    alive = torch.tensor([True, False, True])
    assert learned_pairing(losses, alive) == [0, 2]  # column 1 is not a candidate
    assert learned_pairing(losses, torch.zeros(3, dtype=torch.bool)) == [0, 1]  # none alive: all allowed
    # The top row takes column 0: nothing is left below it, so row 0 repeats it (CoFi's fallback).
    assert learned_pairing(torch.tensor([[1.0, 0.0], [0.0, 1.0]])) == [0, 0]


def _states(n, b=2, t=7, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, d, generator=g) for _ in range(n)]


def test_distiller_finds_the_student_layers_that_hold_the_teachers():
    teacher = _states(5)
    student = _states(5, seed=1)
    student[1] = teacher[2] + 0.01 * torch.randn_like(teacher[2])  # student layer 1 ~ teacher layer 2
    student[3] = teacher[4].clone()  # student layer 3 = teacher layer 4
    distiller = Distiller(DistillConfig(teacher_layers=[2, 4]), teacher_layers=4, student_layers=4, dim=8)
    loss, pairs = distiller(student, teacher)
    assert pairs == [1, 3]
    assert float(loss.detach()) == pytest.approx(float(mse_loss(student[1], teacher[2]).detach()), rel=1e-5)
    assert float(loss.detach()) < 1e-3


def test_distiller_maps_start_as_identity_and_learn():
    states = _states(3)
    distiller = Distiller(DistillConfig(teacher_layers=[1, 2], projection="per_layer"), 2, 2, dim=8)
    assert len(distiller.maps) == 2
    loss, pairs = distiller(states, [s.clone() for s in states])
    assert pairs == [1, 2] and float(loss.detach()) == 0.0  # a student equal to its teacher: nothing to learn
    student = [s.requires_grad_() for s in _states(3, seed=5)]
    loss, _ = distiller(student, states)
    loss.backward()
    assert distiller.maps[0].weight.grad.abs().sum() > 0
    assert student[0].grad is None  # layer inputs (states[0]) are never candidates


def test_fixed_pairing_uses_the_given_layers():
    teacher, student = _states(5), _states(5, seed=3)
    cfg = DistillConfig(teacher_layers=[2, 4], pairing="fixed", student_layers=[1, 2], projection="none")
    loss, pairs = Distiller(cfg, 4, 4, dim=8)(student, teacher)
    assert pairs == [1, 2]
    expected = mse_loss(student[1], teacher[2]) + mse_loss(student[2], teacher[4])
    assert float(loss) == pytest.approx(float(expected))
    same = Distiller(DistillConfig(teacher_layers=[2, 4], pairing="fixed"), 4, 4, dim=8)
    assert same.student_layers == [2, 4]


@pytest.mark.parametrize("cfg, message", [
    (DistillConfig(teacher_layers=[0, 4]), "numbered 1..4"),
    (DistillConfig(teacher_layers=[2, 5]), "numbered 1..4"),
    (DistillConfig(pairing="fixed", teacher_layers=[2, 4], student_layers=[1]), "as many student layers"),
    (DistillConfig(pairing="fixed", teacher_layers=[4], student_layers=[6]), "numbered 1..4"),
])
def test_bad_layers_are_errors(cfg, message):
    with pytest.raises(ValueError, match=message):
        Distiller(cfg, 4, 4, dim=8)


def test_losses_ignore_padded_frames():
    s, t = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    valid = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    s_pad, t_pad = s.clone(), t.clone()
    s_pad[1, 3:] = 100.0  # garbage where the second utterance is padding
    ref_mse = torch.cat([(s[0] - t[0]).pow(2), (s[1, :3] - t[1, :3]).pow(2)]).mean()
    assert float(mse_loss(s_pad, t_pad, valid)) == pytest.approx(float(ref_mse), rel=1e-6)
    assert float(l1_cos_loss(s_pad, t_pad, valid)) == pytest.approx(
        float(l1_cos_loss(torch.cat([s[0], s[1, :3]])[None], torch.cat([t[0], t[1, :3]])[None])), rel=1e-6)


def test_l1_cos_is_distilhuberts_loss():
    s, t = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    expected = (s - t).abs().mean() - F.logsigmoid(F.cosine_similarity(s, t, dim=-1)).mean()
    assert float(l1_cos_loss(s, t)) == pytest.approx(float(expected), rel=1e-6)
    assert float(l1_cos_loss(s, t, cos_weight=0.0)) == pytest.approx(float((s - t).abs().mean()), rel=1e-6)


def test_valid_frames_follow_the_models_padding_rule():
    lengths = torch.tensor([3200, 2000])
    assert valid_frames(torch.tensor([3200, 3200]), 3200, 10) is None
    assert valid_frames(None, 3200, 10) is None
    sample_mask = torch.arange(3200)[None, :] >= lengths[:, None]
    assert torch.equal(valid_frames(lengths, 3200, 10), ~frame_padding_mask(sample_mask, 10))
    assert valid_frames(lengths, 3200, 10)[1].sum() == 7  # a frame is real if one of its 320 samples is: ceil(2000 / 320)
