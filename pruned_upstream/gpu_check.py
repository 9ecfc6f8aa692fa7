"""One table of what a GPU gives us, for the day one is lent: `scripts/gpu_check.sh [--dry-run]`.

    run(dry_run=False)   # on a GPU: WavLM Base sizes, the recipe's batch and crop, bf16
    run(dry_run=True)    # on CPU, tiny sizes: the same code path, in the tests

It needs no data, no weights and no network, and imports nothing that needs
soundfile, s3prl or torchaudio (a lent machine has none of them; the test runs
it with those modules blocked). Rows:

- pruning-training throughput: the trainer's own `train_step` (teacher forward,
  gated student, distillation + Lagrangian, backward, clip, step) on random
  audio, every utterance at the full crop (the recipe's upper bound; real
  batches are shorter), under the recipe's precision (bf16 autocast on GPU);
  seconds per step, samples per second (what the data loader must deliver),
  the recipe's train.steps projected in hours, peak GPU memory;
- inference: dense WavLM Base, the synthetic p = 0.8 model (CNN whole) and the
  CNN-pruned one of the same size (`synthetic_arch`), batch 1 and 16 of 10 s,
  float32, bf16 autocast (float32 weights), and the models cast to bf16 and to fp16
  (`model.to(dtype)`, float32 audio in: s3prl's way), median of the repeats, and
  speed-ups against dense in the same precision. A dtype the device lacks gets the
  row "not supported here" instead of a time.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .arch import SAMPLE_RATE, preset
from .config_files import load_config
from .model.wavlm import WavLM, tiny_arch
from .speed import machine, measure_times
from .synthetic_pruning import synthetic_arch
from .training.trainer import Trainer
from .training.distributed import DistEnv

RECIPE = "wavlm_base_sp80"
FULL = dict(teacher="base", batch=None, crop=None, steps=6, warmup=3, seconds=10.0, batches=(1, 16), repeats=5)
DRY = dict(teacher="tiny", batch=2, crop=8000, steps=2, warmup=1, seconds=0.5, batches=(1, 2), repeats=1)


def run(dry_run: bool = False, print_fn=print) -> list[tuple[str, str, str]]:
    """Measure and print the table; returns its rows (what, setting, value)."""
    sizes = DRY if dry_run else FULL
    device = "cpu" if dry_run else "cuda"
    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; on a CPU run scripts/gpu_check.sh --dry-run")
    info = machine(device)
    rows = [("machine", info.get("gpu", "CPU (dry run)"), f"{info['cpu']} ({info['vector']}), torch {info['torch']}")]
    rows += training_rows(sizes, device)
    rows += inference_rows(sizes, device)
    print_fn(format_table(rows, dry_run))
    return rows


# ---------------------------------------------------------------------------- training
def training_rows(sizes: dict, device: str) -> list[tuple[str, str, str]]:
    cfg = load_config(RECIPE, ["teacher.checkpoint=null", f"teacher.preset={sizes['teacher']}",
                               f"run.device={device}", "run.progress=false", "run.tensorboard=false"])
    batch = sizes["batch"] or cfg.train.batch_size
    crop = sizes["crop"] or cfg.data.crop
    cfg.train.batch_size = batch
    if sizes["teacher"] == "tiny":  # 2 layers: distil both
        cfg.distill.teacher_layers = [1, 2]
    trainer = _trainer_without_data(cfg)
    g = torch.Generator().manual_seed(0)
    wav = torch.randn(batch, crop, generator=g) * 0.1
    lengths = torch.full((batch,), crop, dtype=torch.long)
    if device == "cuda":
        wav, lengths = wav.pin_memory(), lengths.pin_memory()  # as a DataLoader with pin_memory hands them over
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(sizes["warmup"] + sizes["steps"]):
        _sync(device)
        start = time.perf_counter()
        trainer.train_step([(wav, lengths)] * cfg.train.accumulate)
        _sync(device)
        if i >= sizes["warmup"]:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    setting = (f"teacher {sizes['teacher']} + gated student, batch {batch} x {crop} samples, "
               f"{'bf16 autocast' if _bf16(cfg, device) else 'fp32'}")
    rows = [
        ("training step", setting, f"{step:.3f} s (median of {len(times)})"),
        ("training samples/s", "what the data loader must deliver per process", f"{batch * cfg.train.accumulate / step:.1f}"),
        ("projected run", f"{cfg.train.steps} steps of the recipe", f"{step * cfg.train.steps / 3600:.1f} h"),
    ]
    if device == "cuda":
        rows.append(("peak GPU memory", "training", f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"))
    return rows


def _trainer_without_data(cfg):
    """The trainer of the recipe without its data pipeline (which reads audio with soundfile):
    steps are fed random audio here."""
    run_dir = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    return Trainer(cfg, run_dir, DistEnv(), data=(None, None, None))


def _bf16(cfg, device: str) -> bool:
    return cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device == "cuda")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------- inference
class _Autocast(torch.nn.Module):
    def __init__(self, model, device: str):
        super().__init__()
        self.model, self.device = model, device

    def forward(self, *args):
        with torch.autocast(self.device, dtype=torch.bfloat16):
            return self.model(*args)


PRECISIONS = ("fp32", "bf16 autocast", "bf16 weights", "fp16 weights")
CAST = {"bf16 weights": torch.bfloat16, "fp16 weights": torch.float16}


def dtype_supported(dtype: torch.dtype, device: str) -> bool:
    """Whether `device` runs the model's kernels (a conv and a matmul) in `dtype`."""
    if device == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return False
    try:
        x = torch.ones(1, 1, 8, dtype=dtype, device=device)
        torch.nn.functional.conv1d(x, torch.ones(2, 1, 3, dtype=dtype, device=device))
        (x[0] @ x[0].transpose(0, 1)).sum().item()
    except (RuntimeError, NotImplementedError):
        return False
    return True


