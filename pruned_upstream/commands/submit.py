"""`pruned-upstream submit RESULTS_DIR [--out DIR] [--allow-missing] [--upstream CKPT] [--run-dir RUN] [--check-s3prl]`.

Writes DIR/predict.zip (DIR: RESULTS_DIR/submission by default) with the members and
bytes s3prl's submit.py packs from the directories the protocol submits, and
DIR/model_card.json + model_card.md (docs/submission.md). A task that is missing or
incomplete is one line naming it and no zip is written, unless --allow-missing.
--check-s3prl then runs s3prl's own submit.py on the card's directories and compares
the two zips member by member (s3prl_plugin/submit_check.py); a difference exits 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..model_card import build_card, card_markdown
from ..s3prl_plugin.submit_check import check_with_s3prl_submit
from ..superb.submission import plan_submission, write_predict_zip


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def submit_command(results_dir: str, out: str | None = None, allow_missing: bool = False,
                   upstream: str | None = None, run_dir: str | None = None, check_s3prl: bool = False) -> int:
    plan = plan_submission(results_dir)
    for arg, why in plan.missing.items():
        print(f"{'left out' if allow_missing else 'missing'}: --{arg}: {why}", file=sys.stderr)
    if plan.missing and not allow_missing:
        print(f"pruned-upstream submit: {len(plan.missing)} of 15 entries missing; no predict.zip written "
              "(--allow-missing packs the others)", file=sys.stderr)
        return 1
    if not plan.entries:
        raise ValueError(f"{results_dir}: nothing to submit")
    dest = Path(out) if out else plan.root / "submission"
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    members = write_predict_zip(plan, dest / "predict.zip")
    card = build_card(plan, members, dest, upstream=upstream, run_dir=run_dir)
    _write(dest / "model_card.json", json.dumps(card, indent=1, sort_keys=False) + "\n")
    _write(dest / "model_card.md", card_markdown(card))
    packed = sorted({m.split("/")[1] for m in members if m.count("/") >= 2})
    print(f"{dest / 'predict.zip'}: {len(plan.entries)} of 15 entries ({' '.join(packed)})")
    print(f"{dest / 'model_card.json'}, {dest / 'model_card.md'}")
    if plan.missing:
        print(f"left out: {' '.join(plan.missing)}")
    if check_s3prl:  # s3prl's own submit.py on the card's directories: the same members and bytes?
        same, message = check_with_s3prl_submit(dest / "model_card.json")
        print(f"{'checked' if same else 'check failed' if same is False else 'not checked'}: {message}",
              file=sys.stdout if same else sys.stderr)
        return 0 if same else 1
    return 0
