"""Both directions on a veth pair: rx at TC ingress and tx at TC egress counted exactly, class by class, against
what was sent, a sniffer on the peer and the kernel's counters; GRO and GSO undone; beside other XDP and TC
programs; through reloads and pinned restarts under traffic. Each engine (libbpf, native), each attach path
(TCX links, clsact + cls_bpf filters)."""
import contextlib
import os
import signal
import sys

import pytest

import frames
from conftest import PYZ, ROOT, bpf_source, compile_bpf, tool
from frames import ETH_LLDP
from netns import settle
from traffic import (DIRECTIONS, ETH_HLEN, TC_HOOK, Blast, Probe, Tap, add_filter_with_tc, class_frames, classes,
                     counted, delta, ether, link_stats, offloads, ping, ping_frame_size, probe_programs,
                     raw_sends_from_the_probe_side, segments_received, segments_sent, send_frames, send_out,
                     since, sniff_peer, snapshot, tally, tc_filters, tc_programs, tcx_holder, totals, wait_gone,
                     wire_bytes, xdp_program)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("built_pyz")]

LOADERS = ("libbpf", "native")
METHODS = ("link", "netlink")
BULK = 8 << 20  # bytes of a bulk TCP transfer


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    """Other tools' counting programs: "tcx" (held as TCX links), "filter" (tc's own cls_bpf filter), both
    tests/bpf/count.bpf.c, returning TC_ACT_UNSPEC; and "xdp", the same at XDP, returning XDP_PASS."""
    folder = tmp_path_factory.mktemp("directions")
    count = bpf_source("count.bpf.c")
    return {"tcx": compile_bpf(folder, "#define PROGRAM other_count\n" + count),
            "filter": compile_bpf(folder, "#define PROGRAM filter_count\n" + count),
            "xdp": compile_bpf(folder, "#define HOOK_XDP\n" + count)}


def probe_stats(pair):
    return link_stats(pair, pair.probe_ns, pair.probe_if)


def qdiscs(pair):
    return pair.run(pair.probe_ns, tool("tc"), "qdisc", "show", "dev", pair.probe_if).stdout


def lldp(pair, direction, size):
    """An LLDP frame of `size` bytes through the probe's `direction` hook: nothing answers it."""
    return ether(pair, direction, ETH_LLDP, bytes(size - ETH_HLEN))


def send_sized(pair, direction, sizes):
    """LLDP frames of these sizes through one hook; returns (packets, bytes) sent."""
    send_frames(pair, direction, [lldp(pair, direction, n) for n in sizes])
    return len(sizes), sum(sizes)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("method", METHODS)
def test_both_directions_counted_exactly(pair, loader, method):
    """Raw frames of every class and ping, each way: every class's packets and bytes exactly what was sent, the
    totals equal to what a sniffer on the peer saw and to the kernel's rx and tx counters of the interface."""
    raw_sends_from_the_probe_side(pair)
    sent = {d: class_frames(pair, d) for d in DIRECTIONS}
    qdiscs_before = qdiscs(pair)
    with Probe(pair.probe_ns, pair.probe_if, "--loader", loader, "--attach", method) as probe:
        probe.wait_attached()
        before = probe_stats(pair)
        with sniff_peer(pair) as sniffer:
            for direction in DIRECTIONS:
                send_frames(pair, direction, [f for f, _, _ in sent[direction]])
            ping(pair, "rx", 7)  # 7 requests in, 7 replies out
            ping(pair, "tx", 5, size=200)  # 5 requests out, 5 replies in
            sniffed = sniffer.stop()
        kernel = delta(probe_stats(pair), before)
        final = probe.stop()
    pings = {"rx": [(ping_frame_size(), "ipv4", "icmp")] * 7 + [(ping_frame_size(200), "ipv4", "icmp")] * 5}
    pings["tx"] = pings["rx"]
    for direction, peer_saw in (("rx", "sent"), ("tx", "received")):
        expected = tally([(len(f), l3, l4) for f, l3, l4 in sent[direction]] + pings[direction])
        assert classes(final[direction]) == expected, direction
        counts = totals(final[direction])
        assert counts == sniffed[peer_saw], direction
        assert counts == (kernel[direction]["packets"], kernel[direction]["bytes"]), direction
        assert counts == (sum(p for p, _ in expected["l3"].values()), sum(b for _, b in expected["l3"].values()))
    assert (final["hooks"], final["hook"], final["attach"], final["loader"]) == ({"rx": "tc", "tx": "tc"}, "tc",
                                                                                method, loader)
    assert len(set(final["program_ids"].values())) == 2
    wait_gone(pair.probe_ns, pair.probe_if)
    assert qdiscs(pair) == qdiscs_before, "the probe left a qdisc behind"


