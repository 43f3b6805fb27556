"""Per-pod counts with a real container runtime: Debian's podman, its netavark bridge networks (which make veths
as a CNI does) in a network namespace of the test's own, containers from a debootstrap root filesystem, some
with the Kubernetes annotations CRI-O sets. The probe runs there with --all: every container's veth is attributed
to its pod or container (from podman's state, nothing else), its counts exact in both directions against what
was sent and against the kernel's counters of the veth, a pod's two interfaces summed by --group-by pod in the
reports and in /metrics, and containers started and removed while it runs get their owner on their veth's first
report and leave with it."""
import json
import os
import subprocess
import sys

import pytest

import rootfs
from exposition import parse
from netns import SEND_UDP, TCP_CLIENT, TCP_SERVER, WatchedRun, settle, sh
from podman import Podman
from traffic import delta, link_stats

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("built_pyz")]

PREFIX = "knpown%d" % os.getpid()  # everything this module makes: namespace, networks, containers, image
IMAGE = "localhost/%s:1" % PREFIX
SUBNETS = ("198.18.213.0/24", "198.18.214.0/24")
PINGS, HOST_PINGS, DATAGRAMS, TCP_BYTES = 5, 3, 20, 200000
METRICS_PORT = 9198
# Receives `count` datagrams on a port (so none is answered with an ICMP error, which the kernel rate-limits).
UDP_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
for _ in range(int(sys.argv[3])):
    s.recv(65536)
