"""`kubenetprobe doctor`: whether this host (or container) can run the probe, one check a line, and what to do
where it cannot."""
import argparse
import collections
import errno
import os
import re
import resource
import sys

from probe import layout, owners
from probe.errors import (PRIVILEGES_FIX, SECCOMP_BLOCKED, SECCOMP_FIX, SECCOMP_MODES, KernelError, ProbeError,
                          blocked_by_seccomp, capable, effective_capabilities, read_status, seccomp_filtered)

# A check's outcome. ok False with required False is a warning: the probe runs, without what it says.
Check = collections.namedtuple("Check", "check ok detail fix required")

MINIMUM_KERNEL = (4, 18)
MEMCG_KERNEL = (5, 11)  # from 5.11 the memory cgroup is charged for BPF memory, not RLIMIT_MEMLOCK
# Kernel functions whose presence says the kernel has the feature, and the release that brought it (used where
# /proc/kallsyms cannot be read).
FEATURES = (("XDP links", "bpf_xdp_link_attach", (5, 9),
             "XDP attaches through netlink: a killed probe leaves its program (`kubenetprobe detach` removes it)"),
            ("TCX", "tcx_link_attach", (6, 6),
             "TC programs attach as cls_bpf filters through netlink: a killed probe leaves them (`kubenetprobe "
             "detach` removes them)"))
BTF_VMLINUX = "/sys/kernel/btf/vmlinux"
KALLSYMS = "/proc/kallsyms"
NEEDED = ("BPF", "NET_ADMIN", "PERFMON")

DESCRIPTION = """\
Check whether kubenetprobe can run here (on this host, or in this container), one line per check:
  ✓ passes   ✗ fails: the probe cannot run until it is fixed   ! a warning: the probe runs, without what it says
and, where a check does not pass, what to do. The checks:
  privileges     root, or the capabilities CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON (CapEff in /proc/self/status)
  seccomp        the seccomp mode, and whether a filter blocks bpf(2) (container runtimes' default profiles do
                 without CAP_SYS_ADMIN)
  bpf(2)         a harmless call: a one-entry array map, created and closed
  kernel         the release (4.18 or newer), and its features: XDP links (5.9), TCX (6.6), BTF
                 (/sys/kernel/btf/vmlinux), BPF run-time statistics (5.8, for --listen)
  bpffs          a bpffs at /sys/fs/bpf (for --pin; the probe mounts one where it may)
  libbpf         the system's libbpf and its version (without one, the native loader loads the programs)
  locked memory  RLIMIT_MEMLOCK, on kernels before 5.11 (which charge BPF memory to it)
  interface X    each interface's XDP and TC programs: their ids, names, how attached, and whose
  runtime state  the container runtimes' state folders (containerd, containers/storage: CRI-O, podman)
Nothing is attached, loaded or mounted."""

EPILOG = """\
examples:
  kubenetprobe doctor
  kubenetprobe doctor --json | jq '.[] | select(.ok | not)'
  sudo ip netns exec NS kubenetprobe doctor     the interfaces (and programs) of another network namespace

exit status: 0 when every check the probe needs passes (warnings included), 1 otherwise"""


def parser():
    """The argument parser of `kubenetprobe doctor`."""
    p = argparse.ArgumentParser(prog="kubenetprobe doctor", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of {check, ok, detail, fix, required} instead of lines")
    p.add_argument("-v", "--verbose", action="store_true", help="on failure, show the traceback")
    return p


def kernel_release(release):
    """(major, minor) of a kernel release such as "6.1.0-18-amd64"; (0, 0) where it says none."""
    found = re.match(r"(\d+)\.(\d+)", release)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def kernel_symbols(names, path=KALLSYMS):
    """Which of these kernel function names /proc/kallsyms lists; None where it cannot be read."""
    wanted = set(names)
    found = set()
    try:
        with open(path) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2] in wanted:
                    found.add(fields[2])
    except (IOError, OSError):
        return None
    return found


