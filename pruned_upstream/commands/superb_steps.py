"""`pruned-upstream superb-step STEP ...`: the scoring steps SUPERB prescribes after s3prl's runner.

    superb-step sd-score EXPDIR TEST_DIR [--jobs N]     s3prl's diarization score.sh grid, lowest DER (dscore)
    superb-step qbe CKPT QUESST14_ROOT OUT [--layers 0,1] [--override O] [--scorer auto|official|ours]
    superb-step mtwv EXPDIR GROUNDTRUTH_DIR [DEFAULT_SCORE]   our QUESST 2014 MTWV of one expdir
    superb-step dscore ARGS...                            dscore's score.py, unchanged ($DSCORE_ROOT)
    superb-step dscore-root                               where dscore is (a tarball is unpacked once)

scripts/run_superb.sh chains these; a missing tool (dscore, its packages) exits 2 with one line.
"""

from __future__ import annotations

import sys


def _missing_tool(step: str, err: Exception) -> int:
    print(f"pruned-upstream superb-step {step}: {err}", file=sys.stderr)
    return 2


def sd_score(expdir: str, test_dir: str, jobs: int) -> int:
    from ..s3prl_plugin import third_party
    from ..s3prl_plugin.sd_eval import score_sd

    try:
        result = score_sd(expdir, test_dir, jobs=jobs)
    except third_party.ToolNotFoundError as err:
        return _missing_tool("sd-score", err)
    for (th, med), der in sorted(result.grid.items(), key=lambda item: -item[1]):
        print(f"result_th{th}_med{med}: DER {der:.2f}")
    print(f"SD: lowest DER {result.der:.2f} (threshold {result.threshold}, median {result.median}): "
          f"{result.result_file}")
    return 0


def qbe(ckpt: str, dataset_root: str, out: str, layers: str | None, override: str, scorer: str) -> int:
    from ..s3prl_plugin.qbe_eval import run_qbe
    from ..superb.mtwv import OURS_LABEL

    chosen = [int(x) for x in layers.split(",")] if layers else None
    result = run_qbe(ckpt, dataset_root, out, chosen, override=override, scorer=scorer)
    tag = "" if result.scorer == "official" else f"  [{OURS_LABEL}]"
    for layer in sorted(result.dev_mtwv):
        print(f"layer {layer}: dev MTWV {result.dev_mtwv[layer]:.4f}  test MTWV {result.all_test_mtwv[layer]:.4f}")
    print(f"QbE: best dev layer {result.best_layer}: test MTWV {result.test_mtwv:.4f}{tag}")
    return 0


def mtwv(expdir: str, groundtruth: str, default_score: float) -> int:
    from ..superb.mtwv import OURS_LABEL, score_expdir

    try:
        result = score_expdir(expdir, groundtruth, default_score)
    except SyntaxError as err:  # xml.etree's ParseError: a truncated or foreign XML file
        raise ValueError(f"unreadable XML: {err}") from None
    print(f"{result.line()}  [{OURS_LABEL}]")
    return 0


def dscore(args: list[str]) -> int:
    from ..s3prl_plugin import third_party

    try:
        third_party.run_dscore(args)
    except third_party.ToolNotFoundError as err:
        return _missing_tool("dscore", err)
    return 0


def dscore_root() -> int:
    from ..s3prl_plugin import third_party

    try:
        print(third_party.dscore_root())
    except third_party.ToolNotFoundError as err:
        return _missing_tool("dscore-root", err)
    return 0
