"""Run folders you can trust (issue 8): refused resumes touch nothing, one run per folder,
failed starts leave nothing behind, bad input is one line, kill -9 resumes bit-identically,
and parallel sweep jobs compute each statistics entry once."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from blue_cli.config.overrides import validate_overrides
from blue_cli.config.schema import group_choices
from blue_cli.datasets.counterfact.records import BUNDLED_PATH, load_counterfact
from blue_cli.datasets.files import MAX_TEXT_CHARS
from blue_cli.errors import ConfigError, DataError, NumericalError
from blue_cli.runs.checkpoint import CHECKPOINT
from tests.conftest import counting_server
from tests.e2e.conftest import blue_exe, run_blue, run_blue_process

TINY = [
    "model=tiny-gpt2",
    "num_edits=8",
    "batch_size=2",
    "method.target.steps=3",
    "stats.samples=40",
    "eval.generation=false",
    "eval.wild=false",  # the evaluation in the wild has tests of its own
    "eval.perplexity_tokens=0",  # held-out perplexity too (tests/unit/test_perplexity.py, test_long_horizon*)
]


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str, code: int = 2) -> None:
    """One red error line, at most one more on what became of the run folder, nothing else."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:], proc.stdout[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = error_lines(proc)
    assert lines and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("run folder ")), proc.stderr


def folder_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_files(root: Path) -> list[Path]:
    """Files anywhere under ``root`` (a failed start may leave empty date folders, never files)."""
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished tiny run (its folder must never be changed by the tests that share it)."""
    root = tmp_path_factory.mktemp("finished")
    run_dir = root / "run"
    proc = run_blue(["edit", *TINY, f"hydra.run.dir={run_dir}"], cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SimpleNamespace(dir=run_dir, stdout=proc.stdout)


# -- 1. resume checked before anything is written ------------------------------------------


def test_refused_resume_changes_no_file_of_the_finished_run(finished_run, tmp_path):
    before = folder_hashes(finished_run.dir)
    proc = run_blue(["edit", *TINY, "seed=1", f"hydra.run.dir={finished_run.dir}"], cwd=tmp_path)
    assert_one_line_error(proc, "holds a checkpoint of a different config")
    assert str(finished_run.dir) in proc.stderr
    assert folder_hashes(finished_run.dir) == before


def test_run_folder_path_is_printed_at_start_and_end(finished_run):
    lines = [line for line in finished_run.stdout.splitlines() if line.strip()]
    assert lines[0] == f"run folder: {finished_run.dir}"
    assert lines[-1] == f"run folder: {finished_run.dir}"


# -- 3. failed runs -------------------------------------------------------------------------


def test_failed_run_logs_the_error_and_keeps_a_folder_it_did_not_create(finished_run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run.dir, run_dir)
    summary = (run_dir / "summary.json").read_bytes()
    proc = run_blue(
        ["edit", *TINY, "resume=false", "dataset.path=/nonexistent/cf.json", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "/nonexistent/cf.json")
    log_errors = [line for line in (run_dir / "blue.log").read_text().splitlines() if "[ERROR]" in line]
    assert len(log_errors) == 1 and "error: " in log_errors[0] and "/nonexistent/cf.json" in log_errors[0]
    assert (run_dir / "summary.json").read_bytes() == summary
    assert error_lines(proc)[1] == f"run folder {run_dir} kept"


def test_failed_start_removes_the_run_folder_it_created(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_blue(["edit", *TINY, "dataset.path=/nonexistent/cf.json", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert_one_line_error(proc, "/nonexistent/cf.json")
    assert not run_dir.exists()
    assert error_lines(proc)[1] == f"run folder {run_dir} removed (no batch was saved)"
    default = run_blue(["edit", *TINY, "dataset.path=/nonexistent/cf.json"], cwd=tmp_path)
    assert_one_line_error(default, "/nonexistent/cf.json")
    assert run_files(tmp_path / "outputs") == []


def _job(tmp_path, monkeypatch, failure: BaseException, write: tuple[str, ...] = ()):
    """Run the CLI's Hydra job body in-process with a runner that writes ``write`` then raises."""
    import hydra.core.hydra_config

    import blue_cli.runs.runner
    from blue_cli.cli.commands import _hydra_job

    run_dir = tmp_path / "run"
    monkeypatch.setattr(
        hydra.core.hydra_config.HydraConfig,
        "get",
        staticmethod(lambda: SimpleNamespace(runtime=SimpleNamespace(output_dir=str(run_dir)))),
    )

    def failing_run(cfg, folder, progress=None):
        for name in write:
            (Path(folder) / name).write_text("x")
        raise failure

    monkeypatch.setattr(blue_cli.runs.runner, "run_experiment", failing_run)
    with pytest.raises(SystemExit) as exit_info:
        _hydra_job(None)
    return run_dir, exit_info.value.code


