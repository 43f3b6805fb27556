"""Shared test setup: the `integration` marker (root, the kernel, namespaces) and where the builds are."""
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYZ = os.path.join(ROOT, "dist", "kubenetprobe.pyz")
OBJECT = os.path.join(ROOT, "probe", "_bytecode", "kubenetprobe.bpf.o")
EMPTY_OBJECT = os.path.join(ROOT, "build", "empty.bpf.o")
IN_CI = os.environ.get("CI") == "true"


BPF_SOURCES = os.path.join(ROOT, "tests", "bpf")


def bpf_source(name):
    """The text of a BPF C source under tests/bpf/."""
    with open(os.path.join(BPF_SOURCES, name)) as f:
        return f.read()


def compile_bpf(folder, source, target="bpf"):
    """Compile BPF C source (bpf/ on the include path) as `make build-ebpf` does; returns the object's path."""
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang is not installed (make deps)")
    multiarch = subprocess.run(["gcc", "-print-multiarch"], stdout=subprocess.PIPE,
                               universal_newlines=True).stdout.strip()
    name = Path(str(folder), hashlib.sha256((target + source).encode()).hexdigest()[:16])
    name.with_suffix(".c").write_text(source)
    subprocess.run([clang, "-O2", "-g", "-target", target, "-I/usr/include/" + multiarch,
                    "-I" + os.path.join(ROOT, "bpf"), "-c", str(name.with_suffix(".c")), "-o",
                    str(name.with_suffix(".o"))], check=True)
    return name.with_suffix(".o")


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: needs root and the kernel (BPF, XDP, network namespaces)")


@pytest.fixture(autouse=True)
def _integration_needs_root(request):
    if request.node.get_closest_marker("integration") and os.geteuid() != 0:
        pytest.skip("needs root (BPF programs, XDP, network namespaces); run `sudo make test`")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With CI=true a skip is a failure: CI must never pass by not running a test."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = "skipped under CI=true, which must run every test: %s" % (report.longrepr,)
