"""Owners of interfaces: the runtimes' state read from fake state folders (containerd's runtime-v2 tasks,
containers/storage's overlay-containers) that the tests write, damaged ones too; reports, pipe lines and metrics
with owners, grouped by pod; then the matching itself with namespaces the test makes: a veth whose peer is in a
namespace a spec names is attributed to that spec's pod, others to nobody."""
import itertools
import json
import os
import random
import subprocess

import pytest

import fakes
from exposition import parse, promtool
from netns import sh
from probe import metrics, output, owners
from probe.owners import Owner, Owners
from probe.prometheus import render
from probe.reports import Reporter, by_owner
from traffic import inside

_serial = itertools.count()
WEB = Owner("pod", "web-7d4b9", "shop", "0c5e-uid", "containerd")
SANDBOX = "io.kubernetes.cri.container-type"


def spec(netns=None, annotations=None):
    """An OCI spec as runtimes write it: the network namespace's file (None: the host's network)."""
    namespaces = [{"type": "pid"}, {"type": "ipc"}] + ([{"type": "network", "path": netns}] if netns else [])
    return {"ociVersion": "1.0.2", "annotations": annotations or {}, "linux": {"namespaces": namespaces}}


def containerd_pod(owner):
    return {"io.kubernetes.cri.sandbox-name": owner.name, "io.kubernetes.cri.sandbox-namespace": owner.namespace,
            "io.kubernetes.cri.sandbox-uid": owner.uid, SANDBOX: "sandbox"}


def crio_pod(name, namespace, uid, podman=False):
    found = {"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace, "io.kubernetes.pod.uid": uid,
             "io.kubernetes.cri-o.ContainerType": "sandbox"}
    if podman:
        found["io.container.manager"] = "libpod"
    return found


def write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(content if isinstance(content, str) else json.dumps(content))


def containerd_task(root, namespace, container_id, content):
    write(os.path.join(root, namespace, container_id, "config.json"), content)


def storage_container(root, container_id, content):
    write(os.path.join(root, "overlay-containers", container_id, "userdata", "config.json"), content)


# The state, read from fake folders

def test_containerd_state(tmp_path):
    """A CRI sandbox is its pod; a container with no CRI annotations (docker's moby namespace) itself, by id; a
    container of the pod (its namespace by /proc path, which the sandbox's file names), a host-network one and a
    damaged spec nothing."""
    root = str(tmp_path / owners.CONTAINERD_TASKS)
    containerd_task(root, "k8s.io", "aaa1", spec("/var/run/netns/cni-1234", containerd_pod(WEB)))
    app = dict(containerd_pod(WEB), **{SANDBOX: "container"})
    containerd_task(root, "k8s.io", "bbb2", spec("/proc/4242/ns/net", app))
    containerd_task(root, "k8s.io", "ccc3", spec(None, containerd_pod(WEB)))
    containerd_task(root, "moby", "ddd4", spec("/var/run/docker/netns/5f3a"))
    containerd_task(root, "k8s.io", "eee5", '{"ociVersion": "1.0.2", "linux": {"namesp')
    expected = [
        (os.path.join(root, "k8s.io", "aaa1", "config.json"), WEB, "/var/run/netns/cni-1234"),
        (os.path.join(root, "moby", "ddd4", "config.json"), Owner("container", "ddd4", "", "ddd4", "containerd"),
         "/var/run/docker/netns/5f3a"),
    ]
    assert owners.state(root) == expected
    # A DaemonSet may mount containerd's whole state folder: its task folder is found inside.
    assert owners.state(str(tmp_path)) == expected


