"""probe/net without a kernel: the default route's interface from /proc/net files, rtnetlink's attribute codec."""
import struct

import pytest

from probe.errors import ProbeError
from probe.net import interfaces, rtnetlink
from probe.net import link as netlink

ROUTE_HEADER = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"


def test_default_interface_lowest_metric(tmp_path):
    routes = tmp_path / "route"
    routes.write_text(ROUTE_HEADER
                      + "eth1\t00000000\t0102A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n"
                      + "eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
                      + "eth2\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")
    assert interfaces.default_interface(str(routes), "/nonexistent") == "eth0"


def test_default_interface_falls_back_to_ipv6(tmp_path):
    routes = tmp_path / "route"
    routes.write_text(ROUTE_HEADER)
    v6 = tmp_path / "ipv6_route"
    v6.write_text("%s 00 %s 00 %s 00000400 00000001 00000000 00000003 wlan0\n" % ("0" * 32, "0" * 32, "fe80" + "0" * 28)
                  + "%s 00 %s 00 %s ffffffff 00000001 00000000 00200200 lo\n" % ("0" * 32, "0" * 32, "0" * 32))
    assert interfaces.default_interface(str(routes), str(v6)) == "wlan0"


def test_no_default_route(tmp_path):
    routes = tmp_path / "route"
    routes.write_text(ROUTE_HEADER)
    with pytest.raises(ProbeError) as e:
        interfaces.default_interface(str(routes), "/nonexistent")
    assert "-i IFACE or $NETWORK_INTERFACE" in str(e.value)


def test_netlink_attributes():
    inner = rtnetlink.attr(netlink.IFLA_XDP_PROG_ID, struct.pack("=I", 42)) + \
        rtnetlink.attr(netlink.IFLA_XDP_ATTACHED, b"\x02")
    outer = rtnetlink.parse_attrs(rtnetlink.attr(netlink.IFLA_XDP | rtnetlink.NLA_F_NESTED, inner))
    assert rtnetlink.parse_attrs(outer[netlink.IFLA_XDP]) == {netlink.IFLA_XDP_PROG_ID: struct.pack("=I", 42),
                                                       netlink.IFLA_XDP_ATTACHED: b"\x02"}


def test_netlink_malformed_attribute():
    with pytest.raises(ProbeError):
        rtnetlink.parse_attrs(struct.pack("=HH", 200, 1) + b"\0" * 4)
