#!/usr/bin/env python3
"""Build dist/kubenetprobe-image.tar: an OCI image of kubenetprobe.pyz on a minimal Python from Debian packages.

The packages (Debian 12's Python 3.11, its libc and the libraries the probe opens: libffi for ctypes,
libbpf with libelf and zlib) are fetched with `apt-get download` into /var/cache/kubenetprobe/image/debs
and unpacked with `dpkg-deb -x` into a root filesystem: no maintainer script runs, and nothing else comes
in, so the image has no shell and no package manager. What the probe never uses (documentation, locales,
gconv, tests, tkinter, extension modules whose libraries are left out) is pruned, the standard library is
compiled once (the root is read-only at run time), and `podman build` makes the root the one layer of an
image FROM scratch, with fixed file times and creation time: the same inputs give the same image id. The
image is saved as an OCI archive and cached by a hash of what went into it: the .deb files, the pyz and
this script. Needs root (chroot, podman).
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("KUBENETPROBE_IMAGE_CACHE", "/var/cache/kubenetprobe/image"))
NAME = "localhost/kubenetprobe"
PYTHON = "python3.11"  # Debian 12's
PACKAGES = ("libc6", "zlib1g", "libexpat1", "libffi8", PYTHON + "-minimal", "lib%s-minimal" % PYTHON,
            "lib%s-stdlib" % PYTHON, "libelf1", "libbpf1")
EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", 315532800))  # the time every file of the layer carries
LIB = "usr/lib/" + PYTHON
PRUNE = (
    "usr/share", "usr/lib/x86_64-linux-gnu/gconv", "usr/lib/x86_64-linux-gnu/audit", LIB + "/test", LIB + "/idlelib", LIB + "/tkinter", LIB + "/turtledemo",
    LIB + "/turtle.py", LIB + "/ensurepip", LIB + "/lib2to3", LIB + "/pydoc_data", LIB + "/distutils",
    LIB + "/sqlite3", LIB + "/dbm", LIB + "/curses", LIB + "/config-3.11-x86_64-linux-gnu",
    LIB + "/site-packages", LIB + "/dist-packages",
    # Tests, and the modules whose libraries (libssl, libsqlite3, ncurses, readline, bz2, lzma, libcrypt,
    # libdb, libnsl) the image leaves out: hashlib takes its built-in SHA-256 without libssl.
    LIB + "/lib-dynload/_test*", LIB + "/lib-dynload/_ctypes_test*", LIB + "/lib-dynload/xx*",
    LIB + "/lib-dynload/_xx*", LIB + "/lib-dynload/_ssl*", LIB + "/lib-dynload/_hashlib*",
    LIB + "/lib-dynload/_sqlite3*", LIB + "/lib-dynload/_curses*", LIB + "/lib-dynload/readline*",
    LIB + "/lib-dynload/_bz2*", LIB + "/lib-dynload/_lzma*", LIB + "/lib-dynload/_crypt*",
    LIB + "/lib-dynload/_dbm*", LIB + "/lib-dynload/nis*",
)


def sh(*cmd, **kwargs):
    """Run a command; exit naming it and its output if it fails."""
    result = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    if result.returncode != 0:
        sys.exit("build_image: %s failed: %s" % (" ".join(map(str, cmd)), result.stderr.decode().strip()))
    return result.stdout


def version():
    """The probe's version, the image's tag."""
    text = (ROOT / "probe" / "__init__.py").read_text()
    return next(line.split('"')[1] for line in text.splitlines() if line.startswith("__version__"))


def fetch(debs):
    """The .deb files of PACKAGES at apt's candidate versions, downloaded into `debs` unless already there."""
    debs.mkdir(parents=True, exist_ok=True)
    wanted = []
    for package in PACKAGES:
        show = sh("apt-cache", "show", "--no-all-versions", package).decode()
        fields = dict(line.split(": ", 1) for line in show.splitlines() if line[:1].strip() and ": " in line)
        # As apt-get download names it: the epoch's colon quoted.
        wanted.append(debs / ("%s_%s_%s.deb" % (package, fields["Version"].replace(":", "%3a"),
                                                  fields["Architecture"])))
    missing = [package for package, deb in zip(PACKAGES, wanted) if not deb.exists()]
    if missing:
        sh("apt-get", "download", "-q", *missing, cwd=str(debs))
    for deb in wanted:
        if not deb.exists():
            sys.exit("build_image: apt-get download left no %s (run `apt-get update`)" % deb.name)
    return wanted