def _timed_models(models: dict, precision: str, device: str) -> list:
    if precision == "fp32":
        return list(models.values())
    if precision == "bf16 autocast":
        return [_Autocast(m, device) for m in models.values()]
    return [copy.deepcopy(m).to(CAST[precision]) for m in models.values()]


def _relative_error(model, reference, device: str) -> float:
    """||last hidden state - float32's|| / ||float32's|| on 1 s of random audio (tests/test_dtypes.py
    holds bf16 under 5e-2 and fp16 under 1e-2 on CPU)."""
    wav = torch.randn(1, SAMPLE_RATE, generator=torch.Generator().manual_seed(0)).to(device) * 0.1
    with torch.no_grad():
        out, ref = model(wav)[-1].double(), reference(wav)[-1].double()
    return float((out - ref).norm() / ref.norm())


def inference_rows(sizes: dict, device: str) -> list[tuple[str, str, str]]:
    torch.manual_seed(0)
    base = preset("base") if sizes["teacher"] == "base" else tiny_arch(num_layers=4, embed_dim=64, ffn_dim=256)
    dense = "dense Base" if sizes["teacher"] == "base" else "dense tiny"
    models = {dense: WavLM(base), "p = 0.8, CNN whole": WavLM(synthetic_arch(0.8, base=base)),
              "p = 0.8, CNN pruned": WavLM(synthetic_arch(0.8, base=base, cnn=True))}
    models = {name: m.eval().to(device) for name, m in models.items()}
    seconds, rows = sizes["seconds"], []
    for precision in PRECISIONS:
        if precision in CAST and not dtype_supported(CAST[precision], device):
            rows += [(f"inference, {name}", precision, "not supported here") for name in models]
            continue
        timed = _timed_models(models, precision, device)
        if precision != "fp32":
            rows.append(("agreement with fp32", f"{next(iter(models))}, {precision}",
                         f"{_relative_error(timed[0], next(iter(models.values())), device):.1e} relative"))
        for batch in sizes["batches"]:
            lengths = [int(round(seconds * SAMPLE_RATE))] * batch
            times = measure_times(timed, seconds, sizes["repeats"], torch.get_num_threads(), device, lengths=lengths)
            medians = [statistics.median(t) for t in times]
            for name, t in zip(models, medians):
                rows.append((f"inference, {name}", f"batch {batch} x {seconds:g} s, {precision}",
                             f"{t * 1000:.1f} ms ({medians[0] / t:.2f}x dense)"))
    return rows


def format_table(rows: list[tuple[str, str, str]], dry_run: bool) -> str:
    head = "gpu_check" + (" --dry-run (CPU, tiny sizes: checks the code path, not a measurement)" if dry_run else "")
    widths = [max(len(r[i]) for r in rows + [("what", "setting", "value")]) for i in range(3)]
    line = "| " + " | ".join(f"{{:{w}}}" for w in widths) + " |"
    out = [head, line.format("what", "setting", "value"), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line.format(*r) for r in rows]
    return "\n".join(out)
