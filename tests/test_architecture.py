"""The layout is the architecture: the BPF library stands alone, and its parsers load no ctypes."""
import ast
import os
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "probe")
TESTS = os.path.join(ROOT, "tests")
# What each layer may import from the probe besides itself: the library only the leaf module probe.errors.
LEAVES = {"probe", "probe.errors"}
ALLOWED = {
    "bpf": LEAVES,
    "net": LEAVES,
    "attach": LEAVES | {"probe.bpf", "probe.net"},
}


def modules(layer):
    folder = os.path.join(PACKAGE, layer)
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".py"))


def imports(path):
    """Every module a source file imports, at any depth (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.update([node.module] + ["%s.%s" % (node.module, alias.name) for alias in node.names])
    return found


def probe_imports(path):
    """Every probe module a source file imports, at any depth (function-level imports too)."""
    return {n for n in imports(path) if n == "probe" or n.startswith("probe.")}


def imported_test_modules(path):
    """The test modules (test_*) a source file imports, at any depth."""
    return sorted({n.split(".")[0] for n in imports(path) if n.startswith("test_")})


def outside(imports, layer, allowed):
    own = "probe." + layer
    return sorted(n for n in imports if n != own and not n.startswith(own + ".") and
                  not any(n == a or n.startswith(a + ".") and a != "probe" for a in allowed))


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_nothing_above_it(layer):
    """probe/bpf and probe/net import only themselves and probe.errors; probe/attach adds those two."""
    bad = {os.path.relpath(path, ROOT): outside(probe_imports(path), layer, ALLOWED[layer])
           for path in modules(layer)}
    assert {path: names for path, names in bad.items() if names} == {}


def test_leaves_import_nothing_of_the_probe():
    for name in ("errors.py", os.path.join("bpf", "log.py")):
        assert probe_imports(os.path.join(PACKAGE, name)) == set()


def test_scan_sees_an_application_import(tmp_path):
    """The scan itself: a library module importing the monitor is caught, at any depth."""
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from probe.monitor import NetworkMonitor\n    import probe.layout\n")
    assert outside(probe_imports(str(path)), "bpf", ALLOWED["bpf"]) == ["probe.layout", "probe.monitor",
                                                                         "probe.monitor.NetworkMonitor"]


def test_no_test_module_imports_another():
    """Test modules share helpers through conftest.py and helper modules (netns.py, exposition.py, podman.py...),
    never by importing one another."""
    found = {}
    for name in sorted(os.listdir(TESTS)):
        if name.startswith("test_") and name.endswith(".py"):
            found[name] = imported_test_modules(os.path.join(TESTS, name))
    assert {name: modules for name, modules in found.items() if modules} == {}


def test_scan_sees_a_test_module_import(tmp_path):
    """The scan itself: a test module imported, at any depth, in either form, is caught; helpers are not."""
    path = tmp_path / "test_x.py"
    path.write_text("import netns\nfrom exposition import parse\n\n\ndef f():\n"
                    "    from test_metrics import parse\n    import test_pods.sub\n")
    assert imported_test_modules(str(path)) == ["test_metrics", "test_pods"]


def test_spec_loads_no_ctypes():
    """Reading an object's spec (as `inspect` does) costs no ctypes, no bpf(2) layer, no application."""
    code = ("import sys; import probe.bpf.spec; "
            "print(sorted(m for m in sys.modules if m == 'ctypes' or m.startswith('probe')))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            universal_newlines=True, check=True).stdout
    assert eval(loaded) == ["probe", "probe.bpf", "probe.bpf.btf", "probe.bpf.constants", "probe.bpf.elf",
                            "probe.bpf.spec", "probe.errors"]
