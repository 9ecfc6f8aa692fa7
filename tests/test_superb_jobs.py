"""`superb-all --jobs N` (commands/superb_jobs.py): units, GPUs, the scheduler, and a real run on small data.

The fast tests drive the scheduler with a small bash stand-in for
run_superb.sh; the slow one runs the real script on the small-data bundle,
sequentially and with --jobs 2, and compares the results (docs/superb_small_data.md).
"""

from __future__ import annotations

import os
import re
import stat
import sys
import time
from pathlib import Path

import pytest

from pruned_upstream import cli
from pruned_upstream.commands.superb_all import split_options
from pruned_upstream.commands.superb_jobs import (Scheduler, asv_units, canonical_tasks, detect_gpus, longest_first,
                                                  plan_units, run_jobs, unit_state)
from pruned_upstream.commands.superb_slurm import SlurmOptions, load_resources, site_args

# A stand-in for run_superb.sh CKPT OUT TASK: records when it ran and with which GPU; FAIL_<TASK>=1 fails;
# a unit whose OUT/<TASK>.done exists says "result present", as the script does.
FAKE = r"""#!/usr/bin/env bash
set -eu
out=$2; task=${3:-}
name=$task; [[ $task == ER ]] && name=ER_${ER_FOLDS:-}; [[ $task == QbE ]] && name=QbE_layer${QBE_LAYERS:-}
[[ $task == ASV && ${ASV_TEST:-none} != none ]] && name=ASV_$ASV_TEST
if [[ ${DRY_RUN:-} == 1 ]]; then  # superb-all --slurm asks whether a unit is complete; nothing is run
    if [[ -f $out/$name.done ]]; then echo "[run_superb] $task: result present, skipped"; fi; exit 0; fi
if [[ ${SUPERB_PART:-} == score ]]; then echo "score ${*:3}" >> "$out/score_calls"; exit 0; fi
if [[ -f $out/$name.done ]]; then echo "[run_superb] $task: result present, skipped"; exit 0; fi
echo "[run_superb] $task: start"
echo "$name start $(date +%s.%N) ${CUDA_VISIBLE_DEVICES:-none}" >> "$out/events"
sleep 0.4
echo "$name end $(date +%s.%N)" >> "$out/events"
fail=FAIL_$task
if [[ -n ${!fail:-} ]]; then echo "[run_superb] $task: FAILED (exit 1)"; exit 1; fi
touch "$out/$name.done"
if [[ $name == ASV ]]; then mkdir -p "$out/ASV"; touch "$out"/ASV/states-{20000,40000,45000}.ckpt; fi
"""


@pytest.fixture
def fake_script(tmp_path) -> Path:
    path = tmp_path / "fake_run_superb.sh"
    path.write_text(FAKE)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_options_are_taken_out_of_the_scripts_arguments():
    assert split_options(["ck", "out", "KS"]) == (None, None, False, ["ck", "out", "KS"], None, None, False)
    assert split_options(["--jobs", "3", "ck", "out", "--gpus=0,2", "ER"])[:4] == (3, "0,2", False, ["ck", "out", "ER"])
    assert split_options(["--jobs=2", "--", "--jobs", "out"])[:4] == (2, None, False, ["--jobs", "out"])
    assert split_options(["--slurm", "--jobs=8", "ck", "out"])[:4] == (8, None, True, ["ck", "out"])
    assert split_options(["--slurm", "--jobs=8", "--slurm-args", "-p gpu --qos=high", "ck", "--dry-run", "out",
                          "--slurm-resources=r.yaml"]) == (8, None, True, ["ck", "out"], "-p gpu --qos=high",
                                                           "r.yaml", True)
    for bad in (["--jobs", "0", "a", "b"], ["--jobs", "x"], ["a", "b", "--jobs"], ["--gpus", "0", "a", "b"],
                ["--slurm", "a", "b"], ["--slurm", "--jobs", "2", "--gpus", "0", "a", "b"],
                ["--jobs", "2", "--dry-run", "a", "b"], ["--jobs", "2", "--slurm-args=-p x", "a", "b"],
                ["--jobs", "2", "--slurm-resources", "r.yaml", "a", "b"], ["--slurm", "--jobs", "2", "--slurm-args"]):
        with pytest.raises(ValueError):
            split_options(bad)


