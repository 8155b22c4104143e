"""The population engine (engine/population.py, engine/fit.py): S replicas built from the model's own
nn.Modules, trained as one stacked model, each replica equal to the separate run of its config
(exactly without dropout, in distribution with it), independent of the others whatever their
hyperparameters."""

from __future__ import annotations

import math
import os
import statistics
import sys

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from conftest import ROOT, compose
from regbench.config import validate
from regbench.engine import memory
from regbench.engine.fit import Replica, Training, fit
from regbench.engine.population import NotStackable, Population
from regbench.models import build_model
from regbench.regularizers import build_regularization
from regbench.regularizers.constraints import max_norm_
from regbench.training.loop import cross_entropy, epoch_order, evaluate

sys.path.insert(0, str(ROOT / "benchmarks"))
from parity import make_optimizer, raw_train  # noqa: E402

MLP = {"hidden": 100, "depth": 2}
KWARGS = {"mlp": MLP, "resmlp": MLP, "logreg": {}, "cnn1d": {"channels": 25}, "seed_cnn": {}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """A separate run's trajectory depends on the thread count: compare at one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    from regbench.data import build_data

    return build_data("mnist1d", root=os.environ["REGBENCH_DATA"], val_size=500, split_seed=0, train_size=None,
                      generator_seed=42)


@pytest.fixture(scope="module")
def small():
    """1000 training examples (10 steps an epoch): noisy enough for early stopping to differ by seed."""
    from regbench.data import build_data

    return build_data("mnist1d", root=os.environ["REGBENCH_DATA"], val_size=500, split_seed=0, train_size=1000,
                      generator_seed=42)


def reg_for(arm: str, *overrides: str, max_epochs: int = 10):
    r = validate(compose([f"regularizer={arm}", *overrides])).regularizer
    return build_regularization(r.name, dropout=r.dropout, early_stop=r.early_stop, weight_decay=r.weight_decay,
                                maxnorm=r.maxnorm, rdrop_alpha=r.rdrop_alpha, mc_samples=r.mc_samples,
                                max_epochs=max_epochs)


def net_of(data, seed, reg, model="mlp"):
    pl.seed_everything(seed, workers=False, verbose=False)
    return build_model(model, data.input_shape, data.num_classes, reg.slots, regularizer=reg.name, **KWARGS[model])


def population(data, seeds, regs, *, model="mlp", optim="adam", lr=0.01, momentum=0.0, epochs=3, batch_size=100,
               nets=None, fused=True):
    """Records of one population: replica i has seed seeds[i], regularization regs[i] (or one for all)
    and learning rate lr[i] (or one for all). ``fused=False``: the optimizer rounds as a plain loop does
    (the comparisons with a plain loop need it: the fused kernel's roundings, amplified by Adam, part
    the trajectories by 1e-4 within two epochs on some CPUs)."""
    regs = regs if isinstance(regs, list) else [regs] * len(seeds)
    lrs = lr if isinstance(lr, list) else [lr] * len(seeds)
    nets = nets or [net_of(data, s, r, model) for s, r in zip(seeds, regs)]
    members = [Replica(seed=s, reg=r, lr=l, momentum=momentum) for s, r, l in zip(seeds, regs, lrs)]
    records, _, _ = fit(nets, members, data, optim_name=optim, batch_size=batch_size, max_epochs=epochs,
                        eval_batch_size=1000, fused=fused)
    return records


def plain_net(data, seed, reg, *, model="mlp", optim="adam", lr=0.01, momentum=0.0, epochs=3, batch_size=100,
              losses=None):
    """A separate run of `seed` with the framework's own inner loop, no Lightning."""
    net = net_of(data, seed, reg, model)
    opt = make_optimizer(optim, lr, momentum, reg.weight_decay)(net)
    c = reg.max_norm
    if c is not None:
        max_norm_(net, c)
        opt.register_step_post_hook(lambda *_: max_norm_(net, c))
    for epoch in range(epochs):  # the plain PyTorch loop
        total, n = 0.0, 0
        for idx in epoch_order(len(data.y_train), seed, epoch).split(batch_size):
            loss, _ = cross_entropy(net, data.x_train[idx], data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()) * len(idx), n + len(idx)
        if losses is not None:
            losses.append(total / n)
    return net


def plain_losses(data, seed, reg, **kw):
    out: list[float] = []
    plain_net(data, seed, reg, losses=out, **kw)
    return out


# ------------------------------------------------------------------------------------ every arm stacks
ARMS = sorted(p.stem for p in (ROOT / "conf" / "regularizer").glob("*.yaml"))
MODEL_OF = {"drop_path": "resmlp", "spatial_dropout": "cnn1d", "dropblock": "cnn1d", "alpha_dropout": "mlp"}


@pytest.mark.parametrize("arm,model", [(a, MODEL_OF.get(a, "mlp")) for a in ARMS]
                         + [("rdrop", "cnn1d"), ("mc_dropout", "cnn1d")])  # loop mode's objective and MC evaluation
def test_every_arm_trains_as_one_population_with_one_record_per_replica(arm, model, tmp_path):
    """Each of conf/regularizer/'s arms, two seeds as one population through the composition root:
    one ordinary record, curves and best.ckpt per replica, its own seed's trajectory."""
    from omegaconf import OmegaConf

    from regbench import app

    cfg = compose([f"regularizer={arm}", f"model={model}", "trainer.max_epochs=2", "data.train_size=500",
                   "trainer.progress_every=0", "logger=csv"])
    cfgs = [OmegaConf.merge(cfg, {"seed": s}) for s in (0, 1)]
    rcs = [validate(c) for c in cfgs]
    dirs = [tmp_path / f"s{s}" for s in (0, 1)]
    for d in dirs:
        d.mkdir()
    recs = app.train_population(cfgs, rcs, dirs, label=arm)
    assert [r["status"] for r in recs] == ["ok", "ok"]
    assert all(r["extra"]["engine"] == "population" and r["extra"]["replicas"] == 2 for r in recs)
    assert recs[0]["history"]["train/loss"] != recs[1]["history"]["train/loss"]  # two seeds, two runs
    for d, r in zip(dirs, recs):
        state = torch.load(d / app.WEIGHTS_FILE, weights_only=True)
        net = build_model(model, (40,), 10, app.regularization_of(rcs[0]).slots, regularizer=arm, **KWARGS[model])
        net.load_state_dict(state["state_dict"])  # a plain module of the model
        assert (d / "csv" / "metrics.csv").exists() or list(d.rglob("metrics.csv"))
        assert r["extra"]["mechanism"]["acc"] == pytest.approx(r["metrics"]["test/acc"], abs=1e-9) or arm == "mc_dropout"
    if arm == "mc_dropout":  # MC evaluation: each replica its own masks, so its own predictive entropy
        assert 0 < recs[0]["extra"]["mc_entropy_test"] != recs[1]["extra"]["mc_entropy_test"]


# ------------------------------------------------------------------------------------ exactness
def test_without_dropout_each_replica_follows_the_plain_loop_of_its_seed(data):
    """vmap of the model's own modules vs a hand-written plain PyTorch loop: 1e-5 over 3 epochs
    (bmm and mm round differently; see test_replicas history: Adam amplifies it over long runs)."""
    seeds = [0, 1, 2]
    recs = population(data, seeds, reg_for("none"), fused=False)
    for seed, r in zip(seeds, recs):
        raw, _, _ = raw_train(data.x_train, data.y_train, seed=seed, epochs=3, batch_size=100, lr=0.01)
        assert r["history"]["train/loss"] == pytest.approx(raw, abs=1e-5)
        assert r["steps"] == 105 and r["epochs_trained"] == 3 and r["status"] == "ok"


def test_the_fused_optimizer_takes_the_same_steps_up_to_rounding(data):
    """The engine's default, the fused kernel, against torch's default implementation: the first
    epoch's losses agree to 1e-5 (later ones part as Adam amplifies rounding), and the weights after
    one step agree to 1e-6."""
    fused, plain = (population(data, [0, 1, 2], reg_for("none"), epochs=1, fused=f) for f in (True, False))
    for a, b in zip(fused, plain):
        assert a["history"]["train/loss"] == pytest.approx(b["history"]["train/loss"], abs=1e-5)
        assert a["history"]["val/loss"] == pytest.approx(b["history"]["val/loss"], abs=1e-5)
    pops = []
    for f in (True, False):
        nets = [net_of(data, s, reg_for("none")) for s in (0, 1)]
        before = [{k: v.detach().clone() for k, v in n.named_parameters()} for n in nets]
        t = Training(nets, [Replica(seed=s, reg=reg_for("none"), lr=0.01) for s in (0, 1)], data, optim_name="adam",
                     batch_size=100, max_epochs=1, eval_batch_size=1000, fused=f)
        assert t.opt.opt.defaults.get("fused") is (True if f else None)  # the kernel that really runs
        loss, _ = t.pop.losses(cross_entropy, data.x_train[:200].view(2, 100, -1), data.y_train[:200].view(2, 100))
        t.opt.zero_grad()
        loss.sum().backward()
        t.opt.step()
        pops.append({k: v.detach().clone() for k, v in t.pop.params.items()})
    for k in pops[0]:
        assert torch.allclose(pops[0][k], pops[1][k], atol=1e-6), k
        first = torch.stack([b[k] for b in before])
        assert (pops[0][k] - first).abs().max() > 1e-3, k  # Adam's first step moves every tensor by ~lr


def test_a_population_of_one_keeps_parity_with_the_plain_loop(data):
    """S = 1 runs the replica's module itself (no vmap): the plain loop's trajectory to 1e-5."""
    r = population(data, [5], reg_for("none"), epochs=3)[0]
    raw, _, _ = raw_train(data.x_train, data.y_train, seed=5, epochs=3, batch_size=100, lr=0.01)
    assert "engine" not in r["extra"]  # a population of one is an ordinary run: its record has no engine keys
    assert r["history"]["train/loss"] == pytest.approx(raw, abs=1e-5)


@pytest.mark.parametrize("model,arm,optim,lr,momentum", [
    ("resmlp", "weight_decay", "adam", 0.01, 0.0),
    ("logreg", "none", "adam", 0.01, 0.0),
    ("mlp", "maxnorm", "sgd", 0.1, 0.9),
    ("cnn1d", "weight_decay", "adam", 0.01, 0.0),
    ("cnn1d", "maxnorm", "sgd", 0.1, 0.9),
])
def test_other_models_and_arms_follow_the_plain_loop_too(small, model, arm, optim, lr, momentum):
    reg = reg_for(arm, "regularizer.maxnorm=0.5") if arm == "maxnorm" else reg_for(arm)  # c small enough to bind
    kw = dict(model=model, optim=optim, lr=lr, momentum=momentum, epochs=2)
    recs = population(small, [4, 9], reg, fused=False, **kw)
    for seed, r in zip([4, 9], recs):
        ref = plain_losses(small, seed, reg, **kw)
        assert r["history"]["train/loss"][0] == pytest.approx(ref[0], abs=1e-5)
        assert r["history"]["train/loss"] == pytest.approx(ref, rel=2e-4)


# ------------------------------------------------------------------------------------ independence
@pytest.mark.parametrize("mode", ["rows", "vmap", "loop"])
def test_gradients_never_cross_replicas(small, mode):
    reg = reg_for("dropout")
    model = "cnn1d" if mode == "loop" else "mlp"
    pop = Population([net_of(small, s, reg, model) for s in range(3)], rows=mode == "rows")
    assert (pop.rows, pop.loop) == (mode == "rows", mode == "loop")
    x = small.x_train[:300].view(3, 100, 40)
    y = small.y_train[:300].view(3, 100)
    loss, _ = pop.losses(cross_entropy, x, y)
    grads = torch.autograd.grad(loss[1], list(pop.params.values()))
    for g in grads:
        assert g[1].abs().sum() > 0
        assert torch.equal(g[0], torch.zeros_like(g[0])) and torch.equal(g[2], torch.zeros_like(g[2]))


@pytest.mark.parametrize("model, arm, mode", [
    ("mlp", "dropout", "rows"), ("resmlp", "drop_path", "rows"), ("logreg", "none", "rows"),
    ("mlp", "gaussian_dropout", "rows"), ("mlp", "dropconnect", "vmap"), ("cnn1d", "dropout", "loop"),
    ("cnn1d", "spatial_dropout", "loop")])
def test_row_wise_models_fold_their_replicas_into_one_batch_conv_models_loop_the_others_run_under_vmap(
        small, model, arm, mode):
    reg = reg_for(arm)
    nets = [net_of(small, s, reg, model) for s in range(2)]
    assert (Population(nets).rows, Population(nets).loop) == (mode == "rows", mode == "loop")
    assert not Population(nets, rows=False).rows and not Population(nets[:1]).rows  # asked off; S = 1
    assert not Population(nets, loop=False).loop and not Population(nets[:1]).loop
    from regbench.engine.population import loop_preferred

    assert loop_preferred(nets[0]) == (model == "cnn1d")
    with torch.device("meta"):
        off_cpu = net_of(small, 0, reg, model)
    assert not loop_preferred(off_cpu)  # off the CPU (a GPU): vmap's grouped convolution
    if mode == "rows":  # and rows mode keeps the module's own layers apart from Linear's batched form
        assert {type(m).__name__ for m in Population(nets).base.modules()} >= {"RowsLinear"}
        subclass = type("Centred", (type(nets[0]),), {"forward": lambda self, x: super(type(self), self).forward(
            x - x.mean(0))})  # mixes rows: it must declare rows_independent itself to fold
        for n in nets:
            n.__class__ = subclass
        assert not Population(nets).rows


def dropout_then_identity() -> nn.Module:
    """Dropout(0.5) on 200 units, then the identity map (a population needs a parameter to stack): its
    output is zero exactly where a unit was dropped."""
    from regbench.regularizers.layers import Dropout

    lin = nn.Linear(200, 200)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(200))
        lin.bias.zero_()
    return nn.Sequential(Dropout(0.5), lin)


