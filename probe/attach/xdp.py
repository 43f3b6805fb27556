"""The XDP hook: attaching a program through a bpf_link or netlink, swapping it, and what holds the hook.

Whose a program is goes by its name's prefix, the `owner` every call here takes from the application.
"""
import errno
import os

from probe.bpf import log
from probe.attach.common import LinkAttachment, program_fd, program_name
from probe.bpf import syscall
from probe.bpf.constants import (XDP_FLAGS_DRV_MODE, XDP_FLAGS_REPLACE, XDP_FLAGS_SKB_MODE,
                                 XDP_FLAGS_UPDATE_IF_NOEXIST)
from probe.errors import KernelError, ProbeError, permission_error
from probe.net import interfaces
from probe.net import link as netlink

MODES = ("auto", "native", "generic")
METHODS = ("auto", "link", "netlink")
_MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}


class Holder(object):
    """The XDP program an interface has now: its id, name and mode."""

    def __init__(self, index, prog_id, mode):
        self.ifindex = index
        self.prog_id = prog_id
        self.mode = mode
        self.name = program_name(prog_id)

    def __str__(self):
        return "id %d (%s), %s mode" % (self.prog_id, self.name or "no name", self.mode)

    def is_owned_by(self, owner):
        """Whether the program's name says it is `owner`'s (a prefix, such as "kubenetprobe")."""
        return self.name.startswith(owner)

    def remove(self):
        """Take the program off the hook: detach its bpf_link, or unset it through netlink."""
        if not syscall.detach_xdp_links(self.ifindex, self.prog_id):
            netlink.xdp_detach(self.ifindex, _MODE_FLAGS.get(self.mode, 0))


def holder(index):
    """The Holder of an interface's XDP hook, or None."""
    current = netlink.xdp_program(index)
    return Holder(index, *current) if current else None


class XdpAttachment(object):
    """An XDP program on an interface: `method` says how ("link" or "netlink"), `mode` what the kernel took."""

    hook = "xdp"
    fd = None  # the bpf_link's fd: netlink attachments have none

    def __init__(self, interface, index, mode, method):
        self.interface = interface
        self.ifindex = index
        self.mode = mode
        self.method = method


class XdpLink(LinkAttachment, XdpAttachment):
    """Attached through a bpf_link: the kernel detaches it when the link's fd closes, even on SIGKILL."""

    def __init__(self, fd, interface, index, mode):
        XdpAttachment.__init__(self, interface, index, mode, "link")
        self._hold(fd)


class NetlinkXdp(XdpAttachment):
    """Attached through netlink (kernels before 5.9): it stays until removed, so close() removes it."""

    def __init__(self, prog_id, interface, index, mode):
        XdpAttachment.__init__(self, interface, index, mode, "netlink")
        self.program_id = prog_id
        self._attached = True

    def update(self, new_prog_fd):
        """Swap in another program, atomically; where the kernel can (5.7+), only if ours is still there."""
        flags = _MODE_FLAGS[self.mode]
        with program_fd(self.program_id) as old_prog_fd:
            if old_prog_fd is None:  # ours cannot be opened without CAP_SYS_ADMIN: swap unconditionally
                netlink.xdp_attach(self.ifindex, new_prog_fd, flags)
            else:
                try:
                    netlink.xdp_attach(self.ifindex, new_prog_fd, flags | XDP_FLAGS_REPLACE, old_prog_fd)
                except KernelError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    netlink.xdp_attach(self.ifindex, new_prog_fd, flags)  # no XDP_FLAGS_REPLACE before 5.7
        self.program_id = syscall.prog_info(new_prog_fd).id

    def close(self, keep=False):
        """Detach the program, if the hook still holds it (and not something that replaced it), unless keep. An
        interface gone meanwhile took it with it."""
        if self._attached and not keep:
            self._attached = False
            try:
                current = netlink.xdp_program(self.ifindex)
                if current and current[0] == self.program_id:
                    netlink.xdp_detach(self.ifindex, _MODE_FLAGS[self.mode])
            except KernelError as e:
                if e.errno != errno.ENODEV:
                    raise


