"""`kubenetprobe inspect`: what an object holds, checked against llvm-readelf, bpftool and libbpf's own reader;
and each loader's verdict, checked against what a load really says."""
import ctypes
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import OBJECT, PYZ, ROOT, bpf_source, compile_bpf, tool
from corpus import libxdp_objects
from probe import layout
from probe.bpf.constants import MAP_TYPES
from probe.bpf.libbpf import LibbpfEngine
from probe.bpf.native import NativeEngine
from probe.errors import ObjectError
from probe.inspect import describe, format_text

# Test objects built from tests/bpf/, each using something of its own.
SOURCES = ("global_data.bpf.c", "calls.bpf.c", "core_read.bpf.c", "kconfig_extern.bpf.c", "pinned_map.bpf.c",
           "tc.bpf.c", "xdp_sections.bpf.c", "several_programs_and_maps.bpf.c")


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    """{name: path} of the project's object, the libxdp1 corpus and the objects built from tests/bpf/."""
    folder = tmp_path_factory.mktemp("inspect")
    found = {"kubenetprobe.bpf.o": OBJECT}
    found.update((os.path.basename(path), path) for path in libxdp_objects())
    found.update((name, str(compile_bpf(folder, bpf_source(name)))) for name in SOURCES)
    return found


@pytest.fixture(scope="module")
def described(objects):
    out = {}
    for name, path in sorted(objects.items()):
        with open(path, "rb") as f:
            out[name] = describe(f.read())
    return out


def readelf(path, *flags):
    return subprocess.run([tool("llvm-readelf"), "--wide"] + list(flags) + [path], stdout=subprocess.PIPE,
                          universal_newlines=True, check=True).stdout


def section_sizes(path):
    """{name: size} from llvm-readelf's section headers."""
    # [Nr] Name Type Address Off Size ...
    found = re.findall(r"^\s*\[\s*\d+\] (\S+)\s+\S+\s+[0-9a-f]+ [0-9a-f]+ ([0-9a-f]+) ", readelf(path, "-S"), re.M)
    return {name: int(size, 16) for name, size in found}


def function_symbols(path):
    """{name: (size, section index)} of the FUNC symbols, from llvm-readelf."""
    out = {}
    for line in readelf(path, "-s").splitlines():
        fields = line.split()
        if len(fields) == 8 and fields[3] == "FUNC":
            out[fields[7]] = (int(fields[2]), fields[6])
    return out


def libbpf_maps(engine, data):
    """{name: (type, key size, value size, max entries, flags)} of the maps as libbpf opens the object."""
    buffer = ctypes.create_string_buffer(data, len(data))
    obj = engine._open(buffer)
    lib = engine.lib
    try:
        return {lib.bpf_map__name(m).decode(): (MAP_TYPES[lib.bpf_map__type(m)], lib.bpf_map__key_size(m),
                                                lib.bpf_map__value_size(m), lib.bpf_map__max_entries(m),
                                                lib.bpf_map__map_flags(m))
                for m in engine._iterate("next_map", obj)}
    finally:
        lib.bpf_object__close(obj)


def test_every_object_is_described(described, objects):
    assert set(described) == set(objects) and len(objects) >= 20


def test_programs_match_llvm_readelf(described, objects):
    """Each program is a function symbol of its section; its instructions are its own and its callees'."""
    for name, info in described.items():
        functions = function_symbols(objects[name])
        sections = section_sizes(objects[name])
        for p in info["programs"]:
            assert p["section"] in sections, (name, p)
            own = functions[p["name"]][0]
            callees = sum(functions[s][0] for s in p["subprograms"])
            assert p["instructions"] * 8 == own + callees, (name, p)


def test_global_data_matches_section_sizes(described, objects):
    for name, info in described.items():
        sizes = section_sizes(objects[name])
        for d in info["global_data"]:
            assert d["size"] == sizes[d["section"]], (name, d)
            assert d["read_only"] == d["section"].startswith(".rodata"), (name, d)
    assert {d["section"] for d in described["global_data.bpf.c"]["global_data"]} >= {".data", ".rodata", ".bss"}


