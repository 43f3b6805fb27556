"""The TC hooks (ingress and egress): attaching a program through a TCX bpf_link or as a cls_bpf filter,
swapping it, and what else runs there.

Whose a program is goes by its name's prefix, the `owner` every call here takes from the application.

Each hook holds many programs, and the probe's runs beside the others, never in their place:
- a TCX link (kernel 6.6+) goes after the TCX programs already on the hook;
- a cls_bpf filter (method "netlink") goes at FILTER_PRIO/FILTER_HANDLE of the clsact qdisc: after the
  filters with smaller priority numbers, and after every TCX program (the kernel runs TCX first).
A program returning TC_ACT_OK, TC_ACT_SHOT or a redirect ends the hook for everything after it: a program
that only counts returns TC_ACT_UNSPEC (TCX_NEXT), which hands the packet on.

The clsact qdisc (method "netlink") is added where absent. close() deletes it only if its attachment added
it and no filter is left on either hook. Nothing tells who added a qdisc found in place, so take_over() and
detach() never delete one: an empty clsact costs little, and `tc qdisc del dev IFACE clsact` removes it.
"""
import collections
import errno
import os

from probe.bpf import log
from probe.attach.common import LinkAttachment, program_name
from probe.bpf import syscall
from probe.bpf.constants import BPF_LINK_TYPE_TCX, BPF_TCX_EGRESS, BPF_TCX_INGRESS
from probe.errors import KernelError, ProbeError, permission_error
from probe.net import interfaces
from probe.net import tc

DIRECTIONS = ("ingress", "egress")
METHODS = ("auto", "link", "netlink")
# The place of the probe's cls_bpf filter on a hook. Tools take small priorities (libbpf's and cilium's
# default is 1) or let the kernel choose (49152 and down): 0x4B4E ("KN") is far from both. The handle
# spells "KNP".
FILTER_PRIO = 0x4B4E
FILTER_HANDLE = 0x4B4E50
_TCX_ATTACH_TYPES = {"ingress": BPF_TCX_INGRESS, "egress": BPF_TCX_EGRESS}

# A program on a TC hook; `how`: "link" (a TCX bpf_link), "tcx" (TCX without a link), "netlink" (cls_bpf).
TcProgram = collections.namedtuple("TcProgram", "direction prog_id name how")


class TcAttachment(object):
    """A program on an interface's TC hook: `direction` says which hook, `method` how ("link" or "netlink")."""

    hook = "tc"
    mode = None  # XDP's modes have no TC counterpart
    fd = None  # the bpf_link's fd: netlink attachments have none

    def __init__(self, interface, index, direction, method):
        self.interface = interface
        self.ifindex = index
        self.direction = direction
        self.method = method


class TcxLink(LinkAttachment, TcAttachment):
    """Attached through a TCX bpf_link: the kernel detaches it when the link's fd closes, even on SIGKILL."""

    def __init__(self, fd, interface, index, direction):
        TcAttachment.__init__(self, interface, index, direction, "link")
        self._hold(fd)


class NetlinkTc(TcAttachment):
    """A cls_bpf filter at FILTER_PRIO/FILTER_HANDLE: it stays until removed, so close() removes it."""

    def __init__(self, prog_id, interface, index, direction, added_qdisc):
        TcAttachment.__init__(self, interface, index, direction, "netlink")
        self.program_id = prog_id
        self.added_qdisc = added_qdisc  # whether attaching added the clsact qdisc, which close() may delete
        self._attached = True

    def update(self, new_prog_fd):
        """Swap in another program, atomically, in the place of ours (refused if ours is no longer there)."""
        current = _our_filter(self.ifindex, self.direction)
        if current is None or current.prog_id != self.program_id:
            raise ProbeError("%s: the probe's TC %s filter is gone or runs another program (%s)" %
                             (self.interface, self.direction, _describe(current) if current else "no filter"),
                             hint="attach again")
        info = syscall.prog_info(new_prog_fd)
        try:
            tc.attach_bpf(self.ifindex, self.direction, FILTER_PRIO, FILTER_HANDLE, new_prog_fd, _filter_name(info),
                          replace=True)
        except KernelError as e:
            raise permission_error(e) or e.wrap("cannot swap the program of %s's TC %s filter" %
                                                (self.interface, self.direction)) from e
        self.program_id = info.id

    def close(self, keep=False):
        """Delete the filter if it still runs our program, then the clsact qdisc if attaching added it and no
        filter is left; unless keep. An interface gone meanwhile took both with it."""
        if self._attached and not keep:
            self._attached = False
            try:
                current = _our_filter(self.ifindex, self.direction)
                if current and current.prog_id == self.program_id:
                    tc.delete_filter(self.ifindex, self.direction, FILTER_PRIO, FILTER_HANDLE)
                if self.added_qdisc:
                    _delete_qdisc_if_empty(self.ifindex)
            except KernelError as e:
                if e.errno != errno.ENODEV:
                    raise


