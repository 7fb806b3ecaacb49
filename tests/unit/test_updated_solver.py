"""The updated solver (linalg.LowRankSystem, EditMethod.solve under solver=updated) against
exact algebra and the direct solves, on small d_k (tensors only, no model)."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from blue_cli.editing.linalg import (
    HISTORY_FRACTION,
    IDENTITY_HISTORY_FRACTION,
    Factor,
    LowRankSystem,
    alphaedit_update,
    factorise,
    lower_gram,
    memit_update,
    nullspace_projector,
    relative_residual,
    scaled_identity,
    solve_checked,
)


def _spd(dk, seed, samples=None):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(dk, samples or 4 * dk, generator=g, dtype=torch.float64)
    return X @ X.T / X.shape[1]


def _keys(dk, n, seed, scale=1.0):
    g = torch.Generator().manual_seed(1000 + seed)
    return scale * torch.randn(dk, n, generator=g, dtype=torch.float64)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


# --- Factor -----------------------------------------------------------------------------------


def test_factor_kinds_solve_like_the_inverse():
    B = _spd(9, 0) + 0.5 * torch.eye(9, dtype=torch.float64)
    X = _keys(9, 3, 0)
    exact = torch.linalg.solve(B, X)
    chol = factorise(B, symmetric=True)
    assert chol.kind == "cholesky"
    assert torch.allclose(chol.value @ chol.value.T, B, atol=1e-12)
    assert _rel(chol.solve(X), exact) < 1e-12
    lu = factorise(B, symmetric=False)
    assert lu.kind == "lu"
    assert _rel(lu.solve(X), exact) < 1e-12
    scale = scaled_identity(2.5)
    assert scale.kind == "scale"
    assert torch.equal(scale.solve(X), X / 2.5)


def test_factorise_falls_back_to_lu_for_an_indefinite_symmetric_matrix():
    B = torch.diag(torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64)) + 0.1
    f = factorise(B, symmetric=True)
    assert f.kind == "lu"
    X = _keys(3, 2, 1)
    assert _rel(B @ f.solve(X), X) < 1e-12


def test_factorise_of_a_nonsymmetric_matrix_uses_all_of_it():
    B = _spd(6, 2) + torch.eye(6, dtype=torch.float64)
    B[0, 5] += 3.0  # upper triangle only: Cholesky would not see it
    X = _keys(6, 2, 2)
    assert _rel(B @ factorise(B, symmetric=False).solve(X), X) < 1e-12


@pytest.mark.parametrize("block", [1, 3, 4, 7, 64])
def test_lower_gram_is_l_l_transpose_whatever_the_block(block):
    L = torch.linalg.cholesky(_spd(7, 3) + torch.eye(7, dtype=torch.float64))
    B = lower_gram(L, block)
    assert torch.allclose(B, L @ L.T, rtol=0, atol=1e-13)
    assert torch.equal(B, B.T)


@pytest.mark.parametrize("scale", [0.0, -1.0])
def test_scaled_identity_rejects_a_non_positive_scale(scale):
    with pytest.raises(ValueError, match="scale must be positive"):
        scaled_identity(scale)


def test_factor_and_system_move_in_place():
    f = factorise(torch.eye(3, dtype=torch.float64) * 2, symmetric=False)
    f.to_("meta")
    assert (f.value.device.type, f.pivots.device.type, f.matrix.device.type) == ("meta", "meta", "meta")
    system = LowRankSystem(scaled_identity(2.0), 4)
    assert (system.G.shape, system.V.shape, system.S_inv.shape) == ((4, 0), (4, 0), (0, 0))
    assert system.G.dtype == system.V.dtype == system.S_inv.dtype == torch.float64
    system.record(_keys(4, 1, 0), _keys(4, 1, 1))
    system.to_("meta")
    moved = (system.factor.value, system.G, system.V, system.U, system.S_inv)
    assert all(t.device.type == "meta" for t in moved)
    on_meta = LowRankSystem(Factor("scale", torch.tensor(2.0, dtype=torch.float64, device="meta")), 3)
    assert on_meta.G.device.type == on_meta.S_inv.device.type == "meta"


def test_a_scaled_identity_keeps_its_scale_in_float64():
    f = scaled_identity(0.1)
    assert f.value.dtype == torch.float64 and float(f.value) == 0.1


# --- LowRankSystem -------------------------------------------------------------------------------


def test_recorded_keys_give_the_inverse_of_the_full_matrix():
    dk = 16
    B = 3.0 * _spd(dk, 3) + 0.1 * torch.eye(dk, dtype=torch.float64)
    system = LowRankSystem(factorise(B, symmetric=True), dk)
    full = B.clone()
    for i, n in enumerate((1, 3, 2)):
        U, V = _keys(dk, n, i), _keys(dk, n, 10 + i)
        system.record(U, V)
        full += U @ V.T
    assert system.recorded == 6 and system.size == dk
    X = _keys(dk, 4, 99)
    assert _rel(system.apply_inverse(X), torch.linalg.solve(full, X)) < 1e-10
    # S_inv is the inverse of the capacitance I + V_h^T B^{-1} U_h, built block by block
    capacitance = torch.eye(6, dtype=torch.float64) + system.V.T @ system.G
    assert _rel(system.S_inv @ capacitance, torch.eye(6, dtype=torch.float64)) < 1e-10
    U_all = torch.cat([_keys(dk, n, i) for i, n in enumerate((1, 3, 2))], 1)
    assert _rel(system.G, torch.linalg.solve(B, U_all)) < 1e-12


def _system_with_history(dk: int, seed: int) -> tuple[torch.Tensor, LowRankSystem, torch.Tensor]:
    """B (SPD, Cholesky-factorised) with one recorded batch of two keys: (B, the system, the keys)."""
    B = _spd(dk, seed) + torch.eye(dk, dtype=torch.float64)
    system = LowRankSystem(factorise(B, symmetric=True), dk)
    keys = _keys(dk, 2, seed + 1)
    system.record(keys, keys)
    return B, system, keys


def test_solve_is_the_inverse_with_this_batch_added():
    dk = 12
    B, system, Uh = _system_with_history(dk, 4)
    U, V = _keys(dk, 3, 6), _keys(dk, 3, 7)
    A = B + Uh @ Uh.T + U @ V.T
    assert _rel(system.solve(U, V), torch.linalg.solve(A, U)) < 1e-10
    assert system.recorded == 2  # solving records nothing


def test_an_empty_history_is_the_base_solve():
    system = LowRankSystem(scaled_identity(4.0), 5)
    X = _keys(5, 2, 8)
    assert torch.equal(system.apply_inverse(X), X / 4.0)
    assert system.recorded == 0


def test_memit_sequence_matches_the_direct_solve():
    """300 batches of one key, then batches of several: Delta as memit_update with C_prev."""
    dk, d, lam = 24, 7, 50.0
    C = _spd(dk, 9)
    system = LowRankSystem(factorise(lam * C, symmetric=True), dk)
    C_prev = torch.zeros(dk, dk, dtype=torch.float64)
    worst = 0.0
    for i, n in enumerate([1] * 40 + [5] * 6):
        K, R = _keys(dk, n, i, scale=3.0), _keys(d, n, 500 + i)
        direct = memit_update(K, R, C, lam, C_prev)
        updated = R @ system.solve(K, K).T
        worst = max(worst, _rel(updated, direct))
        K_after = _keys(dk, n, 900 + i, scale=3.0)
        C_prev += K_after @ K_after.T
        system.record(K_after, K_after)
        if system.needs_refactorisation():
            system = system.refactorised(symmetric=True)
            assert system.recorded == 0 and system.factor.kind == "cholesky"
            assert _rel(system.factor.dense(system.V), lam * C + C_prev) < 1e-12
    assert worst < 1e-9


def test_alphaedit_sequence_matches_the_direct_solve():
    dk, d, l2 = 20, 6, 10.0
    P = nullspace_projector(_spd(dk, 11, samples=12), 1e-6)  # rank-deficient C: a non-trivial null space
    assert 0 < float(torch.trace(P)) < dk
    system = LowRankSystem(scaled_identity(l2), dk)
    C_prev = torch.zeros(dk, dk, dtype=torch.float64)
    worst, refactorisations = 0.0, 0
    for i in range(8):
        K, R = _keys(dk, 2, 20 + i, scale=2.0), _keys(d, 2, 40 + i)
        direct = alphaedit_update(K, R, P, l2, C_prev)
        updated = R @ system.solve(P @ K, K).T
        worst = max(worst, _rel(updated, direct))
        K_after = _keys(dk, 2, 60 + i, scale=2.0)
        C_prev += K_after @ K_after.T
        system.record(P @ K_after, K_after)
        if system.needs_refactorisation():
            refactorisations += 1
            system = system.refactorised(symmetric=False)
            assert system.factor.kind == "lu"
            B = l2 * torch.eye(dk, dtype=torch.float64) + P @ C_prev
            assert _rel(system.factor.dense(system.V), B) < 1e-12
    assert worst < 1e-9
    assert refactorisations == 3  # at 6 >= d_k / 4 keys beside l2 I, then every 4 >= d_k / 8 beside the LU


def test_refactorisation_is_due_at_one_eighth_of_d_k_beside_a_factor_and_a_quarter_beside_l2_i():
    dk = 8 * 3
    assert HISTORY_FRACTION == 8 and IDENTITY_HISTORY_FRACTION == 4
    factored = LowRankSystem(factorise(torch.eye(dk, dtype=torch.float64), symmetric=True), dk)
    identity = LowRankSystem(scaled_identity(1.0), dk)
    for i in range(6):
        for system in (factored, identity):
            system.record(_keys(dk, 1, i), _keys(dk, 1, 50 + i))
        assert factored.needs_refactorisation() == (i + 1 >= 3)
        assert identity.needs_refactorisation() == (i + 1 >= 6)


def test_the_product_with_the_system_uses_the_recorded_keys():
    dk = 10
    B = _spd(dk, 30) + torch.eye(dk, dtype=torch.float64)
    for factor in (factorise(B, symmetric=True), factorise(B, symmetric=False)):
        system = LowRankSystem(factor, dk)
        X = _keys(dk, 3, 31)
        assert _rel(system.apply(X), B @ X) < 1e-12
        U, V = _keys(dk, 2, 32), _keys(dk, 2, 33)
        system.record(U, V)
        assert system.U is not None  # U is not V: kept
        assert _rel(system.apply(X), (B + U @ V.T) @ X) < 1e-12
    one = LowRankSystem(scaled_identity(3.0), dk)
    k = _keys(dk, 1, 35)
    one.record(k, k)
    assert _rel(one.apply(X), (3.0 * torch.eye(dk, dtype=torch.float64) + k @ k.T) @ X) < 1e-12
    same = LowRankSystem(scaled_identity(3.0), dk)
    K = _keys(dk, 2, 34)
    same.record(K, K)
    assert same.U is None and same.U_h is same.V  # U is V: one copy
    assert _rel(same.apply(X), (3.0 * torch.eye(dk, dtype=torch.float64) + K @ K.T) @ X) < 1e-12
    assert torch.equal(same.factor.dense(same.V), 3.0 * torch.eye(dk, dtype=torch.float64))


def test_solve_checked_refactorises_only_when_the_residual_is_too_large():
    dk = 12
    B, system, Kh = _system_with_history(dk, 40)
    U = _keys(dk, 2, 42)
    kept, Q, residual = solve_checked(system, U, U, 1e-8, symmetric=True)
    A = B + Kh @ Kh.T + U @ U.T
    assert kept is system and _rel(Q, torch.linalg.solve(A, U)) < 1e-10
    assert solve_checked(system, U, U, residual, symmetric=True)[0] is system  # at the tolerance: kept
    assert residual == relative_residual(A @ Q, U) or abs(residual - relative_residual(A @ Q, U)) < 1e-14
    system.S_inv = system.S_inv * 1.5  # a drifted update: the check sees it
    kept, Q, residual = solve_checked(system, U, U, 1e-8, symmetric=True)
    assert kept is not system and kept.recorded == 0 and residual < 1e-12
    assert kept.factor.kind == "cholesky"  # refactorised as the symmetric system it is
    assert _rel(Q, torch.linalg.solve(A, U)) < 1e-10


def test_relative_residual_is_the_normwise_ratio():
    Y = torch.tensor([[3.0], [4.0]], dtype=torch.float64)
    AQ = torch.tensor([[3.0], [3.0]], dtype=torch.float64)
    assert relative_residual(AQ, Y) == pytest.approx(1.0 / 5.0, rel=1e-15)
    assert relative_residual(Y.float(), Y) == 0.0
    assert relative_residual(AQ / 10, Y / 10) == pytest.approx(1.0 / 5.0, rel=1e-15)  # ||Y|| < 1 too
    zero = torch.zeros(2, 1, dtype=torch.float64)
    assert math.isinf(relative_residual(AQ, zero))
    assert relative_residual(zero, zero) == 0.0


# --- methods under both solvers --------------------------------------------------------------------


class _Stats:
    """CovarianceStore's interface: C per layer, derived tensors computed and counted."""

    def __init__(self, moments):
        self.moments, self.derived = moments, []

    def get(self, layer):
        return self.moments[layer]

    def cached_tensor(self, layer, name, compute):
        self.derived.append(name)
        return compute(self.moments[layer])


