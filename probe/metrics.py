"""The probe's counters as Prometheus metric families: per interface, direction and protocol, what is attached
where, and what the probe itself costs."""
import collections
import os

import probe
from probe import layout
from probe.bpf import syscall
from probe.errors import KernelError
from probe.prometheus import Family, process_families
from probe.reports import sum_tree

_L3_HELP = "Packets counted by L3 protocol (ipv4, ipv6, arp, other), exactly, as wire frames."
_L4_HELP = "Packets counted by L4 protocol (tcp, udp, icmp, icmpv6, other) of IPv4 and IPv6 packets."
_PEER_HELP = ("IPv4 and IPv6 packets by peer (rx: source, tx: destination address): the --talkers top peers by "
              "bytes in the last interval, and peer=\"other\" for the rest; summed over peer, the l3 ipv4 + ipv6 "
              "packets exactly. A peer's series starts at its counts so far when it enters the top, and other "
              "drops by as much: sum by (interface, direction), or rate() of a peer while it stays.")


def _run_stats(monitor):
    """{(direction, hook): (seconds, runs)} of the programs attached, from the kernel's run-time statistics."""
    programs = {h.program_id: (d, h.hook) for a in monitor.attachments for d, h in a.hooks.items()}
    totals = {}
    for prog_id, key in programs.items():
        try:
            fd = syscall.prog_fd_by_id(prog_id)
        except KernelError:
            continue  # replaced meanwhile (a reload)
        try:
            info = syscall.prog_info(fd)
        finally:
            os.close(fd)
        seconds, runs = totals.get(key, (0.0, 0))
        totals[key] = (seconds + info.run_time_ns / 1e9, runs + info.run_cnt)
    return totals


def owner_labels(owner):
    """The pod and namespace labels of an Owner's pod (probe.owners), or the container label of a container;
    none where unknown, which Prometheus reads as empty (and a scrape over hundreds of veths is lighter for it)."""
    if owner is None:
        return {}
    if owner.kind == "pod":
        return {"pod": owner.name, "namespace": owner.namespace}
    return {"container": owner.name}


def _series(monitor, counters, owned, group):
    """[(labels, a direction's counters)] of every interface; with owned ({ifindex: Owner or None}), labelled
    with its pod or container; with group, the interfaces of one owner summed into one series whose interface
    label is empty."""
    series = collections.OrderedDict()
    for a in monitor.attachments:
        owner = owned.get(a.ifindex) if owned is not None else None
        for direction in sorted(a.hooks):
            counts = counters.get(a.interface, {}).get(direction)
            if counts is None:
                continue
            labels = {"interface": "" if group and owner else a.interface}
            if owned is not None:
                labels.update(owner_labels(owner))
            labels["direction"] = direction
            series.setdefault(tuple(labels.items()), (labels, []))[1].append(counts)
    return [(labels, members[0] if len(members) == 1 else sum_tree(members)) for labels, members in series.values()]


def families(monitor, counters, run_stats=False, owners=None, group=False):
    """Every family of a scrape; `counters` is {interface: {direction: counters}} read for it; run_stats:
    whether the kernel keeps BPF run-time statistics (BPF_ENABLE_STATS), else those families are absent;
    owners: a probe.owners.Owners, whose pod, namespace and container label every interface's series; group
    (--group-by pod): one series per owner instead of one per interface of it."""
    l3_packets, l3_bytes, l4_packets, l4_bytes, info = [], [], [], [], []
    peer_packets, peer_bytes = [], []
    owned = owners.of_all([a.ifindex for a in monitor.attachments]) if owners is not None else None
    for labels, counts in _series(monitor, counters, owned, group):
        for level, names, packets, size in (("l3", layout.L3, l3_packets, l3_bytes),
                                            ("l4", layout.L4, l4_packets, l4_bytes)):
            for name in names:
                packets.append((dict(labels, protocol=name), counts[level][name]["packets"]))
                size.append((dict(labels, protocol=name), counts[level][name]["bytes"]))
    for a in monitor.attachments:
        for direction, listed in sorted((monitor.talker_stats(a) or {}).items()):
            for peer in listed:
                labels = {"interface": a.interface, "direction": direction, "peer": peer["address"]}
                peer_packets.append((labels, peer["packets"]))
                peer_bytes.append((labels, peer["bytes"]))
        labels = {"interface": a.interface}
        if owned is not None:
            labels.update(owner_labels(owned[a.ifindex]))
        for direction, hook in sorted(a.hooks.items()):
            if counters.get(a.interface, {}).get(direction) is not None:
                info.append((dict(labels, direction=direction, ifindex=str(a.ifindex), hook=hook.hook,
                                  mode=hook.mode or "", program_id=str(hook.program_id)), 1))
    stats = _run_stats(monitor) if run_stats else {}
    return [
        Family("kubenetprobe_l3_packets_total", "counter", _L3_HELP, l3_packets),
        Family("kubenetprobe_l3_bytes_total", "counter", "Bytes of the packets of kubenetprobe_l3_packets_total.",
               l3_bytes),
        Family("kubenetprobe_l4_packets_total", "counter", _L4_HELP, l4_packets),
        Family("kubenetprobe_l4_bytes_total", "counter", "Bytes of the packets of kubenetprobe_l4_packets_total.",
               l4_bytes),
    ] + ([
        Family("kubenetprobe_peer_packets_total", "counter", _PEER_HELP, peer_packets),
        Family("kubenetprobe_peer_bytes_total", "counter", "Bytes of the packets of kubenetprobe_peer_packets_total.",
               peer_bytes),
    ] if monitor.talkers is not None else []) + [
        Family("kubenetprobe_interface_info", "gauge",
               "Where each interface and direction is counted: hook (xdp, tc), XDP mode, program id.", info),
        Family("kubenetprobe_program_run_seconds_total", "counter",
               "Time the kernel spent running the probe's programs, by the direction and hook they count.",
               [({"direction": d, "hook": h}, v[0]) for (d, h), v in sorted(stats.items())]),
        Family("kubenetprobe_program_runs_total", "counter", "Runs of the probe's programs: one per packet.",
               [({"direction": d, "hook": h}, v[1]) for (d, h), v in sorted(stats.items())]),
        Family("kubenetprobe_build_info", "gauge", "The probe's version and the loader that loaded its programs.",
               [({"version": probe.__version__, "loader": monitor.engine.name}, 1)]),
    ] + process_families()
