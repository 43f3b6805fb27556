"""The container image (build_image.py, `make image`): what it holds, that it rebuilds the same, and that it counts
exactly from a read-only root with three capabilities and the shipped seccomp profile, on the node's network."""
import itertools
import os
import shutil

import pytest

import build_image
import image
import probe
from conftest import PYZ
from frames import ETH_LLDP
from netns import assert_counted, frame_mix, interleaved, settle

pytestmark = pytest.mark.integration

_names = itertools.count()
MAX_IMAGE_BYTES = 60 * 1000 * 1000


def test_holds_python_libbpf_and_the_pyz_and_no_shell(podman_image):
    """One layer: Debian's Python 3.11 with ctypes, libbpf, the pyz of this build as the entrypoint, at most 60 MB
    unpacked, and no shell or package manager to run anything else with."""
    _, loaded = podman_image
    held = image.read_archive(loaded.archive)
    assert held["ref"] == "localhost/kubenetprobe:" + probe.__version__
    assert held["config"]["config"]["Entrypoint"] == ["/usr/bin/python3", "/kubenetprobe.pyz"]
    with open(PYZ, "rb") as f:
        assert held["pyz"] == f.read()
    files = held["files"]
    assert "/usr/bin/python3.11" in files and "/lib64/ld-linux-x86-64.so.2" in files
    libraries = {os.path.basename(name) for name in files if "/lib/x86_64-linux-gnu/" in name}
    assert {"libc.so.6", "libffi.so.8", "libbpf.so.1", "libelf.so.1", "libz.so.1"} <= libraries
    assert any(name.startswith("/usr/lib/python3.11/lib-dynload/_ctypes.") for name in files)
    executables = sorted(name for name, m in files.items() if m.isfile() and m.mode & 0o111 and "/bin/" in name)
    assert executables == ["/usr/bin/python3.11"], executables
    for absent in ("/bin/sh", "/usr/bin/sh", "/bin/bash", "/bin/dash", "/usr/bin/apt-get", "/usr/bin/dpkg",
                   "/usr/lib/python3.11/ensurepip", "/usr/share/doc"):
        assert absent not in files, absent
    unpacked = sum(m.size for m in files.values())
    assert unpacked <= MAX_IMAGE_BYTES, "%.1f MB unpacked" % (unpacked / 1e6)
    print("image: %.1f MB unpacked, %.1f MB archive" % (unpacked / 1e6, os.path.getsize(loaded.archive) / 1e6))


def test_rebuilds_into_the_same_image(podman_image, tmp_path):
    """Built again from nothing but the same packages and pyz (a fresh cache), the image has the same digest."""
    _, loaded = podman_image
    cache = tmp_path / "cache"
    shutil.copytree(str(build_image.CACHE / "debs"), str(cache / "debs"), copy_function=os.link)
    rebuilt = str(tmp_path / "again.tar")
    image.build(rebuilt, env=dict(os.environ, KUBENETPROBE_IMAGE_CACHE=str(cache)))
    assert image.read_archive(rebuilt)["manifest_digest"] == image.read_archive(loaded.archive)["manifest_digest"]


@pytest.mark.parametrize("loader", ["libbpf", "native"])
def test_counts_exactly_read_only_with_three_capabilities(podman_image, pair, loader):
    """Read-only root, CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON only, the shipped seccomp profile, the node's network:
    a mix of every frame class counted exactly both ways, with libbpf and with the native loader; nothing left
    attached after it stops."""
    podman, loaded = podman_image
    name = "knp-image-%d-%d" % (os.getpid(), next(_names))
    with image.ContainerProbeRun(podman, loaded, pair, "-i", pair.probe_if, "--interval", "60", "--loader", loader,
                                 name=name) as run:
        run.wait_attached(timeout=30)
        inspected = podman.inspect(name)
        status = image.process_status(inspected["State"]["Pid"])
        mix = frame_mix(pair)
        pair.send_both_ways(interleaved(mix))
        settle()
        final = run.stop()
    assert run.returncode == 0, run.stderr
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True
    assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == image.CAPABILITY_MASK
    assert int(status["Seccomp"]) == image.SECCOMP_MODE_FILTER
    report = final[pair.probe_if]
    assert report["loader"] == loader
    assert_counted(report["rx"], mix)
    assert_counted(report["tx"], mix)
    assert pair.probe_programs() == [], "the probe left a program attached"


