"""SUPERB ASV (speaker verification, s3prl ``-d sv_voxceleb1``) end to end on a small VoxCeleb1.

Training runs in-process through ``pruned-upstream superb`` (two checkpoints),
and so does the test of the first checkpoint; then ``scripts/run_superb.sh ...
ASV`` finishes SUPERB's ASV testing exactly as for a real run: s3prl's
``sv_voxceleb1/test_expdir.sh`` procedure (``-m evaluate`` of every
``states-N.ckpt`` not yet tested, into ``states-N/log.txt``; lowest EER), then
``pruned-upstream score``. Without a GPU the runs need
``pruned_upstream.s3prl_plugin.cuda_shim`` (s3prl's ASV expert calls
``.cuda()`` unconditionally), which our runner enters around every run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import joblib
import pytest
import torch
from s3prl_fixtures import make_tiny_wavlm
from superb_cli_helpers import cache_stamp, datarc, join, runner_overrides, superb, train_argv

from pruned_upstream.s3prl_plugin.cuda_shim import tensor_cuda_stays_on_cpu
from pruned_upstream.superb.results import read_expdir
from pruned_upstream.superb_data.voxceleb1 import make_voxceleb1

REPO = Path(__file__).resolve().parents[1]
STEPS, SAVE_STEP = 4, 2
EER_LINE = re.compile(r"^sv-voxceleb1/test-EER: (\S+)$", re.M)


def test_trial_list_pairs_test_speakers_with_true_labels(tmp_path):
    data = make_voxceleb1(tmp_path / "vox", n_dev=1, n_test=3, train_videos=1, per_video=1, seed=2)
    trials = [line.split() for line in data.trials.read_text().splitlines()]
    assert {label for label, _, _ in trials} == {"0", "1"}
    for label, enrol, test in trials:  # paths relative to test/wav, label = same speaker
        assert (data.root / "test" / "wav" / enrol).is_file() and (data.root / "test" / "wav" / test).is_file()
        assert label == str(int(enrol.split("/")[0] == test.split("/")[0]))
    assert sum(label == "1" for label, _, _ in trials) == sum(label == "0" for label, _, _ in trials)


def test_cuda_shim_keeps_tensors_in_place_only_inside_the_block():
    x = torch.zeros(2)
    original = torch.Tensor.cuda
    with tensor_cuda_stays_on_cpu() as patched:
        if patched:
            assert x.cuda() is x and x.cuda(0) is x
        assert patched is not torch.cuda.is_available()
    assert torch.Tensor.cuda is original


def asv_override(data) -> str:
    return join(runner_overrides(STEPS, save_step=SAVE_STEP) + datarc(
        file_path=data.root, test_meta_data=data.trials, num_workers=0, train_batch_size=4
    ))


def run_script(ckpt: Path, out: Path, data) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "VOXCELEB1_ROOT": str(data.root),
        "PRUNED_UPSTREAM": f"{sys.executable} -m pruned_upstream.cli",
        "PYTHON": sys.executable,
    }
    return subprocess.run(["bash", str(REPO / "scripts" / "run_superb.sh"), str(ckpt), str(out), "ASV"],
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def asv(tmp_path_factory):
    out = tmp_path_factory.mktemp("asv")
    data = make_voxceleb1(out / "VoxCeleb1", n_dev=4, n_test=3, train_videos=1, per_video=1)
    ckpt, expdir, override = make_tiny_wavlm(out / "tiny.pt"), out / "ASV", asv_override(data)
    # s3prl computes the trimmed lengths with joblib Parallel(n_jobs=12): sequential here (2 cores)
    with joblib.parallel_config(backend="sequential"):  # the runner enters the CUDA shim itself
        train_rc = superb(train_argv("sv_voxceleb1", ckpt, expdir, override))
    if train_rc == 0:
        (expdir / "train.done").touch()  # what run_superb.sh's train step leaves; it then tests
    # states-2 is tested here as run_superb.sh would (stdout into states-2/log.txt), so the
    # script must skip it and test only states-4 (one subprocess fewer, and its resume logic)
    state = expdir / f"states-{SAVE_STEP}"
    state.mkdir()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        eval_rc = superb(["-m", "evaluate", "-e", f"{state}.ckpt", "-t", "test", "-o", f"args.expdir={state}"])
    (state / "log.txt").write_text(stdout.getvalue())
    return data, expdir, (train_rc, eval_rc), cache_stamp("ASV", expdir), run_script(ckpt, out, data)


@pytest.mark.slow
def test_asv_every_checkpoint_is_tested_and_the_lowest_eer_scored(asv):
    data, expdir, in_process_rcs, cache, proc = asv
    assert in_process_rcs == (0, 0), (expdir / "stdout.log").read_text()[-3000:]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in expdir.glob("states-*.ckpt")) == ["states-2.ckpt", "states-4.ckpt"]
    assert f"-e {expdir}/states-{STEPS}.ckpt" in (expdir / f"states-{STEPS}" / "stdout.log").read_text()
    assert not (expdir / f"states-{SAVE_STEP}" / "stdout.log").read_text().count("### pruned-upstream") > 1
    eers = {}
    for step in (SAVE_STEP, STEPS):
        log = expdir / f"states-{step}" / "log.txt"
        (eer,) = map(float, EER_LINE.findall(log.read_text()))
        assert 0.0 <= eer <= 1.0
        assert eer == pytest.approx(eer_from_predictions(expdir / f"states-{step}", data.trials))
        eers[step] = eer
    result = read_expdir(expdir)
    best = min(eers, key=eers.get)
    assert result.task == "ASV" and result.metrics["ASV"] == pytest.approx(100 * eers[best])
    assert f"states-{best}/log.txt" in result.sources["ASV"]
    assert "[run_superb] ASV: lowest EER: " in proc.stdout
    (score,) = json.loads((expdir.parent / "superb_score.json").read_text())  # `pruned-upstream score --json`
    assert "ASV" in score["points"] and "ASV" not in score["missing"] and score["partial"]
    # the lengths were computed once, in the experiment (the evaluations of states-N reused them)
    assert cache["action"] == "reused" and cache["data"]["tree"]["files"] == len(
        [u for u in data.utterances if u.set == "dev"])
    assert (expdir / "s3prl_cache" / "sv_voxceleb1" / ".wav_lengths" / "Voxceleb1_length.pt").is_file()
    assert not (expdir / f"states-{SAVE_STEP}" / "s3prl_cache").exists()


def eer_from_predictions(state_dir: Path, trials: Path) -> float:
    """EER of the scores s3prl wrote to test_predict.txt against our trial labels (s3prl's EER)."""
    import numpy as np
    from s3prl.downstream.sv_voxceleb1.utils import EER

    def name(rel: str) -> str:
        return "-".join(rel.removesuffix(".wav").split("/"))

    scores = dict(line.split() for line in (state_dir / "test_predict.txt").read_text().splitlines())
    labels, values = [], []
    for line in trials.read_text().splitlines():
        label, enrol, test = line.split()
        labels.append(int(label))
        values.append(float(scores[f"{name(enrol)}_{name(test)}"]))
    return float(EER(np.array(labels), np.array(values))[0])
