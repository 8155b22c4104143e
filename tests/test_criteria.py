"""Early-stopping criteria (regbench.regularizers.criteria) and an arm's Stopping (early_stopping.py).

The curves are hand-made; the expected stopping epoch of each row follows from the
criterion's formula, worked out in the row's comment (epochs t count from 1; values are
chosen exactly representable in binary where a comparison sits on a boundary).
"""

from __future__ import annotations

import copy
import math
import pickle
import warnings

import pytest
import torch

from regbench.regularizers.criteria import GL, PQ, UP, Criterion, Patience
from regbench.regularizers.early_stopping import Stopping


def run(criterion: Criterion, val: list[float], train: list[float] | None = None) -> int | None:
    """Feed the curves epoch by epoch; the 1-based epoch at which it fires, or None."""
    train = train or [1.0] * len(val)
    for t, (v, tr) in enumerate(zip(val, train), start=1):
        if criterion.update(v, tr):
            return t
    return None


# --------------------------------------------------------------------------------------
# table-driven stopping epochs
# --------------------------------------------------------------------------------------

PATIENCE_CASES = [
    # patience=3, min_delta=0.1: best 1.0 (t1) -> 0.8 (t2, < 0.9) ; t3 0.75 !< 0.7 wait 1 ;
    # t4 0.69 < 0.7 best, wait 0 ; t5 0.7, t6 0.65, t7 0.6 are all !< 0.59: wait 1, 2, 3 -> stop t7
    (Patience(3, 0.1), [1.0, 0.8, 0.75, 0.69, 0.7, 0.65, 0.6, 0.58], 7),
    # min_delta=0: an equal value is no improvement (strict <): t2 wait 1, t3 wait 2 -> stop t3
    (Patience(2), [1.0, 1.0, 1.0, 0.5], 3),
    # steadily improving: never stops
    (Patience(2), [1.0, 0.9, 0.8, 0.7, 0.6], None),
    # patience=0: stops at the first epoch that does not improve (t3)
    (Patience(0), [1.0, 0.5, 0.6, 0.4], 3),
]

GL_CASES = [
    # E_opt = 1, .75, .5, .5, .5, .5 ; GL(t) = 100 (E_va / E_opt - 1) = 0, 0, 0, 3.125, 0, 6.25
    # GL_5: first GL > 5 at t6
    (GL(5), [1.0, 0.75, 0.5, 0.515625, 0.5, 0.53125, 0.4], 6),
    # GL_6.25: 6.25 is not > 6.25 at t6; t7: 100 (0.5390625 / 0.5 - 1) = 7.8125 > 6.25 -> t7
    (GL(6.25), [1.0, 0.75, 0.5, 0.515625, 0.5, 0.53125, 0.5390625], 7),
    # the minimum keeps falling: GL is 0 throughout
    (GL(0.1), [1.0, 0.9, 0.8, 0.7], None),
]

# PQ_0.5 with k=5, one curve (train, val) checked at strip ends t = 5, 10, 15:
#   t5:  strip train 1, .8, .6, .5, .4 -> P_5 = 1000 (3.3 / (5 * .4) - 1) = 650; E_opt = .5, GL = 0 -> PQ 0
#   t10: strip .4, .39, .38, .37, .36 -> P_5 = 1000 (1.9 / 1.8 - 1) = 55.6; E_opt = .49,
#        GL = 100 (.55/.49 - 1) = 12.24 -> PQ 0.220 <= 0.5
#   t15: strip .36, .358, .356, .354, .352 -> P_5 = 1000 (1.78 / 1.76 - 1) = 11.36;
#        GL = 100 (.58/.49 - 1) = 18.37 -> PQ 1.616 > 0.5 -> stop t15
PQ_TRAIN = [1.0, 0.8, 0.6, 0.5, 0.4, 0.4, 0.39, 0.38, 0.37, 0.36, 0.36, 0.358, 0.356, 0.354, 0.352]
PQ_VAL = [1.0, 0.8, 0.6, 0.5, 0.5, 0.49, 0.5, 0.51, 0.52, 0.55, 0.55, 0.56, 0.56, 0.57, 0.58]
PQ_CASES = [
    (PQ(0.5, k=5), PQ_VAL, PQ_TRAIN, 15),
    # PQ_0.2: already 0.220 > 0.2 at t10
    (PQ(0.2, k=5), PQ_VAL, PQ_TRAIN, 10),
    # PQ_2: 1.616 <= 2 at t15, no more strips
    (PQ(2.0, k=5), PQ_VAL, PQ_TRAIN, None),
    # only strip ends count: GL = 100 (.9/.5 - 1) = 80 at t3 is never looked at; at t5 GL = 0
    (PQ(0.5, k=5), [1.0, 0.5, 0.9, 0.6, 0.5], [1.0, 0.8, 0.6, 0.5, 0.4], None),
    # flat training strip: P_5 = 0 and GL > 0 -> PQ = inf -> stop at the strip end t5
    (PQ(0.5, k=5), [1.0, 0.5, 0.6, 0.6, 0.6], [0.3] * 5, 5),
]