def _method(name, solver, keep=True, num_edits=None, **extra):
    from blue_cli.config.registry import method_class, method_schemas

    schema = method_schemas()[name]
    cfg = OmegaConf.structured(schema(keep_previous_keys=keep, solver=solver, **extra))
    return method_class(name)(cfg, [0, 1], num_edits=num_edits)


def _run(method, dk=40, d=9, batches=(1, 1, 1, 2, 3, 1, 4), seed=0, layers=(0, 1)):
    # 24 samples and a ridge of 0.01: C is invertible and AlphaEdit's projector (eigenvalues < 0.02) not zero
    ridge = 0.01 * torch.eye(dk, dtype=torch.float64)
    stats = _Stats({l: (_spd(dk, 50 + 10 * l + seed, samples=24) + ridge).float() for l in layers})
    method.prepare(stats, torch.device("cpu"))
    deltas = []
    for i, n in enumerate(batches):
        for layer in layers:
            K, R = _keys(dk, n, 7 * i + layer, scale=4.0).float(), _keys(d, n, 300 + i).float()
            deltas.append(method.solve(layer, K, R))
            method.record_keys(layer, _keys(dk, n, 700 + 7 * i + layer, scale=4.0).float())
    return deltas, stats


def _registered_methods():
    from blue_cli.config.registry import METHODS, load_builtins

    load_builtins()
    return sorted(METHODS)


