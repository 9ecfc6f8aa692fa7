"""`pruned-upstream prune`: start a run, or resume one from its last checkpoint.

    run_prune("wavlm_base_sp80", ["data.source=/data/LibriSpeech"], "runs/sp80")
    run_prune("wavlm_base_sp80", [], "runs/sp80", resume=True)

A resumed run keeps the configuration saved in its directory; only the keys of
config.RESUMABLE_CHANGES may differ from it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.distributed as dist

from .. import run_dir as rundir
from ..config import RESUMABLE_CHANGES, Config, differences
from ..config_files import load_config, load_saved, save_config
from .distributed import DistEnv, init_distributed
from .trainer import Trainer

log = logging.getLogger(__name__)


def run_prune(config: str, overrides, out, resume: bool = False) -> int:
    """`pruned-upstream prune`: train from scratch, or continue RUN_DIR's last checkpoint."""
    run_dir = Path(out)
    cfg = _run_config(config, list(overrides or ()), run_dir, resume)
    ckpt = rundir.latest_checkpoint(run_dir) if resume else None
    if ckpt is not None and (run_dir / "summary.json").is_file() and int(ckpt.name[5:]) >= cfg.train.steps:
        print(f"{run_dir}: finished at step {cfg.train.steps}; nothing to do")
        return 0
    if not resume and (rundir.latest_checkpoint(run_dir) or (run_dir / "config.yaml").exists()):
        raise ValueError(f"{run_dir} already holds a run: add --resume to continue it, or choose another --out")
    if resume and ckpt is None:
        print(f"{run_dir}: no checkpoint yet; starting the run from step 0")
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    env = init_distributed(cfg.run.device)
    try:
        return _train(cfg, run_dir, env, ckpt)
    finally:
        if env.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: Config, run_dir: Path, env: DistEnv, ckpt: Path | None) -> int:
    start = time.time()
    env.barrier()  # every process has checked the run directory before anything is written
    if env.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        rundir.clean_temp(run_dir)
    env.barrier()
    trainer = Trainer(cfg, run_dir, env)
    if ckpt is not None:
        trainer.restore(ckpt)
        log.info("resumed %s at step %d", ckpt, trainer.step)
    trainer.open_log(resumed=ckpt is not None)
    try:
        trainer.fit()
    finally:
        trainer.close_log()
    if env.main:
        summary = trainer.summary(time.time() - start)
        rundir.write_json(run_dir / "summary.json", summary)
        print(f"{run_dir}: {summary['steps']} steps, sparsity {summary['sparsity']:.4f} "
              f"(target {summary['target_sparsity']}), {summary['params'] / 1e6:.2f} M parameters")
    env.barrier()
    return 0


def _run_config(config: str, overrides: list[str], run_dir: Path, resume: bool) -> Config:
    """The config to run; a resumed run keeps its saved one (only RESUMABLE_CHANGES may differ)."""
    given = load_config(config, overrides)
    saved_path = run_dir / "config.yaml"
    if not (resume and saved_path.is_file()):
        return given
    saved = load_saved(saved_path)
    changed = [k for k in differences(saved, given) if k not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(f"--resume: {', '.join(changed)} differ from {saved_path}; a resumed run keeps its config")
    for key in RESUMABLE_CHANGES:
        section, name = key.split(".")
        setattr(getattr(saved, section), name, getattr(getattr(given, section), name))
    return saved
