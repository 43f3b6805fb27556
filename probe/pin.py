"""Pinned state on a bpffs, opt-in (--pin DIR): DIR/IFACE/ holds the stats map and the link of one interface,
so the program keeps counting after the probe exits and the next run takes both over."""
import ctypes
import errno
import os

from probe import layout, syscall
from probe.errors import ProbeError

BPF_FS_MAGIC = 0xCAFE4A11
DEFAULT_BPFFS = "/sys/fs/bpf"
LINK = "link"

def _fs_type(path):
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field, a long
    if syscall.libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise ProbeError("statfs %s: %s" % (path, os.strerror(err)), errno=err)
    return ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF


def _existing_parent(path):
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def ensure_bpffs(root):
    """Check that `root` is on a bpffs; mount one at /sys/fs/bpf when that is where it should be."""
    root = os.path.abspath(root)
    if _fs_type(_existing_parent(root)) == BPF_FS_MAGIC:
        return
    inside_default = root == DEFAULT_BPFFS or root.startswith(DEFAULT_BPFFS + "/")
    if inside_default and _fs_type(DEFAULT_BPFFS) != BPF_FS_MAGIC:
        if syscall.libc.mount(b"bpf", DEFAULT_BPFFS.encode(), b"bpf", 0, b"mode=0700") != 0:
            err = ctypes.get_errno()
            raise ProbeError("cannot mount a bpffs at %s: %s" % (DEFAULT_BPFFS, os.strerror(err)), errno=err)
        return
    raise ProbeError("%s is not on a bpffs" % root,
                     hint="use a folder under %s, or mount one: mount -t bpf bpf DIR" % DEFAULT_BPFFS)


class PinDir(object):
    """The pins of one interface: DIR/IFACE/knp_stats (the map) and DIR/IFACE/link (the bpf_link, if any)."""

    def __init__(self, root, interface):
        self.path = os.path.join(root, interface)
        self.map_path = os.path.join(self.path, layout.STATS_MAP)
        self.link_path = os.path.join(self.path, LINK)

    def exists(self):
        return os.path.exists(self.map_path)

    def open_map(self):
        return syscall.obj_get(self.map_path)

    def open_link(self):
        """A new fd of the pinned link, or None (netlink attachments have none)."""
        return syscall.obj_get(self.link_path) if os.path.exists(self.link_path) else None

    def pin(self, map_fd, link_fd=None):
        """Pin the map (and the link), owned by root and readable by root alone."""
        try:
            os.makedirs(self.path, mode=0o700)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise ProbeError("cannot make %s: %s" % (self.path, e.strerror), errno=e.errno)
        for fd, path in ((map_fd, self.map_path), (link_fd, self.link_path)):
            if fd is not None:
                syscall.obj_pin(fd, path)
                os.chmod(path, 0o600)

    def remove(self):
        """Unpin everything; the kernel frees what nothing else holds."""
        for path in (self.link_path, self.map_path):
            if os.path.exists(path):
                os.unlink(path)
        if os.path.isdir(self.path):
            os.rmdir(self.path)