def _our_filter(index, direction):
    """The filter at the probe's place on a hook, whoever's it is, or None."""
    for f in tc.filters(index, direction):
        if (f.prio, f.handle, f.chain) == (FILTER_PRIO, FILTER_HANDLE, 0):
            return f
    return None


def _describe(f):
    if f.kind != "bpf":
        return "a %s filter" % f.kind
    return "program id %d (%s)" % (f.prog_id, program_name(f.prog_id))


def _filter_name(info):
    # TCA_BPF_NAME, which `tc filter show` prints: the program's name and id, as libbpf names its filters
    return "%s:[%d]" % (info.name.decode("ascii", "replace"), info.id)


def _delete_qdisc_if_empty(index):
    if tc.qdisc_kind(index) == "clsact" and not any(tc.filters(index, d) for d in DIRECTIONS):
        tc.delete_clsact(index)


def _check(direction, method="auto"):
    if direction not in DIRECTIONS:
        raise ProbeError("unknown TC direction %r" % direction, hint="use one of %s" % ", ".join(DIRECTIONS))
    if method not in METHODS:
        raise ProbeError("unknown attach method %r" % method, hint="use one of %s" % ", ".join(METHODS))


def attach_tc(prog_fd, interface, direction, owner, method="auto"):
    """Attach a program (of type sched_cls, named `owner`...) to an interface's TC hook, beside the programs
    already there; returns a TcxLink or a NetlinkTc.

    direction: "ingress" or "egress". method "link" makes a TCX link (kernel 6.6+), "netlink" a cls_bpf
    filter at FILTER_PRIO/FILTER_HANDLE, "auto" a TCX link where the kernel has TCX, else the filter.
    """
    _check(direction, method)
    info = syscall.prog_info(prog_fd)
    name = info.name.decode("ascii", "replace")
    if not name.startswith(owner):
        raise ProbeError("program %r is not %s's: its name must start with %r" % (name, owner, owner),
                         hint="detach() and take_over() find the probe's programs by that name")
    index = interfaces.ifindex(interface)
    if method != "netlink":
        try:
            attached = TcxLink(syscall.link_create_tcx(prog_fd, index, _TCX_ATTACH_TYPES[direction]),
                               interface, index, direction)
        except KernelError as e:
            if method == "link" or e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise _link_error(e, interface, direction) from e
            log.debug("%s: no TCX in this kernel (%s); attaching a cls_bpf filter through netlink",
                      interface, e.message)
        else:
            log.debug("attached to the TC %s hook of %s through a TCX link", direction, interface)
            return attached
    added_qdisc = _add_clsact(interface, index)
    try:
        tc.attach_bpf(index, direction, FILTER_PRIO, FILTER_HANDLE, prog_fd, _filter_name(info))
    except KernelError as e:
        error = _filter_error(e, interface, index, direction, owner)
        if added_qdisc:
            _delete_qdisc_if_empty(index)
        raise error from e
    log.debug("attached to the TC %s hook of %s as a cls_bpf filter", direction, interface)
    return NetlinkTc(info.id, interface, index, direction, added_qdisc)


def _add_clsact(interface, index):
    try:
        return tc.add_clsact(index)
    except KernelError as e:
        if e.errno == errno.EEXIST:
            raise KernelError("%s has an ingress qdisc, and TC filters need clsact in its place" % interface,
                              hint="use --attach link (TCX, kernel 6.6+), or delete it and its filters: "
                                   "`tc qdisc del dev %s ingress`" % interface, errno=e.errno) from e
        raise permission_error(e) or e.wrap("cannot add the clsact qdisc to %s" % interface) from e


def _link_error(e, interface, direction):
    if e.errno == errno.EEXIST:
        return KernelError("this program already runs on the TC %s hook of %s" % (direction, interface),
                           hint="attach another program, or detach this one first", errno=e.errno)
    if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
        return KernelError("%s refused a TCX link (%s)" % (interface, e.message),
                           hint="TCX needs kernel 6.6 or newer: try --attach netlink", errno=e.errno, doctor=True)
    return permission_error(e) or KernelError("cannot attach to the TC %s hook of %s: %s" %
                                              (direction, interface, e.message), errno=e.errno)


def _filter_error(e, interface, index, direction, owner):
    current = _our_filter(index, direction) if e.errno in (errno.EEXIST, errno.EINVAL) else None
    if current is not None:
        if current.kind == "bpf" and program_name(current.prog_id).startswith(owner):
            hint = "a killed probe left it, or another probe runs there: `kubenetprobe detach -i %s` removes it"
        else:
            hint = "another tool uses that place: use --attach link, or `kubenetprobe detach -i %s --force`"
        return KernelError("the TC %s hook of %s already has a filter at priority %d, handle 0x%x: %s" %
                           (direction, interface, FILTER_PRIO, FILTER_HANDLE, _describe(current)),
                           hint=hint % interface, errno=e.errno)
    return permission_error(e) or KernelError("cannot add a TC %s filter to %s: %s" % (direction, interface,
                                                                                       e.message), errno=e.errno)