def only_tcp(counts):
    """A report's direction holds TCP alone (the pair carries nothing else): its (packets, bytes)."""
    assert totals(counts) == totals(counts["l4"]["tcp"]) == totals(counts["l3"]["ipv4"]), counts
    return totals(counts)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("method", METHODS)
def test_gro_at_the_receiver_counts_wire_frames(pair, loader, method):
    """GRO on at the receiving end, TSO/GSO off at the sender: the probe counts at TC ingress the frames that
    crossed, not the skbs GRO made of them. Packets equal the kernel's rx_packets (counted before GRO), the
    receiver's IP stack, and what the sender's sniffer and TCP stack sent less what the veth dropped; bytes equal
    the IP stack's and the kernel's.

    The kernel's rx_bytes lacks each frame's Ethernet header here: with GRO on, a veth takes its NAPI path,
    which counts bytes after eth_type_trans. On that path the veth drops a frame when the receiver's ring is
    full (the sender's tx dropped counts it, TCP retransmits it): the sniffer saw it sent, the probe never got it."""
    offloads(pair, pair.probe_ns, pair.probe_if, gro="on")  # the peer (the sender) has TSO and GSO off
    with Probe(pair.probe_ns, pair.probe_if, "--loader", loader, "--attach", method) as probe:
        probe.wait_attached()
        then = snapshot(pair)
        with sniff_peer(pair) as sniffer:
            pair.send_tcp(BULK)
            sniffed = sniffer.stop()
        seen = since(pair, then)
        final = probe.stop()
    sender, receiver = seen["peer"]["stack"], seen["probe"]["stack"]
    kernel, dropped = seen["probe"]["link"]["rx"], seen["peer"]["link"]["tx"]["dropped"]
    packets, size = only_tcp(final["rx"])
    assert packets == kernel["packets"] == segments_received(receiver)
    assert packets == sniffed["sent"][0] - dropped == segments_sent(sender) - dropped
    assert size == wire_bytes(packets, receiver["IpInReceives"], receiver["IpExtInOctets"])
    assert size == kernel["bytes"] + ETH_HLEN * packets, "veth's rx_bytes on its NAPI path"
    if not dropped:
        assert size == sniffed["sent"][1]
    # TCP got GRO's skbs, far fewer than the frames, or this test proved nothing.
    assert receiver["TcpInSegs"] == receiver["IpInReceives"] and receiver["TcpInSegs"] * 4 < packets, (
        "TcpInSegs %d for %d frames" % (receiver["TcpInSegs"], packets))
    acks = only_tcp(final["tx"])
    assert acks == sniffed["received"] == (seen["probe"]["link"]["tx"]["packets"],
                                           seen["probe"]["link"]["tx"]["bytes"])
    assert acks[0] == segments_sent(receiver) == segments_received(sender) == sender["TcpInSegs"]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("method", METHODS)
