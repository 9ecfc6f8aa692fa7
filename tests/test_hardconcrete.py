"""Hard concrete gates: statistics of the samples, the deterministic mask, the STE (Eq. 2, Eq. 4)."""

import math

import pytest
import torch

from pruned_upstream.model.hardconcrete import (
    BETA,
    GAMMA,
    ZETA,
    HardConcrete,
    clamp_ste,
    deterministic_mask,
    expected_z,
    prob_nonzero,
    sample_s_bar,
    sample_z,
)

LOG_ALPHAS = torch.tensor([-3.0, -1.5, 0.0, 1.5, 3.0])
N_SAMPLES = 200_000
# |dL/dlog_alpha| = |clip(dL/dz)| * (zeta - gamma) * s (1 - s) / beta and s (1 - s) <= 1/4.
LOG_ALPHA_GRAD_BOUND = (ZETA - GAMMA) / (4 * BETA)  # 0.45


def _samples(log_alpha: torch.Tensor, n: int = N_SAMPLES, seed: int = 0) -> torch.Tensor:
    """(n, len(log_alpha)) samples of z from torch's global RNG."""
    torch.manual_seed(seed)
    return sample_z(log_alpha.expand(n, -1))


def _mean_by_u_integration(log_alpha: float, points: int = 1_000_000) -> float:
    """E[z] = int_0^1 hardtanh(s_bar(u)) du by the midpoint rule in float64 (independent of expected_z)."""
    u = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    la = torch.tensor(log_alpha, dtype=torch.float64)
    return sample_s_bar(la, u).clamp(0, 1).mean().item()