def test_numerical_error_exits_1_and_is_logged(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.ERROR)
    (tmp_path / "run").mkdir()
    run_dir, code = _job(
        tmp_path,
        monkeypatch,
        NumericalError("batch 3: non-finite values in the update of layer 2"),
        write=("config.yaml",),
    )
    assert code == 1
    assert any(r.getMessage() == "error: batch 3: non-finite values in the update of layer 2" for r in caplog.records)
    assert not run_dir.exists()  # nothing saved: the folder it created is gone


def test_failure_after_a_saved_batch_keeps_the_folder_and_frees_the_lock(tmp_path, monkeypatch):
    from blue_cli.runs.folder import lock_run_folder

    run_dir, code = _job(tmp_path, monkeypatch, ConfigError("bad"), write=("config.yaml", CHECKPOINT))
    assert code == 2 and (run_dir / CHECKPOINT).exists()
    lock_run_folder(run_dir).release()  # the failed job released its lock


def test_failure_when_resuming_keeps_the_folder(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.txt").write_text("a user's file")
    run_dir, code = _job(tmp_path, monkeypatch, ConfigError("bad"))
    assert code == 2 and (run_dir / "results.txt").exists()


# -- 2. one run per folder ------------------------------------------------------------------


def test_second_run_in_a_busy_folder_fails_at_once(finished_run, tmp_path, monkeypatch):
    """While a run holds its folder's lock (here the test holds it, as a running job would),
    another run there is refused before Hydra writes anything: by the explicit folder, and
    by a folder Hydra only knows through an interpolation (locked inside the job)."""
    from blue_cli.runs.folder import lock_run_folder

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run.dir, run_dir)
    before = folder_hashes(run_dir)
    lock = lock_run_folder(run_dir)
    try:
        second = run_blue(["edit", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        assert_one_line_error(second, f"run folder '{run_dir}' is in use by another blue run")
        assert folder_hashes(run_dir) == before  # refused before Hydra wrote anything
        monkeypatch.setenv("RUN_DIR", str(run_dir))
        late = run_blue(["edit", *TINY, "hydra.run.dir=${oc.env:RUN_DIR}"], cwd=tmp_path)
        assert_one_line_error(late, "is in use by another blue run")
    finally:
        lock.release()
    after = folder_hashes(run_dir)  # Hydra's own .hydra/ files aside, the run's files are untouched
    assert {k: v for k, v in after.items() if not k.startswith((".hydra", "blue.log"))} == {
        k: v for k, v in before.items() if not k.startswith((".hydra", "blue.log"))
    }


@pytest.mark.slow
def test_second_run_beside_a_live_process_fails_at_once(tmp_path):
    """The same with a real first run, held at its first batch by a fault point."""
    run_dir, release = tmp_path / "run", tmp_path / "release"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", BLUE_FAULT=f"batch:hold={release}")
    first = subprocess.Popen(
        blue_exe() + ["edit", *TINY, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_file(Path(f"{release}.held"), first)
        hydra_config = (run_dir / ".hydra" / "config.yaml").read_bytes()
        second = run_blue(["edit", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        assert_one_line_error(second, f"run folder '{run_dir}' is in use by another blue run")
        assert (run_dir / ".hydra" / "config.yaml").read_bytes() == hydra_config
        release.touch()
        assert first.wait(timeout=600) == 0
    finally:
        first.kill()
        first.wait(timeout=60)


def wait_for_file(path: Path, proc: subprocess.Popen) -> None:
    """Block until ``path`` exists (a fault point's hold announces itself so), or fail if
    ``proc`` ends first."""
    import select

    while not path.exists():
        assert proc.poll() is None, f"the process ended before {path.name} appeared"
        select.select([], [], [], 0.05)


# -- 4. tracebacks that became one line ----------------------------------------------------


def test_folder_without_tokenizer_is_one_line(tmp_path, model_without_tokenizer):
    proc = run_blue(["edit", *TINY, f"model.source={model_without_tokenizer}"], cwd=tmp_path)
    assert_one_line_error(proc, "holds a model but no tokenizer")
    assert run_files(tmp_path / "outputs") == []


@pytest.mark.parametrize(
    "args,needle",
    [
        (["model.source=../../etc"], "model.source"),
        (["model.source=not a/model/name"], "is neither a folder holding a model, a .gguf file nor a hub id"),
        (["method.target.lr=1e38"], "method.target.lr must be at most 1000"),
        (["method.target.clamp=inf", "method.target.lr=1e38"], "method.target.clamp must be positive and finite"),
    ],
)
def test_bad_values_are_one_line_before_any_folder(tmp_path, args, needle):
    (tmp_path / "a" / "b").mkdir(parents=True)
    proc = run_blue(["edit", *TINY, *args], cwd=tmp_path / "a" / "b")
    assert_one_line_error(proc, needle)
    assert run_files(tmp_path / "a" / "b" / "outputs") == []


def test_blue_offline_fails_with_the_offline_message_without_touching_the_network(tmp_path):
    """BLUE_OFFLINE=1 in a new process whose hub client would otherwise go online: the
    one-line offline error, and not one request reaches the hub (a loopback server
    standing in for it counts them)."""
    with counting_server() as (url, requests):
        environ = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
        env = {**environ, "BLUE_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": url}
        proc = subprocess.run(
            blue_exe() + ["edit", "model=gpt2-xl"],
            cwd=tmp_path,
            env={**env, "TOKENIZERS_PARALLELISM": "false"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert_one_line_error(proc, "model 'gpt2-xl' is not in the local Hugging Face cache and the hub cannot be reached")
    assert requests == []
    assert run_files(tmp_path / "outputs") == []


# -- 5. malformed records and overrides (property-based) ------------------------------------


def _valid_record() -> dict:
    return json.loads(BUNDLED_PATH.read_text())[0]


REQUIRED_STRINGS = [
    ("requested_rewrite", "prompt"),
    ("requested_rewrite", "subject"),
    ("requested_rewrite", "target_new", "str"),
    ("requested_rewrite", "target_true", "str"),
]
REQUIRED_KEYS = [
    ("case_id",),
    ("requested_rewrite",),
    ("requested_rewrite", "target_new"),
    ("requested_rewrite", "target_true"),
    ("paraphrase_prompts",),
    ("neighborhood_prompts",),
    ("generation_prompts",),
    *REQUIRED_STRINGS,
]
LISTS = [("paraphrase_prompts",), ("neighborhood_prompts",), ("generation_prompts",)]
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _parent(record: dict, path: tuple[str, ...]) -> dict:
    node = record
    for key in path[:-1]:
        node = node[key]
    return node


@st.composite
def malformed_records(draw) -> tuple[list, int]:
    """(records, index of the bad one): a list of valid records with one definitely broken."""
    records = [_valid_record() for _ in range(3)]
    for i, r in enumerate(records):
        r["case_id"] = i
    index = draw(st.integers(0, 2))
    record = records[index]
    kind = draw(
        st.sampled_from(
            [
                "missing",
                "wrong_type",
                "empty",
                "too_long",
                "no_placeholder",
                "bad_list_item",
                "not_object",
                "duplicate_id",
            ]
        )
    )
    if kind == "missing":
        path = draw(st.sampled_from(REQUIRED_KEYS))
        del _parent(record, path)[path[-1]]
    elif kind == "wrong_type":
        path = draw(st.sampled_from(REQUIRED_KEYS))
        wrong = draw(
            ODD_VALUES.filter(
                lambda v: not (isinstance(v, dict) and path[-1] in ("requested_rewrite", "target_new", "target_true"))
            )
        )
        if path[-1] == "case_id" and isinstance(wrong, int) and not isinstance(wrong, bool):
            wrong = str(wrong)
        if isinstance(wrong, list) and path in LISTS:
            wrong = [*wrong, 1]  # a list, but not of strings
        _parent(record, path)[path[-1]] = wrong
    elif kind == "empty":
        path = draw(st.sampled_from(REQUIRED_STRINGS))
        _parent(record, path)[path[-1]] = draw(st.sampled_from(["", " ", "\n\t"]))
    elif kind == "too_long":
        path = draw(st.sampled_from([*REQUIRED_STRINGS, *LISTS]))
        text = "{} " + "x" * draw(st.integers(MAX_TEXT_CHARS, 4 * MAX_TEXT_CHARS))
        if path in LISTS:
            record[path[0]].append(text)
        else:
            _parent(record, path)[path[-1]] = text
    elif kind == "no_placeholder":
        record["requested_rewrite"]["prompt"] = draw(st.text(max_size=30).filter(lambda s: "{}" not in s))
    elif kind == "bad_list_item":
        record[draw(st.sampled_from(LISTS))[0]].append(draw(ODD_VALUES))
    elif kind == "not_object":
        records[index] = draw(ODD_VALUES.filter(lambda v: not isinstance(v, dict)))
    else:
        index = max(index, 1)
        records[index]["case_id"] = 0
    return records, index


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=malformed_records())
def test_malformed_records_are_one_line_data_errors(tmp_path, case):
    records, index = case
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError) as err:
        load_counterfact(path)
    text = str(err.value)
    assert "\n" not in text and len(text) < 1000
    assert f"record {index}:" in text and str(path) in text


INVALID_OVERRIDES = st.one_of(
    st.tuples(
        st.sampled_from(
            ["num_edits", "batch_size", "method.target.steps", "eval.generation_length", "eval.general_items"]
        ),
        st.integers(max_value=0).map(str),
    ),
    st.tuples(
        st.sampled_from(["num_edits", "batch_size", "seed", "method.target.steps"]),
        st.sampled_from(["many", "1.5", "[1,2]", "{a:1}", "''", "abc"]),
    ),
    st.tuples(
        st.just("method.target.lr"),
        st.one_of(st.floats(max_value=0), st.floats(min_value=1e3, exclude_min=True), st.just(float("nan"))).map(repr),
    ),
    st.tuples(
        st.sampled_from(["method.target.clamp", "method.cov_weight"]),
        st.one_of(st.floats(max_value=0), st.sampled_from([float("inf"), float("nan")])).map(repr),
    ),
    st.tuples(
        st.sampled_from(["model", "method", "strategy", "dataset"]),
        st.from_regex(r"[a-z][a-z0-9_-]{0,12}", fullmatch=True),
    ).filter(lambda kv: kv[1] not in group_choices(kv[0])),
    st.tuples(
        st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True).filter(
            lambda k: (
                k
                not in {
                    "model",
                    "dataset",
                    "method",
                    "strategy",
                    "eval",
                    "stats",
                    "context",
                    "seed",
                    "device",
                    "resume",
                    "num_edits",
                    "batch_size",
                    "eval_every",
                    "model_hparams",
                    "hydra",
                }
            )
        ),
        st.just("1"),
    ),
    st.tuples(st.just("model.layers"), st.sampled_from(["[]", "[3,1]", "[1,1]", "[-1]", "[a]"])),
)


@settings(max_examples=30, deadline=None)
@given(override=INVALID_OVERRIDES)
def test_malformed_overrides_are_one_line_config_errors(override):
    key, value = override
    with pytest.raises(ConfigError) as err:
        validate_overrides([f"{key}={value}"])
    assert "\n" not in str(err.value)


def test_huge_record_fails_before_the_model_loads_in_one_line_without_a_run_folder(tmp_path, monkeypatch):
    import blue_cli.runs.runner

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the records were checked")

    monkeypatch.setattr(blue_cli.runs.runner, "load_model", no_model)
    records = json.loads(BUNDLED_PATH.read_text())[:8]
    records[5]["requested_rewrite"]["prompt"] = "{} " + "a" * 10_000_000
    data = tmp_path / "huge.json"
    data.write_text(json.dumps(records))
    run_dir = tmp_path / "run"
    proc = run_blue(["edit", *TINY, f"dataset.path={data}", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert_one_line_error(proc, f"{data}: record 5: 'requested_rewrite.prompt' is 10000003 characters long")
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["num_edits=-3"], "num_edits must be >= 1, got -3"),
        (["method.target.lr=nan"], "method.target.lr must be positive and finite"),
        (["model=gpt5"], "unknown model 'gpt5'"),
    ],
)
def test_malformed_overrides_exit_2_from_the_command(tmp_path, args, needle):
    proc = run_blue(["edit", *args], cwd=tmp_path)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "outputs").exists()


# -- 6. kill -9 at chosen points ------------------------------------------------------------


def _timing_free(row: dict) -> dict:
    return {k: v for k, v in row.items() if "seconds" not in k}


def assert_same_results(a: Path, b: Path) -> None:
    """Bit-identical numbers: the summary (timings aside), the cases and the checkpoint."""
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert _timing_free(sa) == _timing_free(sb)
    assert (a / "cases.jsonl").read_text() == (b / "cases.jsonl").read_text()
    with safe_open(str(a / CHECKPOINT), framework="pt") as fa, safe_open(str(b / CHECKPOINT), framework="pt") as fb:
        keys = sorted(fa.keys())
        assert keys == sorted(fb.keys())
        for key in keys:
            ta, tb = fa.get_tensor(key), fb.get_tensor(key)
            assert ta.dtype == tb.dtype and torch.equal(ta, tb), key
        rows_a, rows_b = (json.loads(f.metadata()["batches"]) for f in (fa, fb))
        assert fa.metadata()["fingerprints"] == fb.metadata()["fingerprints"]  # the weights after every batch
    assert [_timing_free(r) for r in rows_a] == [_timing_free(r) for r in rows_b]


def kill_and_resume(tmp_path: Path, run_dir: Path, points: list[str], env_extra: dict | None = None) -> None:
    """Start the run once per fault point, each killed (SIGKILL) at that point (faults.py),
    then let a last start finish it; every start resumes what the previous ones saved."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", **(env_extra or {}))
    for point in points:
        proc = subprocess.run(
            blue_exe() + ["edit", *TINY, f"hydra.run.dir={run_dir}"],
            cwd=tmp_path,
            env={**env, "BLUE_FAULT": point},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-2000:])
    final = run_blue(["edit", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env_extra=env_extra)
    assert final.returncode == 0, final.stderr[-3000:]


def test_kill_9_in_the_checkpoint_write_then_resume_is_bit_identical(finished_run, tmp_path):
    """Killed with the third batch's checkpoint fully written to its temp file, before the
    rename: the resume finds two batches, replays them and finishes as the uninterrupted run."""
    run_dir = tmp_path / "killed"
    kill_and_resume(tmp_path, run_dir, [f"write:{CHECKPOINT}@3"])
    assert_same_results(finished_run.dir, run_dir)


@pytest.mark.slow
def test_kill_9_at_every_stage_then_resume_is_bit_identical(finished_run, tmp_path):
    """Killed in the statistics pass (a fresh cache), in target optimisation, right after a
    saved batch, in a checkpoint write and in the summary's write, resuming each time."""
    run_dir = tmp_path / "killed"
    points = ["stats@2", "target@5", "batch@2", f"write:{CHECKPOINT}@2", "write:summary.json"]
    kill_and_resume(tmp_path, run_dir, points, env_extra={"BLUE_CACHE": str(tmp_path / "cache")})
    assert_same_results(finished_run.dir, run_dir)


# -- 7. parallel sweep jobs share the statistics --------------------------------------------


@pytest.mark.slow
def test_joblib_sweep_jobs_compute_each_statistics_entry_once(tmp_path):
    """Two joblib workers share the cache: exactly one computes the entries (which one, and
    whether the other waits or finds them written, is up to the scheduler; the waiting
    itself is tested deterministically in tests/unit/test_cache_integrity.py)."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    proc = run_blue_process(
        [
            "edit",
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "seed=0,1",
            "model=tiny-gpt2",
            "num_edits=2",
            "batch_size=2",
            "method.target.steps=2",
            "stats.samples=300",
            "eval.generation=false",
            "eval.wild=false",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env_extra={"BLUE_CACHE": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = {p.parent.name: p.read_text() for p in sweep.glob("*/blue.log")}
    assert len(logs) == 2 and all((sweep / name / "summary.json").exists() for name in logs)
    collecting = [
        name for name, text in logs.items() for line in text.splitlines() if "collecting second moments" in line
    ]
    assert len(collecting) == 1, logs  # one job computed the entries...
    assert len(list((tmp_path / "cache" / "stats").rglob("*_mom2_300.safetensors"))) == 2
