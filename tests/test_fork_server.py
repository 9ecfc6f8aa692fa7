"""The fork server runs `pruned-upstream` commands with the client's cwd, environment, streams and exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

CSV = "model,PR,KS,IC,SID,ER,ASR,QbE,SF-F1,SF-CER,ASV,SD\nm,5,95,98,80,65,6,7,88,25,5,6\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("fork") / "socket"
    proc = subprocess.Popen([sys.executable, "-m", "pruned_upstream.commands.fork_server", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield str(path)
    proc.terminate()
    proc.wait(timeout=30)


def client(server, cwd, *argv, **env):
    full = {**os.environ, "PRUNED_UPSTREAM_FORK_SERVER": server, **env}
    return subprocess.run([sys.executable, "-m", "pruned_upstream.commands.fork_client", *argv], cwd=cwd,
                          env=full, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)


def test_a_command_runs_in_the_clients_directory_with_its_output_and_status(server, tmp_path):
    (tmp_path / "results.csv").write_text(CSV)
    start = time.perf_counter()
    done = client(server, tmp_path, "score", "results.csv", "--json")  # a relative path: the client's cwd
    assert time.perf_counter() - start < 5  # no torch import in the client or the child
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["model"] == "m" and not row["partial"]
    failed = client(server, tmp_path, "score", "missing.csv")
    assert failed.returncode == 1 and "missing.csv does not exist" in failed.stderr


def test_the_clients_environment_reaches_the_command(server, tmp_path):
    gone = client(server, tmp_path, "superb-step", "dscore-root", DSCORE_ROOT="")
    assert gone.returncode == 2 and "DSCORE_ROOT is not set" in gone.stderr
    there = tmp_path / "dscore"
    there.mkdir()
    (there / "score.py").write_text("")
    found = client(server, tmp_path, "superb-step", "dscore-root", DSCORE_ROOT=str(there))
    assert found.returncode == 0 and found.stdout.strip() == str(there)


def test_without_a_server_the_client_runs_the_command_itself(tmp_path):
    (tmp_path / "results.csv").write_text(CSV)
    env = {**os.environ, "PRUNED_UPSTREAM_FORK_SERVER": str(tmp_path / "nobody-listens")}
    done = subprocess.run([sys.executable, "-m", "pruned_upstream.commands.fork_client", "score", "results.csv"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and done.stdout.splitlines()[1].split()[0] == "model"