def test_tso_gso_and_gro_on_both_ends(pair, loader, method):
    """TSO, GSO and GRO on at both ends, a probe on each: the sender's GSO skbs cross the veth whole, and each
    probe counts the segments they stand for. tx equals the segments the TCP stack sent (TcpOutSegs plus
    TcpRetransSegs), rx the segments the IP stack received (each skb as its gso_segs), each way; bytes repeat the
    headers for every segment. Both ends agree unless the veth dropped an skb (its NAPI ring full).

    TcpInSegs is no reference for rx: tcp_v4_rcv counts one per skb, and gets the sender's GSO skbs whole (as
    many as the IP stack's InReceives, no more than the veth's rx_packets), not the segments they stand for. It
    matches the probe only for pure ACKs, which neither GSO nor GRO merges."""
    for ns, ifname in ((pair.peer_ns, pair.peer_if), (pair.probe_ns, pair.probe_if)):
        offloads(pair, ns, ifname, tso="on", gso="on", gro="on")
    options = ("--loader", loader, "--attach", method)
    with Probe(pair.probe_ns, pair.probe_if, *options) as receiving, Probe(pair.peer_ns, pair.peer_if,
                                                                           *options) as sending:
        receiving.wait_attached()
        sending.wait_attached()
        then = snapshot(pair)
        pair.send_tcp(BULK)
        settle()
        seen = since(pair, then)
        received, sent = receiving.stop(), sending.stop()
    sender, receiver = seen["peer"]["stack"], seen["probe"]["stack"]
    for name, out, out_stack, into, in_stack, dropped in (
            ("data", sent["tx"], sender, received["rx"], receiver, seen["peer"]["link"]["tx"]["dropped"]),
            ("acks", received["tx"], receiver, sent["rx"], sender, seen["probe"]["link"]["tx"]["dropped"])):
        out, into = only_tcp(out), only_tcp(into)
        assert out[0] == segments_sent(out_stack), name
        assert out[1] == wire_bytes(out[0], out_stack["IpOutRequests"], out_stack["IpExtOutOctets"]), name
        assert into[0] == segments_received(in_stack), name
        assert into[1] == wire_bytes(into[0], in_stack["IpInReceives"], in_stack["IpExtInOctets"]), name
        assert into == out if not dropped else into[0] < out[0], (name, dropped)
    assert only_tcp(sent["rx"])[0] == sender["TcpInSegs"]
    # What TcpInSegs counted at the receiver: the skbs that crossed (GSO'd), far fewer than the segments.
    skbs, segments = seen["probe"]["link"]["rx"]["packets"], only_tcp(received["rx"])[0]
    assert receiver["TcpInSegs"] == receiver["IpInReceives"] <= skbs and skbs * 4 < segments, (
        "TcpInSegs %d, skbs %d, segments %d" % (receiver["TcpInSegs"], skbs, segments))


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("xdp_mode", ["xdpgeneric", "xdpdrv"])
def test_beside_another_xdp_program(pair, objects, loader, method, xdp_mode):
    """Another tool's XDP program on the interface: the default run counts rx at TC beside it, exactly; the XDP
    program stays attached and counts every frame too, during the run and after it."""
    raw_sends_from_the_probe_side(pair)
    pair.run(pair.probe_ns, "ip", "link", "set", "dev", pair.probe_if, xdp_mode, "obj", str(objects["xdp"]),
             "sec", "xdp")
    theirs = xdp_program(pair.probe_ns, pair.probe_if)
    assert theirs is not None
    with Probe(pair.probe_ns, pair.probe_if, "--loader", loader, "--attach", method) as probe:
        probe.wait_attached()
        before = probe_stats(pair)
        rx = send_sized(pair, "rx", [60, 100, 1500] * 3)
        tx = send_sized(pair, "tx", [64, 200] * 4)
        ping(pair, "rx", 3)
        kernel = delta(probe_stats(pair), before)
        assert xdp_program(pair.probe_ns, pair.probe_if) == theirs
        final = probe.stop()
    pings = (3, 3 * ping_frame_size())
    assert (final["hooks"], final["hook"]) == ({"rx": "tc", "tx": "tc"}, "tc")
    assert totals(final["rx"]) == (rx[0] + pings[0], rx[1] + pings[1])
    assert totals(final["tx"]) == (tx[0] + pings[0], tx[1] + pings[1])
    assert final["rx"]["packets"] == kernel["rx"]["packets"]
    assert totals(final["tx"]) == (kernel["tx"]["packets"], kernel["tx"]["bytes"])
    # With native XDP a veth's rx_bytes lacks the Ethernet headers (PLATFORM_NOTES).
    headers = ETH_HLEN * kernel["rx"]["packets"] if xdp_mode == "xdpdrv" else 0
    assert final["rx"]["bytes"] == kernel["rx"]["bytes"] + headers
    assert counted(theirs) == totals(final["rx"])
    wait_gone(pair.probe_ns, pair.probe_if)
    assert xdp_program(pair.probe_ns, pair.probe_if) == theirs
    more = send_sized(pair, "rx", [80] * 5)
    assert counted(theirs) == (final["rx"]["packets"] + more[0], final["rx"]["bytes"] + more[1])


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("method", METHODS)
def test_auto_moves_rx_to_tc_where_another_xdp_program_is(pair, objects, loader, method):
    """On an interface that is no veth (a tap, which has native XDP), the default run counts rx at native XDP;
    with another tool's XDP program there it counts at TC ingress instead, exactly, and that program stays and
    counts the same frames."""
    sizes = [60, 200, 1500]
    with Tap(pair, pair.probe_ns, "knptap0") as tap:
        frames_in = [frames.ether(ETH_LLDP, bytes(n - ETH_HLEN)) for n in sizes]
        frames_out = [frames.ether(ETH_LLDP, bytes(n - ETH_HLEN)) for n in (64, 128)]
        finals = {}
        for foreign in (False, True):
            if foreign:
                pair.run(pair.probe_ns, "ip", "link", "set", "dev", tap.name, "xdpdrv", "obj", str(objects["xdp"]),
                         "sec", "xdp")
            theirs = xdp_program(pair.probe_ns, tap.name)
            with Probe(pair.probe_ns, tap.name, "--loader", loader, "--attach", method) as probe:
                probe.wait_attached(hooks=("ingress" if foreign else "xdp", "egress"))
                tap.receive(frames_in)
                send_out(pair, pair.probe_ns, tap.name, frames_out)
                settle()
                if foreign:
                    assert xdp_program(pair.probe_ns, tap.name) == theirs
                finals[foreign] = probe.stop()
            wait_gone(pair.probe_ns, tap.name)
        assert xdp_program(pair.probe_ns, tap.name) == theirs
        assert counted(theirs) == (len(sizes), sum(sizes))
        tap.receive(frames_in[:1])  # theirs counts on after the probe is gone
        assert counted(theirs) == (len(sizes) + 1, sum(sizes) + sizes[0])
    alone, beside = finals[False], finals[True]
    assert (alone["hooks"], alone["mode"]) == ({"rx": "xdp", "tx": "tc"}, "native")
    assert (beside["hooks"], beside["mode"]) == ({"rx": "tc", "tx": "tc"}, None)
    for final in (alone, beside):
        assert totals(final["rx"]) == (len(sizes), sum(sizes))
        assert totals(final["tx"]) == (2, 64 + 128)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("method", METHODS)
