"""`kubenetprobe doctor` and the errors it explains: the pure pieces (/proc status, capabilities, the seccomp
decision, each check's verdict) from made-up input, then the built pyz as root, as nobody, with only the
capabilities, and with bpf(2) refused by a seccomp filter."""
import errno
import json
import os
import resource
import subprocess
import sys

import pytest

from conftest import PYZ
from netns import ProbeRun, refusing_bpf
from probe import cli, doctor
from probe.errors import (SECCOMP_BLOCKED, SECCOMP_FIX, KernelError, ProbeError, effective_capabilities,
                          parse_status, permission_error)

SECCOMP_LINE = ("kubenetprobe: error: bpf(2) is blocked by a seccomp filter, though the capabilities are there: allow "
                "bpf in the container's seccomp profile (deploy/seccomp/kubenetprobe.json) or run it unconfined; "
                "run kubenetprobe doctor for details\n")
# Every check doctor makes, in its order, before the interfaces and after them.
FIRST = ["privileges", "seccomp", "bpf(2)", "kernel", "XDP links", "TCX", "BTF", "BPF run-time stats", "bpffs",
         "libbpf", "locked memory"]
LAST = ["runtime state"]

# /proc/self/status of a process: root in a host, then a container's (podman's default profile).
ROOT_STATUS = """\
Name:\tpython3
Uid:\t0\t0\t0\t0
CapInh:\t0000000000000000
CapEff:\t000001fffeffffff
NoNewPrivs:\t0
Seccomp:\t0
Seccomp_filters:\t0
"""
CONTAINER_STATUS = ROOT_STATUS.replace("000001fffeffffff", "000000c000001000").replace(
    "Seccomp:\t0", "Seccomp:\t2")
CAPS = ["bpf", "net_admin", "perfmon"]


# The pure pieces

def test_status_fields():
    status = parse_status(ROOT_STATUS + "no colon here\nVmRSS:\t  1234 kB\n")
    assert status["CapEff"] == "000001fffeffffff"
    assert status["Seccomp"] == "0"
    assert status["Uid"] == "0\t0\t0\t0"
    assert status["VmRSS"] == "1234 kB"
    assert "no colon here" not in status


@pytest.mark.parametrize("mask, caps", [
    ("000001fffeffffff", {"BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"}),  # root here: all but CAP_SYS_RESOURCE
    ("000001ffffffffff", {"BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE"}),
    ("000000c000001000", {"BPF", "NET_ADMIN", "PERFMON"}),  # --cap-drop ALL --cap-add BPF,NET_ADMIN,PERFMON
    ("0000000000201000", {"NET_ADMIN", "SYS_ADMIN"}),  # a kernel before CAP_BPF
    ("0000008000000000", {"BPF"}),
    ("0000000000000000", set()),
    ("not hex", set()),
])
def test_effective_capabilities(mask, caps):
    assert effective_capabilities({"CapEff": mask}) == caps


def test_no_capability_mask_is_none():
    assert effective_capabilities({}) == set()


def eperm(message="BPF_MAP_CREATE: Operation not permitted", err=errno.EPERM):
    return KernelError(message, errno=err, log="the cause's log")


@pytest.mark.parametrize("status, err, seccomp", [
    (CONTAINER_STATUS, errno.EPERM, True),  # the capabilities, a filter: the filter's
    (ROOT_STATUS.replace("Seccomp:\t0", "Seccomp:\t2"), errno.EPERM, True),  # root (CAP_SYS_ADMIN), a filter
    (ROOT_STATUS, errno.EPERM, False),  # no filter: the kernel's own refusal
    (CONTAINER_STATUS.replace("000000c000001000", "0000000000000000"), errno.EPERM, False),  # no capabilities
    (CONTAINER_STATUS.replace("000000c000001000", "0000008000000000"), errno.EPERM, False),  # CAP_BPF alone
    (CONTAINER_STATUS, errno.EACCES, False),  # seccomp filters answer EPERM; EACCES is the kernel's
    ("", errno.EPERM, False),  # no /proc
])
def test_permission_error_decides_seccomp(status, err, seccomp):
    error = permission_error(eperm(err=err), parse_status(status))
    assert error.errno == err and error.log == "the cause's log" and error.doctor
    if seccomp:
        assert str(error) == "%s: %s" % (SECCOMP_BLOCKED, SECCOMP_FIX)
    else:
        assert str(error) == ("permission denied (BPF_MAP_CREATE: Operation not permitted); run as root, or with "
                              "CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON")