@pytest.mark.parametrize("rows", [True, False], ids=["rows", "vmap"])
def test_a_schedule_reaches_every_replica_once_the_population_has_run(rows):
    """set_rates after a first forward (as a schedule does between epochs): each replica then drops at
    its new rate, in rows mode too (whose bound tensors must follow)."""
    pop = Population([dropout_then_identity(), dropout_then_identity()], rows=rows)
    assert pop.rows == rows
    x = torch.ones(1000, 200)
    pop.forward(x, shared=True)
    base = {k: v.clone() for k, v in pop.buffers.items() if k in pop.rate_buffers()}
    pop.set_rates(base, torch.tensor([0.0, 1.8]))  # rates 0 and 0.9
    dropped = (pop.forward(x, shared=True) == 0).double().mean((1, 2))
    assert dropped[0] == 0 and abs(dropped[1] - 0.9) < 0.01  # 200,000 units: SE 0.0007


@pytest.mark.parametrize("arm", ["none", "maxnorm", "weight_decay"])
def test_rows_mode_trains_exactly_as_vmap_does(small, arm):
    """Without noise both modes compute the same functions of the same weights: the same records."""
    reg = reg_for(arm)
    runs = {}
    for rows in (True, False):
        nets = [net_of(small, s, reg) for s in range(3)]
        members = [Replica(seed=s, reg=reg, lr=0.01) for s in range(3)]
        runs[rows], _, _ = fit(nets, members, small, optim_name="adam", batch_size=100, max_epochs=3,
                               eval_batch_size=1000, rows=rows)
    for a, b in zip(runs[True], runs[False]):
        assert a["history"]["train/loss"] == pytest.approx(b["history"]["train/loss"], abs=1e-5)
        assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-5)


