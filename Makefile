# regbench. `make run` and `make test` work on a fresh clone: they create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SWEEP  ?= regularizer=none,dropout,early_stop,dropout_early_stop seed=0,1,2
# the sweep folder `make run` prints: SWEEP's name= and runs_root= when it sets them
RUN_DIR = $(or $(patsubst runs_root=%,%,$(filter runs_root=%,$(SWEEP))),runs)/$(or $(patsubst name=%,%,$(filter name=%,$(SWEEP))),default)

# the study's parts run one after another: side by side they would share the 2 cores and their timings
.NOTPARALLEL:
.PHONY: setup run test test-slow test-cluster tables bench study study-fixed study-tuned study-agreement table9 baselines size-axis clean

setup: $(STAMP)

# torch is installed first and pinned: its CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)     ## the default sweep on MNIST-1D (4 arms x 3 seeds, both cores), then its table
	$(PY) run.py -m hydra/launcher=joblib $(SWEEP)
	$(PY) -m regbench.tables $(RUN_DIR)

test: $(STAMP)    ## the test suite (slow tests excluded; see test-slow)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-cluster: $(STAMP)   ## sweeps through a real SLURM cluster (as root, first: scripts/slurm-local.sh start)
	$(PY) -m pytest -q -m cluster tests/test_cluster.py

# --if-changed: a report is rebuilt only when its records (or the reporting code) changed since it was
# written (.report_stamp in each folder); FORCE=1 rebuilds them all.
tables: $(STAMP)  ## regenerate the reports whose records changed (no training); says what it rebuilt
	$(PY) -m regbench.tables --each $(if $(FORCE),,--if-changed) runs experiments
	if [ -f $(STUDY)/per_arm.csv ]; then $(PY) $(STUDY)/analysis.py $(STUDY) $(if $(FORCE),,--if-changed); fi
	if [ -f $(BASELINES)/per_arm.csv ]; then $(PY) $(BASELINES)/analysis.py $(BASELINES) > /dev/null; fi
	if [ -f $(SIZE_AXIS)/per_arm.csv ]; then $(PY) $(SIZE_AXIS)/analysis.py $(SIZE_AXIS) > /dev/null; fi
	if [ -n "$$(find $(TABLE9) -path '*/final/*' -name results.json -print -quit)" ]; then \
	  $(PY) $(TABLE9)/analysis.py $(TABLE9) > /dev/null; fi

bench: $(STAMP)   ## speed ratios against baselines measured in the same run -> benchmarks/results.md
	$(PY) benchmarks/bench.py

# $(call timed,TARGET,FOLDER,COMMANDS): the shell list COMMANDS, its wall-clock time written to
# FOLDER/timing.json (each part of the study times itself); the commands' exit status is kept. A
# rerun (which skips the runs on disk) keeps the committed from-scratch timing and writes its own
# to FOLDER/.timing_rerun.json, unless RETIME=1; so does a run that failed
define timed
	@start=$$(date +%s); mkdir -p $(2); ( $(3) ); status=$$?; \
	out=$(2)/timing.json; if [ $$status -ne 0 ] || { [ -f $$out ] && [ -z "$(RETIME)" ]; }; then \
	  out=$(2)/.timing_rerun.json; fi; \
	printf '{"seconds": %d, "command": "make %s", "machine": "%s, %s cores"}\n' \
	  $$(( $$(date +%s) - start )) "$(1)" "$$(uname -m)" "$$(nproc)" > $$out; echo "$(1): timing in $$out"; exit $$status
endef

STUDY := experiments/dropout_vs_early_stopping
TUNED := experiments/dropout_vs_early_stopping_tuned
AGREEMENT := experiments/dropout_vs_early_stopping_replicas
TABLE9 := experiments/srivastava_table9
BASELINES := experiments/mnist1d_baselines
SIZE_AXIS := experiments/dropout_size_equal_steps
size-axis: $(STAMP)   ## claim 5 at equal steps: none and dropout, tuned, at 250 .. 16000 training sequences (timed), and its report
	$(call timed,size-axis,$(SIZE_AXIS),$(PY) run.py -m experiment=dropout_size_equal_steps)
	$(PY) $(SIZE_AXIS)/analysis.py $(SIZE_AXIS) > /dev/null

baselines: $(STAMP)   ## the MNIST-1D benchmark's own protocol (4 models x 10 seeds, then the width and step probes) and its report
	$(PY) run.py -m experiment=mnist1d_baselines
	$(PY) run.py -m experiment=mnist1d_baselines model=mlp,resmlp model.hidden=256
	$(PY) run.py -m experiment=mnist1d_baselines model=mlp,resmlp trainer.max_epochs=200
	$(PY) $(BASELINES)/analysis.py $(BASELINES)

study-fixed: $(STAMP)   ## the study's first design: 7 arms x 8 settings x 10 seeds at fixed strength, and its sanity sweep (timed)
	$(call timed,study-fixed,$(STUDY),$(PY) run.py -m experiment=dropout_vs_early_stopping && $(PY) run.py -m experiment=dropout_vs_early_stopping_sanity)

study-tuned: $(STAMP)   ## the study's verdicts: every arm tuned with the same declared budget on the MLP settings, then the conv ones (timed)
	$(call timed,study-tuned,$(TUNED),$(PY) run.py -m experiment=dropout_vs_early_stopping_tuned && $(PY) run.py -m experiment=dropout_vs_early_stopping_tuned_conv)

study-agreement: $(STAMP)   ## 3 fixed settings x 7 arms x 10 seeds again, as separate runs (the engine-agreement check, timed)
	$(call timed,study-agreement,$(AGREEMENT),$(PY) run.py -m experiment=dropout_vs_early_stopping_replicas)

table9: $(STAMP)   ## Srivastava et al. Table 9 on the mnist5k digits: L2, max-norm, dropout + L2, dropout + max-norm, tuned (timed), and its report
	$(call timed,table9,$(TABLE9),$(PY) run.py -m experiment=srivastava_table9 && $(PY) run.py -m experiment=srivastava_table9_dropout)
	$(PY) $(TABLE9)/analysis.py $(TABLE9) > /dev/null

# the whole study from scratch (runs already on disk are skipped): every part above, then the report
study: study-fixed study-tuned study-agreement table9 size-axis   ## the dropout-vs-early-stopping study, all its parts, then its report
	$(PY) -m regbench.tables --each $(TUNED) $(AGREEMENT) > /dev/null
	$(PY) $(STUDY)/analysis.py $(STUDY)

clean:
	rm -rf runs outputs multirun .pytest_cache
