"""The distillation-pruning trainer (paper Eq. 5; METHOD.md sections 4 to 6).

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
import copy
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from . import run_io
from .arch import WavLMArch, dense_arch, preset
from .checkpoints import load_model
from .config import Config, RESUMABLE_CHANGES, differences, load_config, load_saved, save_config
from .distill import Distiller, valid_frames
from .exporting import export
from .layers import drop_layers
from .model.components import layer_drop_probs
from .model.hardconcrete import expected_z
from .model.prunable import (PruneConfig, expected_sparsity, kept_prunable, log_alpha_parameters,
                             make_prunable, realised_sparsity, total_prunable, weight_parameters)
from .model.wavlm import WavLM, tiny_arch
from .sparsity import Lagrangian, make_optimizers, make_scheduler, target_sparsity

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: the run stops, its last good checkpoint stays."""


# ---------------------------------------------------------------------------- models
def teacher_arch(name: str, overrides: dict) -> WavLMArch:
    """The random teacher's architecture: a preset with some fields changed."""
    sizes = ("num_layers", "embed_dim", "num_heads", "ffn_dim")
    allowed = set(sizes) | {f.name for f in dataclasses.fields(WavLMArch)} - {"layers", "head_dim"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"teacher.arch has unknown keys {unknown}; known: {sorted(allowed)}")
    if name == "tiny":
        return tiny_arch(**overrides)
    base = preset(name)
    args = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.name not in ("layers", "head_dim")}
    args.update(num_layers=base.num_layers, ffn_dim=base.layers[0].ffn_dim)
    return dense_arch(**{**args, **overrides})


def build_teacher(cfg: Config) -> WavLM:
    if cfg.teacher.checkpoint:
        model = load_model(cfg.teacher.checkpoint)
    else:
        torch.manual_seed(cfg.teacher.seed)
        model = WavLM(teacher_arch(cfg.teacher.preset, cfg.teacher.arch))
    return model.eval().requires_grad_(False)


def prune_config(cfg: Config) -> PruneConfig:
    return PruneConfig(tuple(cfg.prune.kinds), dict(cfg.prune.ste), cfg.prune.init_keep)


def build_student(cfg: Config, teacher: WavLM) -> WavLM:
    """A copy of the teacher (or a model file), with gates unless pruning is off."""
    student = load_model(cfg.student.checkpoint) if cfg.student.checkpoint else copy.deepcopy(teacher)
    if cfg.student.drop_layers:  # a shallower student whose heads are then pruned: one config
        if str(cfg.student.drop_layers).startswith("importance"):
            raise ValueError("student.drop_layers: importance:K needs audio; export a shallower model first "
                             "(pruned-upstream export MODEL --drop-layers importance:K --audio DIR)")
        student = drop_layers(student, cfg.student.drop_layers)
    if cfg.distill.layer_drop > 0:
        # stochastic depth: a skipped layer passes its input on, so its hidden state (and the
        # distillation target paired with it) stays in the loss, which teaches the remaining
        # layers to stand in for it (docs/training.md)
        student.encoder.layer_drop = layer_drop_probs(cfg.distill.layer_drop, student.num_layers,
                                                      cfg.distill.layer_drop_schedule)
    student.requires_grad_(True)
    student.mask_emb.requires_grad_(False)  # pre-training's mask embedding: unused here
    if cfg.prune.enabled:
        torch.manual_seed(cfg.train.seed)  # the gates' initial log_alpha
        make_prunable(student, prune_config(cfg))
    return student.train()


class DistillStudent(nn.Module):
    """The student and the distiller's maps: the module DDP wraps. forward -> (loss, p_hat, pairs)."""

    def __init__(self, student: WavLM, distiller: Distiller, prune: bool):
        super().__init__()
        self.student, self.distiller, self.prune = student, distiller, prune
        self._z_mha: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(student.encoder.layers):
            if getattr(layer.self_attn, "gate_mha", None) is not None:
                layer.self_attn.gate_mha.register_forward_hook(partial(self._record_z_mha, i))

    def _record_z_mha(self, i, module, inputs, z):
        self._z_mha[i] = z.detach()

    def alive(self) -> torch.Tensor:
        """(L,) bool: layers whose sampled z_MHA is non-zero (CoFi's pairing candidates)."""
        n = self.student.num_layers
        return torch.tensor([bool(self._z_mha[i].ne(0).all()) if i in self._z_mha else True for i in range(n)])

    def forward(self, wav, lengths, teacher_states):
        self._z_mha.clear()
        states = self.student(wav, lengths)  # gates sampled in training mode
        valid = valid_frames(lengths, wav.shape[1], states[0].shape[1])
        loss, pairs = self.distiller(states, teacher_states, valid, self.alive())
        p_hat = expected_sparsity(self.student) if self.prune else loss.new_zeros(())
        return loss, p_hat, pairs


