"""Debian root filesystems made by debootstrap, cached outside the clone, and the pyz run chrooted in them.

A root filesystem is built once per suite into /var/cache/kubenetprobe/rootfs/<suite> (or
$KUBENETPROBE_ROOTFS_CACHE/<suite>): debootstrap writes into a temporary folder beside it, which is
renamed into place only when complete, with a marker recording how it was made. A changed include
list rebuilds it; leftovers of a killed build are removed by the next one.

The pyz runs in the probe's network namespace, in a mount namespace of its own where the root
filesystem is bind-mounted read-only with /proc, /sys, /dev and the pyz bound in: every mount dies
with the process, and a run writes nothing into the cache.
"""
import collections
import fcntl
import glob
import os
import shutil
import subprocess
import tempfile
import time

from conftest import PYZ
from netns import ProbeRun, sh

CACHE = os.environ.get("KUBENETPROBE_ROOTFS_CACHE", "/var/cache/kubenetprobe/rootfs")
MIRROR = "http://deb.debian.org/debian"
MARKER = ".kubenetprobe-rootfs"  # inside the root filesystem: how it was made
PYZ_INSIDE = "/kubenetprobe.pyz"  # an empty file, made at build time, that the pyz is bound onto
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}

# What each mount namespace does before running the command: $1 the root filesystem, $2 the pyz.
ENTER = """set -e
root=$1 pyz=$2; shift 2
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
for fs in /proc /sys /dev; do mount --bind "$fs" "$root$fs"; done
mount --bind "$pyz" "$root%s"
exec chroot "$root" "$@"
""" % PYZ_INSIDE


class Distro(collections.namedtuple("Distro", "suite include python libbpf")):
    """A Debian release as debootstrap makes it: the packages added, the Python and libbpf it then has."""

    __slots__ = ()

    @property
    def marker(self):
        """The marker's text: everything the root filesystem was made from."""
        return "suite=%s variant=minbase include=%s mirror=%s\n" % (self.suite, ",".join(self.include), MIRROR)


# libbpf 0.3 as libbpf.so.0: encoded error pointers, bpf_program__next/bpf_map__next, no libbpf_major_version.
BULLSEYE = Distro("bullseye", ("python3", "libbpf0"), python="3.9", libbpf="libbpf.so.0")
TRIXIE = Distro("trixie", ("python3", "libbpf1"), python="3.13", libbpf="libbpf.so.1")
# No libbpf at all: the minimal-container case, where auto picks the native loader.
BOOKWORM_NO_LIBBPF = Distro("bookworm", ("python3",), python="3.11", libbpf=None)


def path(distro):
    """Where a distro's root filesystem is cached."""
    return os.path.join(CACHE, distro.suite)


def is_current(distro):
    """Whether the cached root filesystem exists and was made with this include list."""
    try:
        with open(os.path.join(path(distro), MARKER)) as f:
            return f.read() == distro.marker
    except OSError:
        return False


def ensure(distro):
    """The root filesystem of a distro, built first if missing or made differently; returns (path, seconds built)."""
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, "." + distro.suite + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per suite at a time, across processes
        if is_current(distro):
            return path(distro), 0.0
        start = time.time()
        _remove_leftovers(distro)
        _replace(path(distro), _build(distro))
        return path(distro), time.time() - start


def _build(distro):
    """Run debootstrap into a new temporary folder beside the cache; returns that folder, complete."""
    tmp = tempfile.mkdtemp(prefix=".build-%s-" % distro.suite, dir=CACHE)
    os.chmod(tmp, 0o755)  # a root directory, not mkdtemp's private 0700
    try:
        # In a mount namespace of its own, so that nothing debootstrap mounts outlives it, even if killed.
        sh("unshare", "-m", "--propagation", "private", "debootstrap", "--variant=minbase",
           "--include=" + ",".join(distro.include), distro.suite, tmp, MIRROR)
    except BaseException:
        shutil.rmtree(tmp)
        raise
    open(tmp + PYZ_INSIDE, "w").close()
    with open(os.path.join(tmp, MARKER), "w") as f:
        f.write(distro.marker)
    return tmp


def _replace(dest, new):
    """Put `new` at `dest` by renames; an old `dest` is moved aside and removed."""
    if os.path.exists(dest):
        old = tempfile.mkdtemp(prefix=".old-%s-" % os.path.basename(dest), dir=CACHE)
        os.rename(dest, os.path.join(old, "rootfs"))
        os.rename(new, dest)
        shutil.rmtree(old)
    else:
        os.rename(new, dest)


def _remove_leftovers(distro):
    """Remove what a killed build or replacement of this suite left behind."""
    for leftover in glob.glob(os.path.join(CACHE, ".build-%s-*" % distro.suite)) + \
            glob.glob(os.path.join(CACHE, ".old-%s-*" % distro.suite)):
        shutil.rmtree(leftover)


def libbpf_files(root):
    """The libbpf shared objects a root filesystem has, by file name."""
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(root, "usr", "lib", "*", "libbpf.so*")) +
                  glob.glob(os.path.join(root, "lib", "*", "libbpf.so*")))


def chroot_command(pair, root, *args, pyz=PYZ):
    """The command line that runs `python3 /kubenetprobe.pyz ARGS` chrooted in `root`, in the probe's namespace."""
    return ["ip", "netns", "exec", pair.probe_ns, "unshare", "-m", "--propagation", "private",
            "sh", "-c", ENTER, "sh", root, pyz, "python3", PYZ_INSIDE] + list(args)


def run_pyz(pair, root, *args, pyz=PYZ):
    """Run a pyz chrooted to completion; returns the CompletedProcess."""
    return sh(*chroot_command(pair, root, *args, pyz=pyz), check=False, env=ENV)


def python_version(root):
    """The version ("3.9") of a root filesystem's python3."""
    return sh("chroot", root, "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])",
              env=ENV).stdout.strip()


class ChrootProbeRun(ProbeRun):
    """kubenetprobe.pyz running with --json chrooted in a root filesystem, in the probe's namespace."""

    def __init__(self, pair, root, *args):
        self._expect(pair, args)
        self.proc = subprocess.Popen(chroot_command(pair, root, "--json", *args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, universal_newlines=True, env=ENV)

    def mapped_libbpf(self):
        """The libbpf files the running probe (the chrooted python3) has mapped, by file name."""
        with open("/proc/%d/maps" % self.proc.pid) as f:
            return sorted({os.path.basename(line.split()[-1]) for line in f if "libbpf.so" in line})


def mounts_under(root):
    """Host mount points at or below `root` (there should be none)."""
    out = sh("findmnt", "-rno", "TARGET").stdout.splitlines()
    return [m for m in out if m == root or m.startswith(root.rstrip("/") + "/")]
