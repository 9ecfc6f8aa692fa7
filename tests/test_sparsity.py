"""Schedules, expected sparsity and the Lagrangian of Eq. 5, with the signs of ascent/descent."""

import pytest
import torch
from torch import nn

from pruned_upstream.model.hardconcrete import prob_nonzero
from pruned_upstream.model.prunable import sparsity_of_counts as expected_sparsity
from pruned_upstream.training.sparsity import (
    LR_LAMBDAS,
    LR_LOG_ALPHA,
    Lagrangian,
    lagrangian,
    lr_lambda,
    make_optimizers,
    make_scheduler,
    target_sparsity,
)


@pytest.mark.parametrize("step, want", [(0, 0.0), (5, 0.4), (10, 0.8), (11, 0.8), (10_000, 0.8)])
def test_target_sparsity_ramps_then_holds(step, want):
    assert target_sparsity(step, final=0.8, warmup_steps=10) == pytest.approx(want)


def test_target_sparsity_without_warmup_is_final():
    assert target_sparsity(0, final=0.8, warmup_steps=0) == 0.8
    with pytest.raises(ValueError):
        target_sparsity(-1, final=0.8, warmup_steps=10)


@pytest.mark.parametrize("step, want", [(0, 0.0), (7, 1.0), (3, 3 / 7), (57, 0.5), (107, 0.0), (200, 0.0)])
def test_lr_lambda_warmup_then_linear_decay(step, want):
    assert lr_lambda(step, total_steps=107, warmup_steps=7) == pytest.approx(want)


def test_lr_lambda_paper_recipe_peaks_at_seven_percent():
    total, warmup = 200_000, 14_000  # paper sec. 4.2: 200k steps, warm-up over 7 %
    values = [lr_lambda(s, total, warmup) for s in range(0, total + 1, 1000)]
    assert max(values) == 1.0 and values.index(1.0) == 14
    with pytest.raises(ValueError):
        lr_lambda(0, total_steps=10, warmup_steps=11)


def test_expected_sparsity_and_lagrangian_values():
    assert expected_sparsity(17.0, 85.0) == pytest.approx(0.8)
    kept = torch.tensor(42.5, requires_grad=True)
    p_hat = expected_sparsity(kept, 85.0)
    p_hat.backward()
    assert p_hat.item() == pytest.approx(0.5) and kept.grad.item() == pytest.approx(-1 / 85)
    assert lagrangian(0.5, 0.8, 2.0, 3.0) == pytest.approx(2.0 * -0.3 + 3.0 * 0.09)
    with pytest.raises(ValueError):
        expected_sparsity(1.0, 0)


def test_lagrangian_module_starts_at_zero():
    lag = Lagrangian()
    assert [n for n, _ in lag.named_parameters()] == ["lambda1", "lambda2"]
    assert lag.lambda1.item() == 0.0 and lag.lambda2.item() == 0.0
    with torch.no_grad():
        lag.lambda1.fill_(2.0)
        lag.lambda2.fill_(3.0)
    assert lag(torch.tensor(0.5), 0.8).item() == pytest.approx(lagrangian(0.5, 0.8, 2.0, 3.0))


def _toy_problem():
    """100 gates at log_alpha = 0 (p_hat = 1 - 0.832 = 0.168), a Lagrangian and the optimizer."""
    log_alpha = nn.Parameter(torch.zeros(100))
    weight = nn.Parameter(torch.ones(3))
    lag = Lagrangian()
    opt = make_optimizers([weight], [log_alpha], lag, lr_weights=1e-3, lr_log_alpha=0.1, lr_lambdas=0.1)
    return log_alpha, lag, opt


def _step(log_alpha, lag, opt, p):
    """One optimizer step on the sparsity term alone; returns p_hat before the step."""
    opt.zero_grad()
    p_hat = expected_sparsity(prob_nonzero(log_alpha).sum(), log_alpha.numel())
    lag(p_hat, p).backward()
    opt.step()
    return p_hat.item()


@pytest.mark.parametrize("target", [0.5, 0.05])  # p_hat = 0.168 is below 0.5 and above 0.05
def test_ascent_on_lambdas_and_descent_on_log_alpha(target):
    log_alpha, lag, opt = _toy_problem()
    p_hat0 = _step(log_alpha, lag, opt, target)
    gap = p_hat0 - target
    # Ascent: lambda1 moves with the sign of (p_hat - p), so lambda1 * (p_hat - p)
    # rises above 0; lambda2 grows since its gradient is (p_hat - p)^2 >= 0.
    assert lag.lambda1.item() * gap > 0
    assert lag.lambda2.item() > 0
    assert lagrangian(p_hat0, target, lag.lambda1.item(), lag.lambda2.item()) > 0
    assert torch.all(log_alpha == 0), "lambdas were 0, so log_alpha had no gradient"
    p_hat1 = _step(log_alpha, lag, opt, target)
    assert p_hat1 == pytest.approx(p_hat0)
    p_hat2 = _step(log_alpha, lag, opt, target)
    assert abs(p_hat2 - target) < abs(p_hat0 - target)


def test_make_optimizers_groups():
    weight, log_alpha, lag = nn.Parameter(torch.ones(2)), nn.Parameter(torch.zeros(2)), Lagrangian()
    opt = make_optimizers([weight], [log_alpha], lag, lr_weights=2e-4)
    groups = {g["name"]: g for g in opt.param_groups}
    assert [g["maximize"] for g in opt.param_groups] == [False, False, True]
    assert all(g["lr"] > 0 for g in opt.param_groups)
    assert groups["weights"]["lr"] == 2e-4
    assert groups["log_alpha"]["lr"] == LR_LOG_ALPHA and groups["lambdas"]["lr"] == LR_LAMBDAS
    assert groups["log_alpha"]["weight_decay"] == 0.0 and groups["lambdas"]["weight_decay"] == 0.0
    assert groups["lambdas"]["params"] == [lag.lambda1, lag.lambda2]
    with pytest.raises(ValueError):
        make_optimizers([weight, log_alpha], [log_alpha], lag, lr_weights=2e-4)


def test_make_scheduler_schedules_named_groups():
    weight, log_alpha, lag = nn.Parameter(torch.ones(2)), nn.Parameter(torch.zeros(2)), Lagrangian()
    opt = make_optimizers([weight], [log_alpha], lag, lr_weights=2e-4)
    sched = make_scheduler(opt, total_steps=20, warmup_steps=4, scheduled_groups=("weights",))
    lrs = []
    for _ in range(4):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    lrs.append([g["lr"] for g in opt.param_groups])
    assert [row[0] for row in lrs] == pytest.approx([0.0, 5e-5, 1e-4, 1.5e-4, 2e-4])
    assert all(row[1:] == [LR_LOG_ALPHA, LR_LAMBDAS] for row in lrs)
    every = make_scheduler(opt, total_steps=20, warmup_steps=4)
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0, 0.0]
    assert len(every.lr_lambdas) == 3
    with pytest.raises(ValueError):
        make_scheduler(opt, total_steps=20, warmup_steps=4, scheduled_groups=("lambda",))
