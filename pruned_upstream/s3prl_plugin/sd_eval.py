"""SD (speaker diarization) scoring, step for step as s3prl's ``downstream/diarization/score.sh``.

After ``-m evaluate`` of the dev-best checkpoint on ``test``, s3prl's
diarization expert leaves one ``EXPDIR/scoring/predictions/<recording>.h5``
per test recording (dataset ``T_hat``: per-frame speaker activity
probabilities) and the label frame shift in ``EXPDIR/frame_shift``.
score.sh (s3prl commit ec8064b5) then, for every median filter width in
``MEDIANS`` and every threshold in ``THRESHOLDS``:

1. runs s3prl's ``downstream/diarization/make_rttm.py --median=M
   --threshold=T --frame_shift=F --subsampling=1 --sampling_rate=16000
   scoring/log/file_list scoring/hyp_T_M.rttm`` (``file_list``: the .h5 files);
2. runs dscore's ``score.py -r TEST_DIR/rttm -s scoring/hyp_T_M.rttm`` into
   ``scoring/result_thT_medM`` (stderr dropped).

The reported DER is the lowest ``*** OVERALL ***`` DER over those files
(superb.md: "report the lowest number"). This module runs the same two
scripts, unchanged, with the same arguments and file names: make_rttm.py in
this process (``runpy``, so scipy/h5py load once, not ten times), dscore as
one subprocess per grid point through
:mod:`pruned_upstream.s3prl_plugin.third_party` (``$DSCORE_ROOT`` may be a
tarball; ``np.int`` restored for NumPy >= 1.24). score.sh itself cannot run
here unchanged: it hard-codes ``dscore_dir=/groups/leo1994122701/dscore``.

    python -m pruned_upstream.s3prl_plugin.sd_eval EXPDIR TEST_DIR
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pruned_upstream.s3prl_plugin import third_party

MEDIANS = ("1", "11")  # score.sh: for med in 1 11
THRESHOLDS = ("0.3", "0.4", "0.5", "0.6", "0.7")  # score.sh: for th in 0.3 0.4 0.5 0.6 0.7
SAMPLE_RATE = 16000  # score.sh: sr=16000
DEFAULT_FRAME_SHIFT = 160  # score.sh's fallback when EXPDIR/frame_shift is absent
MAKE_RTTM = "downstream/diarization/make_rttm.py"  # relative to s3prl's package directory
_OVERALL = re.compile(r"\*\*\* OVERALL \*\*\*\s+(\S+)")


@dataclass(frozen=True)
class SdScore:
    der: float  # percent, dscore's DER column
    threshold: str
    median: str
    result_file: Path
    grid: dict[tuple[str, str], float]  # (threshold, median) -> DER


def s3prl_make_rttm() -> Path:
    """s3prl's ``make_rttm.py`` (the source tree ships it; the PyPI sdist does not)."""
    from pruned_upstream.s3prl_plugin.preflight import SOURCE_TREE, installed_s3prl_root

    root = installed_s3prl_root()
    script = root / MAKE_RTTM if root else None
    if script is None or not script.is_file():
        raise FileNotFoundError(f"s3prl's {MAKE_RTTM} is missing: {SOURCE_TREE}")
    return script


def frame_shift_of(expdir: Path) -> int:
    """``EXPDIR/frame_shift`` (written by s3prl's diarization expert), else score.sh's 160."""
    path = expdir / "frame_shift"
    if path.is_file():
        return int(path.read_text().strip())
    print(f"[sd_eval] warning: {path} not found; using frame shift {DEFAULT_FRAME_SHIFT} as score.sh does",
          file=sys.stderr)
    return DEFAULT_FRAME_SHIFT


def overall_der(result_file: Path) -> float:
    """The DER of dscore's ``*** OVERALL ***`` row in ``result_file``."""
    for line in result_file.read_text().splitlines():
        match = _OVERALL.search(line)
        if match:
            return float(match.group(1))
    raise ValueError(f"{result_file}: no '*** OVERALL ***' row (dscore failed?)")


def _run(cmd: list[str], env: dict, stdout_path: Path) -> None:
    """``cmd > stdout_path``, the file written only when ``cmd`` succeeds."""
    tmp = stdout_path.with_name(stdout_path.name + ".tmp")
    with open(tmp, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env)
    if proc.returncode == 0:
        tmp.replace(stdout_path)
    else:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")


def run_make_rttm(make_rttm: Path, args: list[str]) -> None:
    """s3prl's ``make_rttm.py ARGS``, unchanged, in this process (its imports load once, not 10 times)."""
    import runpy

    saved = sys.argv
    sys.argv = [str(make_rttm), *args]
    try:
        runpy.run_path(str(make_rttm), run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise RuntimeError(f"{make_rttm} {' '.join(args)} exited with {exc.code}") from None
    finally:
        sys.argv = saved


def _dscore(python: str, reference: Path, hyp: Path, result: Path, env: dict) -> float:
    _run(third_party.dscore_command(["-r", str(reference), "-s", str(hyp)], python), env, result)
    return overall_der(result)


def score_sd(expdir: str | Path, test_dir: str | Path, medians=MEDIANS, thresholds=THRESHOLDS,
             python: str | None = None, jobs: int = 2) -> SdScore:
    """Run score.sh's grid on ``expdir`` against ``test_dir/rttm``; the lowest DER and where it is."""
    expdir, test_dir = Path(expdir).resolve(), Path(test_dir).resolve()
    reference = test_dir / "rttm"
    if not reference.is_file():
        raise FileNotFoundError(f"{reference}: the test set's reference RTTM is missing")
    predictions = sorted((expdir / "scoring" / "predictions").glob("*.h5"))
    if not predictions:
        raise FileNotFoundError(f"{expdir}/scoring/predictions has no .h5: run -m evaluate -t test first")
    root = third_party.dscore_root()  # fail early, with the one-line message
    env = {**os.environ, third_party.DSCORE_ENV: str(root)}
    make_rttm, shift, python = s3prl_make_rttm(), frame_shift_of(expdir), python or sys.executable
    scoring = expdir / "scoring"
    (scoring / "log").mkdir(parents=True, exist_ok=True)
    (scoring / "log" / "file_list").write_text("".join(f"{p}\n" for p in predictions))
    points = [(th, med) for med in medians for th in thresholds]
    for th, med in points:  # score.sh's loop order
        run_make_rttm(make_rttm, [f"--median={med}", f"--threshold={th}", f"--frame_shift={shift}",
                                  "--subsampling=1", f"--sampling_rate={SAMPLE_RATE}",
                                  str(scoring / "log" / "file_list"), str(scoring / f"hyp_{th}_{med}.rttm")])
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # dscore: one process each
        ders = pool.map(lambda p: _dscore(python, reference, scoring / f"hyp_{p[0]}_{p[1]}.rttm",
                                          scoring / f"result_th{p[0]}_med{p[1]}", env), points)
        grid = dict(zip(points, ders))
    (th, med), der = min(grid.items(), key=lambda item: item[1])
    return SdScore(der, th, med, scoring / f"result_th{th}_med{med}", grid)