def test_units_split_er_into_folds_and_qbe_into_layers():
    assert canonical_tasks(["qbe", "KS", "ks"]) == ["QbE", "KS"]
    assert canonical_tasks([])[0] == "PR" and len(canonical_tasks([])) == 10
    with pytest.raises(ValueError, match="unknown task"):
        canonical_tasks(["XX"])
    units = plan_units(["KS", "ER", "QbE"], ["fold1", "fold3"], ["0", "2"])
    assert [(u.name, u.task, u.env) for u in units] == [
        ("KS", "KS", {}), ("ER_fold1", "ER", {"ER_FOLDS": "fold1"}), ("ER_fold3", "ER", {"ER_FOLDS": "fold3"}),
        ("QbE_layer0", "QbE", {"QBE_LAYERS": "0"}), ("QbE_layer2", "QbE", {"QBE_LAYERS": "2"})]
    assert [u.name for u in plan_units(["QbE"], [], None)] == ["QbE"]  # layers unknown: the script counts
    assert [u.name for u in longest_first(units + plan_units(["SD", "ASV"], [], None))] == [
        "ASV", "KS", "SD", "ER_fold1", "ER_fold3", "QbE_layer0", "QbE_layer2"]


def test_gpus_from_the_option_the_environment_or_nvidia_smi(tmp_path):
    assert detect_gpus("0, 2", {"CUDA_VISIBLE_DEVICES": "5"}) == ["0", "2"]
    assert detect_gpus(None, {"CUDA_VISIBLE_DEVICES": "3,1"}) == ["3", "1"]
    assert detect_gpus(None, {"CUDA_VISIBLE_DEVICES": ""}, nvidia_smi="/nonexistent") == []
    assert detect_gpus(None, {"CUDA_VISIBLE_DEVICES": "-1"}) == []
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n")
    smi.chmod(0o755)
    assert detect_gpus(None, {}, nvidia_smi=str(smi)) == ["0", "1"]
    assert detect_gpus(None, {}, nvidia_smi="") == []  # no nvidia-smi: CPU
    for bad in ("", "0;rm", "a,b"):
        with pytest.raises(ValueError, match="--gpus"):
            detect_gpus(bad, {})


def test_unit_state_reads_what_the_unit_wrote():
    assert unit_state(1, "[run_superb] KS: start\n") == "FAILED"
    assert unit_state(0, "x\n[run_superb] KS: start\n") == "ran"
    assert unit_state(0, "[run_superb] KS: result present, skipped\n") == "already complete"
    assert unit_state(0, "[run_superb] skip KS: data not set: X\n") == "skipped (data not set)"


def events(out: Path) -> list[list[str]]:
    return [line.split() for line in (out / "events").read_text().splitlines()]


def test_two_at_a_time_each_on_its_own_gpu_and_a_failure_stops_nothing(fake_script, tmp_path):
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    said = []
    env = {**os.environ, "FAIL_IC": "1"}
    sched = Scheduler(["bash", str(fake_script), "ck", str(out)], env, out / "logs", jobs=4, gpus=["7", "3"],
                      say=lambda text, **_: said.append(text))
    assert sched.jobs == 2 and "2 GPU(s)" in said[0]  # one unit per GPU
    outcomes = sched.run(plan_units(["PR", "IC", "SID", "ASR"], [], None))
    assert [(o.unit.name, o.state) for o in outcomes] == [("PR", "ran"), ("IC", "FAILED"), ("SID", "ran"),
                                                          ("ASR", "ran")]
    ev = events(out)
    starts = {e[0]: (float(e[2]), e[3]) for e in ev if e[1] == "start"}
    ends = {e[0]: float(e[2]) for e in ev if e[1] == "end"}
    assert set(starts) == {"PR", "IC", "SID", "ASR"}  # IC failed, the units after it still ran
    # never more than two at once, and two running units never share a GPU
    for name, (begin, gpu) in starts.items():
        running = [other for other, (b, g) in starts.items() if b <= begin < ends[other]]
        assert len(running) <= 2 and len({starts[r][1] for r in running}) == len(running), (name, running)
        assert gpu in ("7", "3")
    assert any(starts[b][0] < ends[a] for a in starts for b in starts if a != b)  # some ran at the same time
    assert any(t.endswith("start PR on GPU 7 (log " + str(out / "logs" / "PR.log") + ")")
               or t.endswith("start PR on GPU 3 (log " + str(out / "logs" / "PR.log") + ")") for t in said)
    assert any("end IC: FAILED (exit 1) in" in t for t in said)
    assert "[run_superb] IC: FAILED" in (out / "logs" / "IC.log").read_text()