def _runs_ours(current, owner):
    """Whether the filter at the probe's own priority and handle (a Filter, or None) runs `owner`'s program: by the
    program's name, or by that place alone where only CAP_SYS_ADMIN may read the name (a probe with CAP_BPF)."""
    if current is None or current.kind != "bpf":
        return False
    name = program_name(current.prog_id)
    return name.startswith(owner) or not name


def take_over(interface, direction, owner, link_fd=None):
    """The attachment a previous run left to this one on a TC hook (its pinned TCX link, or its filter)."""
    _check(direction)
    index = interfaces.ifindex(interface)
    if link_fd is not None:
        info = syscall.link_info(link_fd)
        name = program_name(info.prog_id)
        # A program whose name only CAP_SYS_ADMIN may read (""): the link pinned in our folder vouches for it.
        if (info.type, info.ifindex, info.attach_type) == (BPF_LINK_TYPE_TCX, index, _TCX_ATTACH_TYPES[direction]) \
                and (name.startswith(owner) or not name):
            return TcxLink(link_fd, interface, index, direction)
        os.close(link_fd)
        found = "its link runs program id %d (%s) %s" % (
            info.prog_id, name, "there" if info.ifindex == index else "elsewhere, or nowhere any more")
    else:
        current = _our_filter(index, direction)
        if _runs_ours(current, owner):
            return NetlinkTc(current.prog_id, interface, index, direction, added_qdisc=False)
        found = "its filter's place holds %s" % (_describe(current) if current else "nothing")
    raise ProbeError("the pinned state of %s (TC %s) is stale: %s" % (interface, direction, found),
                     hint="remove it with `kubenetprobe detach -i %s --pin DIR`" % interface)


def _tcx(index, direction):
    """[(program id, link id or 0)] of a hook's TCX programs, in the order they run."""
    try:
        return syscall.tcx_programs(index, _TCX_ATTACH_TYPES[direction])
    except KernelError as e:
        if e.errno == errno.EINVAL:  # no TCX in this kernel
            return []
        raise permission_error(e) or e.wrap("cannot list the TCX programs of interface %d" % index) from e


def programs(interface):
    """What runs on an interface's TC hooks, hook by hook in the order it runs (TCX programs, then cls_bpf
    filters): a TcProgram each."""
    index = interfaces.ifindex(interface)
    found = []
    for direction in DIRECTIONS:
        for prog_id, link_id in _tcx(index, direction):
            found.append(TcProgram(direction, prog_id, program_name(prog_id), "link" if link_id else "tcx"))
        for f in tc.filters(index, direction):
            if f.kind == "bpf":
                found.append(TcProgram(direction, f.prog_id, program_name(f.prog_id), "netlink"))
    return found


def detach(interface, owner, force=False):
    """Remove what a killed probe left on an interface's TC hooks; returns the TcPrograms removed.

    That is `owner`'s filter at FILTER_PRIO/FILTER_HANDLE on either hook (with force, whoever's filter is
    there), and `owner`'s TCX links (only pinned ones outlive their probe). Everything else stays, the
    clsact qdisc too.
    """
    index = interfaces.ifindex(interface)
    filters = []
    for direction in DIRECTIONS:
        current = _our_filter(index, direction)
        if current is None:
            continue
        name = program_name(current.prog_id) if current.kind == "bpf" else current.kind
        if not _runs_ours(current, owner) and not force:
            raise ProbeError("the TC %s filter of %s at priority %d, handle 0x%x is not %s's: %s" %
                             (direction, interface, FILTER_PRIO, FILTER_HANDLE, owner, _describe(current)),
                             hint="--force removes it anyway")
        filters.append((direction, current, name))
    removed = []
    for direction, current, name in filters:  # all checked before any is removed
        tc.delete_filter(index, direction, FILTER_PRIO, FILTER_HANDLE, current.kind)
        removed.append(TcProgram(direction, current.prog_id, name, "netlink"))
    for direction in DIRECTIONS:
        for prog_id, link_id in _tcx(index, direction):
            name = program_name(prog_id)
            if link_id and name.startswith(owner) and _detach_link(link_id):
                removed.append(TcProgram(direction, prog_id, name, "link"))
    return removed


def _detach_link(link_id):
    """End a bpf_link, by id, whoever holds it; False if it ended meanwhile."""
    try:
        fd = syscall.link_fd_by_id(link_id)
    except KernelError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    try:
        syscall.link_detach(fd)
    finally:
        os.close(fd)
    return True
