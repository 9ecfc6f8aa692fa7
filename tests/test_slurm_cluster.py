"""`superb-all --slurm` and scripts/prune_slurm.sbatch on a real one-node SLURM cluster (tests/slurm_fixtures.py).

The cluster is Debian's slurm-wlm 22.05 with munge, started on localhost for
this module (`make test-deps` installs them; a cluster that does not start
fails the tests with its daemons' logs). The first test runs the ten tasks of
the small-data bundle sequentially, then through `superb-all --slurm --jobs 2`
with one task broken, checks each array element's resources, the site options,
the failure, then reruns the same command with the task fixed: only that unit
is submitted again, and the score and every prediction equal the sequential
run's. The second runs `pruned-upstream prune` with two gloo processes through
the sbatch script. Measured times: docs/superb_small_data.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from slurm_fixtures import ClusterError, free_port, slurm_cluster
from test_superb_jobs import outputs
from training_fixtures import tiny, write_manifest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run_superb.sh"
KNOBS = ("DRY_RUN", "STEPS_OVERRIDE", "QBE_LAYERS", "ER_FOLDS", "MODEL_NAME", "SUPERB_", "PRUNED_UPSTREAM", "PYTHON",
         "CUDA_VISIBLE_DEVICES", "SLURM_", "SBATCH_")
# The test cluster's resources: ASV and SD (the longest units) in a class of their own, to see each element get
# its row; every unit one or two CPUs so that two run at once on the 4 CPUs the node declares.
RESOURCES = """
ASV: {gpus: 0, cpus: 2, mem: 700M, time: "20:00"}
SD: {gpus: 0, cpus: 2, mem: 700M, time: "20:00"}
PR: {gpus: 0, cpus: 1, mem: 500M, time: "10:00"}
KS: {gpus: 0, cpus: 1, mem: 500M, time: "10:00"}
IC: {gpus: 0, cpus: 1, mem: 500M, time: "10:00"}
SID: {gpus: 0, cpus: 1, mem: 500M, time: "10:00"}
ER: {gpus: 0, cpus: 1, mem: 500M, time: "10:00"}
ASR: {gpus: 0, cpus: 1, mem: 500M, time: "10:00"}
QbE: {gpus: 0, cpus: 1, mem: 500M, time: "10:00"}
SF: {gpus: 0, cpus: 1, mem: 500M, time: "10:00"}
score: {gpus: 0, cpus: 1, mem: 100M, time: "5:00"}
"""


@pytest.fixture(scope="module")
def cluster():
    try:
        with slurm_cluster() as started:
            print(f"\nSLURM test cluster up in {started.started_in:.1f} s")
            yield started
    except ClusterError as err:  # never a skip: the cluster is part of what `make test` tests
        pytest.fail(f"the one-node SLURM cluster did not start: {err}")


def logged_units(out: Path) -> dict[str, int]:
    """unit -> how many times a job started it (the `=====` line units.sh writes first)."""
    return {p.stem: p.read_text().count("===== superb-all unit ") for p in (out / "logs").glob("*.log")
            if p.name != "score.log"}


def array_ids(text: str) -> list[str]:
    return re.findall(r"^\[superb-all\] job array (\d+) ", text, re.M)


@pytest.mark.slow
def test_superb_all_on_slurm_equals_the_sequential_run_and_resubmits_only_the_failed_unit(cluster, tmp_path):
    from s3prl_fixtures import make_tiny_wavlm
    from test_superb_all_tasks import dscore_root

    from pruned_upstream.demo_superb import fork_server
    from pruned_upstream.superb_data.bundle import TASKS, make_small_superb, run_env

    bundle = make_small_superb(tmp_path / "data", seed=0, steps=4)
    ckpt = make_tiny_wavlm(tmp_path / "tiny.pt")
    (tmp_path / "resources.yaml").write_text(RESOURCES)
    base = {k: v for k, v in os.environ.items() if not k.startswith(KNOBS) and k not in bundle.env}
    seq, par = tmp_path / "seq" / "small", tmp_path / "slurm" / "small"
    times = {}
    with fork_server(tmp_path) as server:  # jobs reach it too: they run on this machine, with this environment
        env = run_env(bundle, {"DSCORE_ROOT": dscore_root(), "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "",
                               "MODEL_NAME": "small", "OMP_NUM_THREADS": "1",
                               "PRUNED_UPSTREAM": f"{sys.executable} -m pruned_upstream.commands.fork_client",
                               "PRUNED_UPSTREAM_FORK_SERVER": server},
                      base={**base, "SLURM_CONF": cluster.env["SLURM_CONF"]})
        start = time.perf_counter()
        proc = subprocess.run(["bash", str(SCRIPT), str(ckpt), str(seq)], env=env, text=True, capture_output=True,
                              timeout=900)
        times["sequential"] = time.perf_counter() - start
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

        cmd = [sys.executable, "-m", "pruned_upstream.cli", "superb-all", "--slurm", "--jobs", "2",
               "--slurm-resources", str(tmp_path / "resources.yaml"),
               "--slurm-args", "--partition=debug --comment pu-test", str(ckpt), str(par)]
        broken = {**env, "SNIPS_ROOT": str(tmp_path / "no_such_snips")}  # SF fails; the other units run
        start = time.perf_counter()
        first = subprocess.run(cmd, env=broken, text=True, capture_output=True, timeout=300)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
        cluster.wait(timeout=900)
        times["slurm"] = time.perf_counter() - start
        arrays = array_ids(first.stdout)
        assert len(arrays) == 2, first.stdout  # two resource classes: ASV and SD, then the 14 others
        assert "(superb-ASV+SD; 2 units, 2 at a time; --cpus-per-task=2 --mem=700M --time=20:00)" in first.stdout
        assert "(superb-ASR+SF+SID+KS+IC+PR+ER+QbE; 14 units, 2 at a time; --cpus-per-task=1 " in first.stdout
        elements = {f"{job}_{r['ArrayTaskId']}": r for job in arrays for r in cluster.jobs(job)}
        assert len(elements) == 16, sorted(elements)  # ten tasks, five ER folds, three QbE layers
        by_unit, job = {}, None
        for line in first.stdout.splitlines():  # "job array ID (...)", then "array task K: UNIT (log ...)"
            job = m.group(1) if (m := re.match(r"\[superb-all\] job array (\d+) ", line)) else job
            if u := re.match(r"\[superb-all\]   array task (\d+): (\S+) ", line):
                by_unit[u.group(2)] = elements[f"{job}_{u.group(1)}"]
        assert set(by_unit) == {t for t in TASKS if t not in ("ER", "QbE")} | {f"ER_fold{k}" for k in range(1, 6)} | {
            "QbE_layer0", "QbE_layer1", "QbE_layer2"}
        for unit, record in by_unit.items():  # each element got its task's row and the site's options
            wide = unit in ("ASV", "SD")
            assert (record["NumCPUs"], record["TimeLimit"]) == (("2", "00:20:00") if wide else ("1", "00:10:00")), unit
            assert (record["Partition"], record["Comment"]) == ("debug", "pu-test"), unit
            log = (par / "logs" / f"{unit}.log").read_text()
            assert record["JobState"] == ("FAILED" if unit == "SF" else "COMPLETED"), (unit, log[-2000:])
        assert "[run_superb] SF: FAILED" in (par / "logs" / "SF.log").read_text()
        [score_job] = re.findall(r"the score job (\d+)", first.stdout)
        assert cluster.jobs(score_job)[0]["JobState"] == "COMPLETED"  # afterany: it ran after SF's failure
        assert set(json.loads((par / "superb_score.json").read_text())[0]["points"]) == set(TASKS) - {"SF"}

        start = time.perf_counter()  # the same command, SF's data fixed: only SF is submitted again
        second = subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=300)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
        cluster.wait(timeout=600)
        times["rerun"] = time.perf_counter() - start
    assert len(re.findall(r": complete, not submitted again$", second.stdout, re.M)) == 15, second.stdout
    [again] = array_ids(second.stdout)
    assert "array task 0: SF " in second.stdout and "array task 1:" not in second.stdout
    assert [r["JobState"] for r in cluster.jobs(again)] == ["COMPLETED"]
    assert logged_units(par) == {**{unit: 1 for unit in by_unit}, "SF": 2}  # no other unit ran again
    assert json.loads((par / "superb_score.json").read_text()) == json.loads((seq / "superb_score.json").read_text())
    ours, theirs = outputs(par), outputs(seq)
    for run, found in ((par, ours), (seq, theirs)):  # ASV: the test EER of each checkpoint
        found.update({str(p.relative_to(run)): re.findall(r"sv-voxceleb1/test-EER: \S+", p.read_text())
                      for p in run.glob("ASV/states-*/log.txt")})
    assert ours == theirs and len(ours) >= 60, sorted(set(ours) ^ set(theirs))
    # the leaderboard's predict.zip from what the arrays left: the same members and bytes as the sequential run's
    zips = {}
    for name, run in (("slurm", par), ("seq", seq)):
        sub = subprocess.run([sys.executable, "-m", "pruned_upstream.cli", "submit", str(run), "--allow-missing",
                              "--out", str(tmp_path / f"sub_{name}")], env=env, text=True, capture_output=True)
        assert sub.returncode == 0, sub.stderr[-2000:]
        with zipfile.ZipFile(tmp_path / f"sub_{name}" / "predict.zip") as archive:
            # s3prl's QbE writes its detected terms in the order its DTW workers finish: compared as a set
            zips[name] = {m: sorted(archive.read(m).splitlines()) if m.endswith(".stdlist.xml") else archive.read(m)
                          for m in archive.namelist()}
    assert zips["slurm"] == zips["seq"] and any(m.startswith("predict/er_fold5") for m in zips["seq"])
    print(f"\nwall seconds: sequential {times['sequential']:.1f}, --slurm --jobs 2 {times['slurm']:.1f} "
          f"(submission to an empty queue, SF failing), rerun of SF alone {times['rerun']:.1f}")


@pytest.mark.slow
def test_prune_across_the_nodes_of_a_slurm_job_with_two_gloo_processes(cluster, tmp_path):
    from pruned_upstream import run_dir as run_io

    manifest = write_manifest(tmp_path, 8, seed=0)
    run, logs = tmp_path / "run", tmp_path / "torchrun_logs"
    env = {**cluster.env, "NPROC_PER_NODE": "2", "PYTHON": sys.executable, "RDZV_PORT": str(free_port()),
           "TORCHRUN_LOG_DIR": str(logs), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    job = cluster.sbatch("--nodes=1", "--cpus-per-task=2", f"--output={tmp_path}/prune-%j.out", f"--chdir={REPO}",
                         str(REPO / "scripts" / "prune_slurm.sbatch"), "--config", "demo",
                         *tiny(manifest, "train.steps=4", "train.save_every=4"), "--out", str(run), env=env)
    cluster.wait(timeout=300)
    output = (tmp_path / f"prune-{job}.out").read_text()
    [record] = cluster.jobs(job)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), output[-4000:]
    assert f"1 node(s) ({cluster.node}), 2 process(es) each, rendezvous {cluster.node}:" in output
    assert (run / "summary.json").is_file() and [s for s, _ in run_io.list_checkpoints(run)] == [4]
    state = run_io.read_state(run_io.latest_checkpoint(run))
    assert state["world_size"] == 2  # the process group had both processes, every step's all-reduce both
    ranks = sorted(p.parent.name for p in logs.rglob("attempt_0/*/stdout.log"))
    assert ranks == ["0", "1"], sorted(map(str, logs.rglob("*")))  # torchrun started (and logged) both
