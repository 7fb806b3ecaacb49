"""Faults and bad input (issue 16): a full disk, damaged run files and checkpoints, stale
temporaries of killed writes, out-of-range values and records that look valid but are
not. Each ends in one clear line and a non-zero exit, with nothing half-written that a
later run trusts, or, where the run stays meaningful, a warning and null."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from safetensors import SafetensorError

from blue_cli import faults
from blue_cli.runs.checkpoint import CHECKPOINT
from tests.e2e.conftest import run_blue, run_blue_process

TINY = [
    "model=tiny-gpt2",
    "num_edits=4",
    "batch_size=2",
    "method.target.steps=2",
    "stats.samples=40",
    "eval.generation=false",
    "eval.wild=false",  # the evaluation in the wild has tests of its own
    "eval.perplexity_tokens=0",  # held-out perplexity too (tests/unit/test_perplexity.py, test_long_horizon*)
    "eval_every=1",
]
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp")) if folder.exists() else []


def folder_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_one_line(proc: subprocess.CompletedProcess, start: str) -> str:
    """Exit 2, no traceback, exactly one line on stderr, starting with ``start``; returns it."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith(start), lines
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished TINY run; tests damage copies of it, never the run itself."""
    root = tmp_path_factory.mktemp("finished")
    proc = run_blue(["edit", *TINY, f"hydra.run.dir={root / 'run'}"], cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


@pytest.fixture
def fault(monkeypatch):
    """Set BLUE_FAULT for an in-process run, counting passes from zero."""

    def set_fault(spec: str) -> None:
        monkeypatch.setattr(faults, "_HITS", {})
        monkeypatch.setenv("BLUE_FAULT", spec)

    return set_fault


# -- 1. a full disk ---------------------------------------------------------------------------


def test_a_full_run_folder_at_the_summary_is_one_line_and_writes_no_summary(tmp_path, fault):
    run_dir = tmp_path / "run"
    fault("write:summary.json:enospc")
    proc = run_blue(["edit", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    first, second = error_lines(proc)
    assert first.startswith(f"error: disk full writing '{run_dir / 'summary.json'}' (the write needs about ")
    assert " free there): free some space there and run again" in first
    assert second == f"run folder {run_dir} kept"
    assert not (run_dir / "summary.json").exists() and temporaries(run_dir) == []
    assert "unexpected failure" not in (run_dir / "blue.log").read_text()


def test_a_full_disk_at_the_second_checkpoint_keeps_the_first(tmp_path, fault):
    run_dir = tmp_path / "run"
    fault(f"write:{CHECKPOINT}@2:enospc")
    proc = run_blue(["edit", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert error_lines(proc)[0].startswith(f"error: disk full writing '{run_dir / CHECKPOINT}'")
    from blue_cli.runs.checkpoint import saved_batches

    assert saved_batches(run_dir) == (1, 2)  # the first batch's checkpoint, whole
    assert temporaries(run_dir) == []


def test_a_full_statistics_cache_names_the_entry_and_blue_cache(tmp_path, monkeypatch):
    """safetensors reports a full disk as its own SafetensorError; the run made its folder
    and saved no batch, so the folder goes too."""
    from blue_cli.editing.statistics import entries

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)
        raise SafetensorError(SAFETENSORS_FULL)

    monkeypatch.setattr(entries, "save_file", full)
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    proc = run_blue(["edit", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env_extra={"BLUE_CACHE": str(cache)})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    first, second = error_lines(proc)
    assert first.startswith(f"error: disk full writing '{cache / 'stats'}") and "_mom2_40.safetensors'" in first
    assert "(the write needs about 1.0 MB, " in first  # C of tiny-gpt2: 512 x 512 float32
    assert first.endswith("or set BLUE_CACHE to a folder on a larger disk")
    assert second == f"run folder {run_dir} removed (no batch was saved)"
    assert temporaries(cache) == []


# -- 2. a damaged checkpoint ------------------------------------------------------------------


def _header_length(data: bytes) -> int:
    return int.from_bytes(data[:8], "little")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_tensor_bit(path: Path) -> None:
    """The lowest bit of a residual's second byte: a change of ~1e-5, below what a replay
    would call a divergence, so only a checksum can tell."""
    data = bytearray(path.read_bytes())
    data[8 + _header_length(data) + 1] ^= 0x01
    path.write_bytes(bytes(data))


def change_a_fingerprint_digit(path: Path) -> None:
    """One digit of the recorded fingerprints in the header, the file's length unchanged."""
    data = bytearray(path.read_bytes())
    at = data.index(b"fingerprints", 8, 8 + _header_length(data))
    while not chr(data[at]).isdigit() or chr(data[at]) == "0":
        at += 1
    data[at] = ord("1") if data[at] != ord("1") else ord("2")
    path.write_bytes(bytes(data))


