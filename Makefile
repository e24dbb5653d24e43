# Everything runs in a project venv (.venv) built from pyproject.toml.
#   make run    set up, then answer a prompt with the default model
#   make test   set up (system packages too), then run the test suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROMPT ?= Here is a short poem about the sea:

.PHONY: run test test-debug test-avx2 test-arm64 bench bench-arm bench-parallel system-deps clean

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
SYSTEM_PACKAGES := mosquitto openssl gcc-aarch64-linux-gnu qemu-user systemd shellcheck cmake curl socat mosquitto-clients netcat-openbsd
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

test: system-deps $(VENV)/.installed-test
	$(PY) -m pytest -q
	$(MAKE) test-debug test-avx2

# The kernel, batch-shape and cache-reuse tests on the sanitizer build of the kernels
# (EDGELLM_KERNELS_DEBUG: ASan and UBSan, red zones between scratch regions, the runtime's
# buffers and truncated cache rows full of NaN), built once into ~/.cache/edgellm. On the
# avx2 variant where the CPU runs it (the one that sums in llama.cpp's orders, so prefix reuse
# must give the fresh texts exactly), else on the best one.
DEBUG_VARIANT = $(shell $(PY) -c "from edgellm import kernels as k; \
	print('avx2' if any(v['name'] == 'avx2' and v['supported'] for v in k.variants()) else k.VARIANT)")
test-debug: $(VENV)/.installed-test
	LD_PRELOAD=$$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 EDGELLM_KERNELS_DEBUG=1 \
	EDGELLM_KERNELS=$(DEBUG_VARIANT) $(PY) -m pytest -q -p no:cacheprovider \
		tests/test_kernels_variants.py -k "$(DEBUG_VARIANT) and not env_var and not refused" \
		"tests/test_batch_shapes.py::test_every_batch_length_matches_llamacpp[$(DEBUG_VARIANT)]" \
		tests/test_prefix_reuse.py

# Bit for bit against llama.cpp where the suite above cannot check it: on a CPU whose best
# variant is wider than avx2 (AVX-512), both sides sum in their own 512-bit orders there. The
# avx2 variant against llama.cpp built for AVX2 from the same sources (tests/llamacpp_assets.py,
# once, into ~/.cache/edgellm): kernels, greedy and teacher-forced logits, every prefix split.
test-avx2: $(VENV)/.installed-test
	@if [ "$$($(PY) -c "from edgellm import kernels as k; \
		print(k.VARIANT != 'avx2' and any(v['name'] == 'avx2' and v['supported'] for v in k.variants()))")" = True ]; then \
		lib=$$(cd tests && ../$(PY) llamacpp_assets.py avx2-lib) && \
		LLAMA_CPP_LIB_PATH=$$lib EDGELLM_KERNELS=avx2 $(PY) -m pytest -q -p no:cacheprovider tests/test_kernels_ggml.py tests/test_llamacpp_parity.py \
			tests/test_batch_shapes.py::test_every_split_matches_llamacpp_and_another_process; \
	else echo "test-avx2: the suite ran the avx2 variant, or this CPU has none"; fi

# The package built and run in an emulated arm64 Debian (Pi 4 and Pi 5 cores); needs root.
test-arm64: $(VENV)/.installed
	EDGELLM_HOST_EDGELLM=$(VENV)/bin/edgellm bash deploy/arm64/e2e.sh all

# Speed and memory against llama.cpp, same run, alternating: the default model, then synthetic
# 125M llama models in Q4_0, Q8_0 and F16 (written once into ~/.cache/edgellm/bench).
bench: $(VENV)/.installed-test
	$(VENV)/bin/edgellm bench --compare llama.cpp -r 5
	$(PY) tests/bench_synthetic.py -r 5

# ARM speed without a board (issue 18): per quant type and core (Pi 4 Cortex-A72, Pi 5 Cortex-A76),
# llvm-mca cycles per 256 weights of our GEMV / GEMM kernels against ggml's from the same
# llama.cpp sources, traced under qemu-aarch64; instructions per decoded and prefilled token of
# the default model, ours vs llama.cpp, counted under qemu-aarch64 by our own TCG plugin (needs
# the arm64 rootfs of `deploy/arm64/e2e.sh run`, else it says so and skips); then a predicted
# tok/s per board. Installs its own packages (root): the cross compilers, qemu-user, llvm-19's
# llvm-mca, and gcc and cmake for the plugin and the llama.cpp cross build.
BENCH_ARM_PACKAGES := gcc-aarch64-linux-gnu g++-aarch64-linux-gnu binutils-aarch64-linux-gnu qemu-user llvm-19 \
	gcc cmake
bench-arm: $(VENV)/.installed
	@missing=$$(for p in $(BENCH_ARM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@# part 2 runs on the arm64 rootfs's python with numpy and cffi from the e2e venv: built
	@# by deploy/arm64/e2e.sh (needs root; ~15 min the first time, then cached)
	@[ -x "$${EDGELLM_ARM64_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/edgellm}/arm64-rootfs/opt/edgellm-e2e/venv/bin/python" ] || \
		EDGELLM_HOST_EDGELLM=$(VENV)/bin/edgellm bash deploy/arm64/e2e.sh all
	$(PY) tests/arm/bench/bench_arm.py

# Continuous batching through `edgellm serve` (parallel = 4): four requests at once against the
# same four one after another over HTTP and MQTT (a real Mosquitto), alternating, medians; then
# 200 requests from 20 HTTP clients against parallel = 1 and parallel = 4 servers.
bench-parallel: system-deps $(VENV)/.installed-test
	$(PY) tests/bench_services_parallel.py -r 3

clean:
	rm -rf $(VENV) build kernels/build kernels/_kernels_*.so *.egg-info
