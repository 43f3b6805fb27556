"""Interfaces as they come and go: the link dump and link events in network namespaces of the test's own, the
parsers under damage, and the choice of interfaces by name.

The test's thread enters its namespace (`netns`): netlink sockets it opens, and commands it runs, are that
namespace's, as they would be for a probe running there.
"""
import contextlib
import ctypes
import itertools
import json
import os
import random
import select
import socket
import struct
import subprocess
import time

import pytest

from netns import sh
from probe.errors import ProbeError
from probe.net import events, interfaces, link, rtnetlink

CLONE_NEWNET = 0x40000000
PAIRS = 50
_libc = ctypes.CDLL(None, use_errno=True)
_serial = itertools.count()


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "setns: %s" % os.strerror(err))


@contextlib.contextmanager
def namespace():
    """A named network namespace, deleted afterwards with whatever is in it."""
    name = "knpev%d-%d" % (os.getpid(), next(_serial))
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)


@pytest.fixture
def netns():
    """A namespace of the test's own, with this thread inside it for the length of the test."""
    with namespace() as name:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        inside = os.open("/run/netns/" + name, os.O_RDONLY)
        try:
            _setns(inside)
            yield name
        finally:
            _setns(home)
            os.close(inside)
            os.close(home)


@pytest.fixture
def other():
    """A second namespace, where interfaces go."""
    with namespace() as name:
        yield name


def batch(ns, tmp_path, commands):
    """Run `ip` commands in one process (ip -batch), as a burst."""
    path = tmp_path / "batch"
    path.write_text("".join(c + "\n" for c in commands))
    sh("ip", "-n", ns, "-batch", str(path))


def ip_links(ns):
    """`ip -j -d link` of a namespace."""
    return json.loads(sh("ip", "-j", "-d", "-n", ns, "link", "show").stdout)


def collect(source, done, timeout=1.0):
    """Events read from `source` as select() says they wait, until done(events) or the timeout."""
    got = []
    deadline = time.monotonic() + timeout
    while not done(got):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if select.select([source], [], [], left)[0]:
            got += source.read()
    return got


def named(got, kind):
    """{name: ifindex} of the events of one kind."""
    return {record.name: record.ifindex for k, record in got if k == kind}


def pair_names(count):
    return ["eva%d" % i for i in range(count)] + ["evb%d" % i for i in range(count)]


def rcvbuf(source, size=None):
    """The receive buffer of an events socket (through a duplicate of its fd), after setting it to `size`."""
    with socket.fromfd(source.fileno(), socket.AF_NETLINK, socket.SOCK_RAW, rtnetlink.NETLINK_ROUTE) as s:
        if size is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        return s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


@pytest.mark.integration
def test_links_lists_what_ip_lists(netns, other):
    """Names, ifindexes, kinds, flags, master, IFLA_LINK and the peer's netnsid, as `ip -j -d link` shows them."""
    for cmd in ("link add evbr type bridge", "link add eva type veth peer name evb",
                "link add evc type veth peer name evd netns " + other,
                "link add evx type vxlan id 5 dstport 4789", "link add evf type ifb",
                "link set eva master evbr", "link set eva up", "link set evb up", "link set evbr up"):
        sh("ip", "-n", netns, *cmd.split())
    shown = ip_links(netns)
    index = {entry["ifname"]: entry["ifindex"] for entry in shown}

    def peer(entry):  # ip names a peer in the same namespace, and gives the index of one elsewhere
        return entry["link_index"] if "link_index" in entry else index.get(entry.get("link"))
    expected = {e["ifindex"]: (e["ifname"], e.get("linkinfo", {}).get("info_kind"), "UP" in e["flags"],
                               "LOWER_UP" in e["flags"], index.get(e.get("master")), peer(e),
                               e.get("link_netnsid")) for e in shown}
    listed = {r.ifindex: (r.name, r.kind, r.up, r.lower_up, r.master, r.link, r.link_netnsid)
              for r in link.links()}
    assert listed == expected
    assert {r[1] for r in listed.values()} == {None, "bridge", "veth", "vxlan", "ifb"}
    assert listed[index["eva"]][4] == index["evbr"] and listed[index["eva"]][5] == index["evb"]
    assert listed[index["evc"]][6] is not None  # the peer is in `other`
    assert link.link_kind(index["eva"]) == "veth" and link.link_kind(index["lo"]) is None