DAMAGE = {"truncated": truncate, "tensor bit": flip_tensor_bit, "metadata digit": change_a_fingerprint_digit}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_on_resume_is_one_line_and_changes_nothing(finished, tmp_path, damage):
    run_dir = copy_run(finished, tmp_path)
    DAMAGE[damage](run_dir / CHECKPOINT)
    before = folder_hashes(run_dir)
    proc = run_blue(["resume", str(run_dir)], cwd=tmp_path)
    line = assert_one_line(proc, f"error: checkpoint '{run_dir / CHECKPOINT}' is damaged (")
    assert line.endswith(
        "start the run over with resume=false (the damaged run's files are set aside), or remove the file"
    )
    assert folder_hashes(run_dir) == before


@pytest.mark.parametrize("damage", ["truncated", "tensor bit"])
def test_a_damaged_checkpoint_on_export_is_one_line_and_exports_nothing(finished, tmp_path, damage):
    run_dir = copy_run(finished, tmp_path)
    DAMAGE[damage](run_dir / CHECKPOINT)
    proc = run_blue(["export", str(run_dir), "--out", str(tmp_path / "hf")], cwd=tmp_path)
    assert_one_line(proc, f"error: checkpoint '{run_dir / CHECKPOINT}' is damaged (")
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf.*"))