def _registered_strategies():
    from blue_cli.config.registry import STRATEGIES, load_builtins

    load_builtins()
    return sorted(STRATEGIES)


_COMPOSED = {}


def _composed(name, solver):
    """The method ``name`` as its YAML composes it (its own key cache, knobs), ``solver`` set;
    lambda = 30 where the method has one, so that K K^T matters beside lambda C on these sizes."""
    from blue_cli.config.overrides import compose_config

    if name not in _COMPOSED:
        _COMPOSED[name] = compose_config([f"method={name}"]).method
    cfg = _COMPOSED[name].copy()
    cfg.solver = solver
    if "cov_weight" in cfg:
        cfg.cov_weight = 30.0
    return cfg


def _solvers_agree(cls, name, strategy):
    """On the layers ``strategy`` writes (of four critical layers): the updated solver's updates
    equal the direct solve's, batch after batch; a class without the updated solver is solved
    directly under auto (the same updates) and refused under solver=updated."""
    from blue_cli.config.registry import strategy_class
    from blue_cli.errors import ConfigError

    layers = tuple(strategy_class(strategy)().written_layers([0, 1, 2, 3]))
    direct, _ = _run(cls(_composed(name, "direct"), list(layers)), layers=layers)
    assert all(b.norm() > 0 for b in direct)
    if not cls.updated_solver:
        auto = cls(_composed(name, "auto"), list(layers))
        deltas, stats = _run(auto, layers=layers)
        assert auto.solver == "direct" and all(torch.equal(a, b) for a, b in zip(deltas, direct, strict=True))
        with pytest.raises(ConfigError, match="has no updated solver"):
            cls(_composed(name, "updated"), list(layers)).prepare(stats, torch.device("cpu"))
        return
    method = cls(_composed(name, "updated"), list(layers))
    updated, _ = _run(method, layers=layers)
    assert method.solver == "updated"
    for a, b in zip(updated, direct, strict=True):
        assert _rel(a, b) < 1e-9
    assert all(0 <= r <= method.tolerance for r in method.residuals.values())


