"""Shared test setup: the `integration` marker (root, the kernel, namespaces), where the builds are, the BPF
sources under tests/bpf/, and the fixtures several modules use: a veth pair, the libbpf engine, a bpffs."""
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import zipfile
from pathlib import Path

import pytest

from probe.errors import ProbeError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYZ = os.path.join(ROOT, "dist", "kubenetprobe.pyz")
OBJECT = os.path.join(ROOT, "probe", "_bytecode", "kubenetprobe.bpf.o")
EMPTY_OBJECT = os.path.join(ROOT, "build", "empty.bpf.o")
IN_CI = os.environ.get("CI") == "true"
OBJECT_ENTRY = "site-packages/probe/_bytecode/kubenetprobe.bpf.o"  # inside the pyz


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


def guarded(parse, data, timeout=10):
    """(result, ProbeError) of parse(data) in a thread: any other exception is raised, a hang fails."""
    outcome = {}

    def target():
        try:
            outcome["result"] = parse(data)
        except ProbeError as e:
            outcome["error"] = e
        except BaseException as e:  # handed to the test's thread below
            outcome["unexpected"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "parsing hung (more than %d s)" % timeout
    if "unexpected" in outcome:
        raise outcome["unexpected"]
    return outcome.get("result"), outcome.get("error")


def tool(name):
    """A tool's path: on PATH, or in the sbin folders a non-root PATH often lacks; skips the test without it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if path is None:
        pytest.skip("%s is not installed (make deps)" % name)
    return path


def pyz_with_object(folder, data, checksum=None):
    """A copy of the pyz in `folder` whose embedded object is `data` (with a matching SHA-256 unless given)."""
    path = str(folder / "modified.pyz")
    with zipfile.ZipFile(PYZ) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            content = src.read(item)
            if item.filename == OBJECT_ENTRY:
                content = data
            elif item.filename == OBJECT_ENTRY + ".sha256":
                content = ("%s  kubenetprobe.bpf.o\n" % (checksum or hashlib.sha256(data).hexdigest())).encode()
            dst.writestr(item, content)
    return path


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


@pytest.fixture
def built_pyz():
    """Fails first, saying how, when there is no pyz to test."""
    assert os.path.exists(PYZ), "build it first: make build"


@pytest.fixture
def public_pyz():
    """A copy of the pyz that any user can read."""
    folder = tempfile.mkdtemp(prefix="knp-")
    os.chmod(folder, 0o755)
    pyz = os.path.join(folder, "kubenetprobe.pyz")
    shutil.copy(PYZ, pyz)
    os.chmod(pyz, 0o644)
    yield pyz
    shutil.rmtree(folder)


# The fixtures import what they use when they run: netns imports this module, and a probe module that
# fails to import then fails only the tests that use it.

@pytest.fixture
def pair():
    """A silent veth pair between two network namespaces of the test's own (netns.VethPair)."""
    from netns import VethPair
    with VethPair() as p:
        yield p


@pytest.fixture
def bpffs():
    """A bpffs of the test's own, outside /sys (which `ip netns exec` mounts over)."""
    from netns import sh
    path = tempfile.mkdtemp(prefix="knp-bpffs-")
    sh("mount", "-t", "bpf", "bpf", path)
    yield path
    sh("umount", path)
    os.rmdir(path)


@pytest.fixture(scope="module")
def engine():
    """The libbpf engine, opened once for a module's tests."""
    from probe.bpf.libbpf import LibbpfEngine
    return LibbpfEngine()


@pytest.fixture(scope="session")
def podman_image(tmp_path_factory):
    """The container image of this checkout (build_image.py, cached by content), loaded into podman's store for the
    session and removed after it: (podman.Podman, image.Image)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (chroot, podman); run `sudo make test`")
    tool("podman")
    import image
    podman, loaded = image.session_image(str(tmp_path_factory.mktemp("podman")))
    yield podman, loaded
    loaded.remove()
