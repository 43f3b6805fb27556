"""The built pyz chrooted in other Debian releases (debootstrap): their Python, their libbpf, exact counts."""
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

import rootfs
from conftest import bpf_source, compile_bpf, pyz_with_object
from netns import assert_counted, frame_mix, interleaved, settle
from rootfs import BOOKWORM_NO_LIBBPF, BULLSEYE, TRIXIE

pytestmark = pytest.mark.integration

WITH_LIBBPF = [BULLSEYE, TRIXIE]
ALL = WITH_LIBBPF + [BOOKWORM_NO_LIBBPF]


def ids(distro):
    """Test ids by suite name."""
    return distro.suite


@pytest.fixture(scope="session")
def roots(request):
    """The root filesystems the selected tests use, built in parallel where not cached: suite -> path."""
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, chroot, namespaces); run `sudo make test`")
    assert shutil.which("debootstrap"), "debootstrap is missing: `make deps` installs it"
    wanted = {item.callspec.params["distro"] for item in request.session.items
              if "distro" in getattr(getattr(item, "callspec", None), "params", {})}
    with ThreadPoolExecutor(max(len(wanted), 1)) as pool:
        built = dict(zip(wanted, pool.map(rootfs.ensure, wanted)))
    plugins = request.config.pluginmanager
    with plugins.get_plugin("capturemanager").global_and_fixture_disabled():
        for path, seconds in sorted(built.values()):
            if seconds:
                plugins.get_plugin("terminalreporter").write_line("built %s in %.0f s" % (path, seconds))
    return {distro.suite: path for distro, (path, _) in built.items()}


@pytest.fixture
def root(built_pyz, roots, distro):
    """The distro's root filesystem; after the test, nothing may be left mounted in it on the host."""
    yield roots[distro.suite]
    assert rootfs.mounts_under(roots[distro.suite]) == [], "a run left mounts on the host"


@pytest.mark.parametrize("hook", ["tc", "xdp"])
@pytest.mark.parametrize("distro", ALL, ids=ids)
def test_counts_exactly(distro, root, pair, hook):
    """Chrooted in the release, the pyz loads with its libbpf (or natively, without one), counts a known
    mix of frames exactly both ways, rx at TC ingress (the default on a veth) or at native XDP, and detaches."""
    with rootfs.ChrootProbeRun(pair, root, "-i", pair.probe_if, "--hook", hook, "--interval", "60") as probe:
        probe.wait_attached(timeout=20)
        mapped = probe.mapped_libbpf()
        mix = frame_mix(pair)
        pair.send_both_ways(interleaved(mix))
        settle()
        final = probe.stop()
    assert probe.returncode == 0, probe.stderr
    assert pair.probe_programs() == [], "the probe left a program attached"
    if distro.libbpf:
        assert mapped and all(name.startswith(distro.libbpf) for name in mapped), mapped
    else:
        assert mapped == []
    assert final[pair.probe_if]["loader"] == ("libbpf" if distro.libbpf else "native")
    for direction in ("rx", "tx"):
        assert_counted(final[pair.probe_if][direction], mix)
    assert final[pair.probe_if]["hooks"] == {"rx": hook, "tx": "tc"}
    assert final[pair.probe_if]["mode"] == ("native" if hook == "xdp" else None)


@pytest.mark.parametrize("distro", WITH_LIBBPF, ids=ids)
def test_release_has_its_python_and_only_its_libbpf(distro, root):
    """The root filesystem is what the test means: its Python version, and one libbpf soname."""
    names = rootfs.libbpf_files(root)
    assert names and all(name.startswith(distro.libbpf) for name in names), names
    assert rootfs.python_version(root) == distro.python


@pytest.mark.parametrize("distro", WITH_LIBBPF, ids=ids)
def test_verbose_shows_libbpfs_messages(distro, root, pair):
    """-v passes libbpf's own log through: proof that the release's libbpf did the loading."""
    result = rootfs.run_pyz(pair, root, "-v", "-i", pair.probe_if, "--count", "1", "--interval", "0", "--json")
    assert pair.probe_programs() == []
    assert result.returncode == 0, result.stderr
    assert re.search(r"^kubenetprobe: libbpf: .*loading object", result.stderr, re.M), result.stderr
    assert '"final": true' in result.stdout


@pytest.fixture(scope="module")
def refused_objects(tmp_path_factory):
    """Copies of the pyz whose embedded object libbpf cannot open, or the verifier refuses: name -> pyz."""
    obj = compile_bpf(tmp_path_factory.mktemp("src"), bpf_source("unchecked_read.bpf.c"))
    return {"not-elf": pyz_with_object(tmp_path_factory.mktemp("not-elf"), b"not an ELF file at all"),
            "verifier": pyz_with_object(tmp_path_factory.mktemp("verifier"), obj.read_bytes())}


REFUSALS = {
    # libbpf 0.x: an encoded error pointer from bpf_object__open_mem
    ("not-elf", "libbpf"): "libbpf cannot open the object: ",
    ("not-elf", "native"): "cannot read the object: not an ELF object",
    # libbpf 0.x frames the verifier's log in its own way
    ("verifier", "libbpf"): "the verifier rejected the program: R1 offset is outside of the packet",
    ("verifier", "native"): "the verifier rejected the program: R1 offset is outside of the packet",
}


@pytest.mark.parametrize("distro", ALL, ids=ids)
@pytest.mark.parametrize("case", ["not-elf", "verifier"])
def test_refusals_are_one_line(distro, root, refused_objects, case, pair):
    """Refusals, as each release's libbpf (or the native loader) words them, make the one line that says why."""
    start = REFUSALS[case, "libbpf" if distro.libbpf else "native"]
    result = rootfs.run_pyz(pair, root, "-i", pair.probe_if, "--count", "1", pyz=refused_objects[case])
    assert pair.probe_programs() == []
    assert result.returncode == 1
    assert result.stderr.startswith("kubenetprobe: error: " + start), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