@pytest.mark.parametrize("attach,hook", [("link", "xdp"), ("link", "tc"), ("netlink", "tc")])
def test_pinned_state_is_taken_over_with_three_capabilities(podman_image, pair, bpffs, attach, hook):
    """With --pin on the host's bpffs, a second container (a rolling upgrade) takes the first one's programs over
    without CAP_SYS_ADMIN (which reading a program by id needs), counters and frames sent between the two
    included; `detach` in a third ends it."""
    podman, loaded = podman_image
    args = ("-i", pair.probe_if, "--hook", hook, "--attach", attach, "--pin", "/sys/fs/bpf/knp", "--interval", "60")
    frame = pair.frame(ETH_LLDP, bytes(46))
    old = ()
    for sent, between in ((3, 4), (5, 0)):
        with image.ContainerProbeRun(podman, loaded, pair, *args, bpffs=bpffs) as run:
            run.wait_attached(replacing=old, timeout=30)
            old = tuple(run.programs[pair.probe_if].values())
            pair.send_frames([frame] * sent)
            settle()
            final = run.stop()[pair.probe_if]
        assert run.returncode == 0, run.stderr
        pair.send_frames([frame] * between)
    assert "took over the programs pinned in /sys/fs/bpf/knp/" + pair.probe_if in run.stderr
    assert final["rx"]["l3"]["other"] == {"packets": 12, "bytes": 12 * len(frame)}
    assert pair.probe_programs(), "the pinned programs went with the container"
    detach = podman(*image.run_args(loaded, pair, bpffs=bpffs), "detach", "-i", pair.probe_if, "--pin",
                    "/sys/fs/bpf/knp", check=False)
    assert detach.returncode == 0, detach.stderr
    assert pair.probe_programs() == []
    assert os.listdir(os.path.join(bpffs, "knp")) == []


def test_the_runtimes_default_seccomp_profile_is_named(podman_image, pair):
    """Under the runtime's default profile bpf(2) is refused although the capabilities are there: one line says
    it is seccomp, and how to allow it, and the exit status is 1."""
    podman, loaded = podman_image
    result = podman(*image.run_args(loaded, pair, seccomp=None), "-i", pair.probe_if, "--count", "1",
                    "--interval", "0", check=False)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kubenetprobe: error: "), result.stderr
    assert "blocked by a seccomp filter" in lines[0]
    assert "deploy/seccomp/kubenetprobe.json" in lines[0]
    assert pair.probe_programs() == []


def seccomp_lines(podman, loaded, pair, seccomp):
    """The lines of `kubenetprobe doctor`, run in the image, that speak of seccomp."""
    result = podman(*image.run_args(loaded, pair, seccomp=seccomp), "doctor", check=False)
    return [line for line in result.stdout.splitlines() if "seccomp" in line.lower()], result


def test_doctor_in_the_image_reports_the_seccomp_block(podman_image, pair):
    """`doctor` in the image: under the runtime's default profile its seccomp check fails and names bpf(2); under
    the shipped profile the same check passes."""
    podman, loaded = podman_image
    blocked, result = seccomp_lines(podman, loaded, pair, None)
    assert any("✗" in line and "bpf" in line for line in blocked), result.stdout + result.stderr
    allowed, result = seccomp_lines(podman, loaded, pair, image.SECCOMP_PROFILE)
    assert allowed and not any("✗" in line for line in allowed), result.stdout + result.stderr
