"""The checkpoint's checksum: written with it, checked on every read; files of an older blue,
without one, still read."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from blue_cli.runs.checkpoint import DamagedCheckpointError, checkpoint_checksum, read_checkpoint, read_metadata

TENSORS = {"residual.0.0": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
META = {"format": "replay-1", "batches_done": "1", "fingerprints": json.dumps([{"1": [1.5, 0.25]}])}


def write(path, metadata):
    save_file(TENSORS, str(path), metadata=metadata)
    return path


def test_an_intact_checkpoint_reads_back(tmp_path):
    path = write(tmp_path / "checkpoint.safetensors", {**META, "sha256": checkpoint_checksum(TENSORS, META)})
    tensors, meta = read_checkpoint(path)
    assert torch.equal(tensors["residual.0.0"], TENSORS["residual.0.0"]) and meta["batches_done"] == "1"


def test_the_checksum_covers_tensors_and_metadata():
    other = {"residual.0.0": TENSORS["residual.0.0"].clone()}
    other["residual.0.0"][2, 3] = 11.000001
    assert checkpoint_checksum(other, META) != checkpoint_checksum(TENSORS, META)
    assert checkpoint_checksum(TENSORS, {**META, "batches_done": "2"}) != checkpoint_checksum(TENSORS, META)


def test_a_checkpoint_of_an_older_blue_without_a_checksum_still_reads(tmp_path):
    path = write(tmp_path / "checkpoint.safetensors", META)
    assert read_checkpoint(path)[1] == META


def test_a_wrong_checksum_is_a_damaged_file_named_in_one_line(tmp_path):
    path = write(tmp_path / "checkpoint.safetensors", {**META, "sha256": "0" * 64})
    with pytest.raises(DamagedCheckpointError) as info:
        read_checkpoint(path)
    assert str(info.value) == (
        f"checkpoint '{path}' is damaged (its bytes no longer match the checksum written with it): "
        "start the run over with resume=false (the damaged run's files are set aside), or remove the file"
    )


@pytest.mark.parametrize("keep", [0, 7, 100])
def test_a_truncated_checkpoint_is_damaged_not_a_safetensors_traceback(tmp_path, keep):
    path = write(tmp_path / "checkpoint.safetensors", META)
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(DamagedCheckpointError, match=r"is damaged \(unreadable: "):
        read_metadata(tmp_path)
    with pytest.raises(DamagedCheckpointError, match=r"is damaged \(unreadable: "):
        read_checkpoint(path)
