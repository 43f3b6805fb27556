"""Pinned state, opt-in (--pin DIR): DIR/IFACE/ holds the stats map of one interface and what keeps each
direction's hook, so the programs keep counting after the probe exits and the next run takes them over."""
import errno
import os

from probe import layout
from probe.bpf import syscall
from probe.errors import ProbeError

# DIR/IFACE/<direction>_<hook>_link pins a hook's bpf_link; <direction>_<hook>_prog pins the program of a
# netlink attachment, which has no link: the name alone says which hook to take over. Not dots: a bpffs
# refuses any name with a dot in it (EPERM).
KINDS = ("link", "prog")
SEPARATOR = "_"


class PinDir(object):
    """The pins of one interface: DIR/IFACE/knp_stats and one pin per attached direction."""

    def __init__(self, root, interface):
        self.path = os.path.join(root, interface)
        self.map_path = os.path.join(self.path, layout.STATS_MAP)

    def exists(self):
        return os.path.exists(self.map_path)

    def open_map(self):
        return syscall.obj_get(self.map_path)

    def hooks(self):
        """{direction: (hook, path of its pin, whether that is a link)} of what the pins keep."""
        found = {}
        for name in sorted(os.listdir(self.path)) if os.path.isdir(self.path) else ():
            parts = name.split(SEPARATOR)
            if len(parts) == 3 and parts[0] in layout.DIRECTIONS and parts[2] in KINDS:
                found[parts[0]] = (parts[1], os.path.join(self.path, name), parts[2] == "link")
        return found

    def pin(self, map_fd, hooks):
        """Pin the map and, for each direction, its hook's link (or its program where it has none), owned
        by root and readable by root alone. `hooks`: {direction: (attachment, program fd)}."""
        try:
            os.makedirs(self.path, mode=0o700)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise ProbeError("cannot make %s: %s" % (self.path, e.strerror), errno=e.errno)
        pins = [(map_fd, self.map_path)]
        for direction, (attachment, prog_fd) in sorted(hooks.items()):
            kind = "link" if attachment.fd is not None else "prog"
            pins.append((attachment.fd if kind == "link" else prog_fd,
                         os.path.join(self.path, SEPARATOR.join((direction, attachment.hook, kind)))))
        for fd, path in pins:
            syscall.obj_pin(fd, path)
            os.chmod(path, 0o600)

    def release(self):
        """End what the pins keep: detach the pinned links (even if someone else holds them too), then unpin.
        Netlink attachments stay: the hooks' own detach removes them."""
        for hook, path, is_link in self.hooks().values():
            if is_link:
                link_fd = syscall.obj_get(path)
                try:
                    syscall.link_detach(link_fd)
                finally:
                    os.close(link_fd)
        self.remove()

    def remove(self):
        """Unpin everything; the kernel frees what nothing else holds."""
        for _, path, _ in self.hooks().values():
            os.unlink(path)
        if os.path.exists(self.map_path):
            os.unlink(self.map_path)
        if os.path.isdir(self.path):
            os.rmdir(self.path)