@pytest.mark.parametrize("arm", ["none", "maxnorm", "weight_decay"])
def test_loop_mode_trains_exactly_as_vmap_does(small, arm):
    """A conv model's replicas one after another (loop mode) and batched by vmap: without noise, the
    same functions of the same weights, so the same records."""
    reg = reg_for(arm)
    runs = {}
    for loop in (True, False):
        nets = [net_of(small, s, reg, "cnn1d") for s in range(3)]
        members = [Replica(seed=s, reg=reg, lr=0.01) for s in range(3)]
        runs[loop], pop, _ = fit(nets, members, small, optim_name="adam", batch_size=100, max_epochs=3,
                                 eval_batch_size=1000, loop=loop)
        assert pop.loop == loop
    for a, b in zip(runs[True], runs[False]):
        assert a["history"]["train/loss"] == pytest.approx(b["history"]["train/loss"], abs=1e-5)
        for k, v in a["metrics"].items():  # an accuracy may differ by one example whose top two logits tie
            assert v == pytest.approx(b["metrics"][k], abs=1.01 / len(small.y_val) if k.endswith("acc") else 1e-5), k
    assert runs[True][0]["history"]["train/loss"] != runs[True][1]["history"]["train/loss"]  # replicas differ


def test_replicas_with_other_learning_rates_and_weight_decay_do_not_change_a_replica(small):
    """Without dropout a replica is deterministic: its record in a mixed population (other lr,
    other weight decay, other seed) equals its record in a population of itself alone."""
    mixed = population(small, [0, 0, 1], [reg_for("weight_decay"), reg_for("none"), reg_for("weight_decay")],
                       lr=[0.01, 0.003, 0.03], epochs=3)
    alone = population(small, [0, 0], [reg_for("weight_decay"), reg_for("none")], lr=[0.01, 0.003], epochs=3)
    for a, b in zip(mixed[:2], alone):
        assert a["history"]["train/loss"] == pytest.approx(b["history"]["train/loss"], abs=1e-6)
        assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6)
    assert mixed[0]["history"]["train/loss"] != mixed[1]["history"]["train/loss"]  # lr and decay do act
    # and a replica at lr 0.003 follows the plain loop at lr 0.003
    ref = plain_losses(small, 0, reg_for("none"), lr=0.003, epochs=3)
    assert mixed[1]["history"]["train/loss"] == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("model", ["mlp", "cnn1d"])  # rows mode, loop mode
