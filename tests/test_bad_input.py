"""Bad input is refused before training: exit status 2, a message naming the key, the value and
what is allowed, and nothing written anywhere (no run folder, no record, nothing outside runs_root).

BAD lists every input that a probe (tracker issue 17) found not refused up front: 13 that failed
after the run started (leaving a folder and a `failed` record), 2 that crashed with a traceback, 8
that were accepted silently, and the path escapes. Each goes through the real composed config and
regbench's real entry (`app.run`, after Hydra's resolution of the run folder, as `run.py` does), in
this process; CLI_CASES send a few of them through `python run.py` itself. Checks that need the
data (sizes against the dataset, data.root) run after loading it but before anything is written.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from omegaconf import OmegaConf, read_write

from conftest import CONF, cli

# (overrides, what the message must say); {file} is a plain file, {empty} an empty folder
BAD = [
    # failed after the run started
    ("data.val_size=4001", "data.val_size=4001 is out of range for mnist1d: allowed [1, 3999]"),
    ("data.val_size=4000", "data.val_size=4000 is out of range for mnist1d: allowed [1, 3999]"),
    ("data.train_size=100000", "data.train_size=100000 is out of range for mnist1d: allowed [1, 3500]"),
    ("optim.lr=1e308", "optim.lr=1e+308 is out of range: allowed (0, 3.40282e+38]"),
    ("seed=4294967296", "seed=4294967296 is out of range: allowed [0, 4294967295]"),
    ("model.hidden=1000000000", "model.hidden=1000000000 is out of range: allowed [1, 65536]"),
    ("data=digits data.resize=[0,0]", "data.resize=[0, 0] is not allowed: [H, W] with H and W in [1, 4096]"),
    ("data=digits data.resize=[8]", "data.resize=[8] is not allowed: [H, W] with H and W in [1, 4096]"),
    ("trainer.devices=abc", "trainer.devices='abc' is not allowed: a positive integer, auto, or a list"),
    ("trainer.devices=0", "trainer.devices=0 is not allowed: a positive integer, auto, or a list"),
    ("data.root={file}", "data.root='{file}' cannot hold the mnist1d cache"),
    ("data.root=/proc/regbench-unwritable", "data.root='/proc/regbench-unwritable' cannot hold the mnist1d cache"),
    ("data=cifar10 data.download=false data.root={empty}", "data.root='{empty}': missing"),
    # crashed
    ("regularizer=dropout regularizer.dropout.p=abc", "regularizer.dropout.p: Value 'abc' of type 'str' could not be converted to Float"),
    ("runs_root={file}", "runs_root='{file}': {file} exists and is not a folder: allowed a folder"),
    # accepted silently
    ("optim.lr=inf", "optim.lr=inf is out of range: allowed (0, 3.40282e+38]"),
    ("regularizer=weight_decay regularizer.weight_decay=inf", "regularizer.weight_decay=inf is out of range: allowed [0, 3.40282e+38]"),
    ("optim.batch_size=1000000", "optim.batch_size=1000000 is out of range for mnist1d: allowed [1, 3500]"),
    ("trainer.max_epochs=1000000000000", "trainer.max_epochs=1000000000000 is out of range: allowed [1, 1000000]"),
    ("name=../escape", "name='../escape' is not allowed: a single folder name inside runs_root"),
    ("name=a/b", "name='a/b' is not allowed: a single folder name inside runs_root"),
    ("name=", "name='' is not allowed: a single folder name inside runs_root"),
    # wrote runs and the report outside runs_root; a rejected run removed an empty folder outside it
    ("name=../../outside", "name='../../outside' is not allowed"),
    ("name=.. trainer.max_epochs=0", "name='..' is not allowed"),
    ("name=. seed=-1", "name='.' is not allowed"),
    # another dataset's option added to this one: a TypeError traceback from the loader before
    ("data=digits +data.val_generator_seed=43", "data.val_generator_seed=43 is not an option of data=digits: "
                                                "allowed resize, root, split_seed"),
]
CLI_CASES = ["name=../escape", "runs_root={file}", "regularizer=dropout regularizer.dropout.p=abc",
             "data.val_size=4000"]


@pytest.fixture
def places(tmp_path):
    """A plain file, an empty folder, and the (existing, empty) runs root: nothing may appear inside it."""
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "guard").mkdir()  # a folder beside runs_root that a '..' escape could remove
    return {"file": str(tmp_path / "file"), "empty": str(tmp_path / "empty"), "root": tmp_path / "runs"}


def fill(text: str, places: dict) -> str:
    return text.format(file=places["file"], empty=places["empty"])


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def run_in_process(overrides: list[str]) -> None:
    """What `python run.py OVERRIDES` does up to and through regbench's task: compose, resolve the run
    folder (regbench's resolvers check name and runs_root there), create it as Hydra does, call app.run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from regbench.app import run
    from regbench.naming import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    try:
        HydraConfig.instance().set_config(cfg)
        run_dir = OmegaConf.select(cfg, "hydra.run.dir")
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        with read_write(cfg.hydra.runtime):
            cfg.hydra.runtime.output_dir = run_dir
        HydraConfig.instance().set_config(cfg)
        task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        run(task)
    finally:
        HydraConfig.instance().cfg = None  # no Hydra state leaks into the next test


@pytest.mark.parametrize("overrides, message", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_refused_before_anything_is_written(overrides, message, places, tmp_path, capsys):
    before = tree(tmp_path)
    args = [fill(a, places) for a in overrides.split(" ")]
    if not any(a.startswith("runs_root=") for a in args):
        args.append(f"runs_root={places['root']}")
    with pytest.raises(SystemExit) as exited:
        run_in_process(["trainer.max_epochs=2", "trainer.progress_every=0", *args])  # the case's own values win
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert fill(message, places) in err, err[-2000:]
    assert tree(tmp_path) == before  # no run folder, no record, nothing outside runs_root, nothing removed


def test_the_list_covers_the_probe():
    """Every key the probe found not refused is in BAD (the list is the test's contract)."""
    keys = {a.split("=")[0] for c, _ in BAD for a in c.split(" ")}
    assert {"data.val_size", "data.train_size", "optim.lr", "seed", "model.hidden", "data.resize",
            "trainer.devices", "data.root", "data.download", "regularizer.dropout.p", "runs_root",
            "regularizer.weight_decay", "optim.batch_size", "trainer.max_epochs", "name"} <= keys


def test_bad_input_through_the_command_line(places, tmp_path):
    """The real `python run.py`: exit 2, the message, no folder (a few of BAD, two at a time)."""
    before = tree(tmp_path)
    messages = dict(BAD)
    cases = [(c, fill(messages[c], places)) for c in CLI_CASES]

    def one(case: str):
        args = [fill(a, places) for a in case.split(" ")]
        if not any(a.startswith("runs_root=") for a in args):
            args.append(f"runs_root={places['root']}")
        return cli(*args, "trainer.max_epochs=2")

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, [c for c, _ in cases]))
    for (case, message), r in zip(cases, results):
        assert r.returncode == 2, (case, r.stderr[-2000:])
        assert message in r.stderr and "Traceback" not in r.stderr, (case, r.stderr[-2000:])
    assert tree(tmp_path) == before