def test_beside_other_tc_programs(pair, objects, loader, method):
    """Another tool's TCX link and cls_bpf filter on both hooks: every program counts every frame, ours exactly;
    theirs run in their places, and after the probe exits are still there and counting, and ours are gone."""
    raw_sends_from_the_probe_side(pair)
    with tcx_holder(pair.probe_ns, pair.probe_if, objects["tcx"], "other_count", ROOT) as links:
        filters = {h: add_filter_with_tc(pair, pair.probe_ns, pair.probe_if, h, objects["filter"])
                   for h in TC_HOOK.values()}
        with Probe(pair.probe_ns, pair.probe_if, "--loader", loader, "--attach", method) as probe:
            probe.wait_attached()
            ours = probe_programs(pair.probe_ns, pair.probe_if)
            for hook in TC_HOOK.values():
                order = [(p.prog_id, p.how) for p in tc_programs(pair.probe_ns, pair.probe_if)
                         if p.direction == hook]
                # TCX runs first, in the order attached; then the filters, by priority (theirs is 1)
                assert order == [(links[hook], "link")] + (
                    [(ours[hook], "link"), (filters[hook], "netlink")] if method == "link" else
                    [(filters[hook], "netlink"), (ours[hook], "netlink")]), hook
            sent = {d: send_sized(pair, d, [60, 300, 1514] * 4) for d in DIRECTIONS}
            final = probe.stop()
        for direction, hook in TC_HOOK.items():
            assert totals(final[direction]) == sent[direction]
            assert final[direction]["l3"]["other"] == {"packets": sent[direction][0], "bytes": sent[direction][1]}
            assert counted(links[hook]) == counted(filters[hook]) == sent[direction], direction
        wait_gone(pair.probe_ns, pair.probe_if)
        left = sorted((p.direction, p.prog_id, p.how) for p in tc_programs(pair.probe_ns, pair.probe_if))
        assert left == sorted([(h, links[h], "link") for h in links] + [(h, filters[h], "netlink") for h in filters])
        for hook in TC_HOOK.values():
            assert tc_filters(pair, pair.probe_ns, pair.probe_if, hook) == [(1, "0x1", filters[hook])]
        again = {d: send_sized(pair, d, [100] * 3) for d in DIRECTIONS}
        for direction, hook in TC_HOOK.items():
            expected = (sent[direction][0] + again[direction][0], sent[direction][1] + again[direction][1])
            assert counted(links[hook]) == counted(filters[hook]) == expected


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("method", METHODS)
def test_sigkill(pair, objects, loader, method):
    """SIGKILL: on the TCX path the kernel takes the probe's links with it, nothing is left; on the clsact path
    its filters stay, and `kubenetprobe detach` removes them and only them."""
    other = {h: add_filter_with_tc(pair, pair.probe_ns, pair.probe_if, h, objects["filter"])
             for h in TC_HOOK.values()}
    probe = Probe(pair.probe_ns, pair.probe_if, "--loader", loader, "--attach", method).wait_attached()
    ours = probe_programs(pair.probe_ns, pair.probe_if)
    probe.kill()
    if method == "link":
        wait_gone(pair.probe_ns, pair.probe_if)
    else:
        assert probe_programs(pair.probe_ns, pair.probe_if) == ours
        result = pair.run(pair.probe_ns, sys.executable, PYZ, "detach", "-i", pair.probe_if)
        assert result.stdout == "".join("detached TC %s program id %d (%s) from %s\n" % (
            h, ours[h], name, pair.probe_if) for h, name in (("ingress", "kubenetprobe_in"),
                                                             ("egress", "kubenetprobe_tx")))
    assert probe_programs(pair.probe_ns, pair.probe_if) == {}
    for hook in TC_HOOK.values():
        assert tc_filters(pair, pair.probe_ns, pair.probe_if, hook) == [(1, "0x1", other[hook])]
    sent = {d: send_sized(pair, d, [70] * 4) for d in DIRECTIONS}
    for direction, hook in TC_HOOK.items():
        assert counted(other[hook]) == sent[direction]


