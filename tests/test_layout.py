"""probe/layout.py, the one mirror of bpf/kubenetprobe.h: checked against the object's BTF as bpftool reads it,
its program names against the object's programs; per-CPU values summed by decode_stats, and how many there are
(possible_cpus). No privileges."""
import json
import struct
import subprocess

import pytest

from conftest import OBJECT, tool
from probe import layout
from probe.bpf import constants, objects, spec

BPF_OBJ_NAME_LEN = 16  # linux/bpf.h: the kernel keeps 15 characters of a program's name
# hook -> (section, program type): TC programs in SEC("classifier"), which libbpf 0.3 knows and SEC("tc") is not.
HOOK_SECTIONS = {"xdp": ("xdp", constants.BPF_PROG_TYPE_XDP),
                 "tc": ("classifier", constants.BPF_PROG_TYPE_SCHED_CLS)}


@pytest.fixture(scope="module")
def btf():
    """The object's BTF types by id, as bpftool dumps them (raw format, JSON)."""
    out = subprocess.run([tool("bpftool"), "-j", "btf", "dump", "file", OBJECT, "format", "raw"],
                         check=True, capture_output=True, text=True).stdout
    return {t["id"]: t for t in json.loads(out)["types"]}


def named(btf, kind, name):
    """The one BTF type of this kind and name."""
    found = [t for t in btf.values() if t["kind"] == kind and t["name"] == name]
    assert len(found) == 1, "%d BTF %s types named %s" % (len(found), kind, name)
    return found[0]


def resolve(btf, type_id):
    """The type behind a type id, through typedefs and qualifiers."""
    t = btf[type_id]
    while t["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT"):
        t = btf[t["type_id"]]
    return t


