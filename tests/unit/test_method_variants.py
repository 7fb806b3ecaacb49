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
    cfg = compose_config(["method=prune", "model_hparams.prune_evaluated_weights=edited_plus_restrained"])
    assert cfg.method.evaluated_weights == "edited_plus_restrained"
    with pytest.raises(ConfigError) as err:
        compose_config(["method=prune", "method.evaluated_weights=both"])
    assert "\n" not in str(err.value)
    assert "unknown method.evaluated_weights 'both' (choose: restrained, edited_plus_restrained)" in str(err.value)
