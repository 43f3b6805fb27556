"""Attaching an XDP program to an interface through a bpf_link, and what already holds the hook."""
import errno
import os

from probe import interfaces, log, netlink, syscall
from probe.errors import ProbeError

MODES = ("auto", "native", "generic")
_MODE_FLAGS = {"native": syscall.XDP_FLAGS_DRV_MODE, "generic": syscall.XDP_FLAGS_SKB_MODE}


def _held_by(index):
    """Describe the XDP program on an interface ("id 42 (xdp_dummy), native"), or None."""
    current = netlink.xdp_program(index)
    if current is None:
        return None
    prog_id, mode = current
    try:
        name = syscall.prog_name_by_id(prog_id)
    except ProbeError:
        name = "?"
    return prog_id, "id %d (%s), %s mode" % (prog_id, name or "no name", mode), mode


def _remove(interface, index, prog_id, mode):
    """Take another program off the hook: detach its bpf_link, or unset it through netlink."""
    link_ids = syscall.xdp_link_ids(index)
    for link_id in link_ids:
        syscall.link_detach_by_id(link_id)
    if not link_ids:
        netlink.xdp_detach(index, _MODE_FLAGS.get(mode, 0))
    log.warning("replaced XDP program id %d on %s (--force)", prog_id, interface)


class XdpLink(object):
    """An XDP program attached to an interface; the kernel detaches it when the link's fd closes."""

    def __init__(self, fd, interface, ifindex, mode):
        self.fd = fd
        self.interface = interface
        self.ifindex = ifindex
        self.mode = mode  # "native" or "generic": what the kernel took
        self.hook = "xdp"

    @property
    def program_id(self):
        return syscall.link_info(self.fd).prog_id

    def close(self):
        """Detach the program (unless it is pinned elsewhere)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def attach_xdp(prog_fd, interface, mode="auto", force=False):
    """Attach a program to an interface's XDP hook and return the XdpLink.

    mode "auto" tries native XDP and falls back to generic where the driver has none. An interface
    that already has an XDP program is refused unless force, which replaces that program.
    """
    if mode not in MODES:
        raise ProbeError("unknown XDP mode %r" % mode, hint="use one of %s" % ", ".join(MODES))
    index = interfaces.ifindex(interface)
    held = _held_by(index)
    if held:
        prog_id, description, held_mode = held
        if not force:
            raise ProbeError("%s already has an XDP program: %s" % (interface, description),
                             hint="run with --force to replace it, or remove it: "
                                  "`ip link set dev %s xdp off`" % interface, errno=errno.EBUSY)
        _remove(interface, index, prog_id, held_mode)
    for attempt in (["native", "generic"] if mode == "auto" else [mode]):
        try:
            fd = syscall.link_create_xdp(prog_fd, index, _MODE_FLAGS[attempt])
        except ProbeError as e:
            if mode == "auto" and attempt == "native" and e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                log.info("%s: its driver has no native XDP (%s); attaching in generic mode", interface, e.message)
                continue
            raise _attach_error(e, interface, index, attempt)
        log.debug("attached to %s in %s mode", interface, attempt)
        return XdpLink(fd, interface, index, attempt)


def _attach_error(e, interface, index, mode):
    if e.errno == errno.EBUSY:
        held = _held_by(index)
        what = held[1] if held else "another program"
        return ProbeError("%s already has an XDP program: %s" % (interface, what),
                          hint="run with --force to replace it", errno=e.errno)
    if e.errno == errno.EOPNOTSUPP and mode == "native":
        return ProbeError("%s: its driver has no native XDP" % interface,
                          hint="use --mode generic (or auto)", errno=e.errno)
    if e.errno == errno.EINVAL:
        return ProbeError("%s refused the XDP program in %s mode (%s)" % (interface, mode, e.message),
                          hint="kernel 5.9 or newer is needed for XDP links; try --mode generic",
                          errno=e.errno)
    return permission_error(e) or ProbeError("cannot attach to %s: %s" % (interface, e.message),
                                             errno=e.errno)


def permission_error(e):
    """The one error for EPERM/EACCES anywhere, or None for other errors."""
    if e.errno in (errno.EPERM, errno.EACCES):
        return ProbeError("permission denied (%s)" % e.message,
                          hint="run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON", errno=e.errno)
    return None
