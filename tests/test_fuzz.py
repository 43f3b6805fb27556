"""Damaged objects through the readers and `inspect`: only ProbeError, never a hang, memory bounded.

A bounded number of mutations of real objects, the same every run (seeded); `make fuzz` runs atheris
(libFuzzer) on the same path for as long as it is given.
"""
import random
import resource
import struct

import pytest

from conftest import OBJECT, bpf_source, compile_bpf, guarded
from probe.bpf import btf, elf
from probe.inspect import describe, format_text

MUTATIONS = 300  # per object and region set: a few seconds in all
MAX_GROWTH_KB = 64 * 1024  # what the whole run may add to the process's peak memory


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """The project's object and objects with global data, calls, pinning, CO-RE and map values: more to damage."""
    folder = tmp_path_factory.mktemp("fuzz")
    with open(OBJECT, "rb") as f:
        found = [f.read()]
    for name, defines in (("global_data.bpf.c", ""), ("calls.bpf.c", ""), ("pinned_map.bpf.c", ""),
                          ("core_read.bpf.c", ""), ("unsupported.bpf.c", "#define PROG_ARRAY_VALUES\n")):
        found.append(compile_bpf(folder, defines + bpf_source(name)).read_bytes())
    return found


def mutations(data, regions, count, seed):
    """`count` copies of data, each with 1-4 bytes or 32-bit fields overwritten inside the regions."""
    rng = random.Random(seed)
    for _ in range(count):
        blob = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            start, end = rng.choice(regions)
            at = rng.randrange(start, end)
            if rng.random() < 0.3 and at + 4 <= len(blob):
                struct.pack_into("<I", blob, at, rng.choice((0, 0xffffffff, 0x7fffffff, rng.getrandbits(32))))
            else:
                blob[at] = rng.getrandbits(8)
        yield bytes(blob)


def parsed_regions(data):
    """Where the readers look: the ELF header, section headers, symbols, strings, BTF, .BTF.ext, relocations."""
    f = elf.ElfFile(data)
    regions = [(0, elf.EHDR_SIZE), (f.header.e_shoff, f.header.e_shoff + f.header.e_shnum * elf.SHDR_SIZE)]
    for section in f.sections:
        if section.size and (section.type in (elf.SHT_SYMTAB, elf.SHT_STRTAB, elf.SHT_REL)
                             or section.name in (".BTF", ".BTF.ext", ".maps", "license")):
            regions.append((section.offset, section.offset + section.size))
    return regions


def inspected(blob):
    return format_text("fuzzed.o", describe(blob, libbpf=False))


def test_mutated_objects_give_only_probe_errors(seeds):
    """Byte flips and field overwrites anywhere, and where the readers look: a description or a ProbeError."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = {"described": 0, "refused": 0}
    for number, data in enumerate(seeds):
        for regions in ([(0, len(data))], parsed_regions(data)):
            for blob in mutations(data, regions, MUTATIONS // 2, seed=number * 1000 + len(regions)):
                text, error = guarded(inspected, blob)
                assert error is not None or text.startswith("fuzzed.o: BPF object")
                outcomes["described" if error is None else "refused"] += 1
    assert outcomes["refused"] > len(seeds) * MUTATIONS // 10  # the damage did reach the readers
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < MAX_GROWTH_KB


def test_truncations_give_only_probe_errors(seeds):
    for data in seeds:
        for length in list(range(0, len(data), 97)) + [len(data) - 1]:
            guarded(inspected, data[:length])


def test_btf_damage_gives_only_probe_errors(seeds):
    """The BTF alone, damaged and walked type by type as the readers walk it."""
    f = elf.ElfFile(seeds[0])
    raw = f.section_data(f.section_by_name(".BTF"))

    def parse_and_walk(blob):
        types = btf.parse_btf(blob)
        for t in types.types[1:]:
            guarded(types.size_of, t.id)
        return types

    for blob in mutations(raw, [(0, len(raw))], MUTATIONS, seed=7):
        guarded(parse_and_walk, blob)
