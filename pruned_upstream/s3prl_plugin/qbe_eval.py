"""QbE (query-by-example) the SUPERB way: DTW per layer on dev and test, the layer chosen by dev MTWV.

s3prl's ``quesst14_dtw`` has no training (s3prl ``downstream/docs/superb.md``,
"QbE"): ``-m evaluate -t dev`` and ``-m evaluate -t test`` with ``-l LAYER``
(an index into the upstream's hidden states, from 0) each extract the
features of the queries and utterances, run subsequence DTW and write
``EXPDIR/benchmark.stdlist.xml``; QUESST14's ``scoring/score-TWV-Cnxe.sh
EXPDIR groundtruth_quesst14_<dev|eval> -10`` (run from ``scoring/``) scores it;
SUPERB reports the test MTWV of the layer with the best dev MTWV.

:func:`run_qbe` does this through ``pruned_upstream.cli superb`` (s3prl's own
runner, our upstream registered), one expdir per layer and split
(``OUT/QbE_<split>_layer<L>``, the names scripts/run_superb.sh uses). Each
expdir is scored by the official scorer when the data ships it
(``score_twv.log``), else by our :mod:`pruned_upstream.superb.mtwv`
(``score_twv_ours.log``, marked as ours). A finished expdir (its score log
present) is not run again. The choice is written to ``OUT/qbe_summary.json``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pruned_upstream.superb import mtwv

SPLITS = ("dev", "test")
GROUNDTRUTH = {"dev": "groundtruth_quesst14_dev", "test": "groundtruth_quesst14_eval"}  # superb.md
OFFICIAL_SCORER = "score-TWV-Cnxe.sh"
OFFICIAL_LOG = "score_twv.log"  # pruned_upstream/superb/s3prl_logs.py QBE_SCORE_LOG
SUMMARY = "qbe_summary.json"


@dataclass
class QbeResult:
    best_layer: int
    test_mtwv: float  # of best_layer
    dev_mtwv: dict[int, float]
    all_test_mtwv: dict[int, float]
    scorer: str  # "official" or "ours"
    expdirs: dict[str, str] = field(default_factory=dict)


def count_hidden_states(ckpt: str | Path) -> int:
    """How many hidden states our upstream returns for ``ckpt`` (s3prl's ``-l`` indexes them)."""
    import torch

    from pruned_upstream.s3prl_plugin.hubconf import pruned_wavlm_local

    with torch.no_grad():
        return len(pruned_wavlm_local(str(ckpt)).eval()([torch.zeros(16000)])["hidden_states"])


def expdir_of(out: Path, split: str, layer: int) -> Path:
    return out / f"QbE_{split}_layer{layer}"


def official_scorer(dataset_root: Path) -> Path | None:
    """QUESST14's scorer inside the data set, when it is there and java runs it."""
    script = dataset_root / "scoring" / OFFICIAL_SCORER
    return script if script.is_file() and shutil.which("java") else None


def score_official(script: Path, expdir: Path, split: str) -> float:
    """superb.md's scoring command; its stdout saved as ``EXPDIR/score_twv.log``; the maxTWV."""
    proc = subprocess.run(["bash", script.name, str(expdir), GROUNDTRUTH[split], str(mtwv.DEFAULT_SCORE)],
                          cwd=script.parent, capture_output=True, text=True)
    if proc.returncode != 0 or "maxTWV" not in proc.stdout:
        raise RuntimeError(f"{script} {expdir} failed ({proc.returncode}): {proc.stderr.strip()[-1000:]}")
    (expdir / OFFICIAL_LOG).write_text(proc.stdout)
    from pruned_upstream.superb.s3prl_logs import read_qbe_mtwv

    return read_qbe_mtwv(expdir)[0] / 100.0


def _scored(expdir: Path) -> float | None:
    """The MTWV already in ``expdir`` (official log first), or None."""
    from pruned_upstream.superb.s3prl_logs import read_qbe_mtwv

    if not ((expdir / OFFICIAL_LOG).is_file() or (expdir / mtwv.OURS_LOG).is_file()):
        return None
    found = read_qbe_mtwv(expdir)
    return found[0] / 100.0 if found else None


def evaluate_layer(ckpt: Path, dataset_root: Path, expdir: Path, split: str, layer: int,
                   upstream: str, override: str) -> None:
    """``pruned-upstream superb -m evaluate -d quesst14_dtw -l LAYER -t SPLIT`` into ``expdir``."""
    from pruned_upstream.s3prl_plugin.runner import run_superb

    from pruned_upstream.s3prl_plugin.override_quoting import join_items, override_item

    overrides = [override_item("config.downstream_expert.datarc.dataset_root", str(dataset_root)), override]
    argv = ["-m", "evaluate", "-u", upstream, "-k", str(ckpt), "-d", "quesst14_dtw",
            "-l", str(layer), "-t", split, "-p", str(expdir), "-o", join_items(overrides)]
    code = run_superb(argv)
    if code != 0 or not (expdir / mtwv.STDLIST).is_file():
        raise RuntimeError(f"QbE layer {layer} {split}: `pruned-upstream superb {' '.join(argv)}` exited {code} "
                           f"without {expdir / mtwv.STDLIST} (see {expdir}/stdout.log)")


def run_qbe(ckpt: str | Path, dataset_root: str | Path, out: str | Path, layers: list[int] | None = None,
            upstream: str = "pruned_wavlm_local", override: str = "", scorer: str = "auto") -> QbeResult:
    """Every layer on dev and test, scored; the test MTWV of the best dev layer.

    ``scorer``: "auto" (the official one when the data ships it and java is
    installed, else ours), "official" or "ours". ``override``: extra s3prl
    ``-o`` items (``key=value,,key=value``) for every run.
    """
    ckpt, dataset_root, out = Path(ckpt).resolve(), Path(dataset_root).resolve(), Path(out).resolve()
    layers = list(range(count_hidden_states(ckpt))) if layers is None else list(layers)
    official = official_scorer(dataset_root) if scorer in ("auto", "official") else None
    if scorer == "official" and official is None:
        raise FileNotFoundError(f"{dataset_root}/scoring/{OFFICIAL_SCORER} (and java) not found")
    values: dict[str, dict[int, float]] = {split: {} for split in SPLITS}
    expdirs = {}
    for layer in layers:
        for split in SPLITS:
            expdir = expdir_of(out, split, layer)
            expdirs[f"{split}/{layer}"] = str(expdir)
            value = _scored(expdir)
            if value is None:
                if not (expdir / mtwv.STDLIST).is_file():
                    evaluate_layer(ckpt, dataset_root, expdir, split, layer, upstream, override)
                groundtruth = dataset_root / "scoring" / GROUNDTRUTH[split]
                value = (score_official(official, expdir, split) if official
                         else mtwv.score_expdir(expdir, groundtruth).max_twv)
            values[split][layer] = value
    best = max(layers, key=lambda layer: (values["dev"][layer], -layer))  # ties: the lower layer
    result = QbeResult(best, values["test"][best], values["dev"], values["test"],
                       "official" if official else "ours", expdirs)
    summary = asdict(result) | {"label": "official QUESST14 scorer" if official else mtwv.OURS_LABEL}
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return result