def test_expected_z_matches_integration_over_u():
    got = expected_z(LOG_ALPHAS.double())
    want = torch.tensor([_mean_by_u_integration(a) for a in LOG_ALPHAS.tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # gamma and zeta are symmetric about 1/2, so E[z] = 1/2 at log_alpha = 0.
    assert got[2].item() == pytest.approx(0.5, abs=1e-12)


def test_sample_mean_matches_expectation():
    z = _samples(LOG_ALPHAS)
    mean, std = z.mean(0), z.std(0)
    tol = 5 * std / math.sqrt(N_SAMPLES) + 1e-4  # 5 standard errors
    assert torch.all((mean - expected_z(LOG_ALPHAS)).abs() <= tol), (mean, expected_z(LOG_ALPHAS))


def test_empirical_nonzero_rate_matches_prob_nonzero():
    z = _samples(LOG_ALPHAS, seed=1)
    rate = (z != 0).float().mean(0)
    p = prob_nonzero(LOG_ALPHAS)
    tol = 5 * torch.sqrt(p * (1 - p) / N_SAMPLES)
    assert torch.all((rate - p).abs() <= tol), (rate, p)


def test_z_is_exactly_zero_and_exactly_one_with_positive_probability():
    z = _samples(torch.tensor([0.0]), seed=2)[:, 0]
    p_zero = (z == 0).float().mean().item()
    p_one = (z == 1).float().mean().item()
    # At log_alpha = 0: P(z = 0) = P(z = 1) = sigmoid(beta * log(-gamma / zeta)) = 0.168.
    want = 1 / (1 + math.exp(-BETA * math.log(-GAMMA / ZETA)))
    assert p_zero == pytest.approx(want, abs=0.005)
    assert p_one == pytest.approx(want, abs=0.005)
    assert ((z > 0) & (z < 1)).any()
    assert z.min().item() == 0.0 and z.max().item() == 1.0


def test_sampling_is_seeded_by_the_global_rng():
    log_alpha = torch.zeros(12, 64)
    torch.manual_seed(3)
    first = sample_z(log_alpha)
    torch.manual_seed(3)
    assert torch.equal(first, sample_z(log_alpha))
    assert not torch.equal(first, sample_z(log_alpha))


@pytest.mark.parametrize("shape", [(12, 64), (3072,), (1,)])
def test_deterministic_mask_keeps_round_sum_prob_largest_entries(shape):
    torch.manual_seed(4)
    log_alpha = torch.randn(shape) * 3
    state = torch.get_rng_state()
    mask = deterministic_mask(log_alpha)
    assert torch.equal(mask, deterministic_mask(log_alpha))
    assert torch.equal(state, torch.get_rng_state()), "deterministic_mask consumed random numbers"
    assert mask.shape == log_alpha.shape
    kept = mask != 0
    k = round(prob_nonzero(log_alpha.double()).sum().item())
    assert kept.sum().item() == k
    if 0 < k < log_alpha.numel():
        assert log_alpha[kept].min() > log_alpha[~kept].max()
    assert torch.all(mask[kept] <= 1)
    torch.testing.assert_close(mask[kept], expected_z(log_alpha[kept]))


def test_deterministic_mask_values_positive_when_all_gates_are_unlikely():
    # P(z != 0) = 0.0017 each: sum = 5.1 over 3072 entries, so 5 entries with
    # small E[z] are kept; they must stay strictly positive.
    log_alpha = torch.full((3072,), -8.0) + 0.01 * torch.arange(3072) / 3072
    mask = deterministic_mask(log_alpha)
    assert (mask != 0).sum().item() == 5
    assert torch.all(mask[-5:] > 0)


@pytest.mark.parametrize("log_alpha, kept", [(-2.0, False), (-1.0, True), (4.6, True)])
def test_block_gate(log_alpha, kept):
    # A one-entry group is kept iff P(z != 0) >= 1/2, i.e. log_alpha > -1.599.
    mask = deterministic_mask(torch.tensor([log_alpha]))
    assert (mask.item() > 0) == kept
    assert mask.item() <= 1


def _log_alpha_grad(log_alpha: float, u: float, upstream: float, ste: bool) -> tuple[float, float]:
    """(z, dL/dlog_alpha) for L = upstream * z at a fixed noise u."""
    la = torch.tensor(log_alpha, requires_grad=True)
    z = sample_z(la, u=torch.tensor(u), ste=ste)
    (upstream * z).backward()
    return z.item(), la.grad.item()


@pytest.mark.parametrize("log_alpha, z_value", [(3.0, 1.0), (-3.0, 0.0)])
def test_ste_passes_gradient_through_saturated_gates(log_alpha, z_value):
    z, grad = _log_alpha_grad(log_alpha, u=0.5, upstream=1.0, ste=True)
    assert z == z_value
    # dL/ds_bar = clip(1) = 1, then ds_bar/dlog_alpha = (zeta - gamma) s (1 - s) / beta.
    s = 1 / (1 + math.exp(-log_alpha / BETA))
    assert grad == pytest.approx((ZETA - GAMMA) * s * (1 - s) / BETA, rel=1e-5)
    assert 0 < abs(grad) <= LOG_ALPHA_GRAD_BOUND
    z_plain, grad_plain = _log_alpha_grad(log_alpha, u=0.5, upstream=1.0, ste=False)
    assert z_plain == z_value
    assert grad_plain == 0.0


def test_log_alpha_gradient_bound_is_tight():
    torch.manual_seed(5)
    la = (torch.randn(4096) * 4).requires_grad_()
    u = torch.rand(4096)
    upstream = torch.randn(4096) * 10  # mostly clipped to +-1
    (upstream * sample_z(la, u=u)).sum().backward()
    assert la.grad.abs().max() <= LOG_ALPHA_GRAD_BOUND + 1e-6
    assert la.grad.abs().max() > 0.95 * LOG_ALPHA_GRAD_BOUND  # bound is 0.45, not 1


def test_clamp_ste_clips_upstream_gradient_everywhere():
    s_bar = torch.tensor([-0.05, 0.5, 0.5, 0.5, 1.05], requires_grad=True)
    upstream = torch.tensor([5.0, -7.0, 0.3, 1.0, -2.0])
    z = clamp_ste(s_bar)
    assert torch.equal(z, s_bar.detach().clamp(0, 1))
    (upstream * z).sum().backward()
    assert torch.equal(s_bar.grad, torch.tensor([1.0, -1.0, 0.3, 1.0, -1.0]))


def test_plain_clamp_without_ste_is_unclipped_inside_and_zero_outside():
    la = torch.tensor([0.0, 5.0, -5.0], requires_grad=True)
    u = torch.full((3,), 0.5)
    z = sample_z(la, u=u, ste=False)
    assert torch.equal(z, sample_z(la, u=u, ste=True))
    (torch.tensor([7.0, 7.0, 7.0]) * z).sum().backward()
    # inside (0, 1) at s = 1/2: 7 * 1.2 * 1/4 / beta; outside: exactly 0.
    assert la.grad[0].item() == pytest.approx(7 * (ZETA - GAMMA) * 0.25 / BETA, rel=1e-6)
    assert la.grad[1].item() == 0.0 and la.grad[2].item() == 0.0


def test_module_has_one_parameter_and_starts_nearly_whole():
    gate = HardConcrete((12, 64))
    assert [name for name, _ in gate.named_parameters()] == ["log_alpha"]
    assert gate.log_alpha.shape == (12, 64)
    assert gate.log_alpha.mean().item() == pytest.approx(math.log(99), abs=0.01)
    assert gate.expected_count().item() > 0.99 * 768
    gate.eval()
    mask = gate()
    assert (mask != 0).sum().item() >= 766
    assert torch.all(mask[mask != 0] > 0.98)
    assert "shape=(12, 64)" in repr(gate) and "ste=True" in repr(gate)


def test_module_train_samples_and_eval_is_deterministic():
    gate = HardConcrete((3072,), init_keep=0.5)
    torch.manual_seed(6)
    z1 = gate()
    torch.manual_seed(6)
    assert torch.equal(z1, gate())
    assert not torch.equal(z1, gate())
    z1.sum().backward()
    assert gate.log_alpha.grad.abs().sum() > 0
    gate.eval()
    assert torch.equal(gate(), deterministic_mask(gate.log_alpha))
    assert not gate().requires_grad


def test_module_expected_count_is_differentiable():
    gate = HardConcrete((1,), ste=False)
    count = gate.expected_count()
    torch.testing.assert_close(count, prob_nonzero(gate.log_alpha).sum())
    count.backward()
    assert gate.log_alpha.grad.item() > 0


@pytest.mark.parametrize("kwargs", [{"shape": ()}, {"shape": (0, 3)}, {"shape": (4,), "init_keep": 1.0},
                                    {"shape": (4,), "init_std": -1.0}])
def test_module_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        HardConcrete(**kwargs)