print("received", flush=True)
"""


class Node(object):
    """A namespace standing for a node, podman's networks in it, and the image the containers run."""

    def __init__(self, folder):
        self.ns = PREFIX + "-node"
        self.networks = [PREFIX + "-net%d" % i for i in range(len(SUBNETS))]
        self.podman = Podman(folder, ns=self.ns)
        self.containers = []

    def __enter__(self):
        sh("ip", "netns", "add", self.ns)
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")  # for /metrics
        # No IPv6 on the bridges and veths made here: nothing crosses them but what the test sends.
        sh("ip", "netns", "exec", self.ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
           "net.ipv6.conf.default.disable_ipv6=1")
        root, _ = rootfs.ensure(rootfs.BOOKWORM_NO_LIBBPF)
        self.podman.import_rootfs(root, IMAGE)
        for network, subnet in zip(self.networks, SUBNETS):
            self.podman("network", "create", "--disable-dns", "--subnet", subnet, network)
        return self

    def start(self, name, networks=None, annotations=None):
        """Start a container that sleeps, with TSO and GSO off (each segment crosses as one frame); returns
        (id, the file of its network namespace)."""
        name = "%s-%s" % (PREFIX, name)
        self.containers.append(name)
        container_id = self.podman.run(name, IMAGE, "/bin/sleep", "600", networks=networks or self.networks[:1],
                                       annotations=annotations)
        netns = self.podman.netns(name)
        for i in range(len(networks or [1])):
            sh("nsenter", "--net=" + netns, "ethtool", "-K", "eth%d" % i, "tso", "off", "gso", "off")
        return container_id, netns

    def remove(self, name):
        self.podman("rm", "-f", "-t", "0", "%s-%s" % (PREFIX, name))

    def address(self, name, network=0):
        return self.podman.address("%s-%s" % (PREFIX, name), self.networks[network])

    def veths(self):
        """The names of the veths in the node's namespace."""
        out = json.loads(sh("ip", "-j", "-d", "-n", self.ns, "link", "show", "type", "veth").stdout)
        return sorted(link["ifname"] for link in out)

    def __exit__(self, *exc):
        for name in self.containers:
            self.podman.quietly("rm", "-f", "-t", "0", name)
        for network in self.networks:
            self.podman.quietly("network", "rm", "-f", network)
        self.podman.quietly("rmi", "-f", IMAGE)
        subprocess.run(["ip", "netns", "del", self.ns], stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    with Node(str(tmp_path_factory.mktemp("podman"))) as n:
        yield n


def inside(netns, *cmd, **kwargs):
    """Run a host command in a container's network namespace."""
    return sh("nsenter", "--net=" + netns, *cmd, **kwargs)


def ping(netns, address, count):
    inside(netns, "ping", "-q", "-c", str(count), "-i", "0.1", address)


def pod_annotations(name, namespace, uid):
    return {"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace, "io.kubernetes.pod.uid": uid}


def new_veths(node, before):
    """The veths made since `before`, sorted."""
    return sorted(set(node.veths()) - set(before))


def l4(counts, name):
    return counts["l4"][name]["packets"]


def quiet(node, probe, veths, tries=30):
    """Wait until the veths are quiet (a container's interface sends IGMP reports for a while after it comes
    up): the kernel's counters the same before and after a report of each; returns (those counters, those
    reports), from which the kernel's and the probe's counts move together."""
    for _ in range(tries):
        kernel = {name: link_stats(None, node.ns, name) for name in veths}
        reports = {name: probe.next_report(name) for name in veths}
        if {name: link_stats(None, node.ns, name) for name in veths} == kernel:
            return kernel, reports
    raise AssertionError("the veths never went quiet: %s" % kernel)


def test_pod_and_container_counts_exact(node):
    """Pod shop/web (podman with CRI-O's annotations) on both networks, container `client` on the first: ping,
    UDP and TCP between them, and a ping from the node to web's second address. Each veth's owner is right;
    ICMP and UDP exactly what was sent, TCP the same on both ends, every count what the kernel counted on the
    veth meanwhile; --group-by pod sums web's two veths, in the reports and in /metrics."""
    uid = "6f1c-%s" % PREFIX
    probe = WatchedRun(node.ns, "--all", "--interval", "0.5")
    grouped = WatchedRun(node.ns, "--all", "--interval", "0.5", "--group-by", "pod", "--listen",
                         "127.0.0.1:%d" % METRICS_PORT)
    try:
        before = node.veths()
        _, web_ns = node.start("web", node.networks, pod_annotations("web", "shop", uid))
        web_veths = new_veths(node, before)
        client_id, client_ns = node.start("client")
        client_veth, = new_veths(node, before + web_veths)
        assert len(web_veths) == 2
        veths = web_veths + [client_veth]
        for name in veths:
            probe.wait(lambda: probe.of(name), "report of " + name)
        kernel_before, probe_before = quiet(node, probe, veths)

        web = {"kind": "pod", "name": "web", "namespace": "shop", "uid": uid, "runtime": "podman"}
        client = {"kind": "container", "name": PREFIX + "-client", "namespace": "", "uid": client_id,
                  "runtime": "podman"}
        for name in web_veths:
            assert probe_before[name]["owner"] == web
        assert probe_before[client_veth]["owner"] == client

        web_ip, web_ip2 = node.address("web", 0), node.address("web", 1)
        ping(client_ns, web_ip, PINGS)
        sink = subprocess.Popen(["nsenter", "--net=" + web_ns, sys.executable, "-c", UDP_SINK, web_ip, "9",
                                 str(DATAGRAMS)], stdout=subprocess.PIPE, universal_newlines=True)
        assert sink.stdout.readline().strip() == "listening"
        inside(client_ns, sys.executable, "-c", SEND_UDP, web_ip, "9", str(DATAGRAMS), "300")
        assert sink.communicate(timeout=10)[0].strip() == "received"
        server = subprocess.Popen(["nsenter", "--net=" + web_ns, sys.executable, "-c", TCP_SERVER, web_ip, "5001"],
                                  stdout=subprocess.PIPE, universal_newlines=True)
        assert server.stdout.readline().strip() == "listening"
        inside(client_ns, sys.executable, "-c", TCP_CLIENT, web_ip, "5001", str(TCP_BYTES))
        assert int(server.communicate(timeout=10)[0]) == TCP_BYTES
        sh("ip", "netns", "exec", node.ns, "ping", "-q", "-c", str(HOST_PINGS), "-i", "0.1", web_ip2)
        settle()
        kernel = {name: delta(link_stats(None, node.ns, name), kernel_before[name]) for name in veths}
        metrics = sh("ip", "netns", "exec", node.ns, sys.executable, "-c",
                     "import urllib.request, sys; sys.stdout.write(urllib.request.urlopen("
                     "'http://127.0.0.1:%d/metrics').read().decode())" % METRICS_PORT).stdout
        finals = probe.stop()
        group_finals = grouped.stop()
    finally:
        probe.kill()
        grouped.kill()

    counted = {}
    for name in veths:
        assert finals[name]["owner"] == (client if name == client_veth else web)
        counted[name] = {d: {k: finals[name][d][k] - (probe_before[name][d][k] if k in ("packets", "bytes") else 0)
                             for k in ("packets", "bytes")} for d in ("rx", "tx")}
        # rx on the node's end is what the container sent; tx what it received.
        assert counted[name] == {d: {k: kernel[name][d][k] for k in ("packets", "bytes")} for d in ("rx", "tx")}
    c_rx, c_tx = finals[client_veth]["rx"], finals[client_veth]["tx"]
    assert (l4(c_rx, "icmp"), l4(c_tx, "icmp"), l4(c_rx, "udp"), l4(c_tx, "udp")) == (PINGS, PINGS, DATAGRAMS, 0)
    by_ip = {}
    for name in web_veths:
        r = finals[name]
        by_ip[(l4(r["rx"], "icmp"), l4(r["tx"], "icmp"), l4(r["tx"], "udp"))] = name
    assert sorted(by_ip) == sorted([(PINGS, PINGS, DATAGRAMS), (HOST_PINGS, HOST_PINGS, 0)])
    web_first = by_ip[(PINGS, PINGS, DATAGRAMS)]
    # Every segment the client sent reached web through the bridge, and back.
    assert l4(finals[web_first]["tx"], "tcp") == l4(c_rx, "tcp") > TCP_BYTES // 1500
    assert l4(finals[web_first]["rx"], "tcp") == l4(c_tx, "tcp") > 0

    # Grouped: web's two veths are one row; the client's is its own.
    pod_row = [r for r in group_finals.values() if r.get("owner") == web]
    assert len(pod_row) == 1 and sorted(pod_row[0]["interfaces"]) == web_veths
    pod_row = pod_row[0]
    for d in ("rx", "tx"):
        for proto in ("icmp", "udp", "tcp"):
            assert l4(pod_row[d], proto) == sum(l4(finals[name][d], proto) for name in web_veths)
    assert group_finals[client_veth]["owner"] == client
    samples = parse(metrics)
    icmp = {(labels["interface"],) + tuple(labels.get(k, "") for k in ("pod", "namespace", "container"))
            + (labels["direction"],): v
            for n, labels, v in samples if n == "kubenetprobe_l4_packets_total" and labels["protocol"] == "icmp"
            and ("pod" in labels or "container" in labels)}
    assert icmp == {("", "web", "shop", "", "rx"): PINGS + HOST_PINGS, ("", "web", "shop", "", "tx"): PINGS + HOST_PINGS,
                    ("", "", "", PREFIX + "-client", "rx"): PINGS, ("", "", "", PREFIX + "-client", "tx"): PINGS}


def test_owners_follow_containers_coming_and_going(node):
    """Containers started while the probe runs: each one's veth has its owner on its first report, counts
    what is sent to it, and its final report, when the container is removed, still names it; the veth of a
    container started after that (netavark may give it the same name) is the new one's."""
    bridges = sorted(set(json.loads(node.podman.output("network", "inspect", *node.networks))[i]["network_interface"]
                         for i in range(len(node.networks))))
    probe = WatchedRun(node.ns, "--all", "--interval", "0.3")
    try:
        probe.next_report(bridges[0])
        gone = []
        for i in range(2):
            before = node.veths()
            node.start("api%d" % i, annotations=pod_annotations("api-%d" % i, "prod", "uid-%d" % i))
            veth, = new_veths(node, before)
            index = int(sh("ip", "netns", "exec", node.ns, "cat", "/sys/class/net/%s/ifindex" % veth).stdout)
            first = probe.next_report(veth)
            assert first["ifindex"] == index
            assert first["owner"] == {"kind": "pod", "name": "api-%d" % i, "namespace": "prod", "uid": "uid-%d" % i,
                                      "runtime": "podman"}
            sh("ip", "netns", "exec", node.ns, "ping", "-q", "-c", "2", "-i", "0.1", node.address("api%d" % i))
            node.remove("api%d" % i)
            probe.wait(lambda: any(r["final"] and r["ifindex"] == index for r in probe.reports), "final report")
            final, = [r for r in probe.reports if r["final"] and r["ifindex"] == index]
            assert final["owner"] == first["owner"]
            assert l4(final["tx"], "icmp") == l4(final["rx"], "icmp") == 2
            gone.append(index)
        count = len(probe.reports)
        probe.next_report(bridges[0])
        assert not [r for r in probe.reports[count:] if r["ifindex"] in gone]
        probe.stop()
    finally:
        probe.kill()