@pytest.mark.integration
def test_every_pair_appears_and_goes_within_a_second(netns, tmp_path):
    """50 veth pairs made at once: a "new" for each of the 100 ends within 1 s, with ip's ifindexes; deleted at
    once: a "del" for each."""
    names = set(pair_names(PAIRS))
    with events.LinkEvents() as source:
        batch(netns, tmp_path, ["link add eva%d type veth peer name evb%d" % (i, i) for i in range(PAIRS)])
        got = collect(source, lambda got: names <= set(named(got, "new")))
        index = {e["ifname"]: e["ifindex"] for e in ip_links(netns)}
        assert {name: named(got, "new").get(name) for name in names} == {name: index[name] for name in names}

        batch(netns, tmp_path, ["link del eva%d" % i for i in range(PAIRS)])  # each takes its peer along
        got = collect(source, lambda got: names <= set(named(got, "del")))
        assert {name: named(got, "del").get(name) for name in names} == {name: index[name] for name in names}
        assert {e["ifname"] for e in ip_links(netns)} == {"lo"}


@pytest.mark.integration
def test_changes_are_new_events_of_the_same_ifindex(netns):
    """Up and a rename arrive as "new" for the ifindex the interface had: its new flags, its new name."""
    sh("ip", "-n", netns, "link", "add", "eva", "type", "veth", "peer", "name", "evb")
    index = {e["ifname"]: e["ifindex"] for e in ip_links(netns)}
    with events.LinkEvents() as source:
        sh("ip", "-n", netns, "link", "set", "eva", "name", "evrenamed")
        got = collect(source, lambda got: "evrenamed" in named(got, "new"))
        assert named(got, "new")["evrenamed"] == index["eva"]
        assert not named(got, "del")

        sh("ip", "-n", netns, "link", "set", "evrenamed", "up")
        sh("ip", "-n", netns, "link", "set", "evb", "up")
        got = collect(source, lambda got: any(r.lower_up for k, r in got if r.ifindex == index["eva"]))
        last = [r for k, r in got if r.ifindex == index["eva"]][-1]
        assert (last.name, last.up, last.lower_up) == ("evrenamed", True, True)


@pytest.mark.integration
def test_moving_away_is_a_del(netns, other):
    """The end moved to another namespace gets "del" here, the end that stays none (the dump shows its peer's
    netnsid)."""
    sh("ip", "-n", netns, "link", "add", "eva", "type", "veth", "peer", "name", "evb")
    index = {e["ifname"]: e["ifindex"] for e in ip_links(netns)}
    with events.LinkEvents() as source:
        sh("ip", "-n", netns, "link", "set", "evb", "netns", other)
        got = collect(source, lambda got: "evb" in named(got, "del"))
        got += collect(source, lambda got: False, timeout=0.2)  # whatever else the kernel says of the pair
    assert named(got, "del") == {"evb": index["evb"]}
    assert {r.name: r for r in link.links()}["eva"].link_netnsid is not None
    assert "evb" in {e["ifname"] for e in ip_links(other)}


@pytest.mark.integration
def test_leaving_a_bridge_is_no_del(netns):
    """A port leaving its bridge: the kernel's AF_BRIDGE RTM_DELLINK for it is no deletion of the interface."""
    for cmd in ("link add evbr type bridge", "link add eva type veth peer name evb", "link set eva master evbr"):
        sh("ip", "-n", netns, *cmd.split())
    index = {e["ifname"]: e["ifindex"] for e in ip_links(netns)}
    with events.LinkEvents() as source:
        sh("ip", "-n", netns, "link", "set", "eva", "nomaster")
        got = collect(source, lambda got: any(r.name == "eva" and r.master is None for k, r in got))
        got += collect(source, lambda got: False, timeout=0.2)  # whatever else the kernel says of it
    assert [k for k, r in got if r.ifindex == index["eva"]] and not named(got, "del")


@pytest.mark.integration
def test_overrun_asks_for_resync(netns, tmp_path):
    """Events beyond the receive buffer: one "resync" and nothing stale after it; the dump then has every link,
    and the socket goes on."""
    with events.LinkEvents() as source:
        assert rcvbuf(source) == 2 * events.RCVBUF  # the kernel doubles what it is given
        rcvbuf(source, 1)  # the kernel's minimum: about one event
        batch(netns, tmp_path, ["link add eva%d type veth peer name evb%d" % (i, i) for i in range(PAIRS)])
        assert select.select([source], [], [], 1.0)[0]
        assert source.read() == [events.RESYNC]
        assert source.read() == []
        assert {r.name for r in link.links()} == set(pair_names(PAIRS)) | {"lo"}

        rcvbuf(source, 1 << 20)
        sh("ip", "-n", netns, "link", "set", "eva0", "name", "evrenamed")
        got = collect(source, lambda got: "evrenamed" in named(got, "new"))
        assert [k for k, r in got] == ["new"]


@pytest.mark.integration
def test_no_fd_left_behind(netns):
    """200 sockets opened and closed (with and without `with`), and 200 dumps: as many fds open as before, with
    every LinkEvents still referenced (no garbage collector closing what close() left open)."""
    before = len(os.listdir("/proc/self/fd"))
    kept = []
    for i in range(200):
        kept.append(events.LinkEvents())
        if i % 2:
            with kept[-1] as source:
                source.read()
        else:
            kept[-1].close()
        link.links()
    assert len(os.listdir("/proc/self/fd")) == before