def members(btf, struct_type):
    """{member name: (byte offset, resolved type)} of a BTF struct."""
    return {m["name"]: (m["bits_offset"] // 8, resolve(btf, m["type_id"])) for m in struct_type["members"]}


def test_btf_knp_counter_is_two_u64_packets_then_bytes(btf):
    """struct knp_counter is 16 bytes: __u64 packets at 0, __u64 bytes at 8 (a "QQ" pair in layout.STATS)."""
    counter = named(btf, "STRUCT", "knp_counter")
    assert counter["size"] == struct.calcsize("=QQ")
    fields = members(btf, counter)
    assert sorted(fields) == ["bytes", "packets"]
    assert (fields["packets"][0], fields["bytes"][0]) == (0, 8)
    for _, t in fields.values():
        assert (t["kind"], t["size"], t["encoding"]) == ("INT", 8, "(none)")  # unsigned 64-bit


def test_btf_knp_stats_matches_layout(btf):
    """struct knp_stats is l3[len(L3)] then l4[len(L4)] knp_counters, layout.STATS.size bytes in all."""
    stats = named(btf, "STRUCT", "knp_stats")
    counter = named(btf, "STRUCT", "knp_counter")
    assert stats["size"] == layout.STATS.size
    fields = members(btf, stats)
    assert sorted(fields) == ["l3", "l4"]
    for name, offset, length in [("l3", 0, len(layout.L3)), ("l4", len(layout.L3) * counter["size"], len(layout.L4))]:
        at, array = fields[name]
        assert at == offset, name
        assert array["kind"] == "ARRAY" and array["nr_elems"] == length, name
        assert resolve(btf, array["type_id"]) is counter, name


def test_stats_key_is_slot_then_direction():
    """The stats map's key is KNP_STATS_KEY(slot, direction), slot * 2 + direction, a __u32: layout.KEY, "=I"."""
    assert layout.KEY.size == layout.SLOT.size == struct.calcsize("=I")
    assert layout.key(7, "tx") == struct.pack("=I", 7 * 2 + layout.DIRECTIONS.index("tx"))
    assert layout.key(1, "rx") == struct.pack("=I", 2)


def map_fields(btf, name):
    fields = members(btf, resolve(btf, named(btf, "VAR", name)["type_id"]))

    def pointee(field):  # __uint(name, N) is int (*name)[N]; __type(name, T) is T *name
        return resolve(btf, fields[field][1]["type_id"])
    return fields, pointee


def assert_u32(t):
    assert (t["kind"], t["size"], t["encoding"]) == ("INT", 4, "(none)")  # unsigned 32-bit


def test_btf_stats_map_matches_layout(btf):
    """Map knp_stats: a per-CPU array (what decode_stats sums), room for MAX_INTERFACES slots after slot 0, a key
    per direction, __u32 keys, knp_stats values."""
    fields, pointee = map_fields(btf, layout.STATS_MAP)
    assert "map_flags" not in fields
    assert pointee("type")["nr_elems"] == layout.STATS_MAP_TYPE == constants.BPF_MAP_TYPE_PERCPU_ARRAY
    assert pointee("max_entries")["nr_elems"] == layout.MAX_ENTRIES == (layout.MAX_INTERFACES + 1) * len(
        layout.DIRECTIONS)
    assert_u32(pointee("key"))
    assert pointee("value") is named(btf, "STRUCT", "knp_stats")


def test_btf_slots_map_matches_layout(btf):
    """Map knp_slots: an array (not per-CPU), ifindex (__u32) -> slot (__u32), room for MAX_IFINDEX ifindexes."""
    fields, pointee = map_fields(btf, layout.SLOTS_MAP)
    assert "map_flags" not in fields
    assert pointee("type")["nr_elems"] == layout.SLOTS_MAP_TYPE == constants.BPF_MAP_TYPE_ARRAY
    assert pointee("max_entries")["nr_elems"] == layout.MAX_IFINDEX == 1 << 20
    assert_u32(pointee("key"))
    assert_u32(pointee("value"))


def test_btf_functions_are_the_layout_programs(btf):
    """The object's global functions, its programs, are the ones layout.PROGRAMS and PEER_PROGRAMS name: no
    more, no fewer."""
    functions = sorted(t["name"] for t in btf.values() if t["kind"] == "FUNC" and t["linkage"] == "global")
    assert functions == sorted(list(layout.PROGRAMS.values()) + list(layout.PEER_PROGRAMS.values()))


def test_program_names_are_whole_distinct_and_the_owners():
    """Each name starts with layout.OWNER (how detach finds the probe's programs) and fits the kernel's 15
    characters, so bpftool shows it whole and no two programs look alike there."""
    names = list(layout.PROGRAMS.values()) + list(layout.PEER_PROGRAMS.values())
    assert len(set(names)) == len(names)
    for name in names:
        assert name.startswith(layout.OWNER + "_")
        assert len(name) < BPF_OBJ_NAME_LEN, name
    assert layout.PROGRAM == layout.PROGRAMS["rx", "xdp"]


def test_programs_are_of_their_hooks_type():
    """Each (direction, hook) of layout.PROGRAMS names a program of the hook's section and type in the object, for
    a direction the stats map has."""
    with open(OBJECT, "rb") as f:
        programs = spec.read_object(f.read()).programs
    for (direction, hook), name in layout.PROGRAMS.items():
        assert direction in layout.DIRECTIONS
        assert (programs[name].section, programs[name].prog_type) == HOOK_SECTIONS[hook]


def test_decode_stats_sums_every_cpu():
    """decode_stats adds each CPU's (packets, bytes) pairs, l3 then l4, and totals the l3 classes."""
    # Field i of CPU c holds (i + 1) * 10**c: over three CPUs each field sums to (i + 1) * 111.
    stats = layout.decode_stats([struct.pack("=18Q", *[(i + 1) * 10 ** cpu for i in range(18)]) for cpu in range(3)])
    assert stats["l3"] == {"ipv4": {"packets": 111, "bytes": 222}, "ipv6": {"packets": 333, "bytes": 444},
                           "arp": {"packets": 555, "bytes": 666}, "other": {"packets": 777, "bytes": 888}}
    assert stats["l4"] == {"tcp": {"packets": 999, "bytes": 1110}, "udp": {"packets": 1221, "bytes": 1332},
                           "icmp": {"packets": 1443, "bytes": 1554}, "icmpv6": {"packets": 1665, "bytes": 1776},
                           "other": {"packets": 1887, "bytes": 1998}}
    assert (stats["packets"], stats["bytes"]) == (111 + 333 + 555 + 777, 222 + 444 + 666 + 888)


def test_decode_stats_refuses_a_short_value():
    """A CPU's value shorter than one knp_stats is an error, not a silent partial sum."""
    with pytest.raises(ValueError):
        layout.decode_stats([bytes(layout.STATS.size), bytes(layout.STATS.size - 1)])


@pytest.mark.parametrize("text, count", [("0-3\n", 4), ("0,2-3\n", 3), ("0\n", 1), ("0-1,4-7\n", 6)])
def test_possible_cpus_parses_cpu_lists(tmp_path, text, count):
    """possible_cpus counts the CPUs of a sysfs CPU list: ranges and single CPUs, comma-separated."""
    path = tmp_path / "possible"
    path.write_text(text)
    assert objects.possible_cpus(str(path)) == count


def test_btf_peer_key_matches_layout(btf):
    """struct knp_peer_key is layout.PEER_KEY: __u32 id at 0, 16 address bytes at 4, 20 bytes, no padding."""
    key = named(btf, "STRUCT", "knp_peer_key")
    fields = members(btf, key)
    assert key["size"] == layout.PEER_KEY.size == 20
    assert fields["id"][0] == 0
    assert_u32(fields["id"][1])
    assert fields["addr"][0] == 4 and fields["addr"][1]["kind"] == "ARRAY" and fields["addr"][1]["nr_elems"] == 16


def test_btf_peer_entry_and_conf_match_layout(btf):
    """struct knp_peer is layout.PEER: 16 address bytes at 0, __u32 id at 16, the counter at 24, 40 bytes; struct
    knp_peer_conf is layout.PEER_CONF: __u32 live, mask, seed."""
    peer = named(btf, "STRUCT", "knp_peer")
    fields = members(btf, peer)
    assert peer["size"] == layout.PEER.size == 40
    assert fields["addr"][0] == 0 and fields["addr"][1]["nr_elems"] == 16
    assert fields["id"][0] == 16
    assert_u32(fields["id"][1])
    assert fields["counter"][0] == 24 and fields["counter"][1] is named(btf, "STRUCT", "knp_counter")
    conf = named(btf, "STRUCT", "knp_peer_conf")
    fields = members(btf, conf)
    assert conf["size"] == layout.PEER_CONF.size == 12
    assert [fields[name][0] for name in ("live", "mask", "seed")] == [0, 4, 8]
    for name in ("live", "mask", "seed"):
        assert_u32(fields[name][1])


def test_btf_peer_maps_match_layout(btf):
    """The peer tables: per-CPU arrays of knp_peer, KNP_PEER_TABLE_DEFAULT entries as declared (twice the peers
    kept); the conf map one knp_peer_conf; `other` keyed like the stats map; the base a hash not preallocated."""
    for name in layout.PEER_TABLES:
        fields, pointee = map_fields(btf, name)
        assert pointee("type")["nr_elems"] == layout.PEER_TABLE_TYPE == constants.BPF_MAP_TYPE_PERCPU_ARRAY
        assert pointee("max_entries")["nr_elems"] == layout.PEER_TABLE_DEFAULT == 2 * layout.PEERS_DEFAULT
        assert_u32(pointee("key"))
        assert pointee("value") is named(btf, "STRUCT", "knp_peer")
    fields, pointee = map_fields(btf, layout.PEER_CONF_MAP)
    assert pointee("type")["nr_elems"] == constants.BPF_MAP_TYPE_ARRAY and pointee("max_entries")["nr_elems"] == 1
    assert pointee("value") is named(btf, "STRUCT", "knp_peer_conf")
    fields, pointee = map_fields(btf, layout.PEER_OTHER_MAP)
    assert pointee("type")["nr_elems"] == layout.PEER_OTHER_TYPE
    assert pointee("max_entries")["nr_elems"] == layout.MAX_ENTRIES
    assert_u32(pointee("key"))
    fields, pointee = map_fields(btf, layout.PEER_BASE_MAP)
    assert pointee("type")["nr_elems"] == layout.PEER_BASE_TYPE
    assert pointee("map_flags")["nr_elems"] == layout.PEER_BASE_FLAGS
    assert pointee("key") is named(btf, "STRUCT", "knp_peer_key")