def take_over(interface, owner, link_fd=None):
    """The attachment a previous run left to this one (its pinned link, or its netlink program)."""
    index = interfaces.ifindex(interface)
    current = holder(index)
    # A program whose name only CAP_SYS_ADMIN may read is ours if the link pinned in our folder runs it.
    if current is not None and not current.name and link_fd is not None:
        owned = syscall.link_info(link_fd).prog_id == current.prog_id
    else:
        owned = current is not None and current.is_owned_by(owner)
    if not owned:
        if link_fd is not None:
            os.close(link_fd)
        found = "it runs %s" % current if current else "it has no XDP program"
        raise ProbeError("the pinned state of %s is stale: %s" % (interface, found),
                         hint="remove it with `kubenetprobe detach -i %s --pin DIR`" % interface)
    if link_fd is not None:
        return XdpLink(link_fd, interface, index, current.mode)
    return NetlinkXdp(current.prog_id, interface, index, current.mode)


def _attach_link(prog_fd, interface, index, mode):
    return XdpLink(syscall.link_create_xdp(prog_fd, index, _MODE_FLAGS[mode]), interface, index, mode)


def _attach_netlink(prog_fd, interface, index, mode):
    try:
        netlink.xdp_attach(index, prog_fd, XDP_FLAGS_UPDATE_IF_NOEXIST | _MODE_FLAGS[mode])
    except KernelError as e:
        raise e.wrap("netlink") from e
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
                                  "`ip link set dev %s xdp off`" % interface, errno=errno.EBUSY, doctor=True)
        current.remove()
        log.warning("replaced XDP program id %d on %s (--force)", current.prog_id, interface)
    methods = ["link", "netlink"] if method == "auto" else [method]
    modes = ["native", "generic"] if mode == "auto" else [mode]
    for how in methods:
        attach = _attach_link if how == "link" else _attach_netlink
        for attempt in modes:
            try:
                attached = attach(prog_fd, interface, index, attempt)
            except KernelError as e:
                if how == "link" and method == "auto" and e.errno == errno.EINVAL:
                    log.debug("%s: no XDP bpf_link in this kernel (%s); attaching through netlink",
                              interface, e.message)
                    break
                if attempt == "native" and mode == "auto" and e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                    log.info("%s: its driver has no native XDP (%s); attaching in generic mode",
                             interface, e.message)
                    continue
                raise _attach_error(e, interface, index, attempt) from e
            log.debug("attached to %s in %s mode through %s", interface, attempt, how)
            return attached


def _attach_error(e, interface, index, mode):
    if e.errno in (errno.EBUSY, errno.EEXIST):
        current = holder(index)
        return KernelError("%s already has an XDP program: %s" % (interface, current or "another program"),
                          hint="run with --force to replace it", errno=e.errno, doctor=True)
    if e.errno == errno.EOPNOTSUPP and mode == "native":
        return KernelError("%s: its driver has no native XDP" % interface,
                          hint="use --mode generic (or auto)", errno=e.errno, doctor=True)
    if e.errno == errno.EINVAL:
        return KernelError("%s refused the XDP program in %s mode (%s)" % (interface, mode, e.message),
                          hint="XDP links need kernel 5.9 or newer: try --attach netlink, or --mode generic",
                          errno=e.errno, doctor=True)
    return permission_error(e) or KernelError("cannot attach to %s: %s" % (interface, e.message),
                                             errno=e.errno)


def detach(interface, owner, force=False):
    """Remove `owner`'s XDP program from an interface (any program with force); returns the Holder of what
    was removed, or None when the hook was empty."""
    current = holder(interfaces.ifindex(interface))
    if current is None:
        return None
    if not current.is_owned_by(owner) and not force:
        raise ProbeError("the XDP program on %s is not %s's: %s" % (interface, owner, current),
                         hint="--force removes it anyway")
    current.remove()
    return current
