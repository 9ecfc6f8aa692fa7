"""`pruned-upstream prune`: start a run, or resume one from its last checkpoint.

    run_prune("wavlm_base_sp80", ["data.source=/data/LibriSpeech"], "runs/sp80")
    run_prune("wavlm_base_sp80", [], "runs/sp80", resume=True)

A resumed run runs the configuration saved in its directory (RUN_DIR/config.yaml):
the first start's overrides are not needed again. `key=value` given again are
read over it: a value equal to the saved one is accepted; one that changes a
key of config.RESUMABLE_CHANGES changes it (`train.steps` only once both
warm-ups are behind the checkpoint); any other change is refused naming the
key. `--config` is not needed either; given, its file is only compared, and
where it differs from the saved values (the first start's overrides, or a file
edited since) the saved values are kept, with a notice.
One process (group) per run directory: lock.py.

Nothing inside RUN_DIR is followed through a symbolic link (run_files.py): a link
among its entries (config.yaml, .lock, log.jsonl, summary.json, checkpoints/step-N,
...) is refused in one line before anything is read, and again once the lock is
held. RUN_DIR itself may be a link: the user named it. A MemoryError stops the run
in one line too (the last complete checkpoint stays).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch
import torch.distributed as dist

from .. import run_dir as rundir
from ..config import RESUMABLE_CHANGES, Config, differences, get_key
from ..config_files import config_over, load_config, load_saved, save_config
from ..run_files import refuse_links
from .checks import check_before_training
from .distributed import DistEnv, init_distributed
from .lock import RunLock, RunLocked
from .trainer import Trainer

log = logging.getLogger(__name__)


def run_prune(config: str | None, overrides, out, resume: bool = False) -> int:
    """`pruned-upstream prune`: train from scratch, or continue RUN_DIR's last checkpoint."""
    run_dir = Path(out)
    refuse_links(run_dir)  # before config.yaml is read: a RunLinkError (one line) names the link
    cfg, saved = _run_config(config, list(overrides or ()), run_dir, resume)
    check_before_training(cfg)  # the teacher's depth, the CNN gates, the data source: before anything heavy
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    env = init_distributed(cfg.run.device)
    try:
        with _locked(run_dir, env):
            refuse_links(run_dir)  # again, now that no other prune of ours writes here
            ckpt = rundir.latest_checkpoint(run_dir) if resume else None
            if not resume and (rundir.latest_checkpoint(run_dir) or (run_dir / "config.yaml").exists()):
                raise ValueError(f"{run_dir} already holds a run: add --resume to continue it, or choose another --out")
            if saved is not None and ckpt is not None:
                _check_steps_change(saved, cfg, int(ckpt.name[len("step-"):]))
            if ckpt is not None and (run_dir / "summary.json").is_file() and int(ckpt.name[5:]) >= cfg.train.steps:
                print(f"{run_dir}: finished at step {cfg.train.steps}; nothing to do")
                return 0
            if resume and ckpt is None:
                print(f"{run_dir}: no checkpoint yet; starting the run from step 0")
            return _train(cfg, run_dir, env, ckpt)
    except MemoryError:  # Python's own (numpy, a list): torch's out-of-memory errors are one-line RuntimeErrors
        raise RuntimeError(f"out of memory (MemoryError) in the run {run_dir}: it stopped, its last complete "
                           f"checkpoint stays: free memory (or lower data.num_workers), then "
                           f"`pruned-upstream prune --out {run_dir} --resume`") from None
    finally:
        if env.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def _locked(run_dir: Path, env: DistEnv):
    """Process 0 holds RUN_DIR/.lock for the run; every process stops when it cannot."""
    lock, refusal = RunLock(run_dir), [""]
    if env.world > 1 and dist.get_backend() == "nccl":
        torch.cuda.set_device(env.local_rank)  # broadcast_object_list goes through the current device
    if env.main:
        try:
            lock.acquire()
        except RunLocked as err:
            refusal[0] = str(err)
    if env.world > 1:
        dist.broadcast_object_list(refusal, src=0)
    if refusal[0]:
        raise RunLocked(refusal[0])
    try:
        yield
    finally:
        lock.release()


def _train(cfg: Config, run_dir: Path, env: DistEnv, ckpt: Path | None) -> int:
    start = time.time()
    env.barrier()  # every process has checked the run directory before anything is written
    if env.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            save_config(cfg, run_dir / "config.yaml")
        except OSError as err:  # full disk, quota: one line naming the file (the old config, if any, stays whole)
            raise OSError(f"cannot write {run_dir / 'config.yaml'} ({err.strerror or err}): free space, then "
                          "run the same command again") from None
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


# ---------------------------------------------------------------------------- resume
def _run_config(config: str | None, overrides: list[str], run_dir: Path, resume: bool) -> tuple[Config, Config | None]:
    """(the config to run, the saved one or None); a resumed run keeps its saved config (module doc)."""
    saved_path = run_dir / "config.yaml"
    if not (resume and saved_path.is_file()):
        if config is None:
            raise ValueError(f"--config NAME|FILE is needed to start a run ({saved_path} does not exist yet; "
                             "--resume reads it)")
        return load_config(config, overrides), None
    saved = load_saved(saved_path)
    cfg = config_over(saved, "", overrides)
    _refuse([k for k in differences(saved, cfg) if k not in RESUMABLE_CHANGES], saved, cfg, saved_path)
    for key in differences(saved, cfg):
        log.info("--resume changes %s from %r to %r", key, get_key(saved, key), get_key(cfg, key))
    if config:  # the first start's file: its values may have been overridden then; the saved ones win
        given = {".".join(item.partition("=")[0].strip().split(".")[:2]) for item in overrides}
        ignored = [k for k in differences(saved, config_over(saved, config)) if k not in given]
        if ignored:
            log.warning("--resume runs %s; where --config %s differs from it (%s: the first start's overrides, "
                        "or a changed file) the saved values are kept", saved_path, config, ", ".join(ignored))
    return cfg, saved


def _refuse(keys: list[str], saved: Config, given: Config, saved_path: Path) -> None:
    if keys:
        what = "; ".join(f"{k} differs: {get_key(given, k)!r} given, {get_key(saved, k)!r} saved"
                         for k in keys)
        raise ValueError(f"--resume: {what} in {saved_path}; a resumed run keeps its config "
                         f"(keys that may change: {', '.join(RESUMABLE_CHANGES)})")


def _check_steps_change(saved: Config, cfg: Config, at: int) -> None:
    """train.steps may change once the checkpoint is past both warm-ups, at the old and the new length."""
    old, new = saved.train, cfg.train
    if old.steps == new.steps:
        return
    if new.steps < at:
        raise ValueError(f"--resume: train.steps={new.steps} is below the checkpoint's step {at}; allowed: >= {at}")
    ends = [round(t.warmup * t.steps) for t in (old, new)] + [round(t.sparsity_warmup * t.steps) for t in (old, new)]
    if at < max(ends):
        raise ValueError(f"--resume: train.steps may change only after both warm-ups (lr and sparsity, as "
                         f"fractions of the steps) have ended at the old and the new length, i.e. from step "
                         f"{max(ends)}; the checkpoint is at step {at}")
    log.info("--resume: train.steps %d -> %d; the lr decays linearly to 0 at step %d from here", old.steps,
             new.steps, new.steps)