@pytest.mark.parametrize("strategy", _registered_strategies())
@pytest.mark.parametrize("name", _registered_methods())
def test_every_registered_method_gives_the_direct_update_under_the_updated_solver(name, strategy):
    """From the registry, so a new method (one module + one YAML) is covered without a line here."""
    from blue_cli.config.registry import method_class

    _solvers_agree(method_class(name), name, strategy)


@pytest.mark.parametrize("strategy", _registered_strategies())
def test_a_method_without_the_updated_solver_is_solved_directly(strategy):
    from blue_cli.config.registry import method_class

    direct_only = type("DirectRect", (method_class("rect"),), {"updated_solver": False})
    _solvers_agree(direct_only, "rect", strategy)


@pytest.mark.parametrize("name", ["memit_seq", "alphaedit", "memit", "pmet_seq", "prune", "rect"])
def test_the_updated_solver_keeps_keys_and_factors_instead_of_matrices(name):
    """What the updated solver keeps in place of C and C_prev, per method."""
    extra = {"cov_weight": 30.0} if name != "alphaedit" else {}
    keep = name in ("memit_seq", "alphaedit", "pmet_seq")
    method = _method(name, "updated", keep=keep, **extra)
    _, stats = _run(method)
    refactorised = sum(method.refactorisations.values())
    if keep:  # 13 keys per layer against d_k / 8 = 5: folded into new factorisations
        assert refactorised >= 2
        assert all(method.systems[l].recorded * HISTORY_FRACTION < 40 for l in (0, 1))
        assert method.C_prev == {}  # the recorded keys stand for C_prev
    else:
        assert refactorised == 0 and all(method.systems[l].recorded == 0 for l in (0, 1))
    if name != "alphaedit":
        assert method.C == {}  # lambda C's factor stands for C
    if name != "alphaedit":  # lambda C's factor comes through the statistics cache
        assert stats.derived == ["cholesky_30.0", "cholesky_30.0"]