def build_key(debs, pyz):
    """The hash of everything the image is made from."""
    digest = hashlib.sha256()
    for path in sorted(debs) + [pyz, Path(__file__)]:
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def make_root(root, debs, pyz):
    """Unpack the packages into `root`, prune it, compile the standard library and add the pyz."""
    for deb in debs:
        sh("dpkg-deb", "-x", str(deb), str(root))
    for pattern in PRUNE:
        for path in root.glob(pattern):
            shutil.rmtree(str(path)) if path.is_dir() and not path.is_symlink() else path.unlink()
    (root / "usr/bin/python3").symlink_to(PYTHON)
    for mount_point in ("proc", "sys", "dev", "etc", "tmp", "run"):
        (root / mount_point).mkdir(exist_ok=True)
    # The root is read-only at run time: without compiled modules every start would compile what it imports.
    sh("chroot", str(root), "/usr/bin/python3", "-m", "compileall", "-q",
       "--invalidation-mode", "unchecked-hash", "/" + LIB, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    shutil.copyfile(str(pyz), str(root / "kubenetprobe.pyz"))
    os.chmod(str(root / "kubenetprobe.pyz"), 0o644)


CONTAINERFILE = """FROM scratch
ADD root.tar /
ENV PATH=/usr/bin
WORKDIR /
LABEL org.opencontainers.image.title=kubenetprobe org.opencontainers.image.version=%s
ENTRYPOINT ["/usr/bin/python3", "/kubenetprobe.pyz"]
"""


def make_image(root, work, archive, tag):
    """Build `root` into a one-layer image named `tag` and save it as an OCI archive, in a container store of its
    own under `work` (podman's store and the images in it are left alone)."""
    context = work / "context"
    context.mkdir()
    sh("tar", "-C", str(root), "--sort=name", "--mtime=@%d" % EPOCH, "--owner=0", "--group=0", "--numeric-owner",
       "-cf", str(context / "root.tar"), ".")
    (context / "Containerfile").write_text(CONTAINERFILE % tag.split(":")[-1])
    with tempfile.TemporaryDirectory(prefix="knp-run-") as run:  # podman wants a run root of 50 characters at most
        podman = ["podman", "--root", str(work / "store"), "--runroot", run, "--storage-driver", "vfs"]
        # --timestamp: the image's creation time and its files' times fixed: the same inputs give the same image id.
        sh(*podman, "build", "--quiet", "--no-cache", "--timestamp", str(EPOCH), "--tag", tag, str(context))
        sh(*podman, "save", "--quiet", "--format", "oci-archive", "-o", str(archive), tag)


def build(pyz, output):
    """Write the image archive to `output`, from the cache when nothing it is made from changed."""
    if not pyz.exists():
        sys.exit("build_image: %s is missing; run `make build` first" % pyz)
    debs = fetch(CACHE / "debs")
    cached = CACHE / ("kubenetprobe-image-%s.tar" % build_key(debs, pyz))
    if not cached.exists():
        with tempfile.TemporaryDirectory(prefix=".build-", dir=str(CACHE)) as tmp:
            root = Path(tmp, "root")
            root.mkdir(mode=0o755)
            make_root(root, debs, pyz)
            partial = Path(tmp, "image.tar")
            make_image(root, Path(tmp), partial, "%s:%s" % (NAME, version()))
            os.rename(str(partial), str(cached))
        for old in CACHE.glob("kubenetprobe-image-*.tar"):  # one image cached, the latest
            if old != cached:
                old.unlink()
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(str(cached), str(output))
    return cached


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyz", type=Path, default=ROOT / "dist" / "kubenetprobe.pyz")
    parser.add_argument("--output", type=Path, default=ROOT / "dist" / "kubenetprobe-image.tar")
    args = parser.parse_args()
    cached = build(args.pyz, args.output)
    print("%s: %s:%s, %.1f MB (cached as %s)" % (args.output, NAME, version(), args.output.stat().st_size / 1e6,
                                                 cached))


if __name__ == "__main__":
    main()
