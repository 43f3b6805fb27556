"""TC requests: the clsact qdisc, and cls_bpf filters on its two hooks (linux/pkt_sched.h, linux/pkt_cls.h).

A hook is named by its direction, "ingress" or "egress"; a filter on it by its priority and handle.
"""
import _socket  # socket.py would add ~1.5 ms of enum building to every start
import errno
import struct

from probe.errors import KernelError, ProbeError
from probe.net import rtnetlink
from probe.net.rtnetlink import attr

# linux/pkt_sched.h
TC_H_CLSACT = 0xFFFFFFF1  # TC_H_INGRESS: the clsact and ingress qdiscs take the same place
TC_H_MIN_INGRESS = 0xFFF2
TC_H_MIN_EGRESS = 0xFFF3
# enum TCA_* (linux/rtnetlink.h)
TCA_KIND = 1
TCA_OPTIONS = 2
TCA_CHAIN = 11
# enum TCA_BPF_* (linux/pkt_cls.h)
TCA_BPF_FD = 6
TCA_BPF_NAME = 7
TCA_BPF_FLAGS = 8
TCA_BPF_ID = 11
TCA_BPF_FLAG_ACT_DIRECT = 1 << 0  # the program's return value is the verdict: no tc action needed
ETH_P_ALL = 0x0003  # linux/if_ether.h: a filter for every protocol



def tc_h_make(major, minor):
    """TC_H_MAKE: a handle from the major half of one number and the minor half of another."""
    return (major & 0xFFFF0000) | (minor & 0x0000FFFF)


CLSACT_HANDLE = tc_h_make(TC_H_CLSACT, 0)
HOOKS = {"ingress": tc_h_make(TC_H_CLSACT, TC_H_MIN_INGRESS), "egress": tc_h_make(TC_H_CLSACT, TC_H_MIN_EGRESS)}


class Filter(object):
    """A filter on a hook as the kernel lists it; a cls_bpf filter ("bpf") also has its program's id, the
    name it was given (TCA_BPF_NAME) and its TCA_BPF_FLAGS."""

    __slots__ = ("prio", "handle", "kind", "protocol", "chain", "prog_id", "name", "flags")

    def __init__(self, prio, handle, kind, protocol=ETH_P_ALL, chain=0, prog_id=0, name="", flags=0):
        self.prio = prio
        self.handle = handle
        self.kind = kind
        self.protocol = protocol
        self.chain = chain
        self.prog_id = prog_id
        self.name = name
        self.flags = flags

    def __repr__(self):
        return "Filter(prio=%d, handle=0x%x, kind=%r, chain=%d, prog_id=%d, name=%r)" % (
            self.prio, self.handle, self.kind, self.chain, self.prog_id, self.name)


def _tcmsg(ifindex, handle, parent, info=0):
    return rtnetlink.TCMSG.pack(_socket.AF_UNSPEC, ifindex, handle, parent, info)


def _info(prio, protocol):
    # tcm_info of a filter: its priority in the upper half, its protocol (network order) in the lower
    return tc_h_make(prio << 16, _socket.htons(protocol))


def qdisc_kind(ifindex):
    """The kind of qdisc ("clsact", "ingress") in clsact's place on an interface, or None."""
    try:
        # The kernel answers a qdisc query as a notification, which reaches the asker only with NLM_F_ECHO;
        # where the place holds no qdisc (or only the built-in noop, left by a deletion) it sends nothing,
        # hence NLM_F_ACK too.
        answer = rtnetlink.exchange(rtnetlink.RTM_GETQDISC, rtnetlink.NLM_F_ECHO | rtnetlink.NLM_F_ACK,
                                    _tcmsg(ifindex, 0, TC_H_CLSACT))
    except KernelError as e:
        if e.errno in (errno.ENOENT, errno.EINVAL):  # EINVAL: how older kernels answer for the noop qdisc
            return None
        raise
    if not answer:
        return None
    return rtnetlink.string(rtnetlink.parse_attrs(answer[0][rtnetlink.TCMSG.size:]).get(TCA_KIND, b"")) or None


