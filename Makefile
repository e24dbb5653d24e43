# Everything runs in a project venv (.venv) built from pyproject.toml.
#   make run    set up, then answer a prompt with the default model
#   make test   set up (system packages too), then run the test suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROMPT ?= Here is a short poem about the sea:

.PHONY: run test test-arm64 bench system-deps clean

$(VENV)/.installed: pyproject.toml setup.py kernels/*.c kernels/*.h kernels/build_kernels.py
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/edgellm run --echo --temp 0 -n 64 "$(PROMPT)"

# Debian packages the tests use (installed only when missing; needs root).
SYSTEM_PACKAGES := mosquitto openssl gcc-aarch64-linux-gnu qemu-user systemd shellcheck
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

test: system-deps $(VENV)/.installed-test
	$(PY) -m pytest -q

# The package built and run in an emulated arm64 Debian (Pi 4 and Pi 5 cores); needs root.
test-arm64: $(VENV)/.installed
	EDGELLM_HOST_EDGELLM=$(VENV)/bin/edgellm bash deploy/arm64/e2e.sh all

# Speed and memory against llama.cpp, same run, alternating: the default model, then synthetic
# 125M llama models in Q4_0, Q8_0 and F16 (written once into ~/.cache/edgellm/bench).
bench: $(VENV)/.installed-test
	$(VENV)/bin/edgellm bench --compare llama.cpp -r 5
	$(PY) tests/bench_synthetic.py -r 5

clean:
	rm -rf $(VENV) build kernels/build kernels/_kernels_*.so *.egg-info
