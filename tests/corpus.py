"""Real BPF objects nobody here wrote: those of Debian's libxdp1 package, downloaded (never installed) into a cache."""
import glob
import os
import shutil
import subprocess
import tempfile

CACHE = "/var/cache/kubenetprobe/libxdp1"
PACKAGE = "libxdp1"


def libxdp_objects():
    """Paths of the BPF objects libxdp1 ships, fetched with `apt-get download` and unpacked into CACHE once."""
    found = _objects(CACHE)
    if not found:
        _fetch()
        found = _objects(CACHE)
    assert found, "%s holds no BPF object" % CACHE
    return found


def _objects(root):
    return sorted(glob.glob(os.path.join(root, "usr", "lib", "*", "bpf", "*.o")))


def _fetch():
    os.makedirs(os.path.dirname(CACHE), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(CACHE)) as folder:
        # APT's download sandbox user cannot write to a folder of root's.
        download = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", PACKAGE]
        if subprocess.run(download, cwd=folder).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], check=True)  # no package lists yet
            subprocess.run(download, cwd=folder, check=True)
        unpacked = os.path.join(folder, "unpacked")
        subprocess.run(["dpkg", "-x"] + glob.glob(os.path.join(folder, "*.deb")) + [unpacked], check=True)
        # Whole or not at all: a half-unpacked cache would pass for a smaller package.
        shutil.rmtree(CACHE, ignore_errors=True)
        os.rename(unpacked, CACHE)
