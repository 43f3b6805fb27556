"""Pinned state, opt-in (--pin DIR): DIR/IFACE/ holds the stats map and the link of one interface, so the
program keeps counting after the probe exits and the next run takes both over."""
import errno
import os

from probe import layout
from probe.bpf import syscall
from probe.errors import ProbeError

LINK = "link"


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

    def release(self):
        """End what the pins keep: detach the pinned link (even if someone else holds it too), then unpin."""
        link_fd = self.open_link()
        if link_fd is not None:
            try:
                syscall.link_detach(link_fd)
            finally:
                os.close(link_fd)
        self.remove()

    def remove(self):
        """Unpin everything; the kernel frees what nothing else holds."""
        for path in (self.link_path, self.map_path):
            if os.path.exists(path):
                os.unlink(path)
        if os.path.isdir(self.path):
            os.rmdir(self.path)
