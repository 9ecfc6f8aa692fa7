"""scripts/gpu_check.sh --dry-run: the GPU check runs on CPU, without soundfile, s3prl or torchaudio."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
BLOCKED = ("soundfile", "s3prl", "torchaudio")


def _env(tmp_path: Path) -> dict:
    """PYTHONPATH with a sitecustomize that makes importing the blocked modules fail, as on a lent GPU image."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in BLOCKED)
    )
    return {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHON": sys.executable}


def test_blocking_works(tmp_path):
    for name in BLOCKED:
        r = subprocess.run([sys.executable, "-c", f"import {name}"], env=_env(tmp_path), capture_output=True, text=True)
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, name


def test_dry_run_prints_the_table_without_soundfile_s3prl_torchaudio(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=_env(tmp_path), capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("gpu_check --dry-run")
    rows = {}
    for line in lines[3:]:
        what, setting, value = (c.strip() for c in line.strip("|").split("|"))
        rows.setdefault(what, []).append((setting, value))
    assert set(rows) == {"machine", "training step", "training samples/s", "projected run", "agreement with fp32",
                         "inference, dense tiny", "inference, p = 0.8, CNN whole", "inference, p = 0.8, CNN pruned"}
    step = float(rows["training step"][0][1].split()[0])
    per_s = float(rows["training samples/s"][0][1])
    hours = float(rows["projected run"][0][1].split()[0])
    assert step > 0 and abs(per_s - 2 / step) < 0.05 * per_s + 0.1
    assert abs(hours - step * 200000 / 3600) < 0.05 * hours + 0.1  # the recipe's 200k steps
    assert "batch 2 x 8000 samples, fp32" in rows["training step"][0][0]
    for name in ("inference, dense tiny", "inference, p = 0.8, CNN whole", "inference, p = 0.8, CNN pruned"):
        settings = [s for s, _ in rows[name]]
        assert settings == [f"batch {b} x 0.5 s, {p}" for p in ("fp32", "bf16 autocast", "bf16 weights", "fp16 weights")
                            for b in (1, 2)]  # bf16 and fp16 models run on CPU (torch 2.8)
        assert all(v.endswith("x dense)") and float(v.split()[0]) > 0 for _, v in rows[name])
    assert all(v.endswith("(1.00x dense)") for _, v in rows["inference, dense tiny"])
    # models cast to bf16 / fp16 agree with float32 within their precision (tests/test_dtypes.py's bounds)
    agreement = {s: float(v.split()[0]) for s, v in rows["agreement with fp32"]}
    assert set(agreement) == {f"dense tiny, {p}" for p in ("bf16 autocast", "bf16 weights", "fp16 weights")}
    assert agreement["dense tiny, bf16 weights"] < 5e-2 and agreement["dense tiny, fp16 weights"] < 1e-2


def test_unknown_argument_is_refused(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "--fast"], env=_env(tmp_path), capture_output=True, text=True)
    assert r.returncode == 2 and "unknown argument '--fast'" in r.stderr