def test_run_jobs_scores_once_names_the_failure_and_a_rerun_runs_only_it(fake_script, tmp_path, capsys):
    ckpt, out = tmp_path / "up.pt", tmp_path / "out"
    ckpt.write_bytes(b"x")
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "ER_FOLDS", "QBE_LAYERS")}
    env.update({"CUDA_VISIBLE_DEVICES": "", "ER_FOLDS": "fold1 fold2", "QUESST14_ROOT": str(tmp_path),
                "QBE_LAYERS": "0,1", "FAIL_ER": "1"})
    code = run_jobs(fake_script, str(ckpt), str(out), ["KS", "ER", "QbE"], 2, None, env)
    text = capsys.readouterr().out
    assert code == 1
    assert "5 units, 2 at a time on CPU" in text
    assert f"FAILED ER_fold1 (exit 1): {out / 'logs' / 'ER_fold1.log'}" in text
    assert f"FAILED ER_fold2 (exit 1): {out / 'logs' / 'ER_fold2.log'}" in text
    assert all(e[3] == "none" for e in events(out) if e[1] == "start")  # CPU: no GPU set
    assert (out / "score_calls").read_text() == "score KS ER QbE\n"  # once, after every unit
    del env["FAIL_ER"]
    (out / "events").unlink()
    assert run_jobs(fake_script, str(ckpt), str(out), ["KS", "ER", "QbE"], 2, None, env) == 0
    assert sorted(e[0] for e in events(out) if e[1] == "start") == ["ER_fold1", "ER_fold2"]  # only the failed
    text = capsys.readouterr().out
    assert "end KS: already complete" in text and "2 ran, 3 already complete, 0 failed" in text
    assert (out / "logs" / "ER_fold1.log").read_text().count("===== superb-all unit ER_fold1") == 2  # appended


def test_the_command_line_passes_jobs_to_the_scheduler(monkeypatch, tmp_path):
    seen = {}

    def fake_run_jobs(script, ckpt, out, tasks, jobs, gpus, env, slurm=None):
        seen.update(script=script.name, ckpt=ckpt, out=out, tasks=tasks, jobs=jobs, gpus=gpus, slurm=slurm)
        return 0

    import pruned_upstream.commands.superb_jobs as jobs_module

    monkeypatch.setattr(jobs_module, "run_jobs", fake_run_jobs)
    assert cli.main(["superb-all", "--jobs", "2", "--gpus", "0,1", "ck.pt", "out", "KS"]) == 0
    assert seen == {"script": "run_superb.sh", "ckpt": "ck.pt", "out": "out", "tasks": ["KS"], "jobs": 2,
                    "gpus": "0,1", "slurm": None}
    assert cli.main(["superb-all", "--jobs", "2", "ck.pt"]) == 1  # usage: one line, exit 1
    assert cli.main(["superb-all", "--slurm", "--jobs", "3", "--slurm-args", "--partition gpu -A lab", "--dry-run",
                     "ck.pt", "out", "ER"]) == 0
    assert seen["slurm"] == SlurmOptions(["--partition", "gpu", "-A", "lab"], None, True) and seen["jobs"] == 3
    assert cli.main(["superb-all", "--slurm", "--jobs", "3", "--slurm-args", "-p gpu --array=1", "ck", "out"]) == 1


# ---------------------------------------------------------------- the real script on small data

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run_superb.sh"
# one task, two ER folds, two QbE layers, ASV's training and its checkpoint's test: 6 units, about a minute
REAL_TASKS = ["KS", "ER", "QbE", "ASV"]
OUTPUTS = ("predict", "truth", ".stdlist.xml", "hyp", "result")  # what a unit predicts or concludes