def test_each_replica_drops_at_its_own_rate(small, model):
    """A p=0 replica in a population with p=0.5 ones trains exactly as a dropout-free run of its seed:
    its rate is its own, and no mask of another replica reaches it."""
    off = reg_for("dropout", "regularizer.dropout.p=0.0", "regularizer.dropout.conv_p=0.0")
    regs = [off, reg_for("dropout", "regularizer.dropout.conv_p=0.5"), reg_for("dropout")]
    recs = population(small, [3, 3, 4], regs, epochs=3, model=model, fused=False)
    ref = plain_losses(small, 3, reg_for("none"), epochs=3, model=model)
    assert recs[0]["history"]["train/loss"] == pytest.approx(ref, abs=1e-5)
    assert recs[1]["history"]["train/loss"][0] > recs[0]["history"]["train/loss"][0] + 0.03  # p = 0.5 does drop


def test_two_populations_of_the_same_members_give_the_same_records(small):
    reg = reg_for("dropout", "regularizer.dropout.input_p=0.2")
    a, b = population(small, [3, 4], reg, epochs=2), population(small, [3, 4], reg, epochs=2)
    assert [r["history"] for r in a] == [r["history"] for r in b]
    twins = population(small, [3, 3], reg, epochs=2)  # the same seed twice with dropout: masks differ
    assert twins[0]["history"]["train/loss"] != twins[1]["history"]["train/loss"]


