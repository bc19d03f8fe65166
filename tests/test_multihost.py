"""Multi-host training and the uniqueness study, proven with two processes on this machine (one CPU
device each, joined on 127.0.0.1 over gloo) beside one process with two devices."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, random_voices

TRAIN = ["train", "--config", "test", "--checkpoint-every", "4", "--log-every", "1", "--eval-every", "4"]
DUPLICATES = ["duplicates", "--samples", "200", "--seed", "3", "--json"]
HEARTBEAT_S = 5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, devices, out, cluster=None):
    """`neuraldx7 ARGS` in a new process with `devices` CPU devices; stdout and stderr to `out`.*"""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen([sys.executable, "-m", "neuraldx7_jax", *args, *(cluster or [])], env=env,
                            stdout=open(f"{out}.out", "w"), stderr=open(f"{out}.err", "w"))


def start_two(args, out):
    """Two processes of one device each, joined through a coordinator on a free local port."""
    cluster = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2",
               "--heartbeat-timeout", str(HEARTBEAT_S)]
    return [start(args, 1, f"{out}{i}", [*cluster, "--process-id", str(i)]) for i in range(2)]


def finish(procs, out, timeout=240):
    for i, p in enumerate(procs):
        assert p.wait(timeout) == 0, open(f"{out}{i if len(procs) > 1 else ''}.err").read()[-3000:]


def records(workdir):
    return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def assert_same_records(a, b):
    assert [(r["step"], r["split"]) for r in a] == [(r["step"], r["split"]) for r in b]
    for x, y in zip(a, b):
        for k, v in x.items():
            if k != "steps_per_s":
                assert y[k] == pytest.approx(v, rel=1e-4), (x["step"], x["split"], k)


@pytest.mark.parametrize("flags, message", [
    (["--coordinator", "127.0.0.1:1234"], "go together; missing --num-processes, --process-id"),
    (["--coordinator", "127.0.0.1", "--num-processes", "2", "--process-id", "0"], "must be HOST:PORT"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "--process-id must be in 0..1"),
    (["--distributed", "--heartbeat-timeout", "0"], "--heartbeat-timeout must be at least 1 second")])
def test_bad_process_options_are_one_line_errors(tmp_path, capsys, flags, message):
    from neuraldx7_jax import cli

    assert cli.main(["duplicates", "--samples", "32", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.slow
def test_two_processes_train_resume_and_count_as_one_process_with_two_devices(tmp_path):
    data = tmp_path / "data.npz"
    np.savez(data, train=random_voices(64, 0), validation=random_voices(16, 1))
    one, two = tmp_path / "one", tmp_path / "two"
    common = [*TRAIN, "--data", str(data), "--steps", "12"]
    reference = start([*common, "--workdir", str(one)], 2, tmp_path / "ref")
    first = start_two([*common, "--workdir", str(two)], tmp_path / "first")
    # process 1 is lost after the step-8 checkpoint: process 0 stops with an error naming it
    deadline = time.monotonic() + 240
    while not (two / "checkpoints" / "8").is_dir() and first[1].poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (two / "checkpoints" / "8").is_dir(), open(tmp_path / "first1.err").read()[-3000:]
    first[1].send_signal(signal.SIGKILL)
    lost = time.monotonic()
    code = first[0].wait(HEARTBEAT_S + 60)
    err = open(tmp_path / "first0.err").read()
    assert code != 0 and time.monotonic() - lost < HEARTBEAT_S + 60
    assert "stopped sending heartbeats" in err and "\n1\n" in err, err[-3000:]
    finish([reference], tmp_path / "ref")
    # both started again: the run resumes from its last checkpoint and ends as the reference did
    finish(start_two([*common, "--workdir", str(two)], tmp_path / "again"), tmp_path / "again")
    assert_same_records(records(one), records(two))
    assert sorted(int(p.name) for p in (two / "checkpoints").iterdir() if p.name.isdigit())[-1] == 12
    assert (two / "checkpoints" / "features.json").is_file()
    validation, last = json.loads(open(tmp_path / "again0.out").read().splitlines()[-1])["validation"], records(one)[-1]
    assert last["split"] == "validation" and validation == pytest.approx({k: last[k] for k in validation}, rel=1e-4)
    assert "validation" not in open(tmp_path / "again1.out").read()  # printed once

    # the uniqueness study: each process draws its share; process 0 prints the merged figures
    alone = start([*DUPLICATES, "--checkpoint", str(one)], 2, tmp_path / "dup")
    pair = start_two([*DUPLICATES, "--checkpoint", str(one)], tmp_path / "dups")
    finish([alone], tmp_path / "dup")
    finish(pair, tmp_path / "dups")
    timing = ("throughput", "seconds", "compile_seconds")
    a = {k: v for k, v in json.loads(open(tmp_path / "dup.out").read()).items() if k not in timing}
    b = {k: v for k, v in json.loads(open(tmp_path / "dups0.out").read().splitlines()[-1]).items() if k not in timing}
    assert a == b and a["samples"] == 200 and a["devices"] == 2
    assert "{" not in open(tmp_path / "dups1.out").read()