def add_clsact(ifindex):
    """Add the clsact qdisc unless the interface has one; returns whether it was added. KernelError EEXIST
    when an ingress qdisc holds its place."""
    flags = rtnetlink.NLM_F_ACK | rtnetlink.NLM_F_CREATE | rtnetlink.NLM_F_EXCL
    try:
        rtnetlink.exchange(rtnetlink.RTM_NEWQDISC, flags, _clsact(ifindex))
    except KernelError as e:
        if e.errno != errno.EEXIST:
            raise
        kind = qdisc_kind(ifindex)
        if kind != "clsact":
            raise KernelError("the interface has an %s qdisc where clsact goes" % kind, errno=errno.EEXIST)
        return False
    return True


def delete_clsact(ifindex):
    """Delete the clsact qdisc of an interface, and with it every filter on its two hooks."""
    rtnetlink.exchange(rtnetlink.RTM_DELQDISC, rtnetlink.NLM_F_ACK, _clsact(ifindex))


def _clsact(ifindex):
    return _tcmsg(ifindex, CLSACT_HANDLE, TC_H_CLSACT) + attr(TCA_KIND, b"clsact\0")


def filters(ifindex, direction):
    """The Filters of a hook, in the order they run; none where the interface has no qdisc for that hook."""
    kind = qdisc_kind(ifindex)
    # The ingress qdisc answers for any hook, egress included: only clsact has an egress hook.
    if kind != "clsact" and (kind != "ingress" or direction != "ingress"):
        return []
    parts = rtnetlink.exchange(rtnetlink.RTM_GETTFILTER, rtnetlink.NLM_F_DUMP, _tcmsg(ifindex, 0, HOOKS[direction]))
    return [f for f in map(parse_filter, parts) if f is not None]


def parse_filter(msg):
    """The Filter of one message of a filter dump, or None for the header of a priority's filters; ProbeError
    if the message is damaged."""
    try:
        _, _, handle, _, info = rtnetlink.TCMSG.unpack_from(msg)
        if not handle:
            return None
        attrs = rtnetlink.parse_attrs(msg[rtnetlink.TCMSG.size:])
        f = Filter(info >> 16, handle, rtnetlink.string(attrs.get(TCA_KIND, b"")), _socket.ntohs(info & 0xFFFF),
                   rtnetlink.number(rtnetlink.U32, attrs, TCA_CHAIN, 0))
        if f.kind == "bpf":
            options = rtnetlink.parse_attrs(attrs.get(TCA_OPTIONS, b""))
            f.prog_id = rtnetlink.number(rtnetlink.U32, options, TCA_BPF_ID, 0)
            f.name = rtnetlink.string(options.get(TCA_BPF_NAME, b""))
            f.flags = rtnetlink.number(rtnetlink.U32, options, TCA_BPF_FLAGS, 0)
        return f
    except struct.error:
        raise ProbeError("malformed TC filter message from the kernel")


def attach_bpf(ifindex, direction, prio, handle, prog_fd, name, replace=False):
    """Add a cls_bpf filter in direct-action mode at prio/handle (KernelError EEXIST if one is there); with
    replace, swap the program of the filter there instead, atomically (KernelError ENOENT if none)."""
    options = (attr(TCA_BPF_FD, rtnetlink.S32.pack(prog_fd)) + attr(TCA_BPF_NAME, name.encode() + b"\0") +
               attr(TCA_BPF_FLAGS, rtnetlink.U32.pack(TCA_BPF_FLAG_ACT_DIRECT)))
    flags = rtnetlink.NLM_F_REPLACE if replace else rtnetlink.NLM_F_CREATE | rtnetlink.NLM_F_EXCL
    rtnetlink.exchange(rtnetlink.RTM_NEWTFILTER, rtnetlink.NLM_F_ACK | flags,
                       _tcmsg(ifindex, handle, HOOKS[direction], _info(prio, ETH_P_ALL)) +
                       attr(TCA_KIND, b"bpf\0") + attr(TCA_OPTIONS | rtnetlink.NLA_F_NESTED, options))


def delete_filter(ifindex, direction, prio, handle, kind="bpf"):
    """Delete the one filter at prio/handle (chain 0) of a hook, of any protocol; a handle of 0 would delete
    every filter of the priority."""
    rtnetlink.exchange(rtnetlink.RTM_DELTFILTER, rtnetlink.NLM_F_ACK,
                       _tcmsg(ifindex, handle, HOOKS[direction], _info(prio, 0)) +
                       attr(TCA_KIND, kind.encode() + b"\0"))
