# regbench. `make run` and `make test` work on a fresh clone: they create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SWEEP  ?= regularizer=none,dropout,early_stop,dropout_early_stop seed=0,1,2
# the sweep folder `make run` prints: SWEEP's name= and runs_root= when it sets them
RUN_DIR = $(or $(patsubst runs_root=%,%,$(filter runs_root=%,$(SWEEP))),runs)/$(or $(patsubst name=%,%,$(filter name=%,$(SWEEP))),default)

.PHONY: setup run test test-slow test-cluster tables bench study study-tuned baselines size-axis clean

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

bench: $(STAMP)   ## speed ratios against baselines measured in the same run -> benchmarks/results.md
	$(PY) benchmarks/bench.py

# $(call timed_study,TARGET,EXPERIMENT,FOLDER,REPORT): the presets EXPERIMENT and EXPERIMENT_sanity,
# their wall-clock time written to FOLDER/timing.json, then REPORT; the sweeps' exit status is kept
define timed_study
	@start=$$(date +%s); \
	$(PY) run.py -m experiment=$(2) && \
	$(PY) run.py -m experiment=$(2)_sanity; status=$$?; \
	printf '{"seconds": %d, "command": "make $(1)", "machine": "%s, %s cores"}\n' \
	  $$(( $$(date +%s) - start )) "$$(uname -m)" "$$(nproc)" > $(3)/timing.json; \
	$(4) && exit $$status
endef

STUDY := experiments/dropout_vs_early_stopping
BASELINES := experiments/mnist1d_baselines
SIZE_AXIS := experiments/dropout_size_equal_steps
size-axis: $(STAMP)   ## claim 5 at equal steps: none and dropout, tuned, at 250 .. 16000 training sequences (timed), and its report
	@start=$$(date +%s); $(PY) run.py -m experiment=dropout_size_equal_steps; status=$$?; \
	printf '{"seconds": %d, "command": "make size-axis", "machine": "%s, %s cores"}\n' \
	  $$(( $$(date +%s) - start )) "$$(uname -m)" "$$(nproc)" > $(SIZE_AXIS)/timing.json; \
	$(PY) $(SIZE_AXIS)/analysis.py $(SIZE_AXIS) && exit $$status

baselines: $(STAMP)   ## the MNIST-1D benchmark's own protocol (4 models x 10 seeds, then the width and step probes) and its report
	$(PY) run.py -m experiment=mnist1d_baselines
	$(PY) run.py -m experiment=mnist1d_baselines model=mlp,resmlp model.hidden=256
	$(PY) run.py -m experiment=mnist1d_baselines model=mlp,resmlp trainer.max_epochs=200
	$(PY) $(BASELINES)/analysis.py $(BASELINES)

study: $(STAMP)   ## the dropout-vs-early-stopping study from scratch (runs already on disk are skipped)
	$(call timed_study,study,dropout_vs_early_stopping,$(STUDY),$(PY) $(STUDY)/analysis.py $(STUDY))

TUNED := experiments/tuned_mnist1d_mlp
study-tuned: $(STAMP)   ## the tuned protocol on the MNIST-1D MLP (7 arms x 16 trials x 3 seeds + 7 x 20 final seeds), timed
	@load0="$$(cut -d' ' -f1-3 /proc/loadavg)"; start=$$(date +%s); \
	$(PY) run.py -m experiment=tuned_mnist1d_mlp; status=$$?; \
	printf '{"seconds": %d, "command": "make study-tuned", "machine": "%s, %s cores", "loadavg_before": "%s", "loadavg_after": "%s"}\n' \
	  $$(( $$(date +%s) - start )) "$$(uname -m)" "$$(nproc)" "$$load0" "$$(cut -d' ' -f1-3 /proc/loadavg)" > $(TUNED)/timing.json; \
	exit $$status

clean:
	rm -rf runs outputs multirun .pytest_cache
