"""The container image in podman (podman.Podman, with the flags these machines need): built by build_image.py
(cached by content), loaded, run, inspected, removed."""
import json
import os
import subprocess
import sys
import tarfile
import urllib.request

from conftest import ROOT
from netns import ProbeRun, sh
from podman import RUN_FLAGS, Podman

SECCOMP_PROFILE = os.path.join(ROOT, "deploy", "seccomp", "kubenetprobe.json")
MANIFEST = os.path.join(ROOT, "deploy", "kubernetes", "kubenetprobe.yaml")
CAPABILITIES = ("BPF", "NET_ADMIN", "PERFMON")
CAPABILITY_MASK = (1 << 39) | (1 << 12) | (1 << 38)  # CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON as /proc shows them
SECCOMP_MODE_FILTER = 2


def process_status(pid):
    """{field: value} of /proc/PID/status."""
    with open("/proc/%d/status" % pid) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


class Image(object):
    """The image built from this checkout, loaded into podman's store for a test session."""

    def __init__(self, podman, archive):
        self.podman, self.archive = podman, archive
        ref = read_archive(archive)["ref"]
        existed = podman("image", "exists", ref, check=False).returncode == 0
        self.name = podman("load", "--quiet", "-i", archive).stdout.split("Loaded image: ")[-1].strip()
        self.id = podman.output("image", "inspect", "--format", "{{.Id}}", self.name)
        self.ours = not existed

    def remove(self):
        """Remove the image from the store, unless it was there before the session."""
        if self.ours:
            self.podman("rmi", "--force", self.id, check=False)


def build(output, env=None):
    """Build the image archive into `output` with build_image.py (from its cache when nothing changed)."""
    sh(sys.executable, os.path.join(ROOT, "build_image.py"), "--output", output, env=env)


def read_archive(path):
    """What an OCI archive holds: its ref name, the image config, and {path: TarInfo} of its one layer."""
    with tarfile.open(path) as archive:
        def blob(digest):
            return archive.extractfile("blobs/sha256/" + digest.split(":")[1])
        index = json.load(archive.extractfile("index.json"))
        manifest = json.load(blob(index["manifests"][0]["digest"]))
        config = json.load(blob(manifest["config"]["digest"]))
        (layer,) = manifest["layers"]
        with tarfile.open(fileobj=blob(layer["digest"])) as files:
            members = {os.path.normpath("/" + m.name): m for m in files.getmembers()}
            pyz = files.extractfile(next(m for name, m in members.items() if name == "/kubenetprobe.pyz")).read()
    return {"ref": index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "config": config, "files": members, "pyz": pyz, "manifest_digest": index["manifests"][0]["digest"]}


def run_args(image, pair, seccomp=SECCOMP_PROFILE, name=None, bpffs=None):
    """`podman run` options: read-only, the three capabilities only, the seccomp profile given (None: the runtime's
    default), in the probe's network namespace (the container's host network is the node's, here the test's), and
    a bpffs of the host's at /sys/fs/bpf if given."""
    args = ["run", "--rm", "--read-only", "--cap-drop", "ALL", "--cap-add", ",".join(CAPABILITIES),
            "--network", "ns:/run/netns/" + pair.probe_ns] + RUN_FLAGS + (["--name", name] if name else [])
    if bpffs:
        args += ["--volume", bpffs + ":/sys/fs/bpf"]
    if seccomp:
        args += ["--security-opt", "seccomp=" + seccomp]
    return args + [image.name]


class ContainerProbeRun(ProbeRun):
    """The image running with --json in the probe's namespace (podman run forwards SIGINT to it)."""

    def __init__(self, podman, image, pair, *args, seccomp=SECCOMP_PROFILE, name=None, bpffs=None):
        self._expect(pair, args)
        cmd = podman.command(*run_args(image, pair, seccomp, name, bpffs)) + ["--json"] + list(args)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                                     env=podman.env)


def session_image(tmp_folder):
    """Build and load the image; returns (Podman, Image)."""
    podman = Podman(tmp_folder)
    archive = os.path.join(tmp_folder, "kubenetprobe-image.tar")
    build(archive)
    return podman, Image(podman, archive)


def manifest():
    """The documents of the Kubernetes manifest, by kind."""
    import yaml
    with open(MANIFEST) as f:
        return {doc["kind"]: doc for doc in yaml.safe_load_all(f)}


def pod_from_daemonset(name, host_paths):
    """The DaemonSet's pod template as a Pod that `podman kube play` (4.3) runs as the kubelet would: the seccomp
    profile as the pod annotation podman honours (it ignores securityContext.seccompProfile), no containerPort (it
    refuses port mappings on the host network, where Kubernetes only records them), and the hostPath volumes
    named in `host_paths` ({volume: path}) pointed elsewhere."""
    template = manifest()["DaemonSet"]["spec"]["template"]
    spec = json.loads(json.dumps(template["spec"]))
    (container,) = spec["containers"]
    profile = container["securityContext"]["seccompProfile"]
    assert profile["type"] == "Localhost"
    container.pop("ports")
    for volume in spec["volumes"]:
        volume["hostPath"]["path"] = host_paths.get(volume["name"], volume["hostPath"]["path"])
    annotations = dict(template["metadata"]["annotations"])
    annotations["seccomp.security.alpha.kubernetes.io/pod"] = "localhost/" + profile["localhostProfile"]
    return {"apiVersion": "v1", "kind": "Pod", "spec": spec,
            "metadata": dict(template["metadata"], name=name, annotations=annotations)}


def metrics(pair, port, path="/metrics"):
    """The body of a GET of 127.0.0.1:port inside the pair's probe namespace, or None while nothing answers."""
    with pair.inside():
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as answer:
                return answer.read().decode()
        except OSError:
            return None

