"""The distillation-pruning trainer (paper Eq. 5; docs/method.md sections 4 to 6).

    pruned-upstream prune --config wavlm_base_sp80 data.source=LibriSpeech --out RUN_DIR [--resume]
    torchrun --nproc_per_node 4 -m pruned_upstream.cli prune ...     # DDP: one process per GPU

One optimizer step (`Trainer.train_step`); per micro-batch:
    teacher forward (no grad) -> student forward (gates sampled) ->
    distillation loss + lambda1 (p_hat - p) + lambda2 (p_hat - p)^2 -> backward
then: clip the weights' gradients -> step (weights and log_alpha by descent,
lambdas by ascent: their optimizer group has maximize=True).

Gate noise is drawn from torch's RNG seeded per (seed, step, micro-batch)
(`micro_seed`): a resumed run draws the same noise, and 2 DDP processes draw
what one process accumulating 2 micro-batches draws (docs/training.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from .. import run_dir as rundir
from ..run_files import RunLinkError
from ..config import Config
from ..exporting import export
from ..model.prunable import (expected_sparsity, kept_prunable, log_alpha_parameters, realised_sparsity,
                              total_prunable, weight_parameters, whole_model_params)
from ..model.wavlm import WavLM
from .distill import Distiller
from .distributed import DistEnv, micro_seed, pick_device
from .models import DistillStudent, block_gates, build_student, build_teacher, final_target_sparsity, lagrangian_scale
from .sparsity import Lagrangian, make_optimizers, make_scheduler, target_sparsity

log = logging.getLogger(__name__)


BAD_AUDIO_LOG = "skipped_audio.tsv"  # files found unusable when read, by any worker or rank (reason<TAB>path)


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: the run stops, its last good checkpoint stays."""


def build_data(cfg: Config, run_dir: Path, env: DistEnv):
    from ..data.dataset import AudioDataset, CropToShortest, Keyed, collate
    from ..data.sampler import LengthBucketSampler

    source = cfg.data.source
    if not source:
        raise ValueError("data.source is not set: a LibriSpeech directory, a manifest .tsv, or demo")
    if source == "demo":
        source = _demo_manifest(run_dir / "corpus", env)
    dataset = AudioDataset(source, cfg.data.crop, cfg.data.min_samples, seed=cfg.train.seed, scan=cfg.data.scan,
                           bad_log=run_dir / BAD_AUDIO_LOG, max_samples=cfg.data.max_samples)
    if env.main:  # the run's log says at start what data it trains on (docs/data.md, "Skip policy")
        log.info("%s: %s", source, dataset.summary())
    sampler = LengthBucketSampler(dataset.lengths, cfg.train.batch_size, cfg.train.max_batch_samples,
                                  seed=cfg.train.seed, length_jitter=cfg.data.length_jitter,
                                  rank=env.rank, world_size=env.world)
    if len(sampler) == 0:
        raise ValueError(f"{len(dataset)} usable files give no batch to each of {env.world} processes")
    # pinned host memory lets the copy to the GPU overlap the step (wav.to(device, non_blocking=True))
    pin = cfg.run.device != "cpu" and torch.cuda.is_available()
    # data.collate=shortest: DPHuBERT's batches, every item cropped to the batch's shortest (data/dataset.py)
    items, collate_fn = (Keyed(dataset), CropToShortest(cfg.train.seed)) if cfg.data.collate == "shortest" else \
        (dataset, collate)
    loader = torch.utils.data.DataLoader(items, batch_sampler=sampler, collate_fn=collate_fn,
                                         num_workers=cfg.data.num_workers, pin_memory=pin)
    return dataset, sampler, loader


def _demo_manifest(corpus: Path, env: DistEnv) -> Path:
    """The embedded corpus (espeak-ng), made once in RUN_DIR/corpus."""
    from ..data.demo_corpus import make_demo_corpus

    if env.main and not (corpus / "manifest.tsv").is_file():
        make_demo_corpus(corpus)
    env.barrier()
    return corpus / "manifest.tsv"


