"""Pins on a bpffs: where they may live, and mounting one at /sys/fs/bpf when it is missing."""
import ctypes
import os

from probe.bpf import syscall
from probe.errors import ProbeError

BPF_FS_MAGIC = 0xCAFE4A11
DEFAULT_BPFFS = "/sys/fs/bpf"


def _fs_type(path):
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field, a long
    if syscall.libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise ProbeError("statfs %s: %s" % (path, os.strerror(err)), errno=err, doctor=True)
    return ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF


def is_bpffs(path):
    """Whether a path is on a bpffs."""
    return _fs_type(path) == BPF_FS_MAGIC


def _existing_parent(path):
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def ensure_bpffs(root):
    """Check that `root` is on a bpffs; mount one at /sys/fs/bpf when that is where it should be."""
    root = os.path.abspath(root)
    if is_bpffs(_existing_parent(root)):
        return
    inside_default = root == DEFAULT_BPFFS or root.startswith(DEFAULT_BPFFS + "/")
    if inside_default and not is_bpffs(DEFAULT_BPFFS):
        if syscall.libc.mount(b"bpf", DEFAULT_BPFFS.encode(), b"bpf", 0, b"mode=0700") != 0:
            err = ctypes.get_errno()
            raise ProbeError("cannot mount a bpffs at %s: %s" % (DEFAULT_BPFFS, os.strerror(err)), errno=err,
                             doctor=True)
        return
    raise ProbeError("%s is not on a bpffs" % root,
                     hint="use a folder under %s, or mount one: mount -t bpf bpf DIR" % DEFAULT_BPFFS, doctor=True)
