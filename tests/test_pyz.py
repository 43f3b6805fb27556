"""The built kubenetprobe.pyz as users get it: every Python from 3.6 (vermin, then each interpreter here),
read-only filesystems, what it imports, its bytes."""
import glob
import os
import shutil
import subprocess
import sys

import pytest

from conftest import PYZ, ROOT
from netns import ProbeRun, settle, sh, without_libbpf
from frames import ETH_LLDP


def test_runtime_code_needs_nothing_newer_than_python_3_6():
    """vermin finds no syntax or standard-library use newer than 3.6 in probe/ (the .pyz runs on 3.6 in the
    integration tests too, but only along the paths they take)."""
    probe_dir = os.path.join(ROOT, "probe")
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "vermin"), "-t=3.6-", "--no-tips",
                             "--violations", probe_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert result.returncode == 0, result.stdout


def interpreters():
    """Every CPython 3.6+ on this machine: pyenv's, and the system's."""
    found = {}
    root = subprocess.run(["pyenv", "root"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          universal_newlines=True).stdout.strip() if shutil.which("pyenv") else ""
    for path in sorted(glob.glob(os.path.join(root, "versions", "*", "bin", "python3"))) + ["/usr/bin/python3"]:
        if not os.path.exists(path):
            continue
        version = subprocess.run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
        if tuple(map(int, version.split("."))) >= (3, 6):
            found.setdefault(path, version)
    return sorted(found.items(), key=lambda item: (tuple(map(int, item[1].split("."))), item[0]))


def count_frames(pair, *args, **kwargs):
    """Run the pyz with `args`, send 5 frames to the probe's end and 3 from it, and check its final report of the
    probe's interface."""
    frame, back = pair.frame(ETH_LLDP, bytes(46)), pair.frame(ETH_LLDP, bytes(46), outgoing=True)
    with ProbeRun(pair, "-i", pair.probe_if, "--interval", "60", *args, **kwargs) as probe:
        probe.wait_attached()
        pair.send_frames([frame] * 5)
        pair.send_frames([back] * 3, outgoing=True)
        settle()
        final = probe.stop()
    assert probe.returncode == 0, probe.stderr
    assert final[pair.probe_if]["rx"]["l3"]["other"] == {"packets": 5, "bytes": 5 * len(frame)}
    assert final[pair.probe_if]["tx"]["l3"]["other"] == {"packets": 3, "bytes": 3 * len(back)}
    assert (final[pair.probe_if]["rx"]["packets"], final[pair.probe_if]["tx"]["packets"]) == (5, 3)
    assert final[pair.probe_if]["loader"] == args[args.index("--loader") + 1]


@pytest.mark.integration
@pytest.mark.parametrize("loader", ["libbpf", "native"])
@pytest.mark.parametrize("python,version", interpreters(), ids=lambda v: v if "/" not in v else None)
def test_runs_and_counts_on_every_python(pair, python, version, loader):
    count_frames(pair, "--loader", loader, python=python)


@pytest.mark.integration
def test_runs_with_read_only_root_and_home(tmp_path, pair):
    """Like Kubernetes' readOnlyRootFilesystem: nowhere to extract to, and nothing written."""
    home = tmp_path / "home"
    home.mkdir()
    pyz = str(tmp_path / "kubenetprobe.pyz")
    shutil.copy(PYZ, pyz)
    # Every filesystem read-only, in a mount namespace of this command's own.
    read_only = 'for m in $(findmnt -rno TARGET -t nosysfs,noproc,nodevtmpfs,nocgroup2,nobpf); do ' \
                'mount -o remount,bind,ro "$m" 2>/dev/null; done; touch "$HOME/w" 2>/dev/null && exit 99; exec "$@"'
    result = sh("unshare", "-m", "--propagation", "private", "sh", "-c", read_only, "sh",
                "ip", "netns", "exec", pair.probe_ns, sys.executable, pyz, "--json", "-i", pair.probe_if,
                "--count", "1", "--interval", "0", env=dict(os.environ, HOME=str(home)), check=False)
    assert result.returncode == 0, result.stderr
    assert '"interface": "knp0"' in result.stdout
    assert os.listdir(str(home)) == []


@pytest.mark.integration
def test_picks_the_native_loader_without_libbpf(pair):
    """libbpf made invisible to the pyz alone: auto takes the native loader, says so under -v, counts exactly."""
    frame, back = pair.frame(ETH_LLDP, bytes(46)), pair.frame(ETH_LLDP, bytes(46), outgoing=True)
    with ProbeRun(pair, "-v", "-i", pair.probe_if, "--interval", "60", wrapper=without_libbpf()) as probe:
        probe.wait_attached()
        pair.send_frames([frame] * 7)
        pair.send_frames([back] * 2, outgoing=True)
        settle()
        final = probe.stop()[pair.probe_if]
    assert probe.returncode == 0, probe.stderr
    assert final["loader"] == "native"
    assert final["rx"]["l3"]["other"] == {"packets": 7, "bytes": 7 * len(frame)}
    assert final["tx"]["l3"]["other"] == {"packets": 2, "bytes": 2 * len(back)}
    assert "kubenetprobe: loader auto: libbpf not found" in probe.stderr
    assert "using the native loader" in probe.stderr


@pytest.mark.integration
def test_never_imports_from_writable_folders(tmp_path):
    """Seeded shiv caches, a cwd holding look-alike modules: none of it runs."""
    marker = tmp_path / "pwned"
    evil = "open(%r, 'w').write(__file__)\n" % str(marker)
    home = tmp_path / "home"
    for folder in (home / ".shiv", tmp_path / "shivroot", tmp_path / "cwd"):
        for sub in ("", "kubenetprobe.pyz_x/site-packages/"):
            package = folder / sub / "probe"
            package.mkdir(parents=True)
            (package / "__init__.py").write_text(evil)
            (package / "cli.py").write_text(evil)
        (folder / "_bootstrap.py").write_text(evil)
    env = dict(os.environ, HOME=str(home), SHIV_ROOT=str(tmp_path / "shivroot"))
    result = subprocess.run([sys.executable, PYZ, "--version"], cwd=str(tmp_path / "cwd"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("kubenetprobe ")
    assert not marker.exists(), "imported code from " + marker.read_text()


@pytest.mark.integration
def test_build_is_reproducible_across_folders(tmp_path):
    """Two builds of this tree in two folders give byte-identical files, equal to dist/'s."""
    outputs = []
    for name in ("a", "bb/deeper"):
        tree = tmp_path / name
        for part in ("bpf", "probe"):
            shutil.copytree(os.path.join(ROOT, part), str(tree / part),
                            ignore=shutil.ignore_patterns("__pycache__", "_bytecode"))
        for part in ("Makefile", "build_zipapp.py", "requirements-dev.txt"):
            shutil.copy(os.path.join(ROOT, part), str(tree / part))
        sh("make", "-C", str(tree), "build-ebpf")
        out = tree / "out.pyz"
        sh(sys.executable, str(tree / "build_zipapp.py"), "--output", str(out))
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    with open(PYZ, "rb") as f:
        assert f.read() == outputs[0]

