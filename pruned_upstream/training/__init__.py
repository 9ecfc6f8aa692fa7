"""Distillation with pruning (paper Eq. 5): the models, the losses, the constraint, the loop, the run.

    training.models       teacher and gated student; the module DDP wraps
    training.distill      layer pairing (CoFi) and distillation losses
    training.sparsity     target-sparsity and lr schedules; the Lagrangian; optimizer groups
    training.distributed  process group, device, per-micro-batch seeds
    training.trainer      the optimizer step, the loop, checkpoints, logs, the summary
    training.checks       config checks that need the teacher's depth or the data, before loading them
    training.lock         one `prune` per run directory (flock: a killed holder's lock is stale)
    training.run          `prune`: start or resume a run directory
"""