def test_other_errors_are_no_permission_error():
    assert permission_error(eperm(err=errno.EINVAL), parse_status(CONTAINER_STATUS)) is None


def failing_run(error):
    def run(args):
        raise error
    return run


def test_seccomp_error_line(monkeypatch, capsys):
    """The command's one line for it, exactly."""
    monkeypatch.setattr(cli, "run", failing_run(permission_error(eperm(), parse_status(CONTAINER_STATUS))))
    assert cli.main([]) == 1
    assert capsys.readouterr().err == SECCOMP_LINE


@pytest.mark.parametrize("error, line", [
    (ProbeError("no bpffs", hint="mount one", doctor=True), "no bpffs; mount one; run kubenetprobe doctor for details"),
    (ProbeError("no bpffs", doctor=True), "no bpffs; run kubenetprobe doctor for details"),
    (ProbeError("no bpffs", hint="mount one", doctor=True).wrap("eth0"),
     "eth0: no bpffs; mount one; run kubenetprobe doctor for details"),
    (ProbeError("eth9 is gone", hint="plug it in"), "eth9 is gone; plug it in"),  # nothing doctor checks
    (ProbeError("BPF_MAP_CREATE: nope", errno=errno.ENOSYS),
     "BPF_MAP_CREATE: nope; this kernel has no bpf(2); kubenetprobe needs Linux 4.18 or newer with BPF enabled; "
     "run kubenetprobe doctor for details"),
])
def test_errors_doctor_explains_point_to_it(monkeypatch, capsys, error, line):
    monkeypatch.setattr(cli, "run", failing_run(error))
    assert cli.main([]) == 1
    assert capsys.readouterr().err == "kubenetprobe: error: %s\n" % line


@pytest.mark.parametrize("release, version", [
    ("6.1.0-18-amd64", (6, 1)), ("5.10.0", (5, 10)), ("4.18.0-513.el8.x86_64", (4, 18)), ("6.18.44-fc-v657", (6, 18)),
    ("weird", (0, 0)), ("", (0, 0)),
])
def test_kernel_release(release, version):
    assert doctor.kernel_release(release) == version


def test_kernel_too_old():
    check = doctor.kernel("4.14.0-1-amd64")
    assert (check.ok, check.required) == (False, True)
    assert check.fix == "run Linux 4.18 or newer"
    assert doctor.kernel("4.18.0").ok


def test_kernel_symbols(tmp_path):
    path = tmp_path / "kallsyms"
    path.write_text("0000000000000000 T tcx_link_attach\n0000000000000000 t bpf_xdp_link_attach_x\n"
                    "0000000000000000 T other [module]\nshort line\n")
    assert doctor.kernel_symbols(["tcx_link_attach", "bpf_xdp_link_attach"], str(path)) == {"tcx_link_attach"}
    assert doctor.kernel_symbols(["tcx_link_attach"], str(tmp_path / "missing")) is None


def test_features_by_symbol_else_by_release():
    by_symbol = doctor.features("6.18.0", {"bpf_xdp_link_attach"})
    assert [(c.check, c.ok) for c in by_symbol] == [("XDP links", True), ("TCX", False)]
    assert "cls_bpf" in by_symbol[1].fix and not by_symbol[1].required
    by_release = doctor.features("5.10.0", None)
    assert [(c.check, c.ok) for c in by_release] == [("XDP links", True), ("TCX", False)]
    assert [c.ok for c in doctor.features("5.4.0", None)] == [False, False]