def stdlist_terms(path: Path) -> set[tuple]:
    """QbE's detections as a set: s3prl's quesst14_dtw/expert.py appends DTW scores in `as_completed` order
    (a process pool), so the order of the XML's lists and terms changes from run to run, sequential or not."""
    import xml.etree.ElementTree as ET

    return {(tl.get("termid"), t.get("file"), t.get("score"), t.get("decision"))
            for tl in ET.parse(path).getroot() for t in tl}


def outputs(out: Path) -> dict[str, object]:
    """The prediction and result files under OUT's expdirs, by path relative to OUT (bytes; QbE: terms)."""
    return {str(p.relative_to(out)): stdlist_terms(p) if p.name.endswith(".stdlist.xml") else p.read_bytes()
            for p in sorted(out.rglob("*"))
            if p.is_file() and "logs" not in p.parts and any(k in p.name for k in OUTPUTS)}


@pytest.mark.slow
def test_jobs_2_equals_the_sequential_run_and_a_failed_unit_is_rerun_alone(tmp_path):
    import json
    import subprocess

    from s3prl_fixtures import make_tiny_wavlm

    from pruned_upstream.demo_superb import fork_server
    from pruned_upstream.superb_data.bundle import make_small_superb, run_env

    bundle = make_small_superb(tmp_path / "data", seed=0, steps=4)
    ckpt = make_tiny_wavlm(tmp_path / "tiny.pt")
    knobs = ("DRY_RUN", "STEPS_OVERRIDE", "QBE_LAYERS", "ER_FOLDS", "MODEL_NAME", "SUPERB_", "PRUNED_UPSTREAM",
             "PYTHON", "CUDA_VISIBLE_DEVICES")
    base = {k: v for k, v in os.environ.items() if not k.startswith(knobs)}
    seq, par = tmp_path / "seq" / "small", tmp_path / "par" / "small"
    times = {}
    with fork_server(tmp_path) as server:
        env = run_env(bundle, {"PYTHON": sys.executable, "ER_FOLDS": "fold1 fold2", "QBE_LAYERS": "0,2",
                               "CUDA_VISIBLE_DEVICES": "", "MODEL_NAME": "small",
                               "PRUNED_UPSTREAM": f"{sys.executable} -m pruned_upstream.commands.fork_client",
                               "PRUNED_UPSTREAM_FORK_SERVER": server}, base=base)
        start = time.perf_counter()
        proc = subprocess.run(["bash", str(SCRIPT), str(ckpt), str(seq), *REAL_TASKS], env=env, text=True,
                              capture_output=True, timeout=900)
        times["sequential"] = time.perf_counter() - start
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        # --jobs 2, plus SF whose data root is missing: it fails, the others complete and are scored
        broken = {**env, "SNIPS_ROOT": str(tmp_path / "no_such_snips")}
        cmd = [sys.executable, "-m", "pruned_upstream.cli", "superb-all", "--jobs", "2", str(ckpt), str(par)]
        start = time.perf_counter()
        first = subprocess.run([*cmd, *REAL_TASKS, "SF"], env=broken, text=True, capture_output=True, timeout=900)
        times["jobs_2"] = time.perf_counter() - start
        assert first.returncode == 1, first.stdout[-4000:] + first.stderr[-2000:]
        assert f"[superb-all] FAILED SF (exit 1): {par / 'logs' / 'SF.log'}" in first.stdout
        assert "7 units (and one per ASV checkpoint once ASV has trained), 2 at a time on CPU" in first.stdout
        assert "8 units in" in first.stdout and "7 ran, 0 already complete, 1 failed" in first.stdout
        assert "end ASV_states-4: ran" in first.stdout  # 4 steps: states-4.ckpt, tested as a unit of its own
        assert json.loads((par / "superb_score.json").read_text()) == json.loads((seq / "superb_score.json")
                                                                                    .read_text())
        ours, theirs = outputs(par), outputs(seq)
        for run, found in ((par, ours), (seq, theirs)):  # ASV: the test EER of each checkpoint
            found.update({str(p.relative_to(run)): re.findall(r"sv-voxceleb1/test-EER: \S+", p.read_text())
                          for p in run.glob("ASV/states-*/log.txt")})
        assert ours == theirs and len(ours) >= 10, sorted(set(ours) ^ set(theirs))
        assert len(ours["ASV/states-4/log.txt"]) == 1
        start = time.perf_counter()
        second = subprocess.run([*cmd, *REAL_TASKS, "SF"], env=env, text=True, capture_output=True, timeout=900)
        times["rerun"] = time.perf_counter() - start
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert "1 ran, 7 already complete, 0 failed" in second.stdout, second.stdout
    assert re.search(r"end SF: ran in", second.stdout)
    assert not re.search(r"end (KS|ER_\w+|QbE_\w+|ASV\S*): ran", second.stdout)
    [score] = json.loads((par / "superb_score.json").read_text())
    assert set(score["points"]) == {"KS", "ER", "QbE", "ASV", "SF"}
    print(f"\nwall seconds: sequential {times['sequential']:.1f}, --jobs 2 {times['jobs_2']:.1f} "
          f"(+ a failing SF unit), rerun of SF alone {times['rerun']:.1f}")


