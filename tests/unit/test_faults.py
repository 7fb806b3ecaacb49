"""Fault points: a kill, a Ctrl-C or a hold at the n-th pass of a named point."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest

from blue_cli import faults
from blue_cli.faults import fault_point, parse_fault


@pytest.mark.parametrize(
    "spec,parsed",
    [
        ("batch", ("batch", 1, "kill")),
        ("batch@3", ("batch", 3, "kill")),
        ("batch:interrupt", ("batch", 1, "interrupt")),
        ("write:summary.json", ("write:summary.json", 1, "kill")),
        ("write:checkpoint.safetensors@2:interrupt", ("write:checkpoint.safetensors", 2, "interrupt")),
        ("eval:hold=/tmp/x", ("eval", 1, "hold=/tmp/x")),
        ("target@7:hold=/tmp/a:b", ("target", 7, "hold=/tmp/a:b")),
        ("write:summary.json:enospc", ("write:summary.json", 1, "enospc")),
    ],
)
def test_specs_parse(spec, parsed):
    assert parse_fault(spec) == parsed


def test_interrupt_lands_on_the_chosen_pass_only(monkeypatch):
    monkeypatch.setattr(faults, "_HITS", {})
    monkeypatch.setenv("BLUE_FAULT", "batch@3:interrupt")
    fault_point("batch")
    fault_point("eval")  # other points pass freely and are not counted
    fault_point("batch")
    with pytest.raises(KeyboardInterrupt):
        fault_point("batch")
    fault_point("batch")  # the fourth pass: nothing


def test_enospc_is_a_full_disk_at_that_point(monkeypatch):
    import errno

    monkeypatch.setattr(faults, "_HITS", {})
    monkeypatch.setenv("BLUE_FAULT", "write:cases.jsonl:enospc")
    fault_point("write:summary.json")
    with pytest.raises(OSError) as info:
        fault_point("write:cases.jsonl")
    assert info.value.errno == errno.ENOSPC


def test_unset_does_nothing(monkeypatch):
    monkeypatch.delenv("BLUE_FAULT", raising=False)
    monkeypatch.setattr(faults, "_HITS", {})
    for _ in range(3):
        fault_point("batch")
    assert faults._HITS == {}


def test_hold_announces_itself_and_waits_for_the_release(tmp_path, monkeypatch):
    release = tmp_path / "go"
    monkeypatch.setattr(faults, "_HITS", {})
    monkeypatch.setenv("BLUE_FAULT", f"eval:hold={release}")
    passed = threading.Event()

    def worker():
        fault_point("eval")
        passed.set()

    thread = threading.Thread(target=worker)
    thread.start()
    held = tmp_path / "go.held"
    while not held.exists():  # the worker announces the hold with this file
        thread.join(0.01)
    assert not passed.is_set()
    release.touch()
    thread.join(60)
    assert passed.is_set()


def test_kill_is_sigkill(tmp_path):
    code = "from blue_cli.faults import fault_point\nfault_point('stats')\nfault_point('stats')\nprint('survived')"
    proc = subprocess.run(
        [sys.executable, "-c", code], env={"BLUE_FAULT": "stats@2", "PATH": ""}, capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL and "survived" not in proc.stdout