@pytest.mark.parametrize("release, limits, caps, ok", [
    ("5.11.0", (65536, 65536), set(), True),  # charged to the memory cgroup
    ("5.10.0", (65536, 65536), set(), False),  # a limit the probe cannot lift
    ("5.10.0", (65536, 65536), {"SYS_RESOURCE"}, True),
    ("5.10.0", (65536, resource.RLIM_INFINITY), set(), True),
])
def test_locked_memory(release, limits, caps, ok):
    check = doctor.locked_memory(release, limits, caps)
    assert (check.ok, check.required) == (ok, True)
    if not ok:
        assert "64 KiB" in check.detail and "ulimit -l unlimited" in check.fix


def test_seccomp_check():
    container = parse_status(CONTAINER_STATUS)
    blocked = doctor.seccomp(container, eperm())
    assert (blocked.ok, blocked.required, blocked.detail, blocked.fix) == (False, True, SECCOMP_BLOCKED, SECCOMP_FIX)
    assert doctor.seccomp(container, None).ok  # a filter that lets bpf(2) through, such as the shipped one
    assert doctor.seccomp(parse_status(ROOT_STATUS), eperm()).ok  # no filter: not seccomp's doing
    unknown = doctor.seccomp(parse_status(CONTAINER_STATUS.replace("000000c000001000", "0")), eperm())
    assert (unknown.ok, unknown.required) == (False, False)  # can't tell without the capabilities
    enosys = doctor.seccomp(container, eperm("BPF_MAP_CREATE: Function not implemented", errno.ENOSYS))
    assert (enosys.ok, enosys.required) == (False, False)  # the filter's, or a kernel without bpf(2)
    assert "Function not implemented" in enosys.detail


def test_privileges_check():
    assert doctor.privileges(parse_status(ROOT_STATUS), 0).detail == \
        "root, with CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN"
    assert doctor.privileges(parse_status(CONTAINER_STATUS), 65534).ok
    nobody = doctor.privileges({"CapEff": "0000000000000000"}, 65534)
    assert (nobody.ok, nobody.required) == (False, True)
    assert nobody.detail == "uid 65534, without CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"


def test_runtime_state(tmp_path):
    """The folders attribution reads, with the containers that have a network namespace of their own."""
    folder = tmp_path / "storage" / "overlay-containers"
    for name, netns in (("abc", "/run/netns/netns-1"), ("def", None)):
        (folder / name / "userdata").mkdir(parents=True)
        spec = {"linux": {"namespaces": [{"type": "network", "path": netns}] if netns else []}}
        (folder / name / "userdata" / "config.json").write_text(json.dumps(spec))
    check = doctor.runtime_state([str(tmp_path / "missing"), str(tmp_path / "storage")])
    assert check.ok and check.detail == "containers/storage %s (1 with a network namespace)" % folder
    none = doctor.runtime_state([str(tmp_path / "missing")])
    assert (none.ok, none.required) == (False, False)


