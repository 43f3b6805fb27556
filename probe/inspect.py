"""`kubenetprobe inspect OBJECT`: what a BPF object holds, read without loading anything, and which loader
can load it."""
from probe.bpf import constants
from probe.bpf.spec import MAPS_SECTION, read_object
from probe.errors import ProbeError


def _name(names, value):
    return names[value] if 0 <= value < len(names) else str(value)


def _attach_type(program):
    # 0 is both "none" and cgroup_inet_ingress: a program type with no attach type says none.
    if program.expected_attach_type == 0 and program.prog_type != constants.PROG_TYPES.index("cgroup_skb"):
        return None
    return _name(constants.ATTACH_TYPES, program.expected_attach_type)


def _verdict(check):
    """{"loads": True} if check() passes, else {"loads": False, "reason": its error in one line}."""
    try:
        check()
    except ProbeError as e:
        return {"loads": False, "reason": str(e)}
    return {"loads": True}


def _loaders(spec, data, libbpf):
    """Whether the native loader would load the object, and (if asked) whether the system's libbpf opens it."""
    from probe.bpf import native
    verdicts = {"native": _verdict(lambda: native.check_supported(spec))}
    if not libbpf:
        return verdicts
    from probe.bpf.libbpf import LibbpfEngine
    try:
        engine = LibbpfEngine()
    except ProbeError as e:
        verdicts["libbpf"] = {"loads": False, "reason": str(e)}
    else:
        verdicts["libbpf"] = dict(_verdict(lambda: engine.check_opens(data)), version=engine.version)
    return verdicts


def describe(data, libbpf=True):
    """What an object (bytes) holds, as a JSON-ready dict; ObjectError when it cannot be read at all.

    libbpf: whether to have the system's libbpf open it too (its C reader, not this module's).
    """
    spec = read_object(data)
    return {
        "byteorder": spec.byteorder,
        "license": spec.license,
        "btf": spec.btf is not None,
        "btf_ext": spec.btf_ext is not None,
        "programs": [{
            "name": p.name,
            "section": p.section,
            "type": _name(constants.PROG_TYPES, p.prog_type),
            "attach_type": _attach_type(p),
            "instructions": len(p.instructions) // constants.BPF_INSN_SIZE,
            "subprograms": p.subprograms,
            "autoload": p.autoload,
        } for p in sorted(spec.programs.values(), key=lambda p: (p.section, p.name))],
        "maps": [{
            "name": m.name,
            "type": _name(constants.MAP_TYPES, m.type),
            "key_size": m.key_size,
            "value_size": m.value_size,
            "max_entries": m.max_entries,
            "flags": m.flags,
            "pinning": "by_name" if m.pinning == constants.LIBBPF_PIN_BY_NAME else "none",
        } for m in spec.maps.values() if m.section == MAPS_SECTION],
        "global_data": [{
            "section": m.section,
            "size": m.value_size,
            "read_only": bool(m.flags & constants.BPF_F_RDONLY_PROG),
        } for m in spec.data_sections],
        "core_relocations": [{
            "function": r.function, "instruction": r.instruction, "kind": r.kind, "type": r.type,
            "access": r.access, "member": r.member,
        } for r in spec.core_relocations],
        "externs": [{"name": e.name, "kind": e.kind, "weak": e.weak} for e in spec.externs],
        "struct_ops": spec.struct_ops,
        "loaders": _loaders(spec, data, libbpf),
    }


def _table(header, rows):
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    return ["  " + "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip()
            for line in [header] + rows]


def format_text(path, info):
    """The description for a person: a summary line, then a table or a line per part."""
    lines = ["%s: BPF object, %s-endian, license %s, %s" % (
        path, info["byteorder"], info["license"] or "none",
        "BTF" + (" and BTF.ext" if info["btf_ext"] else "") if info["btf"] else "no BTF")]
    lines.append("programs" + ("" if info["programs"] else ": none"))
    lines += _table(["NAME", "SECTION", "TYPE", "ATTACH", "INSNS", "CALLS"],
                    [[p["name"], p["section"], p["type"], p["attach_type"] or "-", p["instructions"],
                      ",".join(p["subprograms"]) or "-"] for p in info["programs"]]) if info["programs"] else []
    lines.append("maps" + ("" if info["maps"] else ": none"))
    lines += _table(["NAME", "TYPE", "KEY", "VALUE", "ENTRIES", "FLAGS", "PINNING"],
                    [[m["name"], m["type"], m["key_size"], m["value_size"], m["max_entries"], "0x%x" % m["flags"],
                      m["pinning"]] for m in info["maps"]]) if info["maps"] else []
    lines.append("global data" + ("" if info["global_data"] else ": none"))
    lines += ["  %s  %d bytes%s" % (d["section"], d["size"], ", read-only" if d["read_only"] else "")
              for d in info["global_data"]]
    lines.append("CO-RE relocations" + ("" if info["core_relocations"] else ": none"))
    lines += ["  %s insn %d: %s of %s%s (%s)" % (r["function"], r["instruction"], r["kind"], r["type"],
                                                 "." + r["member"] if r["member"] else "", r["access"])
              for r in info["core_relocations"]]
    lines.append("externs" + ("" if info["externs"] else ": none"))
    lines += ["  %s (%s%s)" % (e["name"], e["kind"] or "unknown kind", ", weak" if e["weak"] else "")
              for e in info["externs"]]
    if info["struct_ops"]:
        lines.append("struct_ops: " + ", ".join(info["struct_ops"]))
    lines.append("loaders")
    for name, verdict in sorted(info["loaders"].items()):
        what = "%s %s" % (name, verdict["version"]) if "version" in verdict else name
        if name == "native":
            said = "loads it" if verdict["loads"] else "cannot load it: " + verdict["reason"]
        else:  # libbpf is only asked to open it: the kernel has its say at load time
            said = "opens it" if verdict["loads"] else "cannot open it: " + verdict["reason"]
        lines.append("  %s  %s" % (what.ljust(12), said))
    return "\n".join(lines)
