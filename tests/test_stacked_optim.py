"""engine.optim.StackedOptimizer: S replicas with their own lr, weight decay and momentum, stacked,
are S separate torch.optim optimizers built as a separate run's (benchmarks/parity.py make_optimizer).

Gradients come from each replica's own forward pass on its own rows (``functional_call`` on the
row views), so they are bit for bit the separate networks' gradients: what is compared is the
optimizer's math.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from regbench.engine.optim import StackedOptimizer, uniform

import sys  # noqa: E402

from conftest import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from parity import make_optimizer  # noqa: E402 (a separate run's optimizer, the plain reference)

STEPS = 20
LRS = [1e-3, 3e-3, 1e-2, 3e-2]
WDS = [0.0, 1e-3, 1e-2, 1e-1]
MOMENTA = [0.0, 0.5, 0.9, 0.99]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def nets(S: int) -> list[nn.Module]:
    torch.manual_seed(0)
    return [nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
            for _ in range(S)]


def batch(replica: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Replica i's own batch at a step (the same whichever population it is in)."""
    g = torch.Generator().manual_seed(1000 * replica + step)
    return torch.randn(8, 6, generator=g) * 3, torch.randint(0, 3, (8,), generator=g)


def stacked(models: list[nn.Module]) -> tuple[dict[str, torch.Tensor], set[str]]:
    params, _ = stack_module_state([copy.deepcopy(m) for m in models])
    return params, {n for n, p in models[0].named_parameters() if p.dim() > 1}


def backward(base: nn.Module, params: dict[str, torch.Tensor], replicas: list[int], step: int) -> None:
    """Row r of ``params`` is replica ``replicas[r]``: each row's gradient from its own forward pass."""
    loss = 0
    for r, i in enumerate(replicas):
        x, y = batch(i, step)
        loss = loss + nn.functional.cross_entropy(functional_call(base, {n: p[r] for n, p in params.items()}, (x,)), y)
    loss.backward()


def build(params, name, lrs, wds, decay, momenta=None) -> StackedOptimizer:
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return StackedOptimizer(params, name, f64(lrs), f64(wds), decay, f64(momenta) if name == "sgd" else None)


def train_stacked(opt, base, params, replicas, steps):
    for step in steps:
        opt.zero_grad()
        backward(base, params, replicas, step)
        opt.step()