def test_a_truncated_checkpoint_in_analyze_is_one_line(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    truncate(run_dir / CHECKPOINT)
    proc = run_blue(["analyze", "--run", str(run_dir), "--records", "2"], cwd=tmp_path)
    assert_one_line(proc, f"error: checkpoint '{run_dir / CHECKPOINT}' is damaged (unreadable: ")


# -- 3. damaged run files ---------------------------------------------------------------------


def cut_short(path: Path) -> None:
    """The file cut in the middle of its last line, as a copy that ran out of room."""
    text = path.read_text()
    path.write_text(text[: len(text.rstrip()) - 5])


def not_text(path: Path) -> None:
    path.write_bytes(b"\xff\xfe\x00garbage")


def not_yaml(path: Path) -> None:
    path.write_text("model: [tiny-gpt2\nmethod: {name: memit\n")


COMMANDS = {
    "report": lambda run, other, tmp: ["report", str(run)],
    "compare": lambda run, other, tmp: ["report", str(run), str(other), "--format", "csv"],
    "export": lambda run, other, tmp: ["export", str(run), "--out", str(tmp / "hf")],
    "analyze": lambda run, other, tmp: ["analyze", "--run", str(run), "--records", "2"],
    "resume": lambda run, other, tmp: ["resume", str(run)],
}


@pytest.mark.parametrize(
    "command,name,damage",
    [
        ("report", "summary.json", cut_short),
        ("report", "summary.json", not_text),
        ("report", "batches.jsonl", cut_short),
        ("compare", "summary.json", cut_short),
        ("compare", "evals.jsonl", cut_short),
        ("compare", "config.yaml", not_yaml),
        ("export", "config.yaml", not_yaml),
        ("analyze", "config.yaml", not_text),
        ("resume", "evals.jsonl", cut_short),
    ],
)
def test_a_damaged_run_file_is_one_line_naming_it(finished, tmp_path, command, name, damage):
    run_dir = copy_run(finished, tmp_path)
    damage(run_dir / name)
    before = folder_hashes(run_dir)
    proc = run_blue(COMMANDS[command](run_dir, finished, tmp_path), cwd=tmp_path)
    line = assert_one_line(proc, f"error: run file '{run_dir / name}' is damaged (")
    if name == "evals.jsonl":
        assert line.endswith(f"remove it, and blue resume {run_dir} evaluates its points again")
    else:
        assert line.endswith(f"blue resume {run_dir} writes it again")
    assert folder_hashes(run_dir) == before
    assert not (tmp_path / "hf").exists()


def test_analyze_and_export_take_the_batches_from_the_checkpoint_and_write_nothing_in_the_run(finished, tmp_path):
    """batches.jsonl is derived from the checkpoint: commands that only read a run folder
    neither trust a damaged copy nor rewrite it (they do not hold the folder's lock)."""
    run_dir = copy_run(finished, tmp_path)
    cut_short(run_dir / "batches.jsonl")
    before = folder_hashes(run_dir)
    proc = run_blue(["analyze", "--run", str(run_dir), "--records", "2", "--out", str(tmp_path / "a")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "a" / "analysis.json").read_text())["run_batches"]["batches"] == 2
    proc = run_blue(["export", str(run_dir), "--out", str(tmp_path / "hf")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert folder_hashes(run_dir) == before


def test_a_resume_after_removing_a_damaged_evals_file_evaluates_its_points_again(finished, tmp_path):
    """What the message advises works: the curve comes back as the run wrote it."""
    run_dir = copy_run(finished, tmp_path)
    cut_short(run_dir / "evals.jsonl")
    (run_dir / "evals.jsonl").unlink()
    proc = run_blue(["resume", str(run_dir)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "evals.jsonl").read_text() == (finished / "evals.jsonl").read_text()


# -- 4. temp files of killed writes -------------------------------------------------------------


def killed(args: list[str], cwd: Path, point: str, env_extra: dict | None = None) -> None:
    """``blue ARGS`` in a new process, SIGKILLed at fault ``point`` (faults.py)."""
    proc = run_blue_process(args, cwd=cwd, env_extra={**(env_extra or {}), "BLUE_FAULT": point})
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-2000:])


def test_a_killed_statistics_write_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    """Killed with layer 1's entry written to its temp file, before the rename (tiny-gpt2
    under strategy=blue writes layers 1 and 3); the next pass takes the entry's lock and
    removes it, then writes the entry."""
    cache = tmp_path / "cache"
    args = ["stats", "model=tiny-gpt2", "strategy=blue", "stats.samples=40"]
    killed(args, tmp_path, "write:layer1_mom2_40.safetensors", {"BLUE_CACHE": str(cache)})
    [stale] = temporaries(cache)
    assert stale.name.startswith(".layer1_mom2_40.safetensors.")
    proc = run_blue(args, cwd=tmp_path, env_extra={"BLUE_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert temporaries(cache) == []
    assert sorted(p.name for p in cache.rglob("*_mom2_40.safetensors")) == [
        "layer1_mom2_40.safetensors",
        "layer3_mom2_40.safetensors",
    ]


def test_a_killed_run_file_write_leaves_a_temporary_that_the_resume_removes(tmp_path):
    run_dir = tmp_path / "run"
    killed(["edit", *TINY, f"hydra.run.dir={run_dir}"], tmp_path, "write:summary.json")
    [stale] = temporaries(run_dir)
    assert stale.name.startswith(".summary.json.") and not (run_dir / "summary.json").exists()
    proc = run_blue(["resume", str(run_dir)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert temporaries(run_dir) == [] and (run_dir / "summary.json").is_file()


# -- 5. out-of-range seeds, a lock file that is not one ---------------------------------------


@pytest.mark.parametrize("seed", [2**64, 18446744073709551617, -(2**63) - 1])
def test_a_seed_outside_the_range_torch_accepts_is_one_line_before_any_folder(tmp_path, seed):
    run_dir = tmp_path / "run"
    proc = run_blue(["edit", *TINY, f"seed={seed}", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    line = assert_one_line(proc, "error: seed must be in -9223372036854775808..18446744073709551615 ")
    assert line.endswith(f"(the range torch.manual_seed accepts), got {seed}")
    assert not run_dir.exists()


@pytest.mark.parametrize("seed", [2**64 - 1, -(2**63)])
def test_the_ends_of_the_seed_range_seed_torch(seed):
    from blue_cli.config.overrides import compose_config
    from blue_cli.editing.session import seed_everything

    compose_config(["model=tiny-gpt2", f"seed={seed}"])  # passes the checks
    seed_everything(seed)


@pytest.mark.parametrize("target", ["missing", "file"])
def test_a_symlinked_lock_file_is_one_line_naming_it(tmp_path, target):
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run_dir.mkdir()
    if target == "file":
        elsewhere.write_text("not blue's\n")
    (run_dir / ".blue.lock").symlink_to(elsewhere)
    proc = run_blue(["edit", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert_one_line(
        proc,
        f"error: cannot lock run folder '{run_dir}': its lock file '{run_dir / '.blue.lock'}' is a symbolic link; "
        "blue makes it as a plain empty file: remove it and run again",
    )
    assert sorted(p.name for p in run_dir.iterdir()) == [".blue.lock"]
    assert elsewhere.read_text() == "not blue's\n" if target == "file" else not elsewhere.exists()


# -- 6. values and records accepted silently before --------------------------------------------


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["method.target.kl_factor=nan"], "method.target.kl_factor must be >= 0 and finite, got nan"),
        (["method.target.weight_decay=-0.5"], "method.target.weight_decay must be >= 0 and finite, got -0.5"),
        (["method.target.early_stop_loss=inf"], "method.target.early_stop_loss must be >= 0 and finite, got inf"),
        (["method.target.memory_budget_gb=0"], "method.target.memory_budget_gb must be positive and finite, got 0.0"),
        (
            ["method.cov_weight=1e308"],
            "method.cov_weight must be at most 1e+10, got 1e+308: published settings use 1e3-2e4, and far above "
            "that cov_weight*C swamps the edit's keys so that every edit is a no-op",
        ),
        (["method=alphaedit", "method.l2=nan"], "method.l2 must be finite, got nan"),
    ],
)
def test_a_method_float_out_of_range_is_one_line_before_any_folder(tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    proc = run_blue(["edit", *TINY, *overrides, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert assert_one_line(proc, "error: ") == f"error: {message}"
    assert not run_dir.exists()


def test_the_largest_cov_weight_allowed_still_runs_the_checks():
    from blue_cli.config.overrides import compose_config

    assert compose_config(["model=tiny-gpt2", "method.cov_weight=1e10"]).method.cov_weight == 1e10


def counterfact_file(tmp_path: Path, change) -> Path:
    from blue_cli.datasets.counterfact.records import BUNDLED_PATH

    records = json.loads(BUNDLED_PATH.read_text())[:4]
    for index, record in enumerate(records):
        change(index, record)
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(records))
    return path


def _two_placeholders(index, record):
    if index == 1:
        record["requested_rewrite"]["prompt"] = "{} was made by {}"


def _same_targets(index, record):
    if index == 2:
        record["requested_rewrite"]["target_new"] = dict(record["requested_rewrite"]["target_true"])


@pytest.mark.parametrize(
    "change,problem",
    [
        (_two_placeholders, "record 1: requested_rewrite.prompt '{} was made by {}' has 2 '{}' placeholders"),
        (_same_targets, "record 2: requested_rewrite.target_new.str equals target_true.str ('football')"),
    ],
)
def test_a_counterfact_record_that_would_measure_nothing_is_refused_naming_it(tmp_path, change, problem):
    path, run_dir = counterfact_file(tmp_path, change), tmp_path / "run"
    proc = run_blue(["edit", *TINY, f"dataset.path={path}", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    first, second = error_lines(proc)
    assert first.startswith(f"error: {path}: {problem}")
    assert second == f"run folder {run_dir} removed (no batch was saved)"


def _cases(run_dir: Path) -> list[dict]:

    return [json.loads(line) for line in (run_dir / "cases.jsonl").read_text().splitlines()]


def test_records_without_paraphrases_have_a_null_rate_and_a_warning(tmp_path):
    """Two of four records have no paraphrases: theirs is null, the run's is the mean over the
    other two, with the count; one warning line says so at the start."""

    path = counterfact_file(tmp_path, lambda i, r: r.update(paraphrase_prompts=[]) if i in (0, 2) else None)
    run_dir = tmp_path / "run"
    proc = run_blue(["edit", *TINY, f"dataset.path={path}", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning = [line for line in error_lines(proc) if line.startswith("WARNING:")]
    assert warning == [
        "WARNING: 2 of 4 records of dataset 'counterfact' have no paraphrase_prompts (first: case_id "
        f"{_cases(run_dir)[0]['case_id']}): their generalization is null, and the run's is the mean over the other 2"
    ]
    cases = _cases(run_dir)
    assert [c["generalization"] is None for c in cases] == [True, False, True, False]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["generalization"] == (cases[1]["generalization"] + cases[3]["generalization"]) / 2
    assert summary["generalization_cases_without"] == 2 and "pre_generalization_cases_without" not in summary
    assert "generalization (2 cases without)" in proc.stdout


def test_a_rate_no_record_can_have_is_null_not_zero_or_nan(tmp_path):

    path = counterfact_file(tmp_path, lambda i, r: r.update(paraphrase_prompts=[]))
    run_dir = tmp_path / "run"
    proc = run_blue(["edit", *TINY, f"dataset.path={path}", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "their generalization is null, and the run's is null too" in proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["generalization"] is None and summary["pre_generalization"] is None
    assert summary["generalization_cases_without"] == 4
    [row] = [line for line in proc.stdout.splitlines() if "generalization (" in line]
    assert row.split("│")[2].strip() == row.split("│")[3].strip() == "-"
    assert "nan" not in proc.stdout
