"""Every failure of the command: one line on stderr saying what to do, exit 1, a traceback only under -v."""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile

import pytest

from conftest import PYZ, compile_bpf
from netns import VethPair, without_libbpf
from probe.errors import ProbeError

pytestmark = pytest.mark.integration

OBJECT_ENTRY = "site-packages/probe/_bytecode/kubenetprobe.bpf.o"

# Reads a packet byte without checking it against data_end: the verifier must refuse it.
UNCHECKED_READ = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 2); __type(key, __u32);
         __type(value, __u64); } knp_stats SEC(".maps");
SEC("xdp")
int kubenetprobe_rx(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;
	return data[100] == 1 ? XDP_DROP : XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""


# Verifies fine, but its stats map holds one __u64 instead of struct knp_stats.
OTHER_LAYOUT = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 2); __type(key, __u32);
         __type(value, __u64); } knp_stats SEC(".maps");
SEC("xdp")
int kubenetprobe_rx(struct xdp_md *ctx)
{
	return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""


def run_pyz(*args, pyz=PYZ, wrapper=(), ns=None, check_one_line=True, python=sys.executable):
    """Run the pyz; for failures, check the one-line contract."""
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(wrapper) + [python, pyz] + list(args)
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    if check_one_line and result.returncode == 1:
        assert result.stderr.startswith("kubenetprobe: error: "), result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
    return result


def pyz_with_object(tmp_path, data, checksum=None):
    """A copy of the pyz whose embedded object is `data` (with a matching SHA-256 unless given)."""
    path = str(tmp_path / "modified.pyz")
    with zipfile.ZipFile(PYZ) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            content = src.read(item)
            if item.filename == OBJECT_ENTRY:
                content = data
            elif item.filename == OBJECT_ENTRY + ".sha256":
                content = ("%s  kubenetprobe.bpf.o\n" % (checksum or hashlib.sha256(data).hexdigest())).encode()
            dst.writestr(item, content)
    return path


def embedded_object():
    with zipfile.ZipFile(PYZ) as z:
        return z.read(OBJECT_ENTRY)


@pytest.fixture
def pair():
    with VethPair() as p:
        yield p


def test_no_such_interface():
    result = run_pyz("-i", "nosuchif0", "--count", "1")
    assert result.returncode == 1
    assert result.stderr == "kubenetprobe: error: no such interface: nosuchif0; list interfaces with `ip link show`\n"


def test_bad_option_exits_2_with_usage():
    result = run_pyz("--count", "zero", check_one_line=False)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: kubenetprobe")
    assert "argument --count: 'zero' is not a whole number >= 1" in result.stderr


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


@pytest.mark.parametrize("loader", ["libbpf", "native"])
def test_not_root(public_pyz, pair, loader):
    """Without privileges: the one line says to run as root."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    # The system's Python: an unprivileged user may not reach one under /root.
    result = run_pyz("-i", pair.probe_if, "--count", "1", "--loader", loader, pyz=public_pyz, ns=pair.probe_ns,
                     wrapper=nobody, python="/usr/bin/python3")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("kubenetprobe: error: permission denied")
    assert "run as root" in result.stderr
    assert pair.xdp_program() is None


def test_no_libbpf_when_asked_for(pair):
    """--loader libbpf where there is none: the one line says what to install."""
    result = run_pyz("-i", pair.probe_if, "--count", "1", "--loader", "libbpf", ns=pair.probe_ns,
                     wrapper=without_libbpf())
    assert result.returncode == 1
    assert result.stderr.startswith("kubenetprobe: error: libbpf not found")
    assert "install it (apt-get install libbpf1" in result.stderr


def test_kernel_without_bpf(tmp_path, pair):
    """bpf(2) answering ENOSYS, as on a kernel built without it (a seccomp filter plays that kernel)."""
    wrapper = tmp_path / "nobpf.py"
    wrapper.write_text(textwrap.dedent("""\
        import ctypes, os, struct, sys
        # seccomp: bpf(2) fails with ENOSYS, every other call is allowed.
        nr = {"x86_64": 321, "aarch64": 280}[os.uname().machine]
        insns = [(0x20, 0, 0, 0), (0x15, 0, 1, nr), (0x06, 0, 0, 0x00050000 | 38), (0x06, 0, 0, 0x7fff0000)]
        prog = b"".join(struct.pack("HBBI", *i) for i in insns)
        buf = ctypes.create_string_buffer(prog)
        fprog = struct.pack("HxxxxxxQ", len(insns), ctypes.addressof(buf))
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
        assert libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
        os.execv(sys.argv[1], sys.argv[1:])
        """))
    result = run_pyz("-i", pair.probe_if, "--count", "1", ns=pair.probe_ns, wrapper=[sys.executable, str(wrapper)])
    assert result.returncode == 1
    assert "kernel has no bpf(2)" in result.stderr and "4.18" in result.stderr


def test_damaged_embedded_object(tmp_path, pair):
    data = bytearray(embedded_object())
    data[len(data) // 2] ^= 0xFF
    pyz = pyz_with_object(tmp_path, bytes(data), checksum=hashlib.sha256(embedded_object()).hexdigest())
    result = run_pyz("-i", pair.probe_if, "--count", "1", pyz=pyz, ns=pair.probe_ns)
    assert result.returncode == 1
    assert "the embedded XDP object is damaged (SHA-256 mismatch)" in result.stderr
    assert pair.xdp_program() is None


def test_object_that_is_not_elf(tmp_path, pair):
    pyz = pyz_with_object(tmp_path, b"not an ELF file at all")
    result = run_pyz("-i", pair.probe_if, "--count", "1", pyz=pyz, ns=pair.probe_ns)
    assert result.returncode == 1
    assert result.stderr.startswith("kubenetprobe: error: libbpf cannot open the object")


@pytest.mark.parametrize("loader", ["libbpf", "native"])
def test_verifier_rejection(tmp_path, pair, loader):
    """One line with the verifier's reason; -v adds the traceback and the verifier's whole log."""
    pyz = pyz_with_object(tmp_path, compile_bpf(tmp_path, UNCHECKED_READ).read_bytes())
    result = run_pyz("-i", pair.probe_if, "--count", "1", "--loader", loader, pyz=pyz, ns=pair.probe_ns)
    assert result.returncode == 1
    assert result.stderr.startswith("kubenetprobe: error: the verifier rejected the program: "), result.stderr
    assert "outside of the packet" in result.stderr  # the verifier's own words
    assert result.stderr.rstrip().endswith("run with -v for the verifier's log")

    verbose = run_pyz("-v", "-i", pair.probe_if, "--count", "1", "--loader", loader, pyz=pyz, ns=pair.probe_ns,
                      check_one_line=False)
    assert verbose.returncode == 1
    assert "Traceback" in verbose.stderr
    assert "processed" in verbose.stderr and "insns" in verbose.stderr  # the verifier's log itself
    assert verbose.stderr.splitlines()[-1] == result.stderr.strip()
    assert pair.xdp_program() is None


def test_object_with_another_map_layout(tmp_path, pair):
    """Refused before anything is attached or read, naming what differs."""
    pyz = pyz_with_object(tmp_path, compile_bpf(tmp_path, OTHER_LAYOUT).read_bytes())
    result = run_pyz("-i", pair.probe_if, "--count", "1", pyz=pyz, ns=pair.probe_ns)
    assert result.returncode == 1
    assert result.stderr == ("kubenetprobe: error: the object's map knp_stats has another layout: value_size 8, "
                             "not 144; rebuild the object from this version's bpf/ (make build-ebpf)\n")
    assert pair.xdp_program() is None


def test_native_loader_grows_the_log_buffer_for_the_verifier(tmp_path, monkeypatch):
    """A verifier log longer than the buffer (ENOSPC) is fetched again whole, with the reason at its end."""
    from probe.bpf import native
    monkeypatch.setattr(native, "_LOG_SIZE", 64)
    with pytest.raises(ProbeError) as refused:
        native.NativeEngine().load_bytes(compile_bpf(tmp_path, UNCHECKED_READ).read_bytes())
    assert refused.value.message == "the verifier rejected the program: R1 offset is outside of the packet"
    assert len(refused.value.log) > 64 and "processed" in refused.value.log
