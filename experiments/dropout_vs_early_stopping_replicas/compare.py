"""Do the stacked-replica runs agree with the separate runs of the study? (issue: vectorized replicas)

    python experiments/dropout_vs_early_stopping_replicas/compare.py

For every arm of the MLP settings present in both folders: whether the two 95% bootstrap CIs of
mean test accuracy overlap, and whether the stacked mean lies inside the separate-run CI; plus the
summed training seconds of both engines (fit time per record, as recorded).
"""

from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
KEY = ["data", "model", "regularizer", "config"]

sep = pd.read_csv(HERE.parent / "dropout_vs_early_stopping" / "per_arm.csv")
rep = pd.read_csv(HERE / "per_arm.csv")
m = sep.merge(rep, on=KEY, suffixes=("_sep", "_rep"))
overlap = (m.test_acc_ci95_low_sep <= m.test_acc_ci95_high_rep) & (m.test_acc_ci95_low_rep <= m.test_acc_ci95_high_sep)
inside = m.test_acc_mean_rep.between(m.test_acc_ci95_low_sep, m.test_acc_ci95_high_sep)
seconds = {name: (df[df.config.isin(m.config)].train_seconds_mean * df[df.config.isin(m.config)].seeds_ok).sum()
           for name, df in (("separate", sep), ("stacked", rep))}
print(f"{len(m)} arms in both; 95% CIs overlap for {int(overlap.sum())}; stacked mean inside the separate CI "
      f"for {int(inside.sum())}")
print(f"training seconds summed over the records: separate {seconds['separate']:.0f}, stacked {seconds['stacked']:.0f} "
      f"({seconds['separate'] / seconds['stacked']:.1f}x)")
if (~overlap).any():
    print(m.loc[~overlap, KEY + ["test_acc_mean_sep", "test_acc_mean_rep"]].to_string(index=False))
