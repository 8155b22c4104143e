"""What each experiment logger receives, read back with its own reader; the saved weights and
`python -m regbench.evaluate`; the epoch progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import cli, compose, python, tiny
from regbench.app import _hparams, train
from regbench.config import validate


def records(root: Path) -> dict[Path, dict]:
    return {p.parent: json.loads(p.read_text()) for p in root.rglob("results.json")}


def session_hparams(run_dir: Path) -> tuple[dict, set[str], dict]:
    """(hparams of the run's hparams-plugin session, hparams-plugin tags, scalar tag -> [(step, value)])."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata
    from tensorboard.util import tensor_util

    hp, plugin_tags, scalars = {}, set(), {}
    for f in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(f)).Load():
            for v in event.summary.value:
                plugin = v.metadata.plugin_data.plugin_name
                if plugin == metadata.PLUGIN_NAME:
                    plugin_tags.add(v.tag)
                    if v.tag == metadata.SESSION_START_INFO_TAG:
                        info = metadata.parse_session_start_info_plugin_data(v.metadata.plugin_data.content)
                        for k, value in info.hparams.items():
                            hp[k] = getattr(value, value.WhichOneof("kind"))
                elif plugin == "scalars":
                    scalars.setdefault(v.tag, []).append((event.step, float(tensor_util.make_ndarray(v.tensor))))
    return hp, plugin_tags, scalars