def assert_nothing_lost(final, blasts, before, after):
    """Each direction's final count is every frame its blast put through the hook, and what the kernel saw."""
    kernel = delta(after, before)
    # A send the veth refused (its far end's backlog full) never reached the probe's ingress hook, but had passed
    # its egress hook: rx counts the frames the peer's sends delivered, tx every frame the probe's end sent.
    crossed = {"rx": blasts["rx"].sent, "tx": blasts["tx"].sent + blasts["tx"].refused}
    for direction, blast in blasts.items():
        assert blast.sent >= 20000, "too little %s traffic to test anything: %d frames" % (direction, blast.sent)
        assert totals(final[direction]) == (crossed[direction], crossed[direction] * len(blast.frame)), direction
    assert final["rx"]["packets"] == kernel["rx"]["packets"]
    assert (final["tx"]["packets"], blasts["tx"].refused) == (kernel["tx"]["packets"] + kernel["tx"]["dropped"],
                                                              kernel["tx"]["dropped"])


@contextlib.contextmanager
def blasts(pair):
    """Both directions busy for the `with`: yields {direction: Blast}."""
    with Blast(pair, "rx", lldp(pair, "rx", 60)) as rx, Blast(pair, "tx", lldp(pair, "tx", 90)) as tx:
        yield {"rx": rx, "tx": tx}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("method", METHODS)