def try_bpf():
    """None when bpf(2) creates (and closes) a one-entry array map, else its KernelError."""
    from probe.bpf import syscall
    from probe.bpf.constants import BPF_MAP_TYPE_ARRAY
    try:
        fd = syscall.map_create(syscall.MapCreateAttr(map_type=BPF_MAP_TYPE_ARRAY, key_size=4, value_size=4,
                                                      max_entries=1))
    except KernelError as e:
        return e
    os.close(fd)
    return None


def privileges(status, uid):
    """Root, or the capabilities."""
    caps = effective_capabilities(status)
    who = "root" if uid == 0 else "uid %d" % uid
    missing = [name for name in NEEDED if name not in caps]
    if capable(caps):
        detail = "%s, with CAP_%s" % (who, ", CAP_".join(sorted(caps)))
        if missing and "SYS_ADMIN" not in caps:
            detail += " (no CAP_%s)" % ", CAP_".join(missing)
        return Check("privileges", True, detail, None, True)
    return Check("privileges", False, "%s, without CAP_%s" % (who, ", CAP_".join(missing or NEEDED)),
                 PRIVILEGES_FIX, True)


def seccomp(status, bpf_error):
    """The seccomp mode, and whether a filter is what refuses bpf(2)."""
    mode = status.get("Seccomp")
    if mode is None:
        return Check("seccomp", False, "unknown: /proc/self/status says no mode", None, False)
    name = SECCOMP_MODES[int(mode)] if mode.isdigit() and int(mode) < len(SECCOMP_MODES) else mode
    if not seccomp_filtered(status):
        return Check("seccomp", True, "%s (mode %s): no filter" % (name, mode), None, True)
    if bpf_error is None:
        return Check("seccomp", True, "a filter (mode 2) that lets bpf(2) through", None, True)
    if blocked_by_seccomp(bpf_error, status):
        return Check("seccomp", False, SECCOMP_BLOCKED, SECCOMP_FIX, True)
    if not capable(effective_capabilities(status)):
        return Check("seccomp", False, "a filter (mode 2); whether it lets bpf(2) through shows once the "
                                       "capabilities are there", PRIVILEGES_FIX, False)
    # Not EPERM (some filters answer ENOSYS, as a kernel without bpf(2) does): the filter's doing or the kernel's.
    return Check("seccomp", False, "a filter (mode 2), and bpf(2) fails (%s): the filter's doing, or the "
                                   "kernel's" % bpf_error.message, "run it unconfined to tell", False)


def bpf_call(status, bpf_error):
    """The harmless bpf(2) call's outcome."""
    if bpf_error is None:
        return Check("bpf(2)", True, "works (a one-entry array map, created and closed)", None, True)
    if blocked_by_seccomp(bpf_error, status):
        fix = SECCOMP_FIX
    elif bpf_error.errno in (errno.EPERM, errno.EACCES):
        fix = PRIVILEGES_FIX
    elif bpf_error.errno == errno.ENOSYS:
        fix = "this kernel has no bpf(2): run Linux 4.18 or newer built with CONFIG_BPF_SYSCALL"
    else:
        fix = None
    return Check("bpf(2)", False, "refused: %s" % bpf_error.message, fix, True)


def kernel(release):
    """The release, against the oldest the probe runs on."""
    if kernel_release(release) >= MINIMUM_KERNEL:
        return Check("kernel", True, release, None, True)
    return Check("kernel", False, "%s, older than %d.%d" % ((release,) + MINIMUM_KERNEL),
                 "run Linux %d.%d or newer" % MINIMUM_KERNEL, True)


