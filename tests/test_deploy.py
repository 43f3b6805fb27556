"""deploy/: the seccomp profile is the runtime's default plus bpf(2); the Kubernetes manifest says what the README
says; and its pod, played by podman as a kubelet would, runs with exactly those settings and counts exactly, across
a restart (a rolling upgrade) too."""
import json
import os
import subprocess
import sys
import time

import pytest

import image
import probe
from conftest import ROOT
from exposition import counted, parse
from netns import expected_counts, frame_mix, interleaved, settle
from podman import Podman
from probe.cli import parser

DEFAULT_PROFILE = "/usr/share/containers/seccomp.json"  # containers-common's: podman's and CRI-O's default
MAKE_PROFILE = os.path.join(ROOT, "deploy", "seccomp", "make_profile.py")
CAPABILITIES = ["CAP_" + c for c in image.CAPABILITIES]
L3 = ("ipv4", "ipv6", "arp", "other")
MI = 1024 * 1024


@pytest.fixture(scope="module")
def default_profile():
    if not os.path.exists(DEFAULT_PROFILE):
        pytest.skip("%s is missing: `make deps` installs podman and its default profile" % DEFAULT_PROFILE)
    with open(DEFAULT_PROFILE) as f:
        return json.load(f)


def rules_by_syscall(profile):
    """{syscall: [its rules, without their names, as JSON]} of a seccomp profile."""
    found = {}
    for rule in profile["syscalls"]:
        for name in rule["names"]:
            found.setdefault(name, []).append(json.dumps({k: v for k, v in rule.items() if k != "names"},
                                                         sort_keys=True))
    return found


def test_seccomp_profile_is_the_default_plus_bpf(default_profile):
    """Every syscall keeps the default's rules, but bpf(2), which one unconditional rule allows (the default allows
    it only with CAP_SYS_ADMIN); the default action and architectures are the default's."""
    with open(image.SECCOMP_PROFILE) as f:
        shipped = json.load(f)
    assert {k: v for k, v in shipped.items() if k != "syscalls"} == \
        {k: v for k, v in default_profile.items() if k != "syscalls"}
    ours, default = rules_by_syscall(shipped), rules_by_syscall(default_profile)
    assert set(ours) == set(default)
    changed = sorted(name for name in ours if ours[name] != default[name])
    assert changed == ["bpf"]
    (rule,) = [json.loads(r) for r in ours["bpf"]]
    assert rule["action"] == "SCMP_ACT_ALLOW" and not rule["args"] and not rule["includes"] and not rule["excludes"]
    assert any("CAP_SYS_ADMIN" in r for r in default["bpf"])


def test_make_profile_makes_the_shipped_profile(default_profile):
    """deploy/seccomp/make_profile.py, run on this machine's default profile, writes the shipped file."""
    made = subprocess.run([sys.executable, MAKE_PROFILE, DEFAULT_PROFILE], stdout=subprocess.PIPE, check=True).stdout
    with open(image.SECCOMP_PROFILE, "rb") as f:
        assert made == f.read()