def test_containers_storage_state(tmp_path):
    """CRI-O's sandbox is its pod (runtime cri-o); podman's container with Kubernetes annotations a pod (runtime
    podman); a plain podman container is itself, by the name containers.json gives, else by id."""
    root = str(tmp_path)
    storage_container(root, "c1", spec("/var/run/netns/7e1c", crio_pod("api-0", "prod", "u-1")))
    storage_container(root, "c2", spec("/run/netns/netns-2", crio_pod("web", "shop", "u-2", podman=True)))
    storage_container(root, "c3", spec("/run/netns/netns-3", {"io.container.manager": "libpod"}))
    storage_container(root, "c4", spec("/run/netns/netns-4", {"io.container.manager": "libpod"}))
    write(os.path.join(root, "overlay-containers", "containers.json"),
          [{"id": "c3", "names": ["redis"], "image": "x"}, {"id": "c9", "names": ["gone"]}])
    got = {os.path.relpath(path, root).split(os.sep)[1]: (owner, netns) for path, owner, netns in owners.state(root)}
    assert got == {
        "c1": (Owner("pod", "api-0", "prod", "u-1", "cri-o"), "/var/run/netns/7e1c"),
        "c2": (Owner("pod", "web", "shop", "u-2", "podman"), "/run/netns/netns-2"),
        "c3": (Owner("container", "redis", "", "c3", "podman"), "/run/netns/netns-3"),
        "c4": (Owner("container", "c4", "", "c4", "podman"), "/run/netns/netns-4"),
    }


def test_missing_state_folders_hold_nothing(tmp_path):
    assert owners.state(str(tmp_path / "none")) == []
    assert owners.state(str(tmp_path)) == []


def test_damaged_state_never_raises(tmp_path):
    """Specs and containers.json of any shape: what makes sense is read, the rest left out, nothing raises."""
    rng = random.Random(10)
    odd = [None, 3, "x", [], {}, [1], {"a": 1}, {"path": 3}, [{"type": "network"}], [{"type": "network", "path": ""}]]
    for i in range(300):
        annotations = rng.choice(odd + [crio_pod(rng.choice(odd), rng.choice(odd), "u"),
                                        crio_pod("p", "n", rng.choice(odd))])
        content = {"annotations": annotations, "linux": rng.choice(odd + [{"namespaces": rng.choice(odd)}])}
        if rng.random() < 0.3:
            content = json.dumps(content)[:rng.randrange(40)]
        storage_container(str(tmp_path), "c%d" % i, content)
        containerd_task(str(tmp_path / "tasks"), "k8s.io", "t%d" % i, content)
    write(str(tmp_path / "overlay-containers" / "containers.json"), [{"id": "c1", "names": [3]}, 7, {"id": 2}])
    for root in (str(tmp_path), str(tmp_path / "tasks")):
        for _, owner, netns in owners.state(root):
            assert isinstance(netns, str) and netns
            assert all(isinstance(v, str) for v in owner)


# Reports, lines and metrics with owners

class FixedOwners(object):
    """Owners that knows interfaces by ifindex alone, and counts what it is asked."""

    def __init__(self, by_index):
        self.by_index = by_index
        self.forgotten = []

    def of_all(self, indexes):
        return {ifindex: self.by_index.get(ifindex) for ifindex in indexes}

    def forget(self, ifindex):
        self.forgotten.append(ifindex)


def pod_monitor():
    """eth0 (2, nobody's), veth1 (7) and veth2 (8) of pod shop/web-7d4b9, veth3 (9) of container redis."""
    monitor = fakes.FakeMonitor({"rx": fakes.rx_tc(), "tx": fakes.tx_tc()})
    for name, index in (("veth1", 7), ("veth2", 8), ("veth3", 9)):
        monitor.attachments.append(fakes.FakeAttachment({"rx": fakes.rx_tc(), "tx": fakes.tx_tc()}, name, index))
    return monitor


REDIS = Owner("container", "redis", "", "c3", "podman")
POD_OWNERS = {7: WEB, 8: WEB, 9: REDIS}
POD_COUNTERS = {
    "eth0": {"rx": fakes.counters({"ipv4": 5}), "tx": fakes.counters({"ipv4": 1})},
    "veth1": {"rx": fakes.counters({"ipv4": 10, "arp": 1}, 100, {"udp": 10}),
              "tx": fakes.counters({"ipv4": 4}, 60, {"icmp": 4})},
    "veth2": {"rx": fakes.counters({"ipv4": 3}, 1000, {"tcp": 3}), "tx": fakes.counters({"ipv6": 2}, 80)},
    "veth3": {"rx": fakes.counters({"ipv4": 7}, 70, {"udp": 7}), "tx": fakes.counters({}, 0)},
}


def queued(monitor, *rounds):
    for a in monitor.attachments:
        a.values = {d: [r[a.interface][d] for r in rounds] for d in a.hooks}