# ------------------------------------------------------------------------------------ per-replica stopping
def test_replicas_stop_early_on_their_own_epochs_and_restore_their_own_best(small):
    from regbench.regularizers.criteria import Patience
    from regbench.regularizers.early_stopping import one_minus

    reg = reg_for("dropout_early_stop", "regularizer.early_stop.patience=3", max_epochs=40)
    recs = population(small, list(range(6)), reg, epochs=40)
    stops = [r["stopped_epoch"] for r in recs]
    assert all(s is not None for s in stops) and len(set(stops)) > 1, stops
    for r in recs:
        h = r["history"]
        assert r["stopped_early"] and r["restored_best"] and r["status"] == "ok"
        assert r["epochs_trained"] == r["stopped_epoch"] + 1 == len(h["epoch"])
        assert r["steps"] == 10 * r["epochs_trained"]
        assert r["best_epoch"] == h["val/acc"].index(max(h["val/acc"]))
        crit = Patience(3)
        crit.describe_as("val/acc", one_minus)
        fired = [crit.update(1 - a, l) for a, l in zip(h["val/acc"], h["train/loss"])]
        assert fired.index(True) == r["stopped_epoch"] and r["stop_reason"] == crit.reason
        assert r["metrics"]["val/acc"] == pytest.approx(h["val/acc"][r["best_epoch"]], abs=1e-9)