# one validation curve for UP; E_va at the even (k=2) strip ends t = 2..12:
#   .9, .7, .72, .65, .74, .8  -> rise? -, no, yes, no, yes, yes
# (the rises at t5 (.75 > .7) and t9 are inside strips and do not count)
UP_VAL = [1.0, 0.9, 0.8, 0.7, 0.75, 0.72, 0.6, 0.65, 0.7, 0.74, 0.73, 0.8]
UP_CASES = [
    (UP(1, k=2), UP_VAL, 6),  # first rise at a strip end: t6
    (UP(2, k=2), UP_VAL, 12),  # two in a row: t10 and t12
    (UP(3, k=2), UP_VAL, None),
    # k=1, every epoch a strip: rises at t5, t8, t9, t10 -> three in a row at t10
    (UP(3, k=1), UP_VAL, 10),
]


@pytest.mark.parametrize("criterion,val,expected", PATIENCE_CASES + GL_CASES)
def test_stopping_epoch(criterion, val, expected):
    assert run(copy.deepcopy(criterion), val) == expected


@pytest.mark.parametrize("criterion,val,train,expected", PQ_CASES)
def test_pq_stopping_epoch(criterion, val, train, expected):
    assert run(copy.deepcopy(criterion), val, train) == expected


@pytest.mark.parametrize("criterion,val,expected", UP_CASES)
def test_up_stopping_epoch(criterion, val, expected):
    assert run(copy.deepcopy(criterion), val) == expected


def test_pq_quantities_follow_the_formula():
    crit = PQ(0.5, k=5)
    for t in range(10):
        crit.update(PQ_VAL[t], PQ_TRAIN[t])
    strip = PQ_TRAIN[5:10]
    p5 = 1000 * (sum(strip) / (5 * min(strip)) - 1)
    gl = 100 * (PQ_VAL[9] / min(PQ_VAL[:10]) - 1)
    assert crit.quantities["P_5"] == pytest.approx(p5)
    assert crit.quantities["GL"] == pytest.approx(gl)
    assert crit.quantities["PQ"] == pytest.approx(gl / p5)
    assert crit.quantities["PQ"] == pytest.approx(0.2204, abs=1e-4)


def test_reasons_name_the_criterion_and_values():
    crit = GL(5)
    assert run(crit, [1.0, 0.75, 0.5, 0.515625, 0.5, 0.53125]) == 6
    # epochs in reasons are 0-based: the 6th update is epoch 5
    assert crit.reason == "GL_5: GL=6.25 > 5 at epoch 5"
    crit = Patience(3, 0.1)
    run(crit, PATIENCE_CASES[0][1])
    assert crit.reason.startswith("Patience_3:") and "stopped at epoch 6" in crit.reason and "0.69 (epoch 3)" in crit.reason
    crit = PQ(0.5, k=5)
    run(crit, PQ_VAL, PQ_TRAIN)
    assert crit.reason.startswith("PQ_0.5: GL/P_5 = 18.37/11.36 = 1.616 > 0.5 at epoch 14")
    crit = UP(2, k=2)
    run(crit, UP_VAL)
    assert crit.reason == "UP_2: validation error rose in 2 successive strips of 2 (0.65 < 0.74 < 0.8) at epoch 11"


def test_fired_criterion_stays_fired():
    crit = GL(1)
    assert run(crit, [1.0, 2.0]) == 2
    reason = crit.reason
    assert crit.update(0.1, 1.0) and crit.reason == reason and crit.epoch == 2


@pytest.mark.parametrize("criterion", [Patience(5), GL(5), PQ(0.5), UP(2)])
def test_non_finite_validation_stops(criterion):
    assert criterion.update(1.0, 1.0) is False
    assert criterion.update(float("nan"), 1.0) is True
    assert "not finite" in criterion.reason and "epoch 1" in criterion.reason


def test_pq_non_finite_training_loss_stops():
    crit = PQ(0.5, k=5)  # a diverged training loss stops at once, not at the strip end
    assert run(crit, [1.0] * 5, [1.0, 1.0, float("inf"), 1.0, 1.0]) == 3
    assert "training loss inf" in crit.reason


def test_ratio_criteria_reject_negative_values():
    with pytest.raises(ValueError, match="negative"):
        GL(5).update(-0.5, 1.0)
    with pytest.raises(ValueError, match="training loss=-1"):
        PQ(0.5).update(0.5, -1.0)


def test_pq_needs_the_training_loss():
    with pytest.raises(ValueError, match="training loss"):
        PQ(0.5).update(0.5)
    assert GL(5).update(0.5) is False  # the others do not


def test_zero_validation_error():
    crit = GL(5)
    assert crit.update(0.0, 1.0) is False  # E_opt = 0 and E_va = 0: GL = 0
    assert crit.update(0.01, 1.0) is True  # any rise over a zero minimum is an infinite GL


