#!/usr/bin/env python3
"""Build dist/kubenetprobe.pyz with shiv: the probe package and its compiled XDP object, byte-reproducible.

shiv lays out the archive (site-packages/, environment.json, _bootstrap/, __main__.py) and writes it
with sorted entries and fixed timestamps. Its stock bootstrap extracts site-packages to ~/.shiv before
running, which dies on a read-only HOME and trusts a cache folder someone else may have seeded; ours
imports the pure-Python package straight from the archive instead, writing nothing anywhere.

Imported from a zip, Python compiles every module at every start, so the archive also carries the
modules of a usual start (the command and the libbpf engine) compiled by the building Python:
hash-checked .pyc beside their .py, which shiv leaves out. That Python's version starts faster; every
other version, and the native loader's modules (used where libbpf is missing), read the sources. The
bytecode leaves out docstrings and column positions (-OO, -X no_debug_ranges): a third of its size.
The sources are packed as the bytecode sees them, without docstrings and comments (ast.unparse, so the
build needs Python 3.9+): a quarter less archive, and tracebacks still show the lines that ran.
"""
import ast
import argparse
import datetime
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from shiv import builder
from shiv import __version__ as shiv_version
from shiv.bootstrap.environment import Environment
from shiv.constants import BUILD_AT_TIMESTAMP_FORMAT, SOURCE_DATE_EPOCH_DEFAULT

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "probe"
OBJECT = PACKAGE / "_bytecode" / "kubenetprobe.bpf.o"
ENTRY_POINT = "probe.cli:main"
SHEBANG = "/usr/bin/env python3"

BOOTSTRAP = '''\
"""Run kubenetprobe from inside this archive: nothing is extracted or written, so a read-only HOME works
and no code is imported from a folder that another user could have written to."""
import sys


def bootstrap():
    sys.path.insert(0, sys.path[0] + "/site-packages")  # sys.path[0] is this archive
    from probe.cli import main

    sys.exit(main())
'''


def stage_package(site_packages):
    """Copy the runtime files of the package, and nothing else, with fixed modes."""
    checksum = OBJECT.with_name(OBJECT.name + ".sha256")
    if not OBJECT.exists() or not checksum.exists():
        sys.exit("build_zipapp: %s is missing; run `make build-ebpf` first" % OBJECT.relative_to(ROOT))
    expected = checksum.read_text().split()[0]
    if hashlib.sha256(OBJECT.read_bytes()).hexdigest() != expected:
        sys.exit("build_zipapp: %s does not match its .sha256; run `make build-ebpf`" % OBJECT.relative_to(ROOT))
    for source in sorted(PACKAGE.rglob("*.py")) + [OBJECT, checksum]:
        target = site_packages / source.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix == ".py":
            target.write_text(packed_source(source.read_text()))
        else:
            shutil.copyfile(str(source), str(target))
        os.chmod(str(target), 0o644)


def packed_source(text):
    """A module's source as -OO compiles it: docstrings and comments left out."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree) + "\n"


def build(output):
    """Write the zipapp to `output`."""
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH_DEFAULT))
    env = Environment(
        built_at=datetime.datetime.utcfromtimestamp(epoch).strftime(BUILD_AT_TIMESTAMP_FORMAT),
        shiv_version=shiv_version,
        entry_point=ENTRY_POINT,
        compile_pyc=False,
        reproducible=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        site_packages = Path(tmp, "site-packages")
        stage_package(site_packages)
        bootstrap = Path(tmp, "bootstrap.py")
        bootstrap.write_text(BOOTSTRAP)
        os.chmod(str(bootstrap), 0o644)
        # shiv's one hook for what goes into _bootstrap/: hand it ours instead of its extracting one.
        builder.iter_package_files = lambda package: [(bootstrap, "__init__.py")]
        output.parent.mkdir(parents=True, exist_ok=True)
        builder.create_archive([site_packages], target=output, interpreter=SHEBANG,
                               main="_bootstrap:bootstrap", env=env, compressed=True)
        add_bytecode(output, site_packages, Path(tmp, "pyc"), time.gmtime(epoch)[:6])
    os.chmod(str(output), 0o755)


# Run in the staged site-packages: import what a usual start imports (the command and the libbpf engine),
# compile each of those modules into the folder argv[1], and print their paths.
COMPILE_START_MODULES = """
import os, py_compile, sys
sys.path.insert(0, ".")
import probe.cli, probe.bpf.libbpf
for name in sorted(m for m in sys.modules if m == "probe" or m.startswith("probe.")):
    path = os.path.relpath(sys.modules[name].__file__)
    py_compile.compile(path, cfile=os.path.join(sys.argv[1], path + "c"), dfile=path, doraise=True, optimize=2,
                       invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    print(path)
"""


def add_bytecode(output, site_packages, scratch, date_time):
    """Append a hash-checked .pyc of each module of a usual start, compiled by this Python, beside its source."""
    names = subprocess.run([sys.executable, "-I", "-B", "-X", "no_debug_ranges", "-c", COMPILE_START_MODULES,
                            str(scratch)], cwd=str(site_packages), check=True, stdout=subprocess.PIPE,
                           universal_newlines=True).stdout.split()
    with zipfile.ZipFile(str(output), "a", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            compiled = scratch / (name + "c")
            info = zipfile.ZipInfo("site-packages/" + name[:-3] + ".pyc", date_time=date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16
            archive.writestr(info, compiled.read_bytes())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "dist" / "kubenetprobe.pyz")
    args = parser.parse_args()
    build(args.output)
    print("%s: %d bytes, sha256 %s" % (args.output, args.output.stat().st_size,
                                       hashlib.sha256(args.output.read_bytes()).hexdigest()))


if __name__ == "__main__":
    main()