@pytest.mark.parametrize("optim,lr,momentum", [("adam", 0.01, 0.0), ("sgd", 0.1, 0.9)])
def test_replicas_that_keep_training_after_others_stopped_are_unaffected(small, optim, lr, momentum):
    reg = reg_for("early_stop", "regularizer.early_stop.patience=2", max_epochs=25)
    seeds = [0, 1, 2, 3]
    together = population(small, seeds, reg, optim=optim, lr=lr, momentum=momentum, epochs=25)
    assert len({r["stopped_epoch"] for r in together}) > 1  # the stack was compacted at least once
    for seed, r in zip(seeds, together):
        alone = population(small, [seed, seed], reg, optim=optim, lr=lr, momentum=momentum, epochs=25)[0]
        assert r["history"]["epoch"] == alone["history"]["epoch"]
        assert r["history"]["train/loss"] == pytest.approx(alone["history"]["train/loss"], abs=1e-6)
        assert (r["best_epoch"], r["stopped_epoch"]) == (alone["best_epoch"], alone["stopped_epoch"])
        assert r["metrics"] == pytest.approx(alone["metrics"], abs=1e-6)


def test_restored_weights_are_the_best_epochs_weights(small):
    reg = reg_for("early_stop", "regularizer.early_stop.patience=2", max_epochs=20)
    recs = population(small, [0, 1], reg, optim="sgd", lr=0.1, momentum=0.9, epochs=20, fused=False)
    for seed, r in zip([0, 1], recs):
        assert r["restored_best"] and r["stopped_epoch"] > r["best_epoch"]
        net = plain_net(small, seed, reg, optim="sgd", lr=0.1, momentum=0.9, epochs=r["best_epoch"] + 1)
        for split, (x, y) in {"val": (small.x_val, small.y_val), "test": (small.x_test, small.y_test)}.items():
            m = evaluate(net, x, y)
            assert r["metrics"][f"{split}/acc"] == pytest.approx(m["acc"], abs=1e-9)
            assert r["metrics"][f"{split}/loss"] == pytest.approx(m["loss"], abs=1e-5)