def features(release, symbols):
    """XDP links and TCX: by the kernel's own functions where /proc/kallsyms says, else by the release."""
    checks = []
    for name, function, since, without in FEATURES:
        if symbols is None:
            has, how = kernel_release(release) >= since, "kernel %s" % release
        else:
            has, how = function in symbols, "%s in %s" % (function, KALLSYMS)
        checks.append(Check(name, has, ("yes (%s)" if has else "no (%s)") % how, None if has else without, False))
    return checks


def btf(path=BTF_VMLINUX):
    """The kernel's own BTF, which objects with CO-RE relocations (--object) need."""
    if os.path.exists(path):
        return Check("BTF", True, path, None, False)
    return Check("BTF", False, "no %s" % path, "only objects with CO-RE relocations (--object) need it: a kernel "
                                                "built with CONFIG_DEBUG_INFO_BTF", False)


def run_time_stats(status):
    """BPF run-time statistics (BPF_ENABLE_STATS, 5.8+), which --listen exports: turned on and off again."""
    from probe.bpf import syscall
    try:
        os.close(syscall.enable_run_time_stats())
    except KernelError as e:
        if e.errno != errno.EPERM:
            fix = "they need kernel 5.8 or newer"
        elif "SYS_ADMIN" not in effective_capabilities(status):
            fix = "they need CAP_SYS_ADMIN"
        elif blocked_by_seccomp(e, status):
            fix = "bpf(2) is blocked (see seccomp)"
        else:
            fix = None
        return Check("BPF run-time stats", False, "unavailable: %s" % e.message,
                     "; ".join(part for part in (fix, "--listen serves every other metric") if part), False)
    return Check("BPF run-time stats", True, "available (--listen exports them)", None, False)


def bpffs():
    """A bpffs at /sys/fs/bpf, for --pin."""
    from probe.bpf import pin
    try:
        mounted = pin.is_bpffs(pin.DEFAULT_BPFFS)
    except ProbeError as e:
        mounted, reason = False, str(e)
    else:
        reason = "not mounted"
    if mounted:
        return Check("bpffs", True, "mounted at %s" % pin.DEFAULT_BPFFS, None, False)
    return Check("bpffs", False, "%s: %s" % (pin.DEFAULT_BPFFS, reason),
                 "only --pin needs it, and mounts one where it may; else `mount -t bpf bpf %s` (in a container: "
                 "mount the host's %s)" % (pin.DEFAULT_BPFFS, pin.DEFAULT_BPFFS), False)


def libbpf():
    """The system's libbpf and its version."""
    from probe.bpf.libbpf import LibbpfEngine
    try:
        engine = LibbpfEngine()
    except ProbeError as e:
        return Check("libbpf", False, "%s: the native loader loads the programs" % e.message,
                     "only --loader libbpf needs it: " + e.hint, False)
    return Check("libbpf", True, "%s (%s)" % (engine.version, engine.lib._name), None, False)


