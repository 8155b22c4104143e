"""The non-layer regularizer components: drop-rate schedules, max-norm, R-Drop, weight decay."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regbench.regularizers.constraints import max_norm_
from regbench.regularizers.layers import Dropout
from regbench.regularizers.objectives import rdrop
from regbench.regularizers.schedules import DropoutSchedule, schedule_factor

import sys  # noqa: E402

from conftest import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from parity import make_optimizer  # noqa: E402 (a separate run's optimizer, the plain reference)


@pytest.mark.parametrize("kind,epoch,kw,expected", [
    ("constant", 7, {}, 1.0),
    ("curriculum", 0, {"gamma": 0.05}, 0.0),                    # starts without dropout
    ("curriculum", 20, {"gamma": 0.05}, 1 - math.exp(-1)),      # 63% of p after 1/gamma epochs
    ("early", 33, {"until": 0.2}, 1.0),                         # 33 < 0.2 * 170 = 34
    ("early", 34, {"until": 0.2}, 0.0),
])
def test_schedule_factor(kind, epoch, kw, expected):
    assert schedule_factor(kind, epoch, 170, **kw) == pytest.approx(expected)


def test_a_schedule_is_its_factor_per_epoch():
    sched = DropoutSchedule("curriculum", max_epochs=100, gamma=0.1)
    assert [sched.factor(e) for e in (0, 10, 30)] == pytest.approx([0.0, 1 - math.exp(-1), 1 - math.exp(-3)])
    assert DropoutSchedule("early", max_epochs=100, until=0.2).factor(19) == 1.0
    assert DropoutSchedule("early", max_epochs=100, until=0.2).factor(20) == 0.0


def test_max_norm_projects_each_unit_onto_the_ball():
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4, 0, 0], [0.1, 0, 0, 0], [0, 0, 6, 8]]))
    max_norm_(lin, 2.0)
    norms = lin.weight.norm(dim=1)
    assert norms.tolist() == pytest.approx([2.0, 0.1, 2.0])
    assert torch.allclose(lin.weight[0], torch.tensor([1.2, 1.6, 0, 0]))  # direction kept


def test_population_max_norm_holds_each_replica_to_its_own_bound():
    from regbench.engine.population import Population

    nets = [nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2)) for _ in range(3)]
    for net in nets:
        with torch.no_grad():
            net[0].weight.mul_(100)
    pop = Population(nets)
    pop.max_norm_(torch.tensor([0.5, 1.0, float("inf")]))
    norms = pop.params["0.weight"].norm(dim=2)  # [S, units]
    assert (norms[0] <= 0.5 + 1e-5).all() and (norms[1] <= 1.0 + 1e-5).all()
    assert torch.allclose(norms[1], torch.ones(2), atol=1e-5)  # the bound binds: projected onto it
    assert torch.allclose(pop.params["0.weight"][2], nets[2][0].weight)  # no bound: untouched


def test_rdrop_is_cross_entropy_plus_symmetric_kl_of_two_passes():
    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    plain = nn.Linear(5, 3)
    loss, _ = rdrop(plain, x, y, alpha=1.0)  # no dropout: both passes agree, KL = 0
    assert loss.item() == pytest.approx(F.cross_entropy(plain(x), y).item(), abs=1e-6)
    noisy = nn.Sequential(Dropout(0.5), nn.Linear(5, 3))
    l0, _ = rdrop(noisy, x, y, alpha=0.0)
    torch.manual_seed(1)
    l1, _ = rdrop(noisy, x, y, alpha=1.0)
    torch.manual_seed(1)
    l_ce, _ = rdrop(noisy, x, y, alpha=0.0)
    assert l1.item() > l_ce.item()  # same masks, plus a positive KL term


def test_weight_decay_applies_to_weights_not_biases():
    net = nn.Linear(3, 2)
    opt = make_optimizer("adam", 0.01, 0.0, 1e-3)(net)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(net.weight)] == 1e-3 and decay[id(net.bias)] == 0.0