# ---------------------------------------------------------------------------- environment
@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed(device: str) -> DistEnv:
    """torchrun's environment -> a process group (nccl on GPU, gloo on CPU); one process: nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistEnv()
    if not dist.is_initialized():
        cuda = device != "cpu" and torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
    return DistEnv(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, env: DistEnv) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device=cuda but no CUDA device is available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(env.local_rank)
    return torch.device("cuda", env.local_rank)


def micro_seed(seed: int, step: int, index: int) -> int:
    """The torch seed of micro-batch `index` (rank + world * micro) of optimizer step `step`."""
    return int(np.random.SeedSequence([seed, step, index]).generate_state(1, np.uint64)[0] >> 1)


def build_data(cfg: Config, run_dir: Path, env: DistEnv):
    from .data.dataset import AudioDataset, collate
    from .data.sampler import LengthBucketSampler

    source = cfg.data.source
    if not source:
        raise ValueError("data.source is not set: a LibriSpeech directory, a manifest .tsv, or demo")
    if source == "demo":
        source = _demo_manifest(run_dir / "corpus", env)
    dataset = AudioDataset(source, cfg.data.crop, cfg.data.min_samples, seed=cfg.train.seed, scan=cfg.data.scan)
    sampler = LengthBucketSampler(dataset.lengths, cfg.train.batch_size, cfg.train.max_batch_samples,
                                  seed=cfg.train.seed, length_jitter=cfg.data.length_jitter,
                                  rank=env.rank, world_size=env.world)
    if len(sampler) == 0:
        raise ValueError(f"{len(dataset)} usable files give no batch to each of {env.world} processes")
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=cfg.data.num_workers)
    return dataset, sampler, loader


def _demo_manifest(corpus: Path, env: DistEnv) -> Path:
    """The embedded corpus (espeak-ng), made once in RUN_DIR/corpus."""
    from .data.demo_corpus import make_demo_corpus

    if env.main and not (corpus / "manifest.tsv").is_file():
        make_demo_corpus(corpus)
    env.barrier()
    return corpus / "manifest.tsv"


# ---------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, env: DistEnv):
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
        self.dataset, self.sampler, self.loader = build_data(cfg, self.run_dir, env)
        self.step, self.epoch, self.batches_done = 0, 0, 0
        self.last: dict = {}
        self.scalar_log: run_io.ScalarLog | None = None  # process 0, once `open_log` is called

    def open_log(self, resumed: bool) -> None:
        """log.jsonl and TensorBoard; a resumed run drops what was logged after its checkpoint."""
        if self.env.main:
            self.scalar_log = run_io.ScalarLog(self.run_dir, self.cfg.run.tensorboard, self.step if resumed else None)

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
        p = target_sparsity(self.step, t.target_sparsity, self.sparsity_warmup)
        self.optimizer.zero_grad(set_to_none=True)
        distill_sum = lagrangian_sum = 0.0
        for m, (wav, lengths) in enumerate(micro_batches):
            torch.manual_seed(micro_seed(t.seed, self.step, m * self.env.world + self.env.rank))  # gate noise
            wav, lengths = wav.to(self.device), lengths.to(self.device)
            with self._no_sync(m < n - 1):
                with self.autocast():
                    with torch.no_grad():
                        teacher_states = self.teacher(wav, lengths)
                    distill, p_hat, micro_pairs = self.ddp(wav, lengths, teacher_states)
                lagrangian = self.lagrangian(p_hat, p) if self.cfg.prune.enabled else torch.zeros_like(distill)
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
            ckpt = run_io.latest_checkpoint(self.run_dir)
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
        if self.env.main:
            state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "lagrangian": self.lagrangian.state_dict(),
                     "distiller": self.model.distiller.state_dict(), "rng": run_io.rng_state(),
                     "data": self.sampler.state_dict(batches_done=self.batches_done), "world_size": self.env.world}
            prune = dataclasses.asdict(self.cfg.prune) if self.cfg.prune.enabled else None
            run_io.save_checkpoint(self.run_dir, self.step, self.student, prune, state, self.cfg.run.keep_checkpoints)
        self.env.barrier()

    def restore(self, ckpt: Path) -> None:
        arch, _, weights, _ = run_io.read_student_file(ckpt / run_io.STUDENT_FILE)
        if arch != self.student.arch:
            raise ValueError(f"{ckpt}: its architecture differs from the one this config builds")
        self.student.load_state_dict(weights, strict=True)
        state = run_io.read_state(ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.lagrangian.load_state_dict(state["lagrangian"])
        self.model.distiller.load_state_dict(state["distiller"])
        run_io.set_rng_state(state["rng"])
        self.sampler.load_state_dict(state["data"])
        self.epoch, self.batches_done = state["data"]["epoch"], state["data"]["batch"]
        self.step = state["step"]

    def summary(self, seconds: float) -> dict:
        """Sparsity of the deterministic masks (of the compact student against the teacher when not pruning)."""
        student, prune = self.student, self.cfg.prune.enabled
        compact = export(student)
        kept = float(kept_prunable(student, "deterministic"))
        total = total_prunable(student) if prune else total_prunable(self.teacher)
        return {"steps": self.step, "target_sparsity": self.cfg.train.target_sparsity if prune else None,
                "sparsity": 1.0 - kept / total, "expected_sparsity": float(expected_sparsity(student).detach()) if prune else None,
                "params": compact.num_params(), "teacher_params": self.teacher.num_params(),
                "prunable_params": {"kept": kept, "total": total}, "distill_loss": self.last.get("distill_loss"),
                "pairs": self.last.get("pairs"), "skipped_audio": self.dataset.skipped, "seconds": round(seconds, 1)}


def block_gates(student: WavLM) -> dict[str, float]:
    """E[z_MHA] and E[z_FFN] per layer and their means (the paper's Figure 3a)."""
    out, means = {}, {"z_mha": [], "z_ffn": []}
    for i, layer in enumerate(student.encoder.layers):
        for key, gate in (("z_mha", getattr(layer.self_attn, "gate_mha", None)), ("z_ffn", layer.gate_ffn)):
            if gate is not None:
                value = float(expected_z(gate.log_alpha.detach()).mean())
                out[f"{key}/{i}"] = value
                means[key].append(value)
    out.update({f"{k}/mean": sum(v) / len(v) for k, v in means.items() if v})
    return out


# ---------------------------------------------------------------------------- entry points
def run_prune(config: str, overrides, out, resume: bool = False) -> int:
    """`pruned-upstream prune`: train from scratch, or continue RUN_DIR's last checkpoint."""
    run_dir = Path(out)
    cfg = _run_config(config, list(overrides or ()), run_dir, resume)
    ckpt = run_io.latest_checkpoint(run_dir) if resume else None
    if ckpt is not None and (run_dir / "summary.json").is_file() and int(ckpt.name[5:]) >= cfg.train.steps:
        print(f"{run_dir}: finished at step {cfg.train.steps}; nothing to do")
        return 0
    if not resume and (run_io.latest_checkpoint(run_dir) or (run_dir / "config.yaml").exists()):
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
        run_io.clean_temp(run_dir)
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
        run_io.write_json(run_dir / "summary.json", summary)
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


def load_student(path) -> WavLM:
    """A run directory (its newest checkpoint) or a checkpoint directory -> the student, eval mode."""
    ckpt = run_io.resolve_checkpoint(path)
    arch, prune, weights, _ = run_io.read_student_file(ckpt / run_io.STUDENT_FILE)
    model = WavLM(arch)
    if prune is not None:
        with torch.random.fork_rng(devices=[]):  # the gates' initialisation must not move the caller's RNG
            make_prunable(model, PruneConfig(tuple(prune["kinds"]), prune["ste"], prune["init_keep"]))
    model.load_state_dict(weights, strict=True)
    return model.eval()