def test_a_diverging_replica_does_not_affect_the_others(small):
    reg = reg_for("none")
    clean = population(small, [0, 2], reg, epochs=3)
    nets = [net_of(small, s, reg) for s in (0, 1, 2)]
    with torch.no_grad():
        nets[1].head.weight.mul_(1e38)  # logits overflow: the loss is not finite
    recs = population(small, [0, 1, 2], reg, epochs=3, nets=nets)
    bad = recs[1]
    assert bad["status"] == "diverged" and bad["diverged_epoch"] == 0 and "non-finite" in bad["error"]
    assert bad["epochs_trained"] == 1 and not math.isfinite(bad["history"]["train/loss"][0])
    for good, ref in zip([recs[0], recs[2]], clean):
        assert good["status"] == "ok" and good["diverged_epoch"] is None
        for k in ("train/loss", "train/acc", "val/loss", "val/acc"):
            assert good["history"][k] == pytest.approx(ref["history"][k], abs=1e-6)


def test_replicas_of_other_architectures_are_refused(small):
    with pytest.raises(NotStackable, match="architecture"):
        Population([net_of(small, 0, reg_for("none")), net_of(small, 0, reg_for("none"), model="resmlp")])


# ------------------------------------------------------------------------------------ memory
def test_a_population_too_big_for_memory_is_refused_before_training_with_the_estimate(small):
    net = net_of(small, 0, reg_for("none"))
    one = memory.check(1, net, small, batch_size=100, optim_name="adam", eval_chunk=1000)
    assert memory.check(1000, net, small, batch_size=100, optim_name="adam", eval_chunk=1000) == 1000 * one
    with pytest.raises(memory.PopulationMemoryError, match=r"a population of 1000 replicas needs about [0-9.]+ GiB"):
        memory.check(1000, net, small, batch_size=100, optim_name="adam", eval_chunk=1000, available=10 * one)


# ------------------------------------------------------------------------------------ distribution (slow)
@pytest.mark.slow
@pytest.mark.parametrize("arm,model", [("none", "mlp"), ("dropout", "mlp"), ("dropout_early_stop", "mlp"),
                                       ("spatial_dropout", "cnn1d")])
def test_population_and_separate_runs_agree_in_distribution(arm, model, tmp_path):
    """20 seeds both ways: mean test accuracy within 3 standard errors of the difference."""
    from omegaconf import OmegaConf

    from regbench import app
    from test_training import train_in_process

    seeds = list(range(20))
    over = [f"regularizer={arm}", f"model={model}", "trainer.max_epochs=15", "trainer.progress_every=0",
            "logger=csv"]
    cfg = compose(over)
    cfgs = [OmegaConf.merge(cfg, {"seed": s}) for s in seeds]
    dirs = [tmp_path / "pop" / str(s) for s in seeds]
    for d in dirs:
        d.mkdir(parents=True)
    st = [r["metrics"]["test/acc"] for r in app.train_population(cfgs, [validate(c) for c in cfgs], dirs, "t")]
    sep = [train_in_process(tmp_path / str(s), *over, f"seed={s}")["metrics"]["test/acc"] for s in seeds]
    diff = statistics.mean(st) - statistics.mean(sep)
    se = math.sqrt(statistics.variance(st) / len(st) + statistics.variance(sep) / len(sep))
    assert abs(diff) < 3 * se, (diff, se, statistics.mean(st), statistics.mean(sep))


@pytest.mark.slow
def test_a_replica_of_a_mixed_population_matches_a_population_of_its_own_rate_in_distribution():
    """p=0.1 replicas among p=0.5 ones vs a population of p=0.1 replicas only: 20 seeds each."""
    from regbench.data import build_data

    d = build_data("mnist1d", root=os.environ["REGBENCH_DATA"], val_size=500, split_seed=0, train_size=1000,
                   generator_seed=42)
    low, high = reg_for("dropout", "regularizer.dropout.p=0.1"), reg_for("dropout", "regularizer.dropout.p=0.5")
    seeds = list(range(20))
    mixed = population(d, seeds * 2, [low] * 20 + [high] * 20, epochs=10)[:20]
    pure = population(d, seeds, low, epochs=10)
    a, b = [r["metrics"]["test/acc"] for r in mixed], [r["metrics"]["test/acc"] for r in pure]
    diff = statistics.mean(a) - statistics.mean(b)
    se = math.sqrt(statistics.variance(a) / 20 + statistics.variance(b) / 20)
    assert abs(diff) < 3 * se, (diff, se)