# The codec, without a kernel.

def ifinfo(ifindex, attrs, family=socket.AF_UNSPEC, flags=0):
    """An RTM_NEWLINK payload: an ifinfomsg and its attributes."""
    return rtnetlink.IFINFOMSG.pack(family, 0, ifindex, flags, 0) + b"".join(attrs)


VETH_MSG = ifinfo(7, [rtnetlink.attr(link.IFLA_IFNAME, b"veth7\0"),
                      rtnetlink.attr(link.IFLA_LINK, struct.pack("=I", 3)),
                      rtnetlink.attr(link.IFLA_LINK_NETNSID, struct.pack("=i", 0)),
                      rtnetlink.attr(link.IFLA_MASTER, struct.pack("=I", 9)),
                      rtnetlink.attr(link.IFLA_LINKINFO | rtnetlink.NLA_F_NESTED,
                                     rtnetlink.attr(link.IFLA_INFO_KIND, b"veth\0"))],
                  flags=link.IFF_UP | link.IFF_LOWER_UP)


def test_parse_link():
    r = link.parse_link(VETH_MSG)
    assert (r.ifindex, r.name, r.kind, r.up, r.lower_up, r.link, r.link_netnsid, r.master) == \
        (7, "veth7", "veth", True, True, 3, 0, 9)
    r = link.parse_link(ifinfo(1, [rtnetlink.attr(link.IFLA_IFNAME, b"lo\0")], flags=link.IFF_UP))
    assert (r.name, r.kind, r.up, r.lower_up, r.link, r.link_netnsid, r.master) == \
        ("lo", None, True, False, None, None, None)


def test_parse_link_skips_bridge_port_messages():
    assert link.parse_link(ifinfo(7, [rtnetlink.attr(link.IFLA_IFNAME, b"veth7\0")], family=socket.AF_BRIDGE)) \
        is None


def test_messages_of_a_datagram():
    one = rtnetlink.NLMSGHDR.pack(rtnetlink.NLMSGHDR.size + len(VETH_MSG), rtnetlink.RTM_NEWLINK, 0, 0, 0)
    two = rtnetlink.NLMSGHDR.pack(rtnetlink.NLMSGHDR.size + 3, rtnetlink.RTM_DELLINK, 2, 5, 0) + b"abc\0"
    assert list(rtnetlink.messages(one + VETH_MSG + two)) == [(rtnetlink.RTM_NEWLINK, 0, 0, VETH_MSG),
                                                              (rtnetlink.RTM_DELLINK, 2, 5, b"abc")]
    with pytest.raises(ProbeError):
        list(rtnetlink.messages(one + VETH_MSG[:-1]))


def test_damaged_link_messages_raise_only_probe_error():
    """Random damage and every cut of a datagram: a Link, None, or ProbeError, nothing else."""
    datagram = rtnetlink.NLMSGHDR.pack(rtnetlink.NLMSGHDR.size + len(VETH_MSG), rtnetlink.RTM_NEWLINK, 0, 0, 0) \
        + VETH_MSG
    rng = random.Random(1)
    damaged = [datagram[:cut] for cut in range(len(datagram))]
    for _ in range(2000):
        blob = bytearray(datagram)
        for _ in range(rng.randint(1, 4)):
            blob[rng.randrange(len(blob))] = rng.getrandbits(8)
        damaged.append(bytes(blob))
    for data in damaged:
        try:
            for _, _, _, msg in rtnetlink.messages(data):
                link.parse_link(msg)
        except ProbeError:
            pass


# The choice of interfaces.

NAMES = ["lo", "eth0", "eth1", "veth1a2b", "vethX", "cali123", "docker0", "ETH2"]


def chosen(patterns, excludes=()):
    return [name for name in NAMES if interfaces.match(name, patterns, excludes)]


def test_match_patterns():
    """-i is a shell-style pattern, case-sensitive; several -i add up."""
    assert chosen(["veth*", "eth0"]) == ["eth0", "veth1a2b", "vethX"]
    assert chosen(["eth?"]) == ["eth0", "eth1"]
    assert chosen(["eth[!0]"]) == ["eth1"]
    assert chosen(["cali123"]) == ["cali123"]
    assert chosen([]) == []


def test_match_excludes():
    """An --exclude wins over every -i, and over --all."""
    assert chosen(["veth*", "eth*"], ["veth1*"]) == ["eth0", "eth1", "vethX"]
    assert chosen(["eth0"], ["eth0"]) == []
    assert chosen(None, ["veth*", "docker*"]) == ["eth0", "eth1", "cali123", "ETH2"]


def test_match_all_is_every_interface_but_lo():
    """--all leaves lo out; lo is chosen only by a pattern that names it (or "*")."""
    assert chosen(None) == NAMES[1:]
    assert chosen(["lo"]) == ["lo"]
    assert chosen(["*"]) == NAMES