def test_reports_carry_owners_and_group_by_pod():
    """Each report says its owner (null: none known); grouped, a pod's interfaces are one report with their
    sums, a container's and an unowned interface's stay their own; the final reports make the owners forget."""
    monitor = pod_monitor()
    queued(monitor, {name: {d: fakes.counters({}) for d in ("rx", "tx")} for name in POD_COUNTERS}, POD_COUNTERS)
    known = FixedOwners(POD_OWNERS)
    reports = Reporter(monitor, known).reports(final=True)
    assert [r["owner"] for r in reports] == [None, WEB.json(), WEB.json(), REDIS.json()]
    assert WEB.json() == {"kind": "pod", "name": "web-7d4b9", "namespace": "shop", "uid": "0c5e-uid",
                          "runtime": "containerd"}
    assert sorted(known.forgotten) == [2, 7, 8, 9]
    grouped = by_owner(reports)
    assert [r["interface"] for r in grouped] == ["eth0", "veth1,veth2", "veth3"]
    pod = grouped[1]
    assert pod["interfaces"] == ["veth1", "veth2"] and pod["owner"] == WEB.json() and pod["ifindex"] is None
    assert (pod["rx"]["packets"], pod["rx"]["bytes"], pod["tx"]["packets"], pod["tx"]["bytes"]) == \
        (11 + 3, 1100 + 3000, 4 + 2, 240 + 160)
    assert pod["rx"]["l4"]["udp"] == {"packets": 10, "bytes": 1000}
    assert pod["rx"]["l4"]["tcp"] == {"packets": 3, "bytes": 3000}
    assert pod["rx"]["pps"] == reports[1]["rx"]["pps"] + reports[2]["rx"]["pps"]
    assert grouped[0] is reports[0]
    assert grouped[2]["interfaces"] == ["veth3"] and grouped[2]["rx"] == reports[3]["rx"]


def test_lines_end_with_the_owner():
    """The pipe's lines: an owner column last, NAMESPACE/POD, a container's name, or -."""
    monitor = pod_monitor()
    queued(monitor, POD_COUNTERS, POD_COUNTERS)
    reports = Reporter(monitor, FixedOwners(POD_OWNERS)).reports()
    assert output.format_header().split()[-1] == "owner"
    owners_column = [line.split()[-1] for r in reports for line in output.format_lines(r)]
    assert owners_column == ["-", "-", "shop/web-7d4b9", "shop/web-7d4b9", "shop/web-7d4b9", "shop/web-7d4b9",
                             "redis", "redis"]
    assert all(len(line.split()) == len(output.COLUMNS) for r in reports for line in output.format_lines(r))


def test_metrics_with_owners_and_grouped():
    """A pod's series have pod and namespace labels, a container's a container label, others none (which
    Prometheus reads as empty); grouped by pod, the pod's interfaces are one series with an empty interface label
    and their sums; promtool accepts both."""
    monitor = pod_monitor()
    known = FixedOwners(POD_OWNERS)
    plain = parse(render(metrics.families(monitor, POD_COUNTERS, owners=known)))
    grouped_text = render(metrics.families(monitor, POD_COUNTERS, owners=known, group=True))
    grouped = parse(grouped_text)
    assert promtool(grouped_text).returncode == 0, promtool(grouped_text).stdout
    owned = {"pod", "namespace", "container"}
    for name, labels, _ in plain:
        if name in ("kubenetprobe_l3_packets_total", "kubenetprobe_l4_bytes_total", "kubenetprobe_interface_info"):
            assert owned & set(labels) == {"eth0": set(), "veth1": {"pod", "namespace"}, "veth2": {"pod", "namespace"},
                                           "veth3": {"container"}}[labels["interface"]], labels

    def value(samples, **want):
        return [v for n, labels, v in samples if n == "kubenetprobe_l3_packets_total"
                and all(labels.get(k, "") == w for k, w in want.items())]

    assert value(plain, interface="veth1", direction="rx", protocol="ipv4", pod="web-7d4b9",
                 namespace="shop", container="") == [10]
    assert value(plain, interface="eth0", direction="rx", protocol="ipv4", pod="", container="") == [5]
    assert value(grouped, interface="", direction="rx", protocol="ipv4", pod="web-7d4b9") == [13]
    assert value(grouped, interface="", direction="tx", protocol="ipv6", pod="web-7d4b9") == [2]
    assert value(grouped, interface="", container="redis", direction="rx", protocol="ipv4") == [7]
    assert value(grouped, interface="eth0", direction="rx", protocol="ipv4") == [5]
    assert not value(grouped, interface="veth1")
    # Summing left the counters read untouched.
    assert POD_COUNTERS["veth1"]["rx"]["l3"]["ipv4"]["packets"] == 10
    info = [labels for n, labels, _ in grouped if n == "kubenetprobe_interface_info"]
    assert sorted((i["interface"], i.get("pod", ""), i.get("container", "")) for i in info if i["direction"] == "rx") == \
        [("eth0", "", ""), ("veth1", "web-7d4b9", ""), ("veth2", "web-7d4b9", ""), ("veth3", "", "redis")]


