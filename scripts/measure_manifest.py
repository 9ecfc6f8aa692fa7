"""Time and memory of building the training dataset from a LibriSpeech-sized manifest.

    .venv/bin/python scripts/measure_manifest.py [N]        # N defaults to 281241

Writes a synthetic fairseq manifest of N entries (LibriSpeech 960 h has
28,539 + 104,014 + 148,688 = 281,241 utterances in train-clean-100,
train-clean-360 and train-other-500, Panayotov et al. 2015, Table 1) whose
paths do not exist and whose lengths average 12.3 s (960.9 h / 281,241), then,
in a fresh Python process, builds `AudioDataset(manifest, scan="lengths")` and
one epoch's `LengthBucketSampler` plan, and prints one JSON line: seconds and
peak resident memory (`resource.getrusage`, ru_maxrss) before and after. The
paths do not exist, so the build cannot have opened any audio file.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from pruned_upstream.speed import cpu_name

LIBRISPEECH_960H = 281_241
MEAN_SECONDS = 960.9 * 3600 / LIBRISPEECH_960H  # 12.3 s

CHILD = r"""
import gc, json, logging, resource, sys, time
def rss_now():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
t0 = time.perf_counter()
from pruned_upstream.data.dataset import AudioDataset
from pruned_upstream.data.sampler import LengthBucketSampler
logging.basicConfig(level=logging.WARNING)
t1 = time.perf_counter()
rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
now_import = rss_now()
ds = AudioDataset(sys.argv[1], scan="lengths")
t2 = time.perf_counter()
rss_dataset = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
gc.collect()
held = rss_now() - now_import
sampler = LengthBucketSampler(ds.lengths, max_batch_samples=2_560_000)
n_batches = len(sampler.plan(0))
t3 = time.perf_counter()
print(json.dumps({"entries_used": len(ds), "skipped": {k: v for k, v in ds.skipped.items() if v},
                  "import_s": round(t1 - t0, 2), "build_s": round(t2 - t1, 2), "plan_s": round(t3 - t2, 2),
                  "batches_per_epoch": n_batches, "peak_rss_after_import_mib": round(rss_import),
                  "peak_rss_after_build_mib": round(rss_dataset),
                  "rss_held_by_dataset_mib": round(held),
                  "peak_rss_after_plan_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "path_table_mib": round(ds.paths.nbytes() / 2**20, 1)}))
"""


def write_synthetic_manifest(tsv: Path, n: int, seed: int = 0) -> None:
    """N LibriSpeech-like rows `split/spk/chapter/spk-chapter-utt.flac<TAB>samples` under a root that does not exist."""
    rng = np.random.default_rng(seed)
    seconds = np.clip(rng.gamma(shape=9.0, scale=MEAN_SECONDS / 9.0, size=n), 1.0, 35.0)
    samples = (seconds * 16000).astype(np.int64)
    splits = ("train-clean-100", "train-clean-360", "train-other-500")
    with open(tsv, "w") as f:
        f.write("/nonexistent/LibriSpeech\n")
        for i, num in enumerate(samples.tolist()):
            spk, chapter = 19 + i // 120, 198 + i // 20
            f.write(f"{splits[i % 3]}/{spk}/{chapter}/{spk}-{chapter}-{i % 20:04d}.flac\t{num}\n")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else LIBRISPEECH_960H
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tsv = Path(tmp) / "train.tsv"
        write_synthetic_manifest(tsv, n)
        env = {**os.environ, "PYTHONPATH": str(repo)}
        out = subprocess.run([sys.executable, "-c", CHILD, str(tsv)], capture_output=True, text=True, env=env, cwd=repo)
        if out.returncode != 0:
            sys.exit(f"measurement failed:\n{out.stderr}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result.update(entries=n, manifest_mib=round(tsv.stat().st_size / 2**20, 1), cpu=cpu_name(),
                      cores=os.cpu_count(), python=platform.python_version())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