def test_a_method_with_its_own_direct_solve_does_not_inherit_the_updated_solver():
    """A MEMIT subclass that writes another system in solve_direct (twice MEMIT's update here)
    is solved by it under auto; declaring updated_solver again in its own body keeps it."""
    from blue_cli.config.registry import check_solver
    from blue_cli.editing.methods.memit import Memit
    from blue_cli.errors import ConfigError

    class Doubled(Memit):
        name = "doubled"

        def solve_direct(self, layer, K, R):
            return 2 * super().solve_direct(layer, K, R)

    class Declared(Doubled):
        updated_solver = True

    assert Memit.updated_solver and not Doubled.updated_solver and Declared.updated_solver
    memit, _ = _run(Memit(_composed("memit", "direct"), [0, 1]))
    method = Doubled(_composed("memit", "auto"), [0, 1])
    doubled, _ = _run(method)
    assert method.solver == "direct"
    for a, b in zip(doubled, memit, strict=True):
        assert _rel(a, 2 * b) < 1e-12
    with pytest.raises(ConfigError) as err:
        check_solver(Doubled, "updated")
    assert (
        str(err.value) == "method doubled has no updated solver (it solves directly): use method.solver=direct or auto"
    )


def test_solver_updated_for_a_method_without_it_is_refused_with_the_overrides(monkeypatch):
    """Checked when the config is composed, before a run folder exists."""
    from blue_cli.config.overrides import compose_config
    from blue_cli.config.registry import METHODS, method_class
    from blue_cli.errors import ConfigError

    rect = method_class("rect")
    monkeypatch.setitem(METHODS, "rect", type("DirectRect", (rect,), {"updated_solver": False, "name": "rect"}))
    assert compose_config(["method=rect", "method.solver=direct"]).method.solver == "direct"
    with pytest.raises(ConfigError, match="^method rect has no updated solver"):
        compose_config(["method=rect", "method.solver=updated"])