def locked_memory(release, limits, caps):
    """RLIMIT_MEMLOCK ((soft, hard)), which kernels before 5.11 charge BPF maps and programs to, and which the
    probe lifts where it may."""
    if kernel_release(release) >= MEMCG_KERNEL:
        return Check("locked memory", True, "not limited: kernel %d.%d+ charges BPF memory to the memory cgroup"
                     % MEMCG_KERNEL, None, True)
    hard = limits[1]
    if hard == resource.RLIM_INFINITY or "SYS_RESOURCE" in caps:
        return Check("locked memory", True, "RLIMIT_MEMLOCK, which the probe lifts", None, True)
    return Check("locked memory", False, "RLIMIT_MEMLOCK is %d KiB (hard limit), which this kernel charges BPF "
                                         "memory to, and without CAP_SYS_RESOURCE the probe cannot lift it"
                 % (hard // 1024), "`ulimit -l unlimited` before it (podman/docker: --ulimit memlock=-1:-1), or "
                                   "add CAP_SYS_RESOURCE", True)


def _whose(name):
    if name == "?":
        return "whose unknown"
    return "kubenetprobe's" if name.startswith(layout.OWNER) else "not kubenetprobe's"


def _programs(link):
    """The XDP and TC programs on an interface, in words."""
    from probe.attach import tc, xdp
    found = []
    holder = xdp.holder(link.ifindex)
    if holder is not None:
        found.append("XDP id %d (%s, %s mode, %s)" % (holder.prog_id, holder.name, holder.mode,
                                                      _whose(holder.name)))
    hows = {"link": "TCX link", "tcx": "TCX", "netlink": "cls_bpf filter"}
    for p in tc.programs(link.name):
        found.append("TC %s id %d (%s, %s, %s)" % (p.direction, p.prog_id, p.name, hows[p.how], _whose(p.name)))
    return found


def attached(bpf_refused):
    """Each interface of this network namespace with the programs on its hooks (bpf_refused: whether the
    harmless bpf(2) call was, which listing TCX programs needs)."""
    from probe.net import link as netlink
    checks = []
    for link in sorted(netlink.links(), key=lambda l: l.ifindex):
        name = "interface %s" % link.name
        try:
            found = _programs(link)
        except ProbeError as e:
            if bpf_refused:  # said once, by the bpf(2) check
                checks.append(Check(name, False, "cannot list its programs: bpf(2) is refused", None, False))
            else:
                checks.append(Check(name, False, "cannot list its programs: %s" % e.message, e.hint, False))
            continue
        checks.append(Check(name, True, "; ".join(found) or "no XDP or TC program", None, False))
    return checks


def runtime_state(roots=owners.DEFAULT_ROOTS):
    """The container runtimes' state folders found (where attribution reads them), with how many containers with
    a network namespace of their own each names."""
    found, readable, looked = [], False, []
    for root in roots:
        runtime, folder = owners.state_folder(root)
        looked.append(folder)
        try:
            os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:  # such as a folder under one only root may read
            found.append("%s %s (unreadable: %s)" % (runtime, folder, e.strerror))
            continue
        readable = True
        count = len(owners.scan(root)[0])
        found.append("%s %s (%d with a network namespace)" % (runtime, folder, count))
    if found:
        return Check("runtime state", readable, "; ".join(found), None if readable else "run as root", False)
    return Check("runtime state", False, "none of %s" % ", ".join(looked),
                 "none is needed on a host without containers; in a container, mount the node's state folders "
                 "read-only", False)


def checks():
    """Every check, in the order a person fixes them."""
    status = read_status()
    release = os.uname().release
    bpf_error = try_bpf()
    symbols = kernel_symbols([function for _, function, _, _ in FEATURES])
    return ([privileges(status, os.geteuid()), seccomp(status, bpf_error), bpf_call(status, bpf_error),
             kernel(release)] + features(release, symbols) +
            [btf(), run_time_stats(status), bpffs(), libbpf(),
             locked_memory(release, resource.getrlimit(resource.RLIMIT_MEMLOCK), effective_capabilities(status))] +
            attached(bpf_error is not None) + [runtime_state()])


def _marks(stream):
    """(passed, failed, warning) marks, in ASCII where the stream cannot print others."""
    try:
        u"\u2713\u2717".encode(stream.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "+", "x", "!"
    return u"\u2713", u"\u2717", "!"


def format_line(check, marks=(u"\u2713", u"\u2717", "!")):
    """One check in one line: its mark, name and detail, and what to do where it does not pass."""
    mark = marks[0] if check.ok else marks[1] if check.required else marks[2]
    line = "%s %s: %s" % (mark, check.check, check.detail)
    return line + ": " + check.fix if check.fix and not check.ok else line


def run(args):
    """Print every check; 0 when the probe can run, else 1."""
    found = checks()
    if args.json:
        import json
        print(json.dumps([c._asdict() for c in found], indent=2))
    else:
        marks = _marks(sys.stdout)
        for c in found:
            print(format_line(c, marks))
    return 0 if all(c.ok for c in found if c.required) else 1
