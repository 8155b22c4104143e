"""Command-line mistakes Hydra answers unhelpfully, caught before it composes the config.

- `+experiment=NAME`: the `experiment` group is optional in the defaults list (lightning-hydra-
  template's convention), so it is chosen with `experiment=NAME`; `+` would add it a second time
  ("Multiple values for experiment"). It is rewritten to `experiment=NAME`, with a note.
- `experiment=NAME` without `-m`: a preset is a whole sweep (its grid is in hydra.sweeper.params);
  without -m Hydra would quietly run its first job only. Refused, saying to add -m.
- `regularizer.dropout.p=0.3` with an arm that has no dropout (the default arm is `none`): Hydra
  suggests `+regularizer.dropout.p=...`, which then fails on the missing `kind`. Refused, naming
  the arms that have the component (`regularizer=dropout`).
Refusals print `regbench: ...` and exit with status 2.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ARMS_DIR = Path(__file__).resolve().parents[2] / "conf" / "regularizer"
_COMPONENT = re.compile(r"^(\+{0,2})regularizer\.([A-Za-z_]+)\.[A-Za-z_.]+=")


def _arm_keys(arm: str, seen: frozenset = frozenset()) -> set[str]:
    """The top-level keys an arm's YAML sets, with those of the arms in its defaults list."""
    from omegaconf import OmegaConf

    path = ARMS_DIR / f"{arm}.yaml"
    if arm in seen or not path.is_file():
        return set()
    doc = OmegaConf.to_container(OmegaConf.load(path)) or {}
    keys = {k for k in doc if k not in ("defaults", "name")}
    for entry in doc.get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_":
            keys |= _arm_keys(entry, seen | {arm})
    return keys


def _chosen_arms(args: list[str]) -> list[str] | None:
    """The arms the command line picks (a comma list for a sweep); None when it cannot tell (a preset,
    or a sweep function such as glob())."""
    if any(a.startswith(("experiment=", "+experiment=")) for a in args):
        return None
    for a in args:
        if a.startswith("regularizer="):
            value = a.split("=", 1)[1]
            return None if "(" in value else [v.strip() for v in value.split(",")]
    return ["none"]


def _fail(message: str) -> None:
    print(f"regbench: {message}", file=sys.stderr)
    sys.exit(2)


def check(argv: list[str]) -> list[str]:
    """argv with `+experiment=` rewritten; exits 2 on the mistakes above."""
    head, args = argv[:1], argv[1:]
    multirun = any(a in ("-m", "--multirun") for a in args)
    fixed = []
    for a in args:
        if a.startswith("+experiment="):
            a = a[1:]
            print(f"regbench: note: the experiment group is chosen with {a} (no '+')", file=sys.stderr)
        fixed.append(a)
    preset = next((a for a in fixed if a.startswith("experiment=")), None)
    if preset and not multirun and not any(a.startswith(("--cfg", "--help", "-h", "--info", "-c")) for a in fixed):
        _fail(f"{preset} is a preset sweep: run it with -m (python run.py -m {preset})")
    arms = _chosen_arms(fixed)
    if arms:
        all_arms = sorted(p.stem for p in ARMS_DIR.glob("*.yaml"))
        for a in fixed:
            m = _COMPONENT.match(a)
            if not m:
                continue
            component = m.group(2)
            having = sorted((arm for arm in all_arms if component in _arm_keys(arm)), key=lambda arm: (arm != component, arm))
            lacking = [arm for arm in arms if component not in _arm_keys(arm)]
            if having and lacking:
                _fail(f"{a.lstrip('+')}: the arm regularizer={lacking[0]} has no {component} component; pick "
                      f"an arm that has one, e.g. regularizer={having[0]} {a.lstrip('+')} "
                      f"(arms with {component}: {', '.join(having)})")
    return head + fixed