def test_reloads_under_traffic_both_ways_lose_nothing(pair, loader, method):
    """10 SIGHUP reloads while both ends send as fast as they can: both programs swapped each time, and the final
    counts are every frame each way."""
    raw_sends_from_the_probe_side(pair)
    with Probe(pair.probe_ns, pair.probe_if, "--loader", loader, "--attach", method) as probe:
        probe.wait_attached()
        first = probe_programs(pair.probe_ns, pair.probe_if)
        before = probe_stats(pair)
        with blasts(pair) as sent:
            lines = [probe.reload() for _ in range(10)]
        after = probe_stats(pair)
        final = probe.stop()
    assert final["reloads"] == 10 and "(reload 10)" in lines[-1]
    assert (final["hooks"], final["attach"]) == ({"rx": "tc", "tx": "tc"}, method)
    assert not set(first.values()) & set(final["program_ids"].values())
    assert_nothing_lost(final, sent, before, after)
    wait_gone(pair.probe_ns, pair.probe_if)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("method", METHODS)
def test_pinned_restart_under_traffic_both_ways_loses_nothing(pair, bpffs, loader, method):
    """Stop a --pin run and start another while both ends send: the programs count on in between, the second
    run takes their map over, and its final counts are every frame each way since the first attached."""
    raw_sends_from_the_probe_side(pair)
    pins = os.path.join(bpffs, "knp")
    options = ("--pin", pins, "--loader", loader, "--attach", method)
    with contextlib.ExitStack() as runs:
        first = runs.enter_context(Probe(pair.probe_ns, pair.probe_if, *options)).wait_attached()
        before = probe_stats(pair)
        with blasts(pair) as sent:
            first_final = first.stop()
            assert "left pinned in %s" % pins in first.stderr
            kept = probe_programs(pair.probe_ns, pair.probe_if)
            assert set(kept) == {"ingress", "egress"}, "a pinned probe's programs stay after it exits"
            second = runs.enter_context(Probe(pair.probe_ns, pair.probe_if, *options))
            second.wait_said("took over the programs pinned in")
            assert not set(kept.values()) & set(probe_programs(pair.probe_ns, pair.probe_if).values())
        after = probe_stats(pair)
        final = second.stop(signal.SIGTERM)
    for direction in DIRECTIONS:
        assert 0 < first_final[direction]["packets"] < final[direction]["packets"]
    assert (final["hooks"], final["attach"]) == ({"rx": "tc", "tx": "tc"}, method)
    assert_nothing_lost(final, sent, before, after)
    result = pair.run(pair.probe_ns, sys.executable, PYZ, "detach", "-i", pair.probe_if, "--pin", pins)
    assert result.returncode == 0
    wait_gone(pair.probe_ns, pair.probe_if)
    assert os.listdir(pins) == []
