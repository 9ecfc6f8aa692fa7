# The two commands of the README, each installing what it needs on a fresh machine:
#   make demo   the embedded default, end to end (CPU, no download of weights or data)
#   make test   the test suite (s3prl and transformers are installed as the references)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
OUT    ?= demo_out

.PHONY: demo test install system-deps clean

install: $(STAMP)

# torch 2.8.0 + torchaudio 2.8.0 + s3prl 0.4.18 is the stack s3prl's runner works on
# (docs/decisions.md). The venv keeps its own pip (23.x): pip >= 24.1 rejects the
# metadata of catalyst 22.4, which s3prl's keyword-spotting task imports.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.8.0 torchaudio==2.8.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[superb,test]'
	rm -f $(VENV)/.installed-*
	touch $@

# espeak-ng speaks the demo corpus; libsox-dev backs torchaudio's sox effects (s3prl's KS/QbE/ASV data).
system-deps:
	@if command -v espeak-ng >/dev/null && ldconfig -p | grep -q libsox.so; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng libsox-dev sox) >/dev/null; \
	else echo "please install the Debian packages espeak-ng libsox-dev sox (sudo apt-get install espeak-ng libsox-dev sox)"; exit 1; fi

demo: system-deps $(STAMP)
	$(BIN)/pruned-upstream demo --out $(OUT)

test: system-deps $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