# --------------------------------------------------------------------------------------
# argument validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("make,name,value", [
    (lambda: Patience(-1), "patience", "-1"),
    (lambda: Patience(2.5), "patience", "2.5"),
    (lambda: Patience(3, min_delta=-0.1), "min_delta", "-0.1"),
    (lambda: GL(-1), "alpha", "-1"),
    (lambda: GL(float("nan")), "alpha", "nan"),
    (lambda: GL(True), "alpha", "True"),
    (lambda: PQ(-0.5), "alpha", "-0.5"),
    (lambda: PQ(0.5, k=1), "k", "1"),
    (lambda: PQ(0.5, k=2.0), "k", "2.0"),
    (lambda: UP(0), "s", "0"),
    (lambda: UP(1.5), "s", "1.5"),
    (lambda: UP(2, k=0), "k", "0"),
])
def test_argument_validation(make, name, value):
    with pytest.raises(ValueError, match=rf"{name}={value}.*must be"):
        make()


# --------------------------------------------------------------------------------------
# state
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("criterion,val,train,expected", [
    (PATIENCE_CASES[0][0], PATIENCE_CASES[0][1], None, 7),
    (GL_CASES[0][0], GL_CASES[0][1], None, 6),
    (PQ_CASES[0][0], PQ_VAL, PQ_TRAIN, 15),
    (UP_CASES[1][0], UP_VAL, None, 12),
])
@pytest.mark.parametrize("cut", [1, 3, 5])
def test_state_dict_resume_gives_the_same_stop(criterion, val, train, expected, cut):
    train = train or [1.0] * len(val)
    first = copy.deepcopy(criterion)
    first.reset()
    for v, tr in zip(val[:cut], train[:cut]):
        assert not first.update(v, tr)
    state = pickle.loads(pickle.dumps(first.state_dict()))  # what a checkpoint does
    resumed = copy.deepcopy(criterion)
    resumed.reset()
    resumed.load_state_dict(state)
    stop = None
    for t in range(cut, len(val)):
        if resumed.update(val[t], train[t]):
            stop = t + 1
            break
    assert stop == expected


def test_reset_and_load_state_errors():
    crit = GL(1)
    run(crit, [1.0, 2.0])
    crit.reset()
    assert not crit.stopped and crit.epoch == 0 and crit.e_opt == math.inf
    with pytest.raises(KeyError, match="e_opt"):
        GL(1).load_state_dict({"epoch": 1, "stopped": False, "reason": "", "quantities": {}})


# --------------------------------------------------------------------------------------
# the Lightning callback with a fake trainer
# --------------------------------------------------------------------------------------


def test_stopping_mode_max_feeds_the_error_and_its_reason_names_the_accuracy():
    # accuracies .5, .75, .75, .734375 -> errors .5, .25, .25, .265625: GL = 6.25 > 5 at epoch 4
    s = Stopping(GL(5), monitor="val/acc", mode="max")
    assert run(s.criterion, [s.error(v) for v in [0.5, 0.75, 0.75, 0.734375, 0.9]]) == 4
    assert s.criterion.e_opt == 0.25
    # val/acc .5, .75, then no gain: Patience(2) stops at epoch 4 (1-based); its best is 0.75
    s = Stopping(Patience(2), monitor="val/acc", mode="max")
    assert run(s.criterion, [s.error(v) for v in [0.5, 0.75, 0.7, 0.74, 0.9]]) == 4
    assert s.criterion.reason == ("Patience_2: val/acc did not improve by more than 0 on its best 0.75 (epoch 1) "
                                  "for 2 epochs; stopped at epoch 3")
    assert Stopping(GL(5)).error(0.3) == 0.3  # mode min: the value itself


def test_stopping_argument_errors():
    with pytest.raises(ValueError, match="mode='maximum'"):
        Stopping(GL(5), mode="maximum")
    with pytest.raises(TypeError, match="Criterion"):
        Stopping("GL")


# --------------------------------------------------------------------------------------
# Patience against Lightning's own EarlyStopping, in a real (tiny) Lightning fit
# --------------------------------------------------------------------------------------


def _fit(callbacks, val_curve, max_epochs):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    class Curves(pl.LightningModule):
        """Logs a scripted val/loss per epoch; the training itself is trivial (one batch per epoch)."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, i):
            return (self.w * batch[0]).sum()

        def validation_step(self, batch, i):
            self.log("val/loss", val_curve[self.current_epoch], on_epoch=True)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    data = DataLoader(TensorDataset(torch.ones(2, 1)), batch_size=2)
    trainer = pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1,
                         accelerator="cpu", devices=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Curves(), data, data)
    return trainer


def test_patience_stops_where_lightning_early_stopping_does():
    from pytorch_lightning.callbacks import EarlyStopping

    val = PATIENCE_CASES[0][1] + [0.1] * 3
    theirs = EarlyStopping(monitor="val/loss", patience=3, min_delta=0.1, mode="min")
    _fit([theirs], val, max_epochs=len(val))
    assert run(Patience(3, 0.1), val) - 1 == theirs.stopped_epoch == 6  # ours 1-based, Lightning's 0-based