def train_separate(net: nn.Module, replica: int, name, lr, wd, momentum, steps=range(STEPS)):
    opt = make_optimizer(name, lr, momentum, wd)(net)
    for step in steps:
        opt.zero_grad()
        x, y = batch(replica, step)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_each_replica_follows_its_own_torch_optim(name):
    S = len(LRS)
    models = nets(S)
    params, decay = stacked(models)
    opt = build(params, name, LRS, WDS, decay, MOMENTA)
    train_stacked(opt, models[0], params, list(range(S)), range(STEPS))
    for i, net in enumerate(models):
        train_separate(net, i, name, LRS[i], WDS[i], MOMENTA[i])
        for n, p in net.named_parameters():
            torch.testing.assert_close(params[n][i], p, rtol=1e-6, atol=1e-8, msg=f"replica {i} {n}")
    assert not torch.equal(params["0.weight"][0], params["0.weight"][1])  # replicas did differ


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_one_replica_equals_torch_optim(name):
    models = nets(1)
    params, decay = stacked(models)
    opt = build(params, name, [3e-3], [1e-2], decay, [0.9])
    train_stacked(opt, models[0], params, [0], range(STEPS))
    train_separate(models[0], 0, name, 3e-3, 1e-2, 0.9)
    for n, p in models[0].named_parameters():
        torch.testing.assert_close(params[n][0], p, rtol=1e-7, atol=1e-10, msg=n)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_keep_leaves_the_kept_trajectories_unchanged(name):
    S, rows = len(LRS), torch.tensor([1, 3])
    models = nets(S)
    whole, decay = stacked(models)
    opt_whole = build(whole, name, LRS, WDS, decay, MOMENTA)
    train_stacked(opt_whole, models[0], whole, list(range(S)), range(STEPS))

    params, _ = stacked(models)
    opt = build(params, name, LRS, WDS, decay, MOMENTA)
    train_stacked(opt, models[0], params, list(range(S)), range(STEPS // 2))
    params = {n: p.detach()[rows].clone().requires_grad_() for n, p in params.items()}
    opt.keep(rows, params)
    train_stacked(opt, models[0], params, rows.tolist(), range(STEPS // 2, STEPS))
    assert opt.lr.tolist() == [LRS[1], LRS[3]]
    for n, p in params.items():
        torch.testing.assert_close(p, whole[n][rows], rtol=1e-7, atol=1e-10, msg=n)


def test_clip_grad_norm_is_per_replica():
    S = 3
    params, decay = stacked(nets(S))
    opt = build(params, "adam", [1e-3] * S, [0.0] * S, decay)
    torch.manual_seed(1)
    for p in params.values():
        p.grad = torch.randn_like(p) * 0.1
        p.grad[1] *= 1e6  # replica 1 explodes
    separate = [[torch.zeros_like(p[i]).requires_grad_() for p in params.values()] for i in range(S)]
    for i in range(S):  # replica i alone, as a separate network's parameters
        for q, p in zip(separate[i], params.values()):
            q.grad = p.grad[i].clone()
    before = [p.grad.clone() for p in params.values()]
    norms = opt.clip_grad_norm_(5.0)
    for i in range(S):
        expected = torch.nn.utils.clip_grad_norm_(separate[i], 5.0)
        torch.testing.assert_close(norms[i], expected, rtol=1e-6, atol=0)
        for p, q in zip(params.values(), separate[i]):
            torch.testing.assert_close(p.grad[i], q.grad, rtol=1e-6, atol=1e-9)
    assert norms[1] > 1e5 and norms[0] < 5.0 and norms[2] < 5.0  # only replica 1 was clipped
    for p, b in zip(params.values(), before):
        assert torch.equal(p.grad[0], b[0]) and torch.equal(p.grad[2], b[2])


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_one_replicas_hyperparameters_do_not_reach_another(name):
    S = len(LRS)
    models = nets(S)
    runs = []
    for lr0, wd0, m0 in ((LRS[0], WDS[0], MOMENTA[0]), (0.5, 0.3, 0.7)):
        params, decay = stacked(models)
        opt = build(params, name, [lr0] + LRS[1:], [wd0] + WDS[1:], decay, [m0] + MOMENTA[1:])
        train_stacked(opt, models[0], params, list(range(S)), range(STEPS))
        runs.append(params)
    for n in runs[0]:
        assert not torch.equal(runs[0][n][0], runs[1][n][0]), n
        assert torch.equal(runs[0][n][1:], runs[1][n][1:]), n


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_state_dict_round_trip_resumes_identically(name, tmp_path):
    S = len(LRS)
    models = nets(S)
    params, decay = stacked(models)
    opt = build(params, name, LRS, WDS, decay, MOMENTA)
    train_stacked(opt, models[0], params, list(range(S)), range(STEPS // 2))
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    resumed_params = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    resumed = build(resumed_params, name, [1.0] * S, [0.0] * S, decay, [0.0] * S)  # all from the file
    resumed.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    train_stacked(opt, models[0], params, list(range(S)), range(STEPS // 2, STEPS))
    train_stacked(resumed, models[0], resumed_params, list(range(S)), range(STEPS // 2, STEPS))
    for n in params:
        assert torch.equal(params[n], resumed_params[n]), n


def test_bad_input_is_named():
    params, decay = stacked(nets(2))
    with pytest.raises(ValueError, match="'rmsprop'.*adam, sgd"):
        build(params, "rmsprop", [1e-3] * 2, [0.0] * 2, decay)
    with pytest.raises(ValueError, match="weight_decay has shape"):
        build(params, "adam", [1e-3] * 2, [0.0] * 3, decay)
    with pytest.raises(ValueError, match="'nope'"):
        build(params, "adam", [1e-3] * 2, [0.0] * 2, {"nope"})


def test_uniform():
    assert uniform(torch.tensor([0.1, 0.1])) and not uniform(torch.tensor([0.1, 0.2]))
