"""The reference's variants of PRUNE and PMET, each computed independently here.

PRUNE: the PRUNE paper evaluates W0 + F(Delta); the reference's evaluation script (which
the BLUE paper's PRUNE rows ran) writes W0 + Delta + F(Delta). Both are built here from a
numpy SVD with the restraint written out, and compared with the method's final weights.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from blue_cli.config.overrides import compose_config
from blue_cli.config.registry import method_class
from blue_cli.errors import ConfigError


def _restrained(change: np.ndarray, bound: float, base: float) -> np.ndarray:
    """F(Delta): singular values above ``bound`` become min(s, bound + log_base(s / bound))."""
    U, S, Vt = np.linalg.svd(change, full_matrices=False)
    S = np.array([min(s, bound + math.log(s / bound) / math.log(base)) if s > bound else s for s in S])
    return (U * S) @ Vt


def _prune(evaluated_weights: str):
    cfg = OmegaConf.create(
        {
            "name": "prune",
            "cov_weight": 1.0,
            "keep_previous_keys": False,
            "log_base": math.e,
            "evaluated_weights": evaluated_weights,
        }
    )
    return method_class("prune")(cfg, [0])


@pytest.mark.parametrize("evaluated_weights", ["restrained", "edited_plus_restrained"])
def test_prune_evaluated_weights_are_the_chosen_update(evaluated_weights):
    rng = np.random.default_rng(7)
    W0 = rng.standard_normal((6, 9))
    change = 4.0 * rng.standard_normal((6, 9))  # singular values well past sigma_max(W0)
    bound = float(np.linalg.svd(W0, compute_uv=False).max())
    assert float(np.linalg.svd(change, compute_uv=False).max()) > bound
    F = _restrained(change, bound, math.e)
    expected = W0 + F if evaluated_weights == "restrained" else W0 + change + F
    weights, info = _prune(evaluated_weights).evaluated_weights({0: torch.tensor(W0 + change)}, {0: torch.tensor(W0)})
    assert np.allclose(weights[0].numpy(), expected, atol=1e-10)
    assert info["prune_bound.0"] == pytest.approx(bound)
    # the two definitions differ by exactly the unrestrained change
    other = _prune("restrained" if evaluated_weights != "restrained" else "edited_plus_restrained")
    other_weights, _ = other.evaluated_weights({0: torch.tensor(W0 + change)}, {0: torch.tensor(W0)})
    sign = 1.0 if evaluated_weights == "edited_plus_restrained" else -1.0
    assert np.allclose((weights[0] - other_weights[0]).numpy(), sign * change, atol=1e-10)


def test_prune_reference_update_doubles_a_change_below_the_bound():
    """Below sigma_max(W0) the restraint is the identity: the reference's update is W0 + 2 Delta."""
    W0 = np.diag([5.0, 4.0, 3.0])
    change = 0.1 * np.ones((3, 3))
    weights, _ = _prune("edited_plus_restrained").evaluated_weights(
        {0: torch.tensor(W0 + change)}, {0: torch.tensor(W0)}
    )
    assert np.allclose(weights[0].numpy(), W0 + 2 * change, atol=1e-12)


def test_prune_evaluated_weights_is_set_per_run_and_checked():
    assert compose_config(["method=prune"]).method.evaluated_weights == "restrained"
    cfg = compose_config(["method=prune", "+per_method.prune.evaluated_weights=edited_plus_restrained"])
    assert cfg.method.evaluated_weights == "edited_plus_restrained"
    with pytest.raises(ConfigError) as err:
        compose_config(["method=prune", "method.evaluated_weights=both"])
    assert "\n" not in str(err.value)
    assert "unknown method.evaluated_weights 'both' (choose: restrained, edited_plus_restrained)" in str(err.value)


@pytest.mark.parametrize("base", [1, 1.0, 0.5, 0, -2, float("inf")])
def test_a_prune_log_base_of_at_most_one_is_refused_with_the_overrides(base):
    """Before the first batch (a base of 1 divides by log 1 = 0 only in the final restraint)."""
    with pytest.raises(ConfigError) as err:
        compose_config(["method=prune", f"method.log_base={base}"])
    assert str(err.value).startswith("method.log_base must be above 1 and finite") and "\n" not in str(err.value)


def test_prune_log_base_is_set_per_model_in_prunes_own_config():
    """The tiny models' base 1.2 comes from hparams/model_method/<model>_prune.yaml; the shared
    model_hparams schema has no PRUNE key."""
    assert compose_config(["method=prune", "model=tiny-llama"]).method.log_base == 1.2
    assert compose_config(["method=prune", "model=llama3"]).method.log_base == pytest.approx(2.718281828459045)
    assert set(compose_config(["method=prune"]).model_hparams) == {"cov_weight"}


def test_per_method_settings_apply_only_to_their_method():
    """A sweep over methods sets one method's key through per_method (blue_table: PRUNE's
    evaluated weights); the other methods compose as without it."""
    prune = compose_config(["+experiment=blue_table", "method=prune"])
    memit = compose_config(["+experiment=blue_table", "method=memit"])
    assert prune.method.evaluated_weights == "edited_plus_restrained"
    assert "evaluated_weights" not in memit.method
    assert memit.method == compose_config(["model=llama3", "method=memit", "num_edits=2000", "batch_size=100"]).method
    rect = compose_config(["method=rect", "+per_method.rect.keep_fraction=0.25", "+per_method.memit.cov_weight=7"])
    assert rect.method.keep_fraction == 0.25 and rect.method.cov_weight != 7
    with pytest.raises(ConfigError) as err:
        compose_config(["method=rect", "+per_method.rect.keep_fractoin=0.25"])
    assert str(err.value).startswith("per_method.rect.keep_fractoin: method rect has no key 'keep_fractoin'")
    with pytest.raises(ConfigError) as err:
        compose_config(["per_method.rect.keep_fraction=0.25"])
    assert "write +per_method.rect.keep_fraction=..." in str(err.value)


@pytest.mark.parametrize("key", ["emmet_lambda", "norm_weight"])
def test_emmet_rejects_a_negative_or_infinite_relaxation(key):
    for bad in (-0.1, float("inf")):
        with pytest.raises(ConfigError) as err:
            compose_config(["method=emmet", f"method.{key}={bad}"])
        assert str(err.value) == f"method.{key} must be >= 0 and finite, got {bad}"


def test_emmet_seq_keeps_the_keys_of_earlier_batches_and_emmet_does_not():
    assert compose_config(["method=emmet_seq"]).method.keep_previous_keys is True
    assert compose_config(["method=emmet"]).method.keep_previous_keys is False
    assert method_class("emmet_seq") is method_class("emmet") and not method_class("emmet").updated_solver