# Matching with real namespaces

class Namespaces(object):
    """Network namespaces `host` and pods `pod0`, `pod1`...: a veth from host into each (vethN), made and
    removed by the test."""

    def __init__(self, pods):
        prefix = "knpown%d-%d" % (os.getpid(), next(_serial))
        self.host = prefix + "-host"
        self.pods = ["%s-pod%d" % (prefix, i) for i in range(pods)]

    def __enter__(self):
        for ns in [self.host] + self.pods:
            sh("ip", "netns", "add", ns)
        for i, pod in enumerate(self.pods):
            self.add_veth("veth%d" % i, pod)
        return self

    def add_veth(self, name, pod):
        sh("ip", "-n", self.host, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", pod)

    def __exit__(self, *exc):
        for ns in self.pods + [self.host]:
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)

    def ifindex(self, name):
        with inside(self.host):
            from probe.net import interfaces
            return interfaces.ifindex(name)

    def of(self, known, name):
        index = self.ifindex(name)
        with inside(self.host):
            return known.of(index)


@pytest.mark.integration
def test_veth_peers_are_matched_to_their_namespace(tmp_path):
    """In the host namespace: veth0's peer is in pod0's namespace, which a containerd sandbox names: its pod;
    veth1's is in one no spec names: nobody, until a spec naming it appears; lo and the namespace's own veth
    pair nobody. A spec's path that does not open here is looked for under the netns folder by its name."""
    root = str(tmp_path / owners.CONTAINERD_TASKS)
    other = Owner("pod", "api-1", "prod", "u-api", "containerd")
    with Namespaces(3) as ns:
        containerd_task(root, "k8s.io", "sb0", spec("/run/netns/" + ns.pods[0], containerd_pod(WEB)))
        containerd_task(root, "k8s.io", "sb2", spec("/elsewhere/netns/" + ns.pods[2], containerd_pod(other)))
        sh("ip", "-n", ns.host, "link", "add", "local0", "type", "veth", "peer", "name", "local1")
        known = Owners([root], netns_dir="/run/netns")
        assert ns.of(known, "veth0") == WEB
        assert ns.of(known, "veth1") is None
        assert ns.of(known, "veth2") == other
        assert ns.of(known, "local0") is None and ns.of(known, "lo") is None
        third = Owner("pod", "db-0", "prod", "u-db", "containerd")
        containerd_task(root, "k8s.io", "sb1", spec("/run/netns/" + ns.pods[1], containerd_pod(third)))
        assert ns.of(known, "veth1") == third


@pytest.mark.integration
def test_a_vanished_pods_id_given_again_is_not_misattributed(tmp_path):
    """A pod's namespace and spec removed, a new namespace made (the kernel may give it the old one's id) with
    a spec of its own: a veth into it is the new pod's."""
    root = str(tmp_path / owners.CONTAINERD_TASKS)
    with Namespaces(1) as ns:
        containerd_task(root, "k8s.io", "sb0", spec("/run/netns/" + ns.pods[0], containerd_pod(WEB)))
        known = Owners([root])
        assert ns.of(known, "veth0") == WEB
        known.forget(ns.ifindex("veth0"))
        sh("ip", "netns", "del", ns.pods[0])
        os.remove(os.path.join(root, "k8s.io", "sb0", "config.json"))
        os.rmdir(os.path.join(root, "k8s.io", "sb0"))
        sh("ip", "netns", "add", ns.pods[0])
        newer = Owner("pod", "web-new", "shop", "u-new", "containerd")
        containerd_task(root, "k8s.io", "sb9", spec("/run/netns/" + ns.pods[0], containerd_pod(newer)))
        ns.add_veth("veth9", ns.pods[0])
        assert ns.of(known, "veth9") == newer