def test_a_failed_residual_check_refactorises_and_still_solves():
    method = _method("memit_seq", "updated", cov_weight=30.0, solver_tolerance=1e-300)
    direct, _ = _run(_method("memit_seq", "direct", cov_weight=30.0))
    updated, _ = _run(method)
    assert method.refactorisations[0] >= 7  # every solve's check failed (and the folds)
    for a, b in zip(updated, direct, strict=True):
        assert _rel(a, b) < 1e-9


def test_a_non_positive_definite_lambda_c_is_not_cached_and_uses_lu():
    method = _method("memit", "updated", keep=False, cov_weight=-1.0)
    stats = _Stats({0: _spd(6, 1).float(), 1: _spd(6, 2).float()})
    method.prepare(stats, torch.device("cpu"))
    K, R = _keys(6, 2, 0).float(), _keys(3, 2, 1).float()
    delta = method.solve(0, K, R)
    assert method.systems[0].factor.kind == "lu"
    A = -stats.get(0).double() + K.double() @ K.double().T
    assert _rel(delta, R.double() @ torch.linalg.solve(A, K.double()).T) < 1e-9


def test_auto_picks_updated_when_its_extra_state_fits_and_direct_when_not(monkeypatch):
    import blue_cli.editing.methods.base as base

    method = _method("memit_seq", "auto")
    dk = 16
    stats = _Stats({0: _spd(dk, 1).float(), 1: _spd(dk, 2).float()})
    # per layer: direct keeps C and C_prev (float64 on CPU); updated a Cholesky factor and
    # d_k / 8 = 2 recorded keys (G_h, V_h: 2 x d_k x 2, S_inv: 2 x 2), all float64
    direct = 2 * 2 * dk * dk * 8
    updated = 2 * (dk * dk * 8 + 8 * (2 * dk * 2 + 4))
    monkeypatch.setattr(base, "free_bytes", lambda device: 2 * (updated - direct) + 1)
    method.prepare(stats, torch.device("cpu"))
    assert (method.state_bytes("direct"), method.state_bytes("updated")) == (direct, updated)
    assert method.solver == "updated"  # it keeps less than direct: always fits
    alpha = _method("alphaedit", "auto")
    monkeypatch.setattr(base, "free_bytes", lambda device: 0)
    alpha.prepare(stats, torch.device("cpu"))
    extra = alpha.state_bytes("updated") - alpha.state_bytes("direct")
    assert extra > 0 and alpha.solver == "direct"
    monkeypatch.setattr(base, "free_bytes", lambda device: 2 * extra)
    alpha.prepare(stats, torch.device("cpu"))
    assert alpha.solver == "updated"
    # a run of 3 edits never refactorises l2 I (d_k / 4 = 4 keys): only P and 3 recorded keys
    short = _method("alphaedit", "auto", num_edits=3)
    monkeypatch.setattr(base, "free_bytes", lambda device: 0)
    short.prepare(stats, torch.device("cpu"))
    keys = 2 * 8 * (3 * dk * 3 + 9)
    assert short.state_bytes("updated") == 2 * dk * dk * 8 + keys
    assert short.state_bytes("updated") < short.state_bytes("direct") and short.solver == "updated"


def test_an_unknown_solver_is_one_clear_error():
    from blue_cli.errors import ConfigError

    method = _method("memit", "cholesky")
    with pytest.raises(ConfigError, match="unknown method.solver 'cholesky' \\(choose: auto, direct, updated\\)"):
        method.prepare(_Stats({0: _spd(4, 0), 1: _spd(4, 1)}), torch.device("cpu"))


def test_times_upcasts_a_float32_matrix_in_row_blocks(monkeypatch):
    import blue_cli.editing.methods.base as base

    monkeypatch.setattr(base, "ROW_BLOCK", 3)
    M = _spd(10, 5).float()
    X = _keys(10, 2, 5)
    assert _rel(base.times(M, X), M.double() @ X) < 1e-14
    assert torch.equal(base.times(M.double(), X), M.double() @ X)


def test_factor_type_is_exported():
    assert Factor("scale", torch.tensor(2.0)).solve(torch.ones(2, 1)).dtype == torch.float64