def test_manifest_is_a_daemonset_for_every_node_with_three_capabilities():
    """The DaemonSet: host network, every taint tolerated, uid 0 with only BPF, NET_ADMIN and PERFMON, no privilege
    escalation, a read-only root, the shipped seccomp profile, the image of this version; a ServiceAccount with no
    token and no RBAC at all."""
    docs = image.manifest()
    assert set(docs) == {"Namespace", "ServiceAccount", "DaemonSet"}  # no Role, ClusterRole or binding
    assert docs["ServiceAccount"]["automountServiceAccountToken"] is False
    spec = docs["DaemonSet"]["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    assert spec["tolerations"] == [{"operator": "Exists"}]
    (container,) = spec["containers"]
    assert container["image"] == "localhost/kubenetprobe:" + probe.__version__
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": list(image.CAPABILITIES)}
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["runAsUser"] == 0 and security["privileged"] is False
    assert security["seccompProfile"] == {"type": "Localhost",
                                          "localhostProfile": os.path.basename(image.SECCOMP_PROFILE)}


def test_manifest_args_are_the_probes_and_agree_with_ports_probes_and_annotations():
    """The args parse with the probe's own parser: every interface, metrics on every address at the port that the
    scrape annotations, the container port and the health checks name, pins on the node's bpffs mount."""
    template = image.manifest()["DaemonSet"]["spec"]["template"]
    (container,) = template["spec"]["containers"]
    args = parser().parse_args(container["args"])
    assert args.all and args.interface is None
    host, port = args.listen.rsplit(":", 1)
    assert host == "0.0.0.0"
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == int(port) == container["ports"][0]["containerPort"]
    for check in ("livenessProbe", "readinessProbe"):
        assert container[check]["httpGet"] == {"path": "/healthz", "port": int(port)}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert os.path.dirname(args.pin) == mounts["bpffs"] == "/sys/fs/bpf"


def test_manifest_mounts_runtime_state_read_only_where_the_runtimes_keep_it():
    """The runtime state folders and /var/run/netns: read-only, following the host's mounts, at the host's own paths
    (so the probe finds them where it looks on a host); never a runtime's socket folder; the bpffs writable."""
    spec = image.manifest()["DaemonSet"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert set(mounts) == set(host_paths)
    assert sorted(host_paths.values()) == ["/run/containerd/io.containerd.runtime.v2.task",
                                           "/run/containers/storage/overlay-containers", "/sys/fs/bpf",
                                           "/var/lib/containers/storage/overlay-containers", "/var/run/netns"]
    for name, mount in mounts.items():
        assert mount["mountPath"] == host_paths[name]
        if name == "bpffs":
            assert not mount.get("readOnly") and "mountPropagation" not in mount
        else:
            assert mount["readOnly"] is True and mount["mountPropagation"] == "HostToContainer", name


def test_manifest_resources_leave_room_for_the_maps():
    """Requests at the measured RSS, a memory limit above it with room for the per-CPU maps charged to the pod."""
    (container,) = image.manifest()["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert int(requests["memory"][:-2]) * MI >= 40 * 1000 * 1000
    assert int(limits["memory"][:-2]) * MI >= 4 * MI + 64 * 2.4e6 + 40e6  # slots, stats on 64 CPUs, the process


def wait_serving(pair, port, interface, timeout=60):
    """Wait until the probe at `port` serves /metrics with series of `interface`; returns the scrape."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = image.metrics(pair, port)
        if text and 'interface="%s"' % interface in text:
            return text
        time.sleep(0.2)
    raise AssertionError("the pod does not serve metrics of %s at port %d" % (interface, port))


def l3_scraped(pair, port):
    """{direction: {protocol: (packets, bytes)}} of the probe's interface in a scrape of /metrics."""
    return {d: levels["l3"] for d, levels in counted(parse(image.metrics(pair, port)), pair.probe_if).items()}


def expected_l3(mix, times):
    """{direction: {protocol: (packets, bytes)}} of a mix sent `times` over each way."""
    one = expected_counts(mix, "l3", L3)
    return {d: {p: (n * times, b * times) for p, (n, b) in one.items()} for d in ("rx", "tx")}


@pytest.mark.integration
def test_played_pod_runs_as_declared_and_counts_across_a_restart(podman_image, pair, bpffs, tmp_path):
    """The DaemonSet's pod played by podman on the test's network namespace as the node's network: exactly the three
    capabilities, the seccomp filter, a read-only root, the declared mounts (HostToContainer as rslave), args and
    limits; /healthz and /metrics at the annotated port; every frame counted in both directions, and a second pod
    (a rolling upgrade) takes the pins over with nothing lost, frames sent between the two included."""
    podman, loaded = podman_image
    template = image.manifest()["DaemonSet"]["spec"]["template"]
    (declared,) = template["spec"]["containers"]
    port = int(template["metadata"]["annotations"]["prometheus.io/port"])
    name = "knp-pod-%d" % os.getpid()
    # The bpffs of the test's own; a runtime this machine lacks gets an empty folder, as DirectoryOrCreate would.
    host_paths = {"bpffs": bpffs}
    for volume in template["spec"]["volumes"]:
        if not os.path.exists(volume["hostPath"]["path"]):
            host_paths[volume["name"]] = str(tmp_path / volume["name"])
            os.mkdir(host_paths[volume["name"]])
    pod_file = tmp_path / "pod.json"
    pod_file.write_text(json.dumps(image.pod_from_daemonset(name, host_paths)))
    # In the test's namespace (nsenter --net): podman's host network is then that namespace; its mounts stay the host's.
    node = Podman(str(tmp_path), ns=pair.probe_ns)
    play = ("kube", "play", "--replace", "--seccomp-profile-root", os.path.dirname(image.SECCOMP_PROFILE),
            str(pod_file))
    container = name + "-" + declared["name"]
    mix = frame_mix(pair)
    try:
        node(*play)
        wait_serving(pair, port, pair.probe_if)
        inspected = podman.inspect(container)
        status = image.process_status(inspected["State"]["Pid"])
        assert image.metrics(pair, port, "/healthz") == "ok\n"
        pair.send_both_ways(interleaved(mix))
        settle()
        assert l3_scraped(pair, port) == expected_l3(mix, 1)

        podman("pod", "stop", "--time", "10", name)  # SIGTERM: the pinned programs keep counting
        assert "left pinned in " + declared["args"][-1] in podman("logs", container).stderr
        pair.send_both_ways(interleaved(mix))
        node(*play)
        wait_serving(pair, port, pair.probe_if)
        pair.send_both_ways(interleaved(mix))
        settle()
        assert l3_scraped(pair, port) == expected_l3(mix, 3)
    finally:
        podman("pod", "rm", "--force", name, check=False)

    host = inspected["HostConfig"]
    assert inspected["EffectiveCaps"] == CAPABILITIES and inspected["BoundingCaps"] == CAPABILITIES
    assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == image.CAPABILITY_MASK
    assert int(status["Seccomp"]) == image.SECCOMP_MODE_FILTER and int(status["NoNewPrivs"]) == 1
    assert host["ReadonlyRootfs"] is True and host["NetworkMode"] == "host"
    assert [inspected["Path"]] + inspected["Args"] == ["/usr/bin/python3", "/kubenetprobe.pyz"] + declared["args"]
    assert host["Memory"] == int(declared["resources"]["limits"]["memory"][:-2]) * MI
    assert host["CpuQuota"] * 1000 // host["CpuPeriod"] == int(declared["resources"]["limits"]["cpu"][:-1])
    mounts = {m["Destination"]: m for m in inspected["Mounts"]}
    volumes = {v["name"]: v["hostPath"]["path"] for v in template["spec"]["volumes"]}
    assert sorted(mounts) == sorted(m["mountPath"] for m in declared["volumeMounts"])
    for mount in declared["volumeMounts"]:
        got = mounts[mount["mountPath"]]
        assert got["Source"] == host_paths.get(mount["name"], volumes[mount["name"]])
        assert got["RW"] is not mount.get("readOnly", False), mount
        if mount.get("mountPropagation") == "HostToContainer":
            assert got["Propagation"] == "rslave", mount
    # podman turns the httpGet checks into a curl command it would run in the container (the kubelet probes itself).
    assert "http://localhost:%d/healthz" % port in " ".join(inspected["Config"]["Healthcheck"]["Test"])
