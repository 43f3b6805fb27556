"""Attaching an XDP program to an interface, through a bpf_link or netlink, and what holds the hook."""
import errno
import os

from probe import interfaces, log, netlink, syscall
from probe.errors import ProbeError

MODES = ("auto", "native", "generic")
METHODS = ("auto", "link", "netlink")
_MODE_FLAGS = {"native": syscall.XDP_FLAGS_DRV_MODE, "generic": syscall.XDP_FLAGS_SKB_MODE}


class Holder(object):
    """The XDP program an interface has now: its id, name and mode."""

    def __init__(self, index, prog_id, mode):
        self.ifindex = index
        self.prog_id = prog_id
        self.mode = mode
        try:
            self.name = syscall.prog_name_by_id(prog_id)
        except ProbeError:
            self.name = "?"

    def __str__(self):
        return "id %d (%s), %s mode" % (self.prog_id, self.name or "no name", self.mode)

    def is_ours(self):
        return self.name.startswith("kubenetprobe")

    def remove(self):
        """Take the program off the hook: detach its bpf_link, or unset it through netlink."""
        link_ids = syscall.xdp_link_ids(self.ifindex)
        for link_id in link_ids:
            syscall.link_detach_by_id(link_id)
        if not link_ids:
            netlink.xdp_detach(self.ifindex, _MODE_FLAGS.get(self.mode, 0))


def holder(index):
    """The Holder of an interface's XDP hook, or None."""
    current = netlink.xdp_program(index)
    return Holder(index, *current) if current else None


class XdpAttachment(object):
    """An XDP program on an interface: `method` says how ("link" or "netlink"), `mode` what the kernel took."""

    hook = "xdp"

    def __init__(self, interface, index, mode, method):
        self.interface = interface
        self.ifindex = index
        self.mode = mode
        self.method = method


class XdpLink(XdpAttachment):
    """Attached through a bpf_link: the kernel detaches it when the link's fd closes, even on SIGKILL."""

    def __init__(self, fd, interface, index, mode):
        XdpAttachment.__init__(self, interface, index, mode, "link")
        self.fd = fd

    @property
    def program_id(self):
        return syscall.link_info(self.fd).prog_id

    def close(self):
        """Detach the program."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class NetlinkXdp(XdpAttachment):
    """Attached through netlink (kernels before 5.9): it stays until removed, so close() removes it."""

    def __init__(self, prog_id, interface, index, mode):
        XdpAttachment.__init__(self, interface, index, mode, "netlink")
        self.program_id = prog_id
        self._attached = True

    def close(self):
        """Detach the program, if the hook still holds it (and not something that replaced it)."""
        if self._attached:
            self._attached = False
            current = netlink.xdp_program(self.ifindex)
            if current and current[0] == self.program_id:
                netlink.xdp_detach(self.ifindex, _MODE_FLAGS[self.mode])


def _attach_link(prog_fd, interface, index, mode):
    return XdpLink(syscall.link_create_xdp(prog_fd, index, _MODE_FLAGS[mode]), interface, index, mode)


def _attach_netlink(prog_fd, interface, index, mode):
    try:
        netlink.xdp_attach(index, prog_fd, syscall.XDP_FLAGS_UPDATE_IF_NOEXIST | _MODE_FLAGS[mode])
    except ProbeError as e:
        e.message = "netlink: " + e.message
        raise
    return NetlinkXdp(syscall.prog_info(prog_fd).id, interface, index, mode)


def attach_xdp(prog_fd, interface, mode="auto", force=False, method="auto"):
    """Attach a program to an interface's XDP hook; returns an XdpLink or a NetlinkXdp.

    mode "auto" tries native XDP and falls back to generic where the driver has none; method "auto"
    uses a bpf_link and falls back to netlink where the kernel has no XDP links. An interface that
    already has an XDP program is refused unless force, which replaces that program.
    """
    if mode not in MODES:
        raise ProbeError("unknown XDP mode %r" % mode, hint="use one of %s" % ", ".join(MODES))
    if method not in METHODS:
        raise ProbeError("unknown attach method %r" % method, hint="use one of %s" % ", ".join(METHODS))
    index = interfaces.ifindex(interface)
    current = holder(index)
    if current:
        if not force:
            raise ProbeError("%s already has an XDP program: %s" % (interface, current),
                             hint="run with --force to replace it, or remove it: "
                                  "`ip link set dev %s xdp off`" % interface, errno=errno.EBUSY)
        current.remove()
        log.warning("replaced XDP program id %d on %s (--force)", current.prog_id, interface)
    methods = ["link", "netlink"] if method == "auto" else [method]
    modes = ["native", "generic"] if mode == "auto" else [mode]
    for how in methods:
        attach = _attach_link if how == "link" else _attach_netlink
        for attempt in modes:
            try:
                attached = attach(prog_fd, interface, index, attempt)
            except ProbeError as e:
                if how == "link" and method == "auto" and e.errno == errno.EINVAL:
                    log.debug("%s: no XDP bpf_link in this kernel (%s); attaching through netlink",
                              interface, e.message)
                    break
                if attempt == "native" and mode == "auto" and e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                    log.info("%s: its driver has no native XDP (%s); attaching in generic mode",
                             interface, e.message)
                    continue
                raise _attach_error(e, interface, index, attempt)
            log.debug("attached to %s in %s mode through %s", interface, attempt, how)
            return attached


def _attach_error(e, interface, index, mode):
    if e.errno in (errno.EBUSY, errno.EEXIST):
        current = holder(index)
        return ProbeError("%s already has an XDP program: %s" % (interface, current or "another program"),
                          hint="run with --force to replace it", errno=e.errno)
    if e.errno == errno.EOPNOTSUPP and mode == "native":
        return ProbeError("%s: its driver has no native XDP" % interface,
                          hint="use --mode generic (or auto)", errno=e.errno)
    if e.errno == errno.EINVAL:
        return ProbeError("%s refused the XDP program in %s mode (%s)" % (interface, mode, e.message),
                          hint="XDP links need kernel 5.9 or newer: try --attach netlink, or --mode generic",
                          errno=e.errno)
    return permission_error(e) or ProbeError("cannot attach to %s: %s" % (interface, e.message),
                                             errno=e.errno)


def detach(interface, force=False):
    """Remove kubenetprobe's XDP program from an interface (any program with force); returns its Holder."""
    current = holder(interfaces.ifindex(interface))
    if current is None:
        raise ProbeError("%s has no XDP program" % interface)
    if not current.is_ours() and not force:
        raise ProbeError("the XDP program on %s is not kubenetprobe's: %s" % (interface, current),
                         hint="--force removes it anyway")
    current.remove()
    return current


def permission_error(e):
    """The one error for EPERM/EACCES anywhere, or None for other errors."""
    if e.errno in (errno.EPERM, errno.EACCES):
        return ProbeError("permission denied (%s)" % e.message,
                          hint="run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON", errno=e.errno)
    return None