def test_line_and_exit_status(monkeypatch, capsys):
    """A failed optional check is a warning (!) and exits 0; a failed required one is ✗ and exits 1."""
    found = [doctor.Check("kernel", True, "6.1", None, True), doctor.Check("BTF", False, "no BTF", "get one", False)]
    monkeypatch.setattr(doctor, "checks", lambda: found)
    monkeypatch.setattr(doctor, "_marks", lambda stream: (u"\u2713", u"\u2717", "!"))
    assert cli.main(["doctor"]) == 0
    assert capsys.readouterr().out == u"\u2713 kernel: 6.1\n! BTF: no BTF: get one\n"
    found.append(doctor.Check("privileges", False, "uid 1", "be root", True))
    assert cli.main(["doctor"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == u"\u2717 privileges: uid 1: be root"


def test_ascii_marks_where_the_terminal_has_no_others():
    class Ascii(object):
        encoding = "ascii"
    assert doctor._marks(Ascii()) == ("+", "x", "!")


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["doctor", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ["CAP_BPF", "seccomp", "XDP links", "TCX", "/sys/kernel/btf/vmlinux", "bpffs", "libbpf",
                 "RLIMIT_MEMLOCK", "--json", "exit status"]:
        assert word in out


# The built pyz

def doctor_run(*args, wrapper=(), python=sys.executable, pyz=PYZ, ns=None):
    """(exit status, [(mark, check, rest of the line)], the JSON list) of `doctor` and `doctor --json`."""
    prefix = (["ip", "netns", "exec", ns] if ns else []) + list(wrapper) + [python, pyz, "doctor"]
    text = subprocess.run(prefix + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env=dict(os.environ, PYTHONIOENCODING="utf-8"))
    as_json = subprocess.run(prefix + ["--json"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True)
    assert text.stderr == "" and as_json.stderr == ""
    assert as_json.returncode == text.returncode
    lines = []
    for line in text.stdout.splitlines():
        mark, rest = line.split(" ", 1)
        check, detail = rest.split(": ", 1)
        lines.append((mark, check, detail))
    checks = json.loads(as_json.stdout)
    # The two agree, check by check.
    assert [(c["check"], u"\u2713" if c["ok"] else u"\u2717" if c["required"] else "!") for c in checks] == \
        [(check, mark) for mark, check, _ in lines]
    assert text.returncode == (0 if all(c["ok"] for c in checks if c["required"]) else 1)
    return text.returncode, lines, {c["check"]: c for c in checks}


def names(lines):
    return [check for _, check, _ in lines]


def bpffs_mounted(path="/sys/fs/bpf"):
    return subprocess.run(["stat", "-f", "-c", "%T", path], stdout=subprocess.PIPE,
                          universal_newlines=True).stdout.strip() == "bpf_fs"


@pytest.mark.integration
def test_doctor_as_root():
    """On this host as root: every check the probe needs passes, the optional ones say what this host has, and
    every interface is there."""
    status, lines, checks = doctor_run()
    assert status == 0
    interfaces = [link["ifname"] for link in json.loads(subprocess.run(
        ["ip", "-j", "link", "show"], stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout)]
    assert names(lines) == FIRST + ["interface " + name for name in interfaces] + LAST
    assert all(c["ok"] for c in checks.values() if c["required"])
    assert [name for name in FIRST if checks[name]["required"]] == ["privileges", "seccomp", "bpf(2)", "kernel",
                                                                    "locked memory"]
    assert checks["privileges"]["detail"].startswith("root, with CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN")
    assert checks["seccomp"]["detail"] == "disabled (mode 0): no filter"
    assert checks["kernel"]["detail"] == os.uname().release
    for name in ["XDP links", "TCX", "BTF", "BPF run-time stats", "libbpf"]:  # all of them, here (PLATFORM_NOTES)
        assert checks[name]["ok"], checks[name]
    assert checks["libbpf"]["detail"] == "1.1 (libbpf.so.1)"  # Debian 12's
    assert checks["bpffs"]["ok"] == bpffs_mounted()


@pytest.mark.integration
def test_doctor_in_a_namespace(pair):
    """In the pair's namespace: its interfaces; and no bpffs, as `ip netns exec` mounts a sysfs of its own."""
    status, lines, checks = doctor_run(ns=pair.probe_ns)
    assert status == 0
    assert names(lines) == FIRST + ["interface lo", "interface " + pair.probe_if] + LAST
    assert checks["interface " + pair.probe_if]["detail"] == "no XDP or TC program"
    assert (checks["bpffs"]["ok"], checks["bpffs"]["required"]) == (False, False)
    assert ("!", "bpffs", "/sys/fs/bpf: not mounted: " + checks["bpffs"]["fix"]) in lines


@pytest.mark.integration
def test_doctor_names_the_programs_and_whose(pair):
    """A probe attached through netlink (XDP and TC filters): doctor lists each program, kubenetprobe's."""
    with ProbeRun(pair, "-i", pair.probe_if, "--hook", "xdp", "--mode", "generic", "--attach", "netlink") as run:
        run.wait_attached()
        ids = run.programs[pair.probe_if]
        status, lines, checks = doctor_run(ns=pair.probe_ns)
        run.stop()
    assert status == 0
    assert checks["interface " + pair.probe_if]["detail"] == (
        "XDP id %d (kubenetprobe_rx, generic mode, kubenetprobe's); "
        "TC egress id %d (kubenetprobe_tx, cls_bpf filter, kubenetprobe's)" % (ids["xdp"], ids["egress"]))


@pytest.mark.integration
def test_doctor_as_nobody(public_pyz, pair):
    """Without privileges: the missing capabilities, bpf(2) refused for them, exit 1."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    status, lines, checks = doctor_run(wrapper=nobody, python="/usr/bin/python3", pyz=public_pyz, ns=pair.probe_ns)
    assert status == 1
    assert names(lines)[:len(FIRST)] == FIRST
    assert lines[0] == (u"\u2717", "privileges", "uid 65534, without CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON: run as "
                                                 "root, or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON")
    assert checks["bpf(2)"]["ok"] is False and checks["bpf(2)"]["detail"].endswith("Operation not permitted")
    assert checks["seccomp"]["ok"] is True


def with_caps(*caps):
    """A command prefix: nobody, with only these capabilities (ambient, so they outlive exec)."""
    given = ",".join("+" + c for c in caps)
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all," + given,
            "--ambient-caps=-all," + given]


@pytest.mark.integration
def test_doctor_with_the_capabilities_alone(public_pyz, pair):
    """nobody with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (a container's set): everything needed passes, and the
    probe does run so."""
    status, lines, checks = doctor_run(wrapper=with_caps(*CAPS), python="/usr/bin/python3", pyz=public_pyz,
                                       ns=pair.probe_ns)
    assert status == 0
    assert checks["privileges"]["detail"] == "uid 65534, with CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"
    assert checks["BPF run-time stats"]["ok"] is False  # BPF_ENABLE_STATS needs CAP_SYS_ADMIN
    assert "CAP_SYS_ADMIN" in checks["BPF run-time stats"]["fix"]
    run = subprocess.run(["ip", "netns", "exec", pair.probe_ns] + with_caps(*CAPS) +
                         ["/usr/bin/python3", public_pyz, "-i", pair.probe_if, "--count", "1", "--interval", "0",
                          "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["interface"] == pair.probe_if


@pytest.mark.integration
@pytest.mark.parametrize("who", ["root", "capabilities"])
def test_bpf_blocked_by_seccomp(public_pyz, pair, who):
    """bpf(2) refused with EPERM by a seccomp filter while the capabilities are there: doctor names the filter
    (and says the capabilities are fine), and a run says so in the one line."""
    users = {"root": [], "capabilities": with_caps(*CAPS)}
    wrapper = users[who] + refusing_bpf(errno.EPERM, python="/usr/bin/python3")
    status, lines, checks = doctor_run(wrapper=wrapper, python="/usr/bin/python3", pyz=public_pyz, ns=pair.probe_ns)
    assert status == 1
    assert checks["privileges"]["ok"] is True
    assert (u"\u2717", "seccomp", "%s: %s" % (SECCOMP_BLOCKED, SECCOMP_FIX)) in lines
    assert checks["bpf(2)"]["ok"] is False and checks["bpf(2)"]["fix"] == SECCOMP_FIX
    run = subprocess.run(["ip", "netns", "exec", pair.probe_ns] + wrapper +
                         ["/usr/bin/python3", public_pyz, "-i", pair.probe_if, "--count", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert (run.returncode, run.stderr) == (1, SECCOMP_LINE)
    assert pair.probe_programs() == []


@pytest.mark.integration
def test_bpf_answering_enosys_under_a_filter(pair):
    """bpf(2) answering ENOSYS under a filter: no bpf(2) to use (exit 1), and the filter named as a suspect."""
    status, lines, checks = doctor_run(wrapper=refusing_bpf(errno.ENOSYS), ns=pair.probe_ns)
    assert status == 1
    assert checks["bpf(2)"]["ok"] is False and "4.18" in checks["bpf(2)"]["fix"]
    assert (checks["seccomp"]["ok"], checks["seccomp"]["required"]) == (False, False)
    assert checks["seccomp"]["detail"] == ("a filter (mode 2), and bpf(2) fails (BPF_MAP_CREATE: Function not "
                                           "implemented): the filter's doing, or the kernel's")
