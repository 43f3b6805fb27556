"""The Prometheus text exposition as the tests read it: samples parsed, counters per interface, promtool's check."""
import re
import subprocess

from conftest import tool

COUNTED = ("kubenetprobe_l3_packets_total", "kubenetprobe_l3_bytes_total", "kubenetprobe_l4_packets_total",
           "kubenetprobe_l4_bytes_total")
SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)\Z')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def promtool(text):
    """`promtool check metrics` of a text: its CompletedProcess, stderr in stdout."""
    return subprocess.run([tool("promtool"), "check", "metrics"], input=text, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True)


def parse(text):
    """[(name, {label: value}, value)] of an exposition's samples."""
    samples = []
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, labels, value = SAMPLE.match(line).groups()
        samples.append((name, dict(LABEL.findall(labels or "")), float(value)))
    return samples


def counted(samples, interface):
    """What the counter families say of an interface, in traffic.classes()'s shape, per direction:
    {"rx": {"l3": {protocol: (packets, bytes)}, "l4": {...}}, "tx": ...}."""
    found = {}
    for name, labels, value in samples:
        if name in COUNTED and labels["interface"] == interface:
            level, kind = name.split("_")[1:3]
            pair = found.setdefault(labels["direction"], {}).setdefault(level, {}).setdefault(labels["protocol"],
                                                                                               [0, 0])
            pair[kind == "bytes"] = int(value)
    return {d: {level: {p: tuple(v) for p, v in by.items()} for level, by in levels.items()}
            for d, levels in found.items()}
