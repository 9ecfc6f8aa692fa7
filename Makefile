# The two commands of the README, each installing what it needs on a fresh machine:
#   make demo   the embedded default, end to end (CPU, no download of weights or data)
#   make test   the test suite (s3prl and transformers are installed as the references)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
OUT    ?= demo_out

.PHONY: demo test test-fast test-learning install system-deps test-deps clean

install: $(STAMP)

# torch 2.8.0 + torchaudio 2.8.0 + s3prl 0.4.18 is the stack s3prl's runner works on
# (docs/decisions.md). The venv keeps its own pip (23.x): pip >= 24.1 rejects the
# metadata of catalyst 22.4, which s3prl's keyword-spotting task imports.
# s3prl then comes from its source tree (S3PRL_SRC: a clone or a .tar.gz of it; else a clone
# at the pinned commit), editable, so that the data files six tasks read are present.
$(STAMP): pyproject.toml scripts/install_s3prl.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.8.0 torchaudio==2.8.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[superb,test]'
	$(BIN)/python scripts/install_s3prl.py --venv $(VENV)
	rm -f $(VENV)/.installed-*
	touch $@

# espeak-ng speaks the demo corpus; libsox-dev backs torchaudio's sox effects (s3prl's KS/QbE/ASV data);
# slurm-wlm and munge run the one-node SLURM cluster of tests/test_slurm_cluster.py (tests/slurm_fixtures.py).
DEMO_PACKAGES = espeak-ng libsox-dev sox
TEST_PACKAGES = $(DEMO_PACKAGES) slurm-wlm munge
HAVE_DEMO = command -v espeak-ng >/dev/null && ldconfig -p | grep -q libsox.so
HAVE_TEST = $(HAVE_DEMO) && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
	&& command -v sbatch >/dev/null && command -v munged >/dev/null
system-deps:  # what `make demo` needs
	@if $(HAVE_DEMO); then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEMO_PACKAGES)) >/dev/null </dev/null; \
	else echo "please install the Debian packages $(DEMO_PACKAGES) (sudo apt-get install $(DEMO_PACKAGES))"; exit 1; fi

test-deps:  # what the tests need: the demo's packages and a SLURM cluster's
	@if $(HAVE_TEST); then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_PACKAGES)) >/dev/null </dev/null; \
	else echo "please install the Debian packages $(TEST_PACKAGES) (sudo apt-get install $(TEST_PACKAGES))"; exit 1; fi

demo: system-deps $(STAMP)
	@$(BIN)/python scripts/install_s3prl.py --venv $(VENV)
	$(BIN)/pruned-upstream demo --out $(OUT)

# The ten-task tests need s3prl's source tree: without one, `make test` stops here with one line.
test: test-deps $(STAMP)
	@$(BIN)/python scripts/install_s3prl.py --venv $(VENV) --require
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The fast set alone (no demo, SIGKILL/resume, torchrun or s3prl runs): a minute or two.
test-fast: system-deps $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow and not learning" $(PYTEST_ARGS)

# The learnability measurements of the small SUPERB data (minutes each; figures in docs/tasks/*.md).
test-learning: system-deps $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m learning $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