def test_logs_are_never_written_through_a_symlink(fake_script, tmp_path):
    ckpt, out, target = tmp_path / "up.pt", tmp_path / "out", tmp_path / "elsewhere"
    ckpt.write_bytes(b"x")
    target.mkdir()
    out.mkdir()
    (out / "logs").symlink_to(target)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    with pytest.raises(ValueError, match="symlink"):
        run_jobs(fake_script, str(ckpt), str(out), ["KS"], 1, None, env)
    (out / "logs").unlink()
    (out / "logs").mkdir()
    (out / "logs" / "KS.log").symlink_to(target / "victim")
    said = []
    assert run_jobs(fake_script, str(ckpt), str(out), ["KS"], 1, None, env,
                    say=lambda text, **_: said.append(text)) == 1
    assert not (target / "victim").exists() and any("FAILED KS" in t for t in said)


def test_asv_checkpoint_tests_are_units_once_its_training_is_done(fake_script, tmp_path, capsys):
    ckpt, out = tmp_path / "up.pt", tmp_path / "out"
    ckpt.write_bytes(b"x")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "ASV_TEST": "states-1"}  # the caller's value is not used
    assert run_jobs(fake_script, str(ckpt), str(out), ["ASV", "KS"], 2, None, env) == 0
    ev = events(out)
    starts = {e[0]: float(e[2]) for e in ev if e[1] == "start"}
    assert sorted(starts) == ["ASV", "ASV_states-20000", "ASV_states-40000", "KS"]  # multiples of 20000
    asv_end = next(float(e[2]) for e in ev if e[:2] == ["ASV", "end"])
    assert starts["ASV_states-20000"] >= asv_end and starts["ASV_states-40000"] >= asv_end
    assert re.search(r"4 units in [0-9.]+ s: 4 ran, 0 already complete, 0 failed", capsys.readouterr().out)
    (out / "events").unlink()
    assert run_jobs(fake_script, str(ckpt), str(out), ["ASV", "KS"], 2, None, env) == 0
    assert not (out / "events").exists()  # a rerun: every unit, the checkpoint tests included, is complete
    assert "0 ran, 4 already complete, 0 failed" in capsys.readouterr().out
    (out / "ASV" / "states-20000.ckpt").rename(out / "ASV" / "states-20001.ckpt")
    assert [u.name for u in asv_units(out / "ASV")] == ["ASV_states-40000"]
    (out / "ASV" / "states-40000.ckpt").unlink()
    assert [u.name for u in asv_units(out / "ASV")] == ["ASV_states-20001", "ASV_states-45000"]  # none: all
    assert asv_units(tmp_path / "missing") == []


def fake_slurm(tmp_path: Path, queued: str = "") -> dict:
    """A stand-in sbatch (records its arguments, prints ids 101, 102, ...) and squeue (prints ``queued``)."""
    bin_dir = tmp_path / ("bin_queued" if queued else "bin")
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sbatch").write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> "$SBATCH_CALLS"\n'
                                    'n=$(wc -l < "$SBATCH_CALLS"); echo "10$n;cluster"\n')
    (bin_dir / "squeue").write_text(f"#!/bin/sh\necho '{queued}'\n")
    for tool in ("sbatch", "squeue"):
        (bin_dir / tool).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_CALLS": str(tmp_path / "calls")}


