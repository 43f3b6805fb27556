# KubeNetProbe. `make run` and `make test` work as the first command on a fresh Debian/Ubuntu machine.
PYTHON     ?= python3
VENV       := .venv
VPY        := $(VENV)/bin/python
CLANG      ?= clang
STRIP      ?= llvm-strip
MULTIARCH  := $(shell gcc -print-multiarch 2>/dev/null)
BPF_CFLAGS := -O2 -g -target bpf -Wall -I/usr/include/$(MULTIARCH) -fdebug-prefix-map=$(CURDIR)=.
OBJ        := probe/_bytecode/kubenetprobe.bpf.o
EMPTY_OBJ  := build/empty.bpf.o
MINIMAL_OBJ := build/minimal_counter.bpf.o
LRU_OBJ    := build/lru_talkers.bpf.o
PYZ        := dist/kubenetprobe.pyz
IMAGE      := dist/kubenetprobe-image.tar
APT_PACKAGES := clang llvm gcc libc6-dev libbpf-dev libbpf1 bpftool iproute2 iputils-ping python3-venv ethtool debootstrap procps python3 netsniff-ng prometheus prometheus-node-exporter \
		podman runc netavark aardvark-dns catatonit golang-github-containers-common iptables
TOOLS      := $(CLANG) $(STRIP) gcc bpftool ip ping ethtool debootstrap

.PHONY: all deps ensure-deps build-ebpf build image test test-unit test-integration run bench fuzz clean

all: build

# Install what build and tests need: Debian packages, and the pinned Python tools in $(VENV).
deps:
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $(APT_PACKAGES)
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt

# Run `deps` only when something is missing, so `make run` and `make test` work first thing.
ensure-deps:
	@for tool in $(TOOLS); do command -v $$tool >/dev/null || missing=1; done; \
	[ -f /usr/include/bpf/bpf_helpers.h ] || missing=1; \
	$(VPY) -c "import pytest, shiv, vermin, yaml" 2>/dev/null || missing=1; \
	if [ -n "$$missing" ]; then $(MAKE) --no-print-directory deps; fi

build-ebpf: $(OBJ)

$(OBJ): bpf/kubenetprobe.bpf.c bpf/kubenetprobe.h bpf/classify.h bpf/talkers.h
	@mkdir -p $(dir $@)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@
	$(STRIP) -g $@
	cd $(dir $@) && sha256sum $(notdir $@) > $(notdir $@).sha256

# The floors `make bench` measures the probe's programs against: empty programs, a minimal counter, and an LRU
# talker counter like cilium/ebpf's examples/xdp (beside the programs that count top talkers).
$(EMPTY_OBJ): bpf/empty.bpf.c
$(MINIMAL_OBJ): tests/bpf/minimal_counter.bpf.c
$(LRU_OBJ): tests/bpf/lru_talkers.bpf.c
$(EMPTY_OBJ) $(MINIMAL_OBJ) $(LRU_OBJ):
	@mkdir -p $(dir $@)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@
	$(STRIP) -g $@

build: ensure-deps $(PYZ)

$(PYZ): $(OBJ) $(shell find probe -name "*.py") build_zipapp.py
	$(VPY) build_zipapp.py --output $@

# Only the image and the container tests need a container runtime: `make run` does not install one.
image test test-integration: TOOLS += podman runc

# The OCI image (podman, as root): the pyz on Python and libbpf from Debian packages, no shell; cached by content.
image: build
	$(VPY) build_image.py --pyz $(PYZ) --output $(IMAGE)

# Every test, unit and integration (integration tests need root; with CI=true they never skip).
test: build $(EMPTY_OBJ)
	$(VPY) -m pytest tests

test-unit: ensure-deps $(OBJ)
	$(VPY) -m pytest tests -m "not integration"

test-integration: build $(EMPTY_OBJ)
	$(VPY) -m pytest tests -m integration

# Watch the default interface (or $$NETWORK_INTERFACE) until Ctrl-C.
run: build
	$(PYTHON) $(PYZ) $(ARGS)

bench: build $(EMPTY_OBJ) $(MINIMAL_OBJ) $(LRU_OBJ)
	$(VPY) tests/bench.py --pyz $(PYZ) --empty-object $(EMPTY_OBJ) --minimal-object $(MINIMAL_OBJ) \
		--lru-object $(LRU_OBJ)

# Fuzz the object readers and `inspect` with atheris for FUZZ_SECONDS (installed into the venv on first use);
# findings land in build/fuzz/ as crash-* or timeout-* files.
FUZZ_SECONDS ?= 300
fuzz: ensure-deps $(OBJ)
	$(VPY) -c "import atheris" 2>/dev/null || $(VPY) -m pip install -q --disable-pip-version-check atheris==3.0.0
	@mkdir -p build/fuzz/corpus && cp $(OBJ) build/fuzz/corpus/
	cd build/fuzz && ../../$(VPY) ../../tests/fuzz_inspect.py -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
		-rss_limit_mb=2048 corpus

clean:
	rm -rf build dist probe/_bytecode .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
