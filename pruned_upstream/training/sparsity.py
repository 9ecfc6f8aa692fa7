"""Sparsity schedules and the Lagrangian sparsity constraint (paper Eq. 5; docs/method.md sections 4 and 6).

Pure functions of numbers and tensors; nothing here knows the model. The
model supplies p_hat (model/prunable.py expected_sparsity, differentiable).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..config import OPTIMIZER_GROUPS

# Learning rate of log_alpha and of the Lagrange multipliers: DPHuBERT's
# run.sh (reg_lr=0.02, used for both groups, speech SSL distillation of
# HuBERT/WavLM). CoFi's run_CoFi.sh uses 0.01 (args.py default: 0.1).
LR_LOG_ALPHA = 0.02
LR_LAMBDAS = 0.02

# Optimizer group names, also used by make_scheduler (their one home: config.OPTIMIZER_GROUPS).
GROUP_WEIGHTS, GROUP_LOG_ALPHA, GROUP_LAMBDAS = OPTIMIZER_GROUPS


def target_sparsity(step: int, final: float, warmup_steps: int) -> float:
    """Target p at ``step``: linear from 0 to ``final`` over ``warmup_steps``, then held.

    Paper sec. 4.2 ("increases linearly to 80% in the first 7% steps and
    remains constant"); docs/method.md section 6.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps <= 0:
        return float(final)
    return float(final) * min(1.0, step / warmup_steps)


def sparsity_for_params(target_params: int, fixed: float, prunable: float) -> float:
    """The sparsity of the prunable parameters that leaves `target_params` in the whole model.

    whole = fixed + kept prunable, so kept = target_params - fixed and p = 1 - kept / prunable
    (docs/training.md, "DPHuBERT side by side"). ValueError when no p in [0, 1) reaches it: the
    target must lie in (fixed, fixed + prunable].
    """
    kept = target_params - fixed
    if not 0 < kept <= prunable:
        raise ValueError(f"prune.target_params={target_params:,} is out of reach: the gates can leave between "
                         f"{int(fixed) + 1:,} and {int(fixed + prunable):,} parameters ({int(fixed):,} are not "
                         f"prunable with these prune.kinds)")
    return 1.0 - kept / prunable


def lr_lambda(step: int, total_steps: int, warmup_steps: int) -> float:
    """LambdaLR multiplier: linear warm-up 0 -> 1 over ``warmup_steps``, then linear decay to 0.

    Paper sec. 4.2 (warm-up over the first 7% of steps, then linear decay to
    0). Same convention as transformers' ``get_linear_schedule_with_warmup``
    (used by CoFi): 0 at step 0, 1 at ``warmup_steps``, 0 at ``total_steps``.
    """
    if not 0 <= warmup_steps <= total_steps or total_steps <= 0:
        raise ValueError(f"need 0 <= warmup_steps <= total_steps and total_steps > 0, "
                         f"got warmup_steps={warmup_steps}, total_steps={total_steps}")
    if step < warmup_steps:
        return step / warmup_steps
    if total_steps == warmup_steps:
        return 0.0
    return max(0.0, (total_steps - step) / (total_steps - warmup_steps))


def lagrangian(p_hat, p, lambda1, lambda2):
    """lambda1 (p_hat - p) + lambda2 (p_hat - p)^2 (paper Eq. 5, Wang et al. 2020)."""
    gap = p_hat - p
    return lambda1 * gap + lambda2 * gap**2


class Lagrangian(nn.Module):
    """The sparsity term of Eq. 5 with learnable multipliers ``lambda1``, ``lambda2`` (both start at 0).

    The multipliers are trained by gradient ascent (``make_optimizers`` puts
    them in a ``maximize=True`` group): d/d lambda1 = p_hat - p moves lambda1
    so that lambda1 (p_hat - p) grows, and d/d lambda2 = (p_hat - p)^2 >= 0
    makes lambda2 grow while p_hat is off target. Descent on log_alpha then
    meets a penalty that pushes p_hat towards p.
    """

    def __init__(self) -> None:
        super().__init__()
        # CoFi l0_module.py and DPHuBERT lightning.py both start them at 0.
        self.lambda1 = nn.Parameter(torch.tensor(0.0))
        self.lambda2 = nn.Parameter(torch.tensor(0.0))

    def forward(self, p_hat: torch.Tensor, p: float) -> torch.Tensor:
        return lagrangian(p_hat, p, self.lambda1, self.lambda2)


def make_optimizers(model_params: Iterable[nn.Parameter], log_alpha_params: Iterable[nn.Parameter],
                    lagrangian: Lagrangian, lr_weights: float, lr_log_alpha: float = LR_LOG_ALPHA,
                    lr_lambdas: float = LR_LAMBDAS, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """One AdamW with three groups: weights and log_alpha by descent, the lambdas by ascent.

    Groups (named ``weights``, ``log_alpha``, ``lambdas``):
      - weights: ``lr_weights``, ``weight_decay`` (DPHuBERT run.sh: 0.0);
      - log_alpha: ``lr_log_alpha``, no weight decay (CoFi, DPHuBERT);
      - lambdas: ``lr_lambdas``, no weight decay, ``maximize=True``: gradient
        ascent on Eq. 5, where CoFi/DPHuBERT use a negative learning rate.
    ``model_params`` must not contain log_alpha parameters or the lambdas.
    """
    weights, log_alphas = list(model_params), list(log_alpha_params)
    lambdas = [lagrangian.lambda1, lagrangian.lambda2]
    _check_disjoint(weights, log_alphas, lambdas)
    groups = [
        {"params": weights, "lr": lr_weights, "weight_decay": weight_decay,
         "maximize": False, "name": GROUP_WEIGHTS},
        {"params": log_alphas, "lr": lr_log_alpha, "weight_decay": 0.0,
         "maximize": False, "name": GROUP_LOG_ALPHA},
        {"params": lambdas, "lr": lr_lambdas, "weight_decay": 0.0,
         "maximize": True, "name": GROUP_LAMBDAS},
    ]
    return torch.optim.AdamW(groups)


def _check_disjoint(*param_lists: list[nn.Parameter]) -> None:
    seen: set[int] = set()
    for params in param_lists:
        for param in params:
            if id(param) in seen:
                raise ValueError(f"parameter of shape {tuple(param.shape)} is in more than one "
                                 "optimizer group (weights, log_alpha, lambdas)")
            seen.add(id(param))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                   scheduled_groups: tuple[str, ...] = (GROUP_WEIGHTS, GROUP_LOG_ALPHA, GROUP_LAMBDAS)
                   ) -> LambdaLR:
    """LambdaLR applying ``lr_lambda`` to the named groups; the other groups keep a constant lr.

    Default: every group follows the schedule, as in DPHuBERT (one
    LinearDecayLRScheduler over all groups, lightning.py). CoFi instead keeps
    log_alpha and the lambdas at a constant lr: pass ("weights",).
    """
    names = [group.get("name") for group in optimizer.param_groups]
    unknown = set(scheduled_groups) - set(names)
    if unknown:
        raise ValueError(f"scheduled_groups {sorted(unknown)} not among optimizer groups {names}")

    def schedule(step: int) -> float:
        return lr_lambda(step, total_steps, warmup_steps)

    def constant(step: int) -> float:
        return 1.0

    return LambdaLR(optimizer, [schedule if n in scheduled_groups else constant for n in names])