TWO_CLASSES = """# a test table: ASV apart (2 CPUs, 30 min), every other task alike
ASV: {gpus: 0, cpus: 2, mem: 900M, time: "30:00"}
ER: {gpus: 1, cpus: 1, mem: 500M, time: "10:00"}
QbE: {gpus: 1, cpus: 1, mem: 500M, time: "10:00"}
score: {gpus: 0, cpus: 1, mem: 100M, time: "5:00"}
"""


def test_resources_table_reads_and_refuses(tmp_path):
    shipped = load_resources()
    assert set(shipped) == set(canonical_tasks([])) | {"score"}
    assert all(r.gpus == 1 and r.cpus >= 2 for task, r in shipped.items() if task != "score")
    assert shipped["PR"].cpus == 25 and shipped["QbE"].mem == "64G"  # pr.yaml's 24 workers + 1; QbE's features
    assert shipped["score"].sbatch_args() == ["--cpus-per-task=1", "--mem=4G", "--time=1:00:00"]
    table = tmp_path / "r.yaml"
    for bad, match in (('KS: {gpus: 1, cpus: 1, mem: 1G, time: 72:00:00}', "quoted"),  # YAML 1.1: an integer
                       ('KS: {gpus: 1, cpus: 0, mem: 1G, time: "1:00"}', "cpus"),
                       ('KS: {gpus: 1, cpus: 1, mem: 1 GB, time: "1:00"}', "mem"),
                       ('KS: {gpus: 1, cpus: 1, mem: 1G}', "exactly the keys"),
                       ("KS: &a {gpus: 1}\nIC: *a", "anchors"), ("- KS", "mapping")):
        table.write_text(bad)
        with pytest.raises(ValueError, match=match):
            load_resources(table)


def test_site_args_pass_through_and_ours_are_refused():
    assert site_args("--partition gpu -A 'my lab' --qos=high -Qp debug --hold --mail-type=END") == [
        "--partition", "gpu", "-A", "my lab", "--qos=high", "-Qp", "debug", "--hold", "--mail-type=END"]
    assert site_args("") == []
    for bad, match in (("--array=0-3", "--array"), ("-p gpu --arr=1", "--array"), ("--dep afterok:1", "--dependency"),
                       ("-o log", "--output"), ("-Qo log", "--output"), ("--export=NONE", "--export"),
                       ("--gres=gpu:2", "--gres"), ("-c 4", "--cpus-per-task"), ("--time=1:00", "--time"),
                       ("--wait", "--wait"), ("-p gpu extra.sh", "not an option"), ("-p", "needs a value"),
                       ("--hold x", "not an option")):
        with pytest.raises(ValueError, match=match):
            site_args(bad)


