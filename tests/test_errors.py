"""Every failure of the command: one line on stderr saying what to do, exit 1, a traceback only under -v.

In process (cli.main given failing runs), then the built pyz run as a user runs it (root, namespaces), and the
native loader fetching a verifier's log longer than its buffer.
"""
import errno
import hashlib
import subprocess
import sys
import textwrap
import zipfile

import pytest

from conftest import OBJECT_ENTRY, PYZ, bpf_source, compile_bpf, pyz_with_object
from netns import refusing_bpf, without_libbpf
from probe import cli
from probe.errors import ProbeError


SECCOMP_LINE = ("kubenetprobe: error: bpf(2) is blocked by a seccomp filter, though the capabilities are there: allow "
                "bpf in the container's seccomp profile (deploy/seccomp/kubenetprobe.json) or run it unconfined; "
                "run kubenetprobe doctor for details\n")


# In process: cli.main, whatever run() raises

def failing_run(error):
    def run(args):
        raise error
    return run


def test_probe_error_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "run", failing_run(ProbeError("eth9 is gone", hint="plug it in", log="a\nlog\n")))
    assert cli.main([]) == 1
    err = capsys.readouterr().err
    assert err == "kubenetprobe: error: eth9 is gone; plug it in\n"


def test_verbose_error_shows_traceback_and_log(monkeypatch, capsys):
    monkeypatch.setattr(cli, "run", failing_run(ProbeError("refused", log="the verifier's log\n")))
    assert cli.main(["-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "the verifier's log" in err
    assert err.splitlines()[-1] == "kubenetprobe: error: refused"


def test_unexpected_error_is_still_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "run", failing_run(KeyError("x")))
    assert cli.main([]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("kubenetprobe: error: unexpected KeyError")


def test_enosys_gets_a_hint(monkeypatch, capsys):
    monkeypatch.setattr(cli, "run", failing_run(ProbeError("BPF_MAP_CREATE: nope", errno=errno.ENOSYS)))
    assert cli.main([]) == 1
    assert "kernel has no bpf(2)" in capsys.readouterr().err


# The built pyz

def run_pyz(*args, pyz=PYZ, wrapper=(), ns=None, check_one_line=True, python=sys.executable):
    """Run the pyz; for failures, check the one-line contract."""
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(wrapper) + [python, pyz] + list(args)
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    if check_one_line and result.returncode == 1:
        assert result.stderr.startswith("kubenetprobe: error: "), result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
    return result


def embedded_object():
    with zipfile.ZipFile(PYZ) as z:
        return z.read(OBJECT_ENTRY)


@pytest.mark.integration
def test_no_such_interface():
    result = run_pyz("-i", "nosuchif0", "--count", "1")
    assert result.returncode == 1
    assert result.stderr == "kubenetprobe: error: no such interface: nosuchif0; list interfaces with `ip link show`\n"


@pytest.mark.integration
def test_bad_option_exits_2_with_usage():
    result = run_pyz("--count", "zero", check_one_line=False)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: kubenetprobe")
    assert "argument --count: 'zero' is not a whole number >= 1" in result.stderr


@pytest.mark.integration
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
    assert result.stderr.rstrip().endswith("; run kubenetprobe doctor for details")
    assert pair.probe_programs() == []


@pytest.mark.integration
def test_no_libbpf_when_asked_for(pair):
    """--loader libbpf where there is none: the one line says what to install."""
    result = run_pyz("-i", pair.probe_if, "--count", "1", "--loader", "libbpf", ns=pair.probe_ns,
                     wrapper=without_libbpf())
    assert result.returncode == 1
    assert result.stderr.startswith("kubenetprobe: error: libbpf not found")
    assert "install it (apt-get install libbpf1" in result.stderr


@pytest.mark.integration
def test_kernel_without_bpf(pair):
    """bpf(2) answering ENOSYS, as on a kernel built without it (a seccomp filter plays that kernel)."""
    result = run_pyz("-i", pair.probe_if, "--count", "1", ns=pair.probe_ns, wrapper=refusing_bpf(errno.ENOSYS))
    assert result.returncode == 1
    assert "kernel has no bpf(2)" in result.stderr and "4.18" in result.stderr
    assert result.stderr.rstrip().endswith("; run kubenetprobe doctor for details")


@pytest.mark.integration
@pytest.mark.parametrize("loader", ["libbpf", "native"])
def test_bpf_blocked_by_seccomp(pair, loader):
    """bpf(2) refused with EPERM by a seccomp filter while the capabilities are there (root): the one line names
    the filter and the fix, not the capabilities."""
    result = run_pyz("-i", pair.probe_if, "--count", "1", "--loader", loader, ns=pair.probe_ns,
                     wrapper=refusing_bpf(errno.EPERM))
    assert result.returncode == 1
    assert result.stderr == SECCOMP_LINE
    assert pair.probe_programs() == []


@pytest.mark.integration
def test_damaged_embedded_object(tmp_path, pair):
    data = bytearray(embedded_object())
    data[len(data) // 2] ^= 0xFF
    pyz = pyz_with_object(tmp_path, bytes(data), checksum=hashlib.sha256(embedded_object()).hexdigest())
    result = run_pyz("-i", pair.probe_if, "--count", "1", pyz=pyz, ns=pair.probe_ns)
    assert result.returncode == 1
    assert "the embedded XDP object is damaged (SHA-256 mismatch)" in result.stderr
    assert pair.probe_programs() == []


@pytest.mark.integration
def test_object_that_is_not_elf(tmp_path, pair):
    pyz = pyz_with_object(tmp_path, b"not an ELF file at all")
    result = run_pyz("-i", pair.probe_if, "--count", "1", pyz=pyz, ns=pair.probe_ns)
    assert result.returncode == 1
    assert result.stderr.startswith("kubenetprobe: error: libbpf cannot open the object")


@pytest.mark.integration
@pytest.mark.parametrize("loader", ["libbpf", "native"])
def test_verifier_rejection(tmp_path, pair, loader):
    """One line with the verifier's reason; -v adds the traceback and the verifier's whole log."""
    pyz = pyz_with_object(tmp_path, compile_bpf(tmp_path, bpf_source("unchecked_read.bpf.c")).read_bytes())
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
    assert pair.probe_programs() == []


# An object of the versions that loaded one object per interface: a per-CPU array of a slot per direction.
PER_DIRECTION_SLOTS = textwrap.dedent("""
    #include <linux/bpf.h>
    #include <bpf/bpf_helpers.h>
    #include "kubenetprobe.h"
    struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, KNP_DIR_MAX); __type(key, __u32);
             __type(value, struct knp_stats); } knp_stats SEC(".maps");
    SEC("xdp")
    int kubenetprobe_rx(struct xdp_md *ctx)
    {
        return XDP_PASS;
    }
    char LICENSE[] SEC("license") = "GPL";
""")

# An object of the version that shared one per-CPU hash, keyed by (ifindex, direction), among all interfaces.
IFINDEX_HASH = textwrap.dedent("""
    #include <linux/bpf.h>
    #include <bpf/bpf_helpers.h>
    #include "kubenetprobe.h"
    struct knp_key { __u32 ifindex; __u32 direction; };
    struct { __uint(type, BPF_MAP_TYPE_PERCPU_HASH); __uint(max_entries, KNP_MAX_INTERFACES * KNP_DIR_MAX);
             __uint(map_flags, BPF_F_NO_PREALLOC); __type(key, struct knp_key); __type(value, struct knp_stats);
    } knp_stats SEC(".maps");
    SEC("xdp")
    int kubenetprobe_rx(struct xdp_md *ctx)
    {
        return XDP_PASS;
    }
    char LICENSE[] SEC("license") = "GPL";
""")


@pytest.mark.integration
@pytest.mark.parametrize("source, differs", [
    (bpf_source("other_layout.bpf.c"), "value_size 8, not 144"),
    (PER_DIRECTION_SLOTS, "max_entries 2, not 16386"),
    (IFINDEX_HASH, "flags 1, not 0; key_size 8, not 4; max_entries 16384, not 16386; type 5, not 6"),
], ids=["value", "per-direction-slots", "ifindex-hash"])
def test_object_with_another_map_layout(tmp_path, pair, source, differs):
    """Refused before anything is attached or read, naming what differs."""
    pyz = pyz_with_object(tmp_path, compile_bpf(tmp_path, source).read_bytes())
    result = run_pyz("-i", pair.probe_if, "--count", "1", pyz=pyz, ns=pair.probe_ns)
    assert result.returncode == 1
    assert result.stderr == ("kubenetprobe: error: the object's map knp_stats has another layout: %s; rebuild the "
                             "object from this version's bpf/ (make build-ebpf)\n" % differs)
    assert pair.probe_programs() == []