# ------------------------------------------------------------------------------------ what Lightning users expect
def test_the_debug_preset_is_a_quick_whole_run(tmp_path):
    from conftest import cli

    r = cli("debug=quick", f"runs_root={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    (record_file,) = list((tmp_path / "debug").rglob("results.json"))
    import json

    rec = json.loads(record_file.read_text())
    assert rec["status"] == "ok" and rec["epochs_trained"] == 2 and rec["steps"] == 2 * 5  # 500 examples / 100
    run = record_file.parent
    assert (run / "best.ckpt").exists() and (run / "run.log").exists() and list(run.glob("events.out.tfevents.*"))
    assert "epoch 1/2" in r.stderr and "epoch 2/2" in r.stderr  # progress_every=1


def test_a_population_trains_in_bf16_mixed_precision(small):
    """trainer.precision=bf16-mixed: Lightning's autocast wraps the epoch, vmap included."""
    reg = reg_for("dropout")
    nets = [net_of(small, s, reg) for s in (0, 1)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recs = population(small, [0, 1], reg, epochs=2, nets=nets)
    fp32 = population(small, [0, 1], reg, epochs=2)
    for a, b in zip(recs, fp32):
        assert a["status"] == "ok" and a["history"]["train/loss"][1] < a["history"]["train/loss"][0]
        assert a["history"]["train/loss"] != b["history"]["train/loss"]  # bf16 arithmetic did happen


def test_gradient_clipping_bounds_each_replicas_own_step(small):
    """trainer.gradient_clip_val: with SGD (no momentum) at lr 1, a clipped replica's first step moves
    its weights by at most the clip norm, whatever the other replicas' gradients."""
    reg = reg_for("none")
    members = [Replica(seed=s, reg=reg, lr=1.0) for s in (0, 1)]
    nets = [net_of(small, s, reg) for s in (0, 1)]
    before = [torch.cat([p.detach().flatten() for p in n.parameters()]) for n in nets]
    from regbench.engine.fit import Training

    t = Training(nets, members, small, optim_name="sgd", batch_size=1000, max_epochs=1, eval_batch_size=1000,
                 clip=0.05)
    t.run_epoch(0)  # one step: 1000 examples, batch 1000
    for i, b in enumerate(before):
        after = torch.cat([t.pop.params[k][i].detach().flatten() for k in t.pop.params])
        assert (after - b).norm() == pytest.approx(0.05, rel=1e-3)  # clipped to the bound (the raw norm is larger)
    unclipped = Training([net_of(small, s, reg) for s in (0, 1)], members, small, optim_name="sgd", batch_size=1000,
                         max_epochs=1, eval_batch_size=1000)
    unclipped.run_epoch(0)
    moved = torch.cat([unclipped.pop.params[k][0].detach().flatten() for k in unclipped.pop.params]) - before[0]
    assert moved.norm() > 0.1


def test_rows_mode_follows_rates_edited_in_place_on_the_population_and_on_the_base():
    """Rows mode caches its per-row rate tensor between calls (the thresholds live on it): an in-place
    edit of the population's rates reaches the masks, and one of the per-row tensor the base holds is
    undone (the population's rates are the truth)."""
    pop = Population([dropout_then_identity(), dropout_then_identity()], rows=True)
    x = torch.ones(1000, 200)
    dropped = lambda: (pop.forward(x, shared=True) == 0).double().mean((1, 2))  # noqa: E731
    assert (abs(dropped() - 0.5) < 0.01).all()                  # 200,000 units: SE 0.0011
    k = pop.rate_buffers()[0]
    pop._buffers[k].fill_(0.0)
    assert (dropped() == 0).all()
    pop._buffers[k].fill_(0.5)
    assert (abs(dropped() - 0.5) < 0.01).all()
    pop.base[0]._buffers["rate"].fill_(0.0)
    assert (abs(dropped() - 0.5) < 0.01).all()