# ---------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, env: DistEnv, data: tuple | None = None):
        """`data`: (dataset, sampler, loader); default the config's (build_data). A caller that feeds
        `train_step` itself (the GPU check) passes (None, None, None)."""
        self.cfg, self.run_dir, self.env = cfg, Path(run_dir), env
        self.device = pick_device(cfg.run.device, env)
        self.teacher = build_teacher(cfg).to(self.device)
        student = build_student(cfg, self.teacher).to(self.device)
        distiller = Distiller(cfg.distill, self.teacher.num_layers, student.num_layers,
                              student.arch.embed_dim, self.teacher.arch.embed_dim).to(self.device)
        self.model = DistillStudent(student, distiller, cfg.prune.enabled)
        self.ddp = self.model
        if env.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # The learned pairing may skip the top student layers (and differently on
            # each process): their weights then get no gradient in that step.
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)
        self.lagrangian = Lagrangian().to(self.device)
        t = cfg.train
        self.weights = [p for p in weight_parameters(student) if p.requires_grad] + list(distiller.parameters())
        self.optimizer = make_optimizers(self.weights, log_alpha_parameters(student), self.lagrangian,
                                         t.lr, t.lr_log_alpha, t.lr_lambdas, t.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, t.steps, round(t.warmup * t.steps), tuple(t.scheduled_groups))
        self.sparsity_warmup = round(t.sparsity_warmup * t.steps)
        self.final_sparsity = final_target_sparsity(cfg, student)  # train.target_sparsity or from prune.target_params
        self.gap_scale = lagrangian_scale(cfg, student)  # 1, or P / N: DPHuBERT's whole-model gap
        self.dataset, self.sampler, self.loader = data or build_data(cfg, self.run_dir, env)
        self.step, self.epoch, self.batches_done = 0, 0, 0
        self.last: dict = {}
        self.scalar_log: rundir.ScalarLog | None = None  # process 0, once `open_log` is called

    def open_log(self, resumed: bool) -> None:
        """log.jsonl and TensorBoard; a resumed run drops what was logged after its checkpoint."""
        if self.env.main:
            self.scalar_log = rundir.ScalarLog(self.run_dir, self.cfg.run.tensorboard, self.step if resumed else None)

    def close_log(self) -> None:
        if self.scalar_log is not None:
            self.scalar_log.close()

    @property
    def student(self) -> WavLM:
        return self.model.student

    def autocast(self):
        """bf16 autocast on GPU (train.precision=auto), fp32 on CPU."""
        precision = self.cfg.train.precision
        bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def train_step(self, micro_batches) -> dict:
        """One optimizer step over micro-batches [(wav (B, S), lengths (B,)), ...]."""
        t, n = self.cfg.train, len(micro_batches)
        p = target_sparsity(self.step, self.final_sparsity or 0.0, self.sparsity_warmup)
        self.optimizer.zero_grad(set_to_none=True)
        distill_sum = lagrangian_sum = 0.0
        for m, (wav, lengths) in enumerate(micro_batches):
            torch.manual_seed(micro_seed(t.seed, self.step, m * self.env.world + self.env.rank))  # gate noise
            wav, lengths = wav.to(self.device, non_blocking=True), lengths.to(self.device, non_blocking=True)
            with self._no_sync(m < n - 1):
                with self.autocast():
                    with torch.no_grad():
                        teacher_states = self.teacher(wav, lengths)
                    distill, p_hat, micro_pairs = self.ddp(wav, lengths, teacher_states)
                lagrangian = self.lagrangian(p_hat * self.gap_scale, p * self.gap_scale) if self.cfg.prune.enabled \
                    else torch.zeros_like(distill)
                loss = distill + lagrangian  # paper Eq. 5
                self._stop_if_nonfinite(loss, "loss")
                (loss / n).backward()
            distill_sum, lagrangian_sum = distill_sum + distill.item() / n, lagrangian_sum + lagrangian.item() / n
            if m == 0:
                pairs = micro_pairs  # logged: those of micro-batch 0 (process 0's first)
        grad_norm = nn.utils.clip_grad_norm_(self.weights, t.grad_clip)
        self._stop_if_nonfinite(grad_norm, "gradient norm")
        self.optimizer.step()  # weights, log_alpha: descent; lambdas: ascent (maximize=True)
        self.scheduler.step()
        self.step += 1
        return {"distill_loss": distill_sum, "lagrangian": lagrangian_sum, "expected_sparsity": float(p_hat.detach()),
                "target_sparsity": p, "grad_norm": float(grad_norm), "pairs": list(pairs)}

    def _no_sync(self, skip: bool):
        return self.ddp.no_sync() if skip and self.ddp is not self.model else contextlib.nullcontext()

    def _stop_if_nonfinite(self, value: torch.Tensor, what: str) -> None:
        bad = torch.tensor(0.0 if bool(torch.isfinite(value).all()) else 1.0, device=self.device)
        if self.env.world > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # every process stops together
        if bad.item():
            ckpt = rundir.latest_checkpoint(self.run_dir)
            raise TrainingDiverged(f"non-finite {what} ({value.item()}) at step {self.step + 1}: run stopped; "
                                   f"last good checkpoint: {ckpt or 'none yet'}")

    # ---- loop
    def fit(self) -> None:
        t = self.cfg.train
        batches = self._batches()
        bar = tqdm(total=t.steps, initial=self.step, desc="prune", unit="step",
                   disable=not (self.cfg.run.progress and self.env.main))
        while self.step < t.steps:
            stats = self.train_step([next(batches) for _ in range(t.accumulate)])
            bar.update(1)
            bar.set_postfix(loss=f"{stats['distill_loss']:.4g}", p_hat=f"{stats['expected_sparsity']:.3f}")
            if self.step % t.log_every == 0 or self.step == t.steps:
                self.log(stats)
            if self.step % t.save_every == 0 or self.step == t.steps:
                self.save()
        bar.close()

    def _batches(self):
        """Micro-batches forever, epoch after epoch; (epoch, batches_done) is the data position."""
        while True:
            self.sampler.set_epoch(self.epoch)
            self.dataset.set_epoch(self.epoch)
            for batch in self.loader:
                self.batches_done += 1
                yield batch
            self.epoch, self.batches_done = self.epoch + 1, 0

    def log(self, stats: dict) -> None:
        loss = torch.tensor(stats["distill_loss"], device=self.device)
        if self.env.world > 1:
            dist.all_reduce(loss)
            stats["distill_loss"] = loss.item() / self.env.world
        self.last = stats
        if self.scalar_log is None:
            return
        scalars = {"loss/distill": stats["distill_loss"], "loss/lagrangian": stats["lagrangian"],
                   "lambda/1": self.lagrangian.lambda1.item(), "lambda/2": self.lagrangian.lambda2.item(),
                   "grad_norm": stats["grad_norm"], "sparsity/target": stats["target_sparsity"]}
        for group in self.optimizer.param_groups:
            scalars[f"lr/{group['name']}"] = group["lr"]
        if self.cfg.prune.enabled:
            scalars["sparsity/expected"] = stats["expected_sparsity"]
            scalars["sparsity/realised"] = realised_sparsity(self.student)
            scalars.update(block_gates(self.student))
        self.scalar_log.write(self.step, scalars, {"pairs": stats["pairs"]})

    # ---- checkpoints
    def save(self) -> None:
        """Process 0 writes the checkpoint; a failed write stops every process with its message."""
        failed = [""]
        if self.env.main:
            state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "lagrangian": self.lagrangian.state_dict(),
                     "distiller": self.model.distiller.state_dict(), "rng": rundir.rng_state(),
                     "data": self.sampler.state_dict(batches_done=self.batches_done), "world_size": self.env.world}
            prune = dataclasses.asdict(self.cfg.prune) if self.cfg.prune.enabled else None
            try:
                rundir.save_checkpoint(self.run_dir, self.step, self.student, prune, state,
                                       self.cfg.run.keep_checkpoints)
            except (rundir.CheckpointWriteError, RunLinkError) as err:  # full disk, a planted link: all stop
                failed = [str(err)]
        if self.env.world > 1:
            dist.broadcast_object_list(failed, src=0)  # also the barrier: nobody runs ahead of the save
        if failed[0]:
            raise rundir.CheckpointWriteError(failed[0])

    def restore(self, ckpt: Path) -> None:
        arch, _, weights, _ = rundir.read_student_file(ckpt / rundir.STUDENT_FILE)
        if arch != self.student.arch:
            raise ValueError(f"{ckpt}: its architecture differs from the one this config builds")
        self.student.load_state_dict(weights, strict=True)
        state = rundir.read_state(ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.lagrangian.load_state_dict(state["lagrangian"])
        self.model.distiller.load_state_dict(state["distiller"])
        rundir.set_rng_state(state["rng"])
        self.sampler.load_state_dict(state["data"])
        self.epoch, self.batches_done = state["data"]["epoch"], state["data"]["batch"]
        self.step = state["step"]

    def summary(self, seconds: float) -> dict:
        """Sparsity of the deterministic masks (of the compact student against the teacher when not pruning)."""
        student, prune = self.student, self.cfg.prune.enabled
        compact = export(student)
        kept = float(kept_prunable(student, "deterministic"))
        total = total_prunable(student) if prune else total_prunable(self.teacher)
        return {"steps": self.step, "target_sparsity": self.final_sparsity,
                "target_params": self.cfg.prune.target_params if prune else None,
                "whole_model_params": whole_model_params(compact),  # DPHuBERT's count (model/prunable.py)
                "sparsity": 1.0 - kept / total, "expected_sparsity": float(expected_sparsity(student).detach()) if prune else None,
                "params": compact.num_params(), "teacher_params": self.teacher.num_params(),
                "prunable_params": {"kept": kept, "total": total}, "distill_loss": self.last.get("distill_loss"),
                "pairs": self.last.get("pairs"), "skipped_audio": self.dataset.run_skipped(), "seconds": round(seconds, 1)}