def test_maps_match_bpftool_and_libbpf(described, objects):
    """Map names are the `.maps` DATASEC's variables as bpftool reads the BTF; their attributes are what
    libbpf's own reader makes of them."""
    engine = LibbpfEngine()
    for name, info in described.items():
        dump = json.loads(subprocess.run([tool("bpftool"), "-j", "btf", "dump", "file", objects[name]],
                                         stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout)
        types = {t["id"]: t for t in dump["types"]}
        datasecs = [t for t in dump["types"] if t["kind"] == "DATASEC" and t["name"] == ".maps"]
        declared = sorted(types[v["type_id"]]["name"] for d in datasecs for v in d["vars"])
        assert sorted(m["name"] for m in info["maps"]) == declared, name
        with open(objects[name], "rb") as f:
            opened = libbpf_maps(engine, f.read())
        for m in info["maps"]:
            assert (m["type"], m["key_size"], m["value_size"], m["max_entries"], m["flags"]) == \
                opened[m["name"]], (name, m)


def test_pinning_core_relocations_and_externs_are_listed(described):
    assert {m["name"]: m["pinning"] for m in described["pinned_map.bpf.c"]["maps"]} == \
        {"pinned_counts": "by_name", "plain": "none"}
    relocations = described["core_read.bpf.c"]["core_relocations"]
    assert relocations and all(r["type"] and r["kind"] and r["access"] for r in relocations)
    assert [(e["name"], e["kind"]) for e in described["kconfig_extern.bpf.c"]["externs"]] == \
        [("CONFIG_DOES_NOT_EXIST", "kconfig")]
    assert described["calls.bpf.c"]["programs"][0]["subprograms"]


@pytest.mark.integration
def test_native_verdict_is_what_a_load_says(described, objects):
    """Where inspect says the native loader cannot load an object, a load fails with that very message;
    where it says it can, the load gets past every check of the object (the kernel may still refuse)."""
    engine = NativeEngine()
    for name, info in sorted(described.items()):
        with open(objects[name], "rb") as f:
            data = f.read()
        verdict = info["loaders"]["native"]
        try:
            engine.load_bytes(data).close()
        except ObjectError as e:
            assert not verdict["loads"] and str(e) == verdict["reason"], (name, verdict, str(e))
        except Exception as e:  # noqa: B902 - the kernel's refusal, past the checks
            assert verdict["loads"], (name, verdict, e)
        else:
            assert verdict["loads"], (name, verdict)
    refused = {name for name, info in described.items() if not info["loaders"]["native"]["loads"]}
    assert {"core_read.bpf.c", "kconfig_extern.bpf.c"} <= refused
    assert "CO-RE" in described["core_read.bpf.c"]["loaders"]["native"]["reason"]


def test_libbpf_verdict(described):
    assert all(info["loaders"]["libbpf"]["loads"] for info in described.values())


def test_text_shows_each_part(described):
    text = format_text("global_data.bpf.o", described["global_data.bpf.c"])
    lines = text.splitlines()
    assert lines[0].startswith("global_data.bpf.o: BPF object, little-endian, license ")
    for header in ("programs", "maps", "global data", "CO-RE relocations: none", "externs: none", "loaders"):
        assert any(line.startswith(header) for line in lines), header
    assert any(".rodata" in line and "read-only" in line for line in lines)
    assert any(line.split()[:2] == ["native", "loads"] for line in lines)


def run_pyz(*args):
    return subprocess.run([sys.executable, PYZ] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, cwd=ROOT)


def test_command_prints_json(built_pyz, objects):
    result = run_pyz("inspect", objects["kubenetprobe.bpf.o"], "--json")
    assert result.returncode == 0 and result.stderr == ""
    info = json.loads(result.stdout)
    assert sorted(p["name"] for p in info["programs"]) == ["kubenetprobe_in", "kubenetprobe_ip", "kubenetprobe_rx",
                                                          "kubenetprobe_tp", "kubenetprobe_tx", "kubenetprobe_xp"]
    assert sorted(m["name"] for m in info["maps"]) == sorted(layout.MAPS + layout.PEER_MAPS)


def test_command_refuses_a_damaged_object_in_one_line(built_pyz, tmp_path):
    path = tmp_path / "damaged.o"
    with open(OBJECT, "rb") as f:
        path.write_bytes(f.read()[:300])
    result = run_pyz("inspect", str(path))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("kubenetprobe: error: %s: " % path) and result.stderr.count("\n") == 1