def test_slurm_submits_one_array_per_resource_class_then_the_score(fake_script, tmp_path, capsys):
    import subprocess

    ckpt, out = tmp_path / "up.pt", tmp_path / "o u't$(x)"
    ckpt.write_bytes(b"x")
    (tmp_path / "r.yaml").write_text(TWO_CLASSES)
    env = {**os.environ, **fake_slurm(tmp_path), "ER_FOLDS": "fold2 fold4", "QUESST14_ROOT": str(tmp_path),
           "QBE_LAYERS": "1"}
    options = SlurmOptions(site_args("-p debug --qos=normal"), str(tmp_path / "r.yaml"))
    assert run_jobs(fake_script, str(ckpt), str(out), ["QbE", "ER", "ASV"], 3, None, env, slurm=options) == 0
    asv, rest, score = (tmp_path / "calls").read_text().splitlines()
    units_sh, score_sh = out / "slurm" / "units.sh", out / "slurm" / "score.sh"
    assert asv == (f"--parsable -p debug --qos=normal --cpus-per-task=2 --mem=900M --time=30:00 --array=0-0%3 "
                   f"--job-name=superb-ASV --output={out}/slurm/slurm-%A_%a.out {units_sh} ASV")
    assert rest.startswith("--parsable -p debug --qos=normal --gres=gpu:1 --cpus-per-task=1 --mem=500M --time=10:00 "
                           "--array=0-2%3 --job-name=superb-ER+QbE ")
    assert rest.endswith(f"{units_sh} ER_fold2 ER_fold4 QbE_layer1")
    assert score.startswith("--parsable --dependency=afterany:101:102 -p debug --qos=normal --cpus-per-task=1 "
                            "--mem=100M --time=5:00 --job-name=superb-score ") and score.endswith(str(score_sh))
    assert (out / "slurm" / "jobs").read_text().split() == ["101", "102", "103"]
    text = capsys.readouterr().out
    assert "job array 102 (superb-ER+QbE; 3 units, 3 at a time;" in text and "array task 2: QbE_layer1" in text
    assert "score job 103" in text
    for k, unit in enumerate(["ER_fold2", "ER_fold4", "QbE_layer1"]):  # each array task runs its unit into its log
        proc = subprocess.run(["bash", str(units_sh), "ER_fold2", "ER_fold4", "QbE_layer1"],
                              env={**env, "SLURM_ARRAY_TASK_ID": str(k)})
        assert proc.returncode == 0
    assert [e[0] for e in events(out)] == ["ER_fold2", "ER_fold2", "ER_fold4", "ER_fold4", "QbE_layer1", "QbE_layer1"]
    assert "[run_superb] ER: start" in (out / "logs" / "ER_fold4.log").read_text()
    assert subprocess.run(["bash", str(units_sh), "ASV"], env={**env, "SLURM_ARRAY_TASK_ID": "1"}).returncode == 2
    assert subprocess.run(["bash", str(score_sh)], env=env).returncode == 0
    assert (out / "score_calls").read_text() == "score QbE ER ASV\n"
    assert not (tmp_path / "x").exists()  # the $(x) in OUT_DIR stayed text

    # the same command again while job 102 is still queued: refused, nothing submitted
    queued = {**env, **fake_slurm(tmp_path, queued="77\n102")}
    with pytest.raises(RuntimeError, match="jobs 102 of the previous submission"):
        run_jobs(fake_script, str(ckpt), str(out), ["QbE", "ER", "ASV"], 3, None, queued, slurm=options)
    assert len((tmp_path / "calls").read_text().splitlines()) == 3
    # once it has ended: only ASV (never run here) is submitted again; the complete ER and QbE units are not
    assert run_jobs(fake_script, str(ckpt), str(out), ["QbE", "ER", "ASV"], 3, None, env, slurm=options) == 0
    again = (tmp_path / "calls").read_text().splitlines()[3:]
    assert len(again) == 2 and again[0].endswith(f"{units_sh} ASV") and "--dependency=afterany:104 " in again[1]
    text = capsys.readouterr().out
    assert "ER_fold2: complete, not submitted again" in text and "QbE_layer1: complete, not submitted again" in text


def test_slurm_dry_run_prints_the_scripts_and_the_sbatch_lines_and_submits_nothing(fake_script, tmp_path, capsys):
    ckpt, out = tmp_path / "up.pt", tmp_path / "out"
    ckpt.write_bytes(b"x")
    env = {**os.environ, **fake_slurm(tmp_path), "ER_FOLDS": "fold1"}
    options = SlurmOptions(["--account=lab"], None, dry_run=True)  # the shipped table: one GPU per unit
    assert run_jobs(fake_script, str(ckpt), str(out), ["KS", "ER"], 2, None, env, slurm=options) == 0
    text = capsys.readouterr().out
    assert not (tmp_path / "calls").exists() and not out.exists()  # nothing submitted, nothing written
    assert f"{out}/slurm/units.sh would hold:" in text and "    ER_fold1) export ER_FOLDS=fold1 SUPERB_PART=tasks" in text
    assert ("A1=$(sbatch --parsable --account=lab --gres=gpu:1 --cpus-per-task=9 --mem=16G "
            f"--time=12:00:00 --array=0-0%2 --job-name=superb-KS --output={out}/slurm/slurm-%A_%a.out "
            f"{out}/slurm/units.sh KS)  # superb-KS") in text
    assert "A2=$(sbatch --parsable --account=lab --gres=gpu:1 --cpus-per-task=7 --mem=16G --time=8:00:00" in text
    assert "sbatch --parsable --dependency=afterany:$A1:$A2 --account=lab --cpus-per-task=1" in text
