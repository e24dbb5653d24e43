# Everything runs in a project venv (.venv) built from pyproject.toml.
#   make run    set up, then answer a prompt with the default model
#   make test   set up (system packages too), then run the test suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROMPT ?= Here is a short poem about the sea:

.PHONY: run test test-arm64 system-deps clean

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

clean:
	rm -rf $(VENV) build kernels/build kernels/_kernels_*.so *.egg-info
