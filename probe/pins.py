"""Pinned state, opt-in (--pin DIR): DIR/knp_stats and DIR/knp_slots, the maps every interface counts with, and DIR/IFACE/
with what keeps each direction's hook on that interface, so the programs keep counting after the probe exits and
the next run takes them over."""
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


def _make_dir(path):
    try:
        os.makedirs(path, mode=0o700)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise ProbeError("cannot make %s: %s" % (path, e.strerror), errno=e.errno)


def _pin(fd, path):
    """Pin an object at path, owned by root and readable by root alone."""
    syscall.obj_pin(fd, path)
    os.chmod(path, 0o600)


class PinRoot(object):
    """DIR: the maps' pins (stats and slots), shared by every interface, and a PinDir per interface."""

    def __init__(self, root):
        self.path = root
        self.map_paths = {name: os.path.join(root, name) for name in layout.MAPS + layout.PEER_MAPS}

    def interface(self, name):
        """The pins of one interface."""
        return PinDir(self.path, name)

    def interfaces(self):
        """The names of the interfaces pinned here."""
        if not os.path.isdir(self.path):
            return []
        return sorted(name for name in os.listdir(self.path) if os.path.isdir(os.path.join(self.path, name)))

    def has_map(self):
        """Whether the maps every object has are pinned (both: a pin of one alone is an older version's, or half
        made); the talkers' maps are pinned only by a run that counted talkers."""
        return all(os.path.exists(self.map_paths[name]) for name in layout.MAPS)

    def has(self, name):
        """Whether map `name` is pinned."""
        return os.path.exists(self.map_paths[name])

    def open_map(self, name):
        return syscall.obj_get(self.map_paths[name])

    def open_maps(self):
        """{name: fd} of every pinned map; the caller closes them."""
        fds = {}
        try:
            for name in sorted(self.map_paths):
                if name in layout.MAPS or self.has(name):
                    fds[name] = self.open_map(name)
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        return fds

    def pin_maps(self, map_fds):
        """Pin the maps, {name: fd}, the stats map last: has_map() is true only once all are."""
        _make_dir(self.path)
        for name in sorted(map_fds, key=lambda n: n == layout.STATS_MAP):
            if os.path.exists(self.map_paths[name]):
                os.unlink(self.map_paths[name])  # half a pair, left by a run that stopped between two pins
            _pin(map_fds[name], self.map_paths[name])

    def unpin_map_if_unused(self):
        """Unpin the maps once no interface's pins are left beside them: the kernel frees them with the last fd."""
        if os.path.isdir(self.path) and not self.interfaces():
            for path in self.map_paths.values():
                if os.path.exists(path):
                    os.unlink(path)


class PinDir(object):
    """The pins of one interface: DIR/IFACE/ with one pin per attached direction."""

    def __init__(self, root, interface):
        self.path = os.path.join(root, interface)

    def exists(self):
        return os.path.isdir(self.path)

    def hooks(self):
        """{direction: (hook, path of its pin, whether that is a link)} of what the pins keep."""
        found = {}
        for name in sorted(os.listdir(self.path)) if self.exists() else ():
            parts = name.split(SEPARATOR)
            if len(parts) == 3 and parts[0] in layout.DIRECTIONS and parts[2] in KINDS:
                found[parts[0]] = (parts[1], os.path.join(self.path, name), parts[2] == "link")
        return found

    def pin(self, hooks):
        """Pin, for each direction, its hook's link (or its program where it has none). `hooks`: {direction:
        (attachment, program fd)}."""
        _make_dir(self.path)
        for direction, (attachment, prog_fd) in sorted(hooks.items()):
            kind = "link" if attachment.fd is not None else "prog"
            _pin(attachment.fd if kind == "link" else prog_fd,
                 os.path.join(self.path, SEPARATOR.join((direction, attachment.hook, kind))))

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
        """Unpin everything in the folder (an older version's stats map pinned there too) and remove it; the
        kernel frees what nothing else holds."""
        for name in os.listdir(self.path) if self.exists() else ():
            os.unlink(os.path.join(self.path, name))
        if self.exists():
            os.rmdir(self.path)
