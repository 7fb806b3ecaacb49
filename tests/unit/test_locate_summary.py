"""ROME's six token groups, their averages over facts, and the suggested layers: tensors only."""

from __future__ import annotations

import json

import pytest
import torch

from blue_cli.errors import ConfigError, RunFolderError
from blue_cli.locate.run import LocateSettings, check_folder
from blue_cli.locate.summary import (
    TOKEN_GROUPS,
    TraceTable,
    average_effects,
    group_positions,
    suggest_window,
    suggestion,
)


def test_the_six_groups_of_a_prompt_with_tokens_before_and_after_the_subject():
    # 0 BOS, 1-4 subject, 5-8 after it, 8 last
    assert group_positions(9, 1, 5) == {
        "first_subject": [1],
        "further_subject": [2, 3],
        "last_subject": [4],
        "first_after": [5],
        "further": [6, 7],
        "last": [8],
    }


def test_short_subjects_and_prompts_leave_groups_empty_not_doubled():
    groups = group_positions(3, 0, 1)  # one-token subject, then two tokens
    assert groups == {
        "first_subject": [0],
        "further_subject": [],
        "last_subject": [0],
        "first_after": [1],
        "further": [],
        "last": [2],
    }
    groups = group_positions(3, 1, 2)  # the token after the subject is the last one
    assert groups["first_after"] == [] and groups["last"] == [2]


def test_average_effects_means_each_facts_group_mean_and_skips_missing_groups():
    torch.manual_seed(0)
    a = TraceTable({"mlp": torch.rand(6, 4, dtype=torch.float64)}, 0, 3)  # has further-subject tokens
    b = TraceTable({"mlp": torch.rand(4, 4, dtype=torch.float64)}, 1, 2)  # one-token subject
    means, counts = average_effects([a, b], ["mlp"])
    assert counts == {"first_subject": 2, "further_subject": 1, "last_subject": 2, "first_after": 2, "further": 1,
                      "last": 2}  # fmt: skip
    ea, eb = a.effects["mlp"], b.effects["mlp"]
    assert means["mlp"]["further_subject"] == pytest.approx(ea[1].tolist())
    assert means["mlp"]["last_subject"] == pytest.approx(((ea[2] + eb[1]) / 2).tolist())
    assert means["mlp"]["further"] == pytest.approx(ea[4].tolist())  # a: 4 (5 is last); b has none
    assert means["mlp"]["last"] == pytest.approx(((ea[5] + eb[3]) / 2).tolist())
    assert set(means["mlp"]) == set(TOKEN_GROUPS)


def test_the_suggestion_is_the_window_of_largest_summed_mlp_effect():
    torch.manual_seed(1)
    per_layer = torch.rand(12).tolist()
    for span in (1, 3, 5, 12):
        sums = [sum(per_layer[i : i + span]) for i in range(12 - span + 1)]
        best = max(range(len(sums)), key=lambda i: (sums[i], -i))
        first, mean = suggest_window(per_layer, span)
        assert first == best and mean == pytest.approx(sums[best] / span)
    assert suggest_window([1.0, 0.0, 1.0], 1) == (0, 1.0)  # a tie goes to the lower layer
    made = suggestion({"mlp": {"last_subject": per_layer}}, 3)
    assert made["layers"] == list(range(made["layers"][0], made["layers"][0] + 3))
    assert made["boundary_layers"] == [made["layers"][0], made["layers"][-1]]
    assert made["override"] == "model.layers=[" + ",".join(map(str, made["layers"])) + "]"
    assert suggestion({"hidden": {"last_subject": per_layer}}, 3) is None
    with pytest.raises(ValueError):
        suggest_window(per_layer, 13)


def test_settings_checks_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="unknown kinds 'mpl'"):
        LocateSettings(kinds=("mlp", "mpl")).check()
    with pytest.raises(ConfigError, match="--hidden-window must be at least 1"):
        LocateSettings(hidden_window=0).check()
    with pytest.raises(ConfigError, match="--span 7 is more than"):
        LocateSettings(span=7).check(6)
    assert LocateSettings(kinds=("hidden",), window=4).windows == {"hidden": 1}


def test_a_folder_of_other_settings_is_refused_and_facts_span_and_rows_may_change(tmp_path):
    model = {"name": "m", "n_layers": 6}
    check_folder(tmp_path, {"model": model, **LocateSettings().traced_with()})
    assert json.loads((tmp_path / "settings.json").read_text())["samples"] == 10
    check_folder(tmp_path, {"model": model, **LocateSettings(facts=9, span=2, max_rows=8).traced_with()})
    with pytest.raises(RunFolderError) as refused:
        check_folder(tmp_path, {"model": model, **LocateSettings(seed=1, window=4).traced_with()})
    assert "seed 0 there, 1 now" in str(refused.value) and "windows.mlp 10 there, 4 now" in str(refused.value)