def tensorboard_experiment(logdir: Path):
    """The HParams dashboard's experiment, as TensorBoard's own hparams backend computes it."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    tb = base_plugin.TBContext(logdir=str(logdir), multiplexer=mux,
                               data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir)))
    ctx, backend = context.RequestContext(), backend_context.Context(tb)
    exp = backend.experiment_from_metadata(ctx, "", True, backend.hparams_metadata(ctx, ""),
                                           backend.hparams_from_data_provider(ctx, "", None))
    return exp, sorted(mux.Runs())


def test_tensorboard_hparams_of_a_mixed_sweep_keep_every_swept_key(tmp_path):
    r = cli("-m", "regularizer=dropout,early_stop", "seed=0,1", *tiny(), f"runs_root={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    recs = records(tmp_path)
    assert len(recs) == 4
    for run_dir, rec in recs.items():
        hp, plugin_tags, scalars = session_hparams(run_dir)
        # flattened with OmegaConf: every key the run has, none of the absent ones, no 'None' strings
        if rec["regularizer"] == "dropout":
            assert hp["regularizer.dropout.p"] == 0.5 and "regularizer.early_stop.patience" not in hp
        else:
            assert hp["regularizer.early_stop.patience"] == 20 and not any(k.startswith("regularizer.dropout") for k in hp)
        assert "None" not in hp.values() and hp["regularizer.name"] == rec["regularizer"]
        assert hp["seed"] == str(rec["seed"])  # shown as 0, not 0.0000 (the plugin has no integer type)
        assert "data.download" not in hp and "data.root" not in hp  # not hyperparameters
        # session records only: no per-run experiment record (TensorBoard would take one run's keys for all)
        assert plugin_tags == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
        # curves per epoch, the test metrics once at the last epoch in a group sorted after the curves
        assert [s for s, _ in scalars["val/acc"]] == [0, 1, 2]
        assert scalars["z_final/test_acc"] == [(2, pytest.approx(rec["metrics"]["test/acc"], abs=1e-6))]
        assert not any(t.startswith("hp/") for t in scalars)
        assert sorted({t.split("/")[0] for t in scalars}) == ["train", "val", "z_final"]

    exp, runs = tensorboard_experiment(tmp_path / "default")
    assert runs == sorted(p.name for p in recs)  # run names are the run folders: no `/tb` suffix
    infos = {h.name: h for h in exp.hparam_infos}
    assert {"regularizer.dropout.p", "regularizer.early_stop.patience"} <= set(infos)
    # the keys that vary come first (the dashboard ticks the first five); constant ones after
    names = [h.name for h in exp.hparam_infos]
    assert names[:2] == ["regularizer.name", "seed"] and infos["seed"].differs
    assert sorted(infos["seed"].domain_discrete) == ["0", "1"]
    assert not infos["data.name"].differs and not infos["regularizer.dropout.p"].differs
    assert {m.name.tag for m in exp.metric_infos} >= {"z_final/test_acc", "val/acc", "train/loss"}


def train_with(tmp_path: Path, *overrides: str) -> dict:
    cfg = compose([*tiny(*overrides), f"runs_root={tmp_path}"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return train(validate(cfg), run_dir, data_keys=[k for k in cfg.data if k != "name"],
                 model_keys=[k for k in cfg.model if k != "name"], hparams=_hparams(cfg))


def test_csv_logger_writes_curves_test_metrics_and_hparams(tmp_path):
    import pandas as pd
    import yaml

    rec = train_with(tmp_path, "logger=csv", "regularizer=dropout", "seed=2")
    metrics = pd.read_csv(tmp_path / "run" / "csv" / "metrics.csv")
    assert list(metrics["val/acc"].dropna()) == pytest.approx(rec["history"]["val/acc"], abs=1e-6)
    assert metrics["test/acc"].dropna().tolist() == pytest.approx([rec["metrics"]["test/acc"]])
    hp = yaml.safe_load((tmp_path / "run" / "csv" / "hparams.yaml").read_text())
    assert hp["regularizer.dropout.p"] == 0.5 and hp["seed"] == 2 and "regularizer.early_stop.patience" not in hp
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_mlflow_logger_writes_a_local_store_with_the_same_metrics_and_hparams(tmp_path):
    mlflow = pytest.importorskip("mlflow", reason="logger=mlflow is optional: pip install -e '.[mlflow]'")
    rec = train_with(tmp_path, "logger=mlflow", "regularizer=dropout", "seed=2", "name=mlf")
    assert (tmp_path / "mlflow.db").is_file()
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("mlf").experiment_id])
    assert run.info.run_name == "run"
    assert run.data.metrics["test/acc"] == pytest.approx(rec["metrics"]["test/acc"])
    assert run.data.params["regularizer.dropout.p"] == "0.5" and run.data.params["seed"] == "2"
    assert "regularizer.early_stop.patience" not in run.data.params
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(rec["history"]["val/acc"], abs=1e-6)


def test_an_unknown_logger_is_refused_with_hydras_list(tmp_path):
    r = cli("logger=wandb", *tiny(), f"runs_root={tmp_path}")
    assert r.returncode != 0 and "tensorboard" in r.stderr and "csv" in r.stderr and "mlflow" in r.stderr


def test_evaluate_reloads_the_saved_weights_safely_and_reproduces_the_record(tmp_path, capsys):
    r = cli("regularizer=early_stop", "regularizer.early_stop.patience=2", "trainer.max_epochs=25",
            "trainer.progress_every=0", "seed=1", f"runs_root={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    ((run_dir, rec),) = records(tmp_path).items()
    assert rec["restored_best"]  # the saved weights are the restored best epoch's, which were tested
    saved = torch.load(run_dir / "best.ckpt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in saved["state_dict"].values())
    assert saved["meta"]["best_epoch"] == rec["best_epoch"] and saved["meta"]["restored_best"]

    from regbench.evaluate import main as evaluate_main  # in this process: the CLI's start-up only once

    def evaluate(*args):
        code = evaluate_main([str(run_dir), *args])
        out, err = capsys.readouterr()
        return code, out, err

    saved_json = tmp_path / "eval.json"
    code, out, err = evaluate("--out", str(saved_json))
    assert code == 0, err
    got = json.loads(out)
    assert got == json.loads(saved_json.read_text())
    for k in ("test/acc", "val/acc", "train/acc"):
        assert got[k] == rec["metrics"][k], k
    assert math.isclose(got["test/loss"], rec["metrics"]["test/loss"], rel_tol=1e-6)

    # other data: a smaller training split (its normalisation statistics change, so the numbers move a little)
    code, out, err = evaluate("--set", "data.train_size=700")
    assert code == 0, err
    assert abs(json.loads(out)["test/acc"] - rec["metrics"]["test/acc"]) < 0.05
    # data whose inputs do not fit the network: refused with the reason, exit 2
    code, out, err = evaluate("--data", "digits")
    assert code == 2 and "digits" in err
    missing = python("-m", "regbench.evaluate", str(tmp_path / "nothing"))  # the real command line
    assert missing.returncode == 2 and "no results.json" in missing.stderr


def test_the_progress_bar_counts_epochs(tmp_path, capfd):
    train_with(tmp_path, "trainer.progress_bar=true", "trainer.max_epochs=4")
    err = capfd.readouterr().err
    assert "4/4" in err and "epoch" in err and "val/acc=" in err
    assert "1/1" not in err  # Lightning's stock bar would count the one batch of each epoch
