#!/usr/bin/env python3
"""`make bench`: what the probe costs per packet, at start, in memory and on disk. It reports; it never asserts.

Run as root. Every figure is measured in this one run, beside a floor measured the same way:
  1. the XDP program and the TC programs (ingress, egress) per packet (BPF_PROG_TEST_RUN), each beside an empty
     program and a minimal counter of its hook (one map lookup, Ethernet and IPv4 checked, two increments);
     then the programs that count top talkers too, with 1 and with 4,096 peers, beside the plain ones and an LRU
     talker counter like cilium/ebpf's examples/xdp (tests/bpf/lru_talkers.bpf.c);
  2. start to first report of the .pyz beside `python -c pass` and a bare script that only loads the object
     through libbpf, on a veth in a network namespace this script creates and removes;
  3. peak RSS of those runs;
  4. the .pyz's size;
  5. load to attached;  6. line rate (tests/linerate.py);  7. the same with talkers on;  8. the node agent
     over 500 veths (tests/scale.py).
Targets are printed beside the figures as "ok" or "over"; the exit status is 0 whatever they say.
"""
import argparse
import ast
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from frames import ETH_IP, ETH_IPV6, HOPOPTS, TCP, UDP, ether, ipv4, ipv6_chain, tcp, udp  # noqa: E402
from probe import layout, stats, talkers  # noqa: E402
from probe.attach import xdp  # noqa: E402
from probe.bpf.constants import BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_XDP  # noqa: E402
from probe.bytecode import embedded_object  # noqa: E402
from probe.errors import ProbeError  # noqa: E402
from probe.bpf.libbpf import LibbpfEngine  # noqa: E402
from probe.bpf.native import NativeEngine  # noqa: E402
import linerate  # noqa: E402
import scale  # noqa: E402

XDP_PASS, TC_ACT_OK, TC_ACT_UNSPEC = 2, 0, 0xFFFFFFFF  # TC_ACT_UNSPEC (-1) as the test run's u32 retval
# The probe's programs measured: (hook, layout.PROGRAMS key, program type of its floors, verdicts that let a
# packet through).
HOOKS = (("XDP", ("rx", "xdp"), BPF_PROG_TYPE_XDP, (XDP_PASS,)),
         ("TC ingress", ("rx", "tc"), BPF_PROG_TYPE_SCHED_CLS, (TC_ACT_OK, TC_ACT_UNSPEC)),
         ("TC egress", ("tx", "tc"), BPF_PROG_TYPE_SCHED_CLS, (TC_ACT_OK, TC_ACT_UNSPEC)))
KB, MB = 1000, 1000 * 1000
LOOPBACK_IFINDEX = 1  # the device of BPF_PROG_TEST_RUN's context when it names none (net/bpf/test_run.c)
VETH, PEER = "knpb0", "knpb1"
RUN_TIMEOUT = 60.0  # seconds one timed command may take before the timer kills it

# name: (limit, unit); "value <= limit" is "ok".
TARGETS = {
    "program": (1.15, "x empty"),
    "minimal": (1.1, "x minimal"),
    "start": (1.5, "x bare load"),
    "rss": (25.0, "MB"),
    "size": (100.0, "KB"),
    "line_rate": (3.0, "% of line rate"),
    "scale_start": (10.0, "s"),
    "scale_rss": (40.0, "MB"),
    "scale_cycle": (50.0, "ms CPU"),
    "scrape": (50.0, "ms CPU"),
    "talkers": (1.0, "x LRU"),
}
# The peers of the talkers measure, and the capacity it loads the tables with: every hook's peers fit.
TALKER_PEERS = (1, 4096)
TALKER_CAPACITY = 3 * 4096
# (hook, probe programs' key, LRU program, the address the peer is: rx source, tx destination)
TALKER_HOOKS = (("XDP", ("rx", "xdp"), "lru_xdp", "rx"), ("TC ingress", ("rx", "tc"), "lru_in", "rx"),
                ("TC egress", ("tx", "tc"), "lru_tx", "tx"))

# The floor the probe's start is measured against: start Python, open libbpf, load the same object as the probe
# without talkers does (its programs but those named in argv[2], the maps named in argv[3] of one entry); no more.
BARE_LOAD_SCRIPT = '''\
import ctypes
import sys

lib = ctypes.CDLL("libbpf.so.1")
lib.bpf_object__open_mem.restype = ctypes.c_void_p
lib.bpf_object__open_mem.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p]
lib.bpf_object__find_program_by_name.restype = ctypes.c_void_p
lib.bpf_object__find_program_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lib.bpf_program__set_autoload.argtypes = [ctypes.c_void_p, ctypes.c_bool]
lib.bpf_object__find_map_by_name.restype = ctypes.c_void_p
lib.bpf_object__find_map_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lib.bpf_map__set_max_entries.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
lib.bpf_object__load.argtypes = [ctypes.c_void_p]
lib.bpf_object__close.argtypes = [ctypes.c_void_p]
with open(sys.argv[1], "rb") as f:
    data = f.read()
obj = lib.bpf_object__open_mem(data, len(data), None)
for name in filter(None, sys.argv[2].split(",")):
    lib.bpf_program__set_autoload(lib.bpf_object__find_program_by_name(obj, name.encode()), False)
for name in filter(None, sys.argv[3].split(",")):
    lib.bpf_map__set_max_entries(lib.bpf_object__find_map_by_name(obj, name.encode()), 1)
if not obj or lib.bpf_object__load(obj) < 0:
    sys.exit("bare load: libbpf could not load %s" % sys.argv[1])
sys.stdout.write("loaded\\n")
sys.stdout.flush()
lib.bpf_object__close(obj)
'''

# Times the start commands from a lean process (`python -I -S`, 8-9 MB): a child's ru_maxrss counts the memory of
# the process that spawned it (at exec the kernel keeps the larger of the two), so the spawner must be small.
# argv: repr({label: argv}), runs, timeout in seconds. Prints repr({"samples", "warmup", "timer_rss_kib"}).
TIMER_SCRIPT = '''\
import os
import select
import sys
import time

ERRORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stderr")


def read_until_eof(fd, pid, deadline):
    """Drain a child's stdout; return when its first bytes (or EOF) came. Kill it past the deadline."""
    first = None
    while True:
        if not select.select([fd], [], [], max(0.0, deadline - time.perf_counter()))[0]:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            sys.exit("still running after the timeout; killed")
        chunk = os.read(fd, 65536)
        if first is None:
            first = time.perf_counter()
        if not chunk:
            return first


def timed_run(argv, timeout):
    """Run a command once: ms to its first output (EOF if it prints nothing), ms to its exit, its ru_maxrss."""
    read, write = os.pipe()
    errors = os.open(ERRORS, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, write, 1), (os.POSIX_SPAWN_DUP2, errors, 2)]
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
    os.close(write)
    first = read_until_eof(read, pid, start + timeout)
    status, usage = os.wait4(pid, 0)[1:]
    end = time.perf_counter()
    os.close(read)
    os.close(errors)
    if status != 0:
        with open(ERRORS) as f:
            sys.exit("%s exited with status %#x: %s" % (" ".join(argv), status, f.read().strip()))
    return {"first_output_ms": (first - start) * 1e3, "exit_ms": (end - start) * 1e3, "rss_kib": usage.ru_maxrss}


def peak_kib():
    """This process's own peak RSS: a child it spawns cannot read a lower ru_maxrss."""
    with open("/proc/self/status") as f:
        return int([line for line in f if line.startswith("VmHWM:")][0].split()[1])


def main():
    """One warm-up run of each command, then rounds of all of them in an order rotating each round."""
    floor = peak_kib()
    commands = eval(sys.argv[1])  # a repr written by bench.py
    runs, timeout = int(sys.argv[2]), float(sys.argv[3])
    labels = list(commands)
    warmup = {label: timed_run(commands[label], timeout) for label in labels}
    samples = {label: [] for label in labels}
    for r in range(runs):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            samples[label].append(timed_run(commands[label], timeout))
    print(repr({"samples": samples, "warmup": warmup, "timer_rss_kib": floor}))


main()
'''


# ---- frames ----------------------------------------------------------------------------------------------

def ipv4_udp_frame(size=64):
    """A `size`-byte Ethernet/IPv4/UDP frame (no FCS)."""
    return ether(ETH_IP, ipv4(UDP, udp(bytes(size - 14 - 20 - 8))))


def ipv6_hopopts_tcp_frame():
    """An Ethernet/IPv6 frame with a hop-by-hop options header before a TCP SYN."""
    return ether(ETH_IPV6, ipv6_chain([(HOPOPTS, 0)], TCP, tcp()))


FRAMES = (("IPv4/UDP", ipv4_udp_frame()), ("IPv6/HBH/TCP", ipv6_hopopts_tcp_frame()))


# ---- 1. per packet -----------------------------------------------------------------------------------------

def interleaved_test_runs(programs, frame, rounds, repeat, passes):
    """Mean ns per run of each {role: (object, program name)}, in rounds whose order alternates; {role: [ns...]}.
    Every run must return one of the verdicts `passes`. The time is this thread's CPU time over the test run (the
    runs happen in the kernel, on this thread): the kernel's own figure truncates to whole ns, too coarse for ratios
    of a few per cent."""
    roles = list(programs)
    results = {role: [] for role in roles}
    for r in range(rounds):
        for role in (roles if r % 2 == 0 else roles[::-1]):
            obj, name = programs[role]
            start = time.thread_time()
            retval, _ = obj.program(name).test_run(frame, repeat)
            results[role].append((time.thread_time() - start) * 1e9 / repeat)
            if retval not in passes:
                raise RuntimeError("%s returned %d, which does not pass a %d-byte frame" % (name, retval, len(frame)))
    return results



def measure_programs(engine, empty_object, minimal_object, rounds, repeat):
    """Per-packet cost of each of the probe's programs beside its hook's empty program and minimal counter, for
    each test frame."""
    hooks = []
    with engine.load_bytes(embedded_object()) as probe_obj, engine.load_file(empty_object) as empty_obj, \
            engine.load_file(minimal_object) as minimal_obj:
        # Test runs happen on the namespace's loopback: with its keys the probe's programs count, as on an
        # interface the probe follows, rather than take the shorter path of one it does not.
        stats.Slots.of(probe_obj).add(LOOPBACK_IFINDEX)
        for hook, key, prog_type, passes in HOOKS:
            programs = {"program": (probe_obj, layout.PROGRAMS[key]),
                        "empty": (empty_obj, linerate.program_of_type(empty_obj, prog_type, empty_object)),
                        "minimal": (minimal_obj, linerate.program_of_type(minimal_obj, prog_type, minimal_object))}
            rows = []
            for label, frame in FRAMES:
                runs = interleaved_test_runs(programs, frame, rounds, repeat, passes)
                ns = {role: statistics.median(runs[role]) for role in programs}
                rows.append({"frame": label, "frame_bytes": len(frame), "program_ns": ns["program"],
                             "empty_ns": ns["empty"], "minimal_ns": ns["minimal"],
                             "ratio": ns["program"] / ns["empty"], "minimal_ratio": ns["program"] / ns["minimal"],
                             "rounds_ns": runs})
            hooks.append({"hook": hook, "program": programs["program"][1], "empty": programs["empty"][1],
                          "minimal": programs["minimal"][1], "frames": rows})
    return {"repeat": repeat, "rounds": rounds, "hooks": hooks}


def peer_frame(direction, i):
    """A 64-byte Ethernet/IPv4/TCP frame of peer i of 198.18.0.0/15: its source (rx) or destination (tx)."""
    peer = bytes([198, 18 + (i >> 16 & 1), i >> 8 & 0xFF, i & 0xFF])
    ends = {"src": peer} if direction == "rx" else {"dst": peer}
    return ether(ETH_IP, ipv4(TCP, tcp(bytes(64 - 14 - 20 - 20)), **ends))


def fill(program, direction, peers):
    """Run a program once on a frame of each of `peers` peers: its table then holds them all."""
    for i in range(peers):
        program.test_run(peer_frame(direction, i), 1)  # repeat 1: XDP's test run swaps no dispatcher then


def measure_talkers(engine, lru_object, rounds, repeat):
    """Per-packet cost of the programs counting top talkers with 1 peer, and with 4,096 in their table, beside the
    plain programs and the LRU counter, in interleaved rounds: a frame of the last peer, each round's run repeated.
    (A test run per peer would not do: each XDP one of more than one repeat waits out two RCU grace periods.)"""
    hooks = []
    with engine.load_bytes(embedded_object(), max_entries=talkers.max_entries(TALKER_CAPACITY)) as probe_obj, \
            engine.load_file(lru_object) as lru_obj:
        stats.Slots.of(probe_obj, talkers=True).add(LOOPBACK_IFINDEX)
        talkers.Talkers(probe_obj).close()  # the tables' mask and hash seed written, as the probe does
        for hook, key, lru, direction in TALKER_HOOKS:
            programs = {"plain": (probe_obj, layout.PROGRAMS[key]), "talkers": (probe_obj, layout.PEER_PROGRAMS[key]),
                        "lru": (lru_obj, lru)}
            rows = []
            for peers in TALKER_PEERS:
                for obj, name in programs.values():
                    fill(obj.program(name), direction, peers)
                runs = interleaved_test_runs(programs, peer_frame(direction, peers - 1), rounds, repeat,
                                             (XDP_PASS, TC_ACT_OK, TC_ACT_UNSPEC))
                ns = {role: statistics.median(v) for role, v in runs.items()}
                rows.append({"peers": peers, "plain_ns": ns["plain"], "talkers_ns": ns["talkers"],
                             "lru_ns": ns["lru"], "lru_ratio": ns["talkers"] / ns["lru"], "rounds_ns": runs})
            hooks.append({"hook": hook, "program": layout.PEER_PROGRAMS[key], "lru": lru, "rows": rows})
    return {"repeat": repeat, "rounds": rounds, "capacity": TALKER_CAPACITY, "hooks": hooks}


# ---- 5. load to attached, per engine ----------------------------------------------------------------------

def load_and_attach(engine, data, interface):
    """Seconds from the object's bytes to the program attached: load as the probe does without talkers (its plain
    programs, the peer maps of one entry), then a bpf_link."""
    started = time.perf_counter()
    obj = engine.load_bytes(data, max_entries=talkers.max_entries(0), programs=set(layout.PROGRAMS.values()))
    attached = xdp.attach_xdp(obj.program(layout.PROGRAM).fd, interface)
    elapsed = time.perf_counter() - started
    attached.close()
    obj.close()
    return elapsed


def measure_engines(interface, rounds):
    """Load-to-attached time of each engine, interleaved, in this process (inside the veth's namespace)."""
    engines = [LibbpfEngine(), NativeEngine()]
    data = embedded_object()
    samples = {e.name: [] for e in engines}
    for _ in range(rounds):
        for engine in engines:
            samples[engine.name].append(load_and_attach(engine, data, interface) * 1000)
    return {name: {"median_ms": statistics.median(ms), "rounds_ms": ms} for name, ms in samples.items()}


# ---- 2 and 3. start and memory -----------------------------------------------------------------------------


def run_quietly(argv):
    """Run a setup command; failure raises with its stderr."""
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, universal_newlines=True)
    if done.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(argv), done.stderr.strip()))



@contextlib.contextmanager
def veth_namespace():
    """Enter a fresh network namespace holding an up veth pair; yield the veth's name; remove it all after."""
    name = "knpbench-%d" % os.getpid()
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        run_quietly(["ip", "netns", "add", name])
        ns = os.open("/run/netns/" + name, os.O_RDONLY)
        try:
            linerate.setns(ns)  # once, here: every command timed later starts inside, with no `ip netns exec` in front
        finally:
            os.close(ns)
        try:
            linerate.silence_ipv6()
            run_quietly(["ip", "link", "add", VETH, "type", "veth", "peer", "name", PEER])
            run_quietly(["ip", "link", "set", VETH, "up"])
            run_quietly(["ip", "link", "set", PEER, "up"])
            yield VETH
        finally:
            subprocess.run(["ip", "link", "del", VETH], stderr=subprocess.DEVNULL)
            linerate.setns(home)
    finally:
        subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)
        os.close(home)


def run_timer(python, timer, commands, runs):
    """Time {label: argv} in the lean timer process; {"samples", "warmup", "timer_rss_kib"}."""
    done = subprocess.run([python, "-I", "-S", timer, repr(commands), str(runs), str(RUN_TIMEOUT)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    if done.returncode != 0:
        raise RuntimeError("timing failed: %s" % done.stderr.strip())
    return ast.literal_eval(done.stdout)


def summarize(samples, warmup):
    """Medians of the timed runs, the peak RSS over them, and the discarded warm-up run's time."""
    return {
        "first_output_ms": statistics.median(s["first_output_ms"] for s in samples),
        "exit_ms": statistics.median(s["exit_ms"] for s in samples),
        "peak_rss_mb": max(s["rss_kib"] for s in samples) * 1024 / MB,
        "warmup_first_output_ms": warmup["first_output_ms"],
    }


def start_commands(python, probe_argv, interface, bare_script):
    """The three commands timed with one interpreter: the empty start, the bare load, the probe."""
    return {
        "python -c pass": [python, "-c", "pass"],
        "bare load script": [python, bare_script, linerate.OBJECT_FILE, ",".join(layout.PEER_PROGRAMS.values()),
                             ",".join(talkers.max_entries(0))],
        "probe": [python] + probe_argv + ["-i", interface, "--count", "1", "--interval", "0"],
    }


def measure_interpreter(interpreter, probe_argv, interface, scripts, runs):
    """Start and memory figures of the probe and its floors with one interpreter."""
    commands = start_commands(interpreter["executable"], probe_argv, interface, scripts["bare"])
    # The timed interpreter runs the timer too where it can (3.8+): Debian's is smaller than the bench's.
    timer_python = interpreter["executable"] if interpreter["posix_spawn"] else sys.executable
    timed = run_timer(timer_python, scripts["timer"], commands, runs)
    results = {label: summarize(timed["samples"][label], timed["warmup"][label]) for label in commands}
    probe, bare, empty = results["probe"], results["bare load script"], results["python -c pass"]
    return dict(interpreter, runs=runs, commands=results, timer_rss_mb=timed["timer_rss_kib"] * 1024 / MB,
                ratios={"probe_to_bare_load": probe["first_output_ms"] / bare["first_output_ms"],
                        "probe_to_python_pass": probe["first_output_ms"] / empty["first_output_ms"]})


def write_scripts(folder):
    """Write the bare load script and the timer into `folder`; {"bare": path, "timer": path}."""
    paths = {}
    for key, text in (("bare", BARE_LOAD_SCRIPT), ("timer", TIMER_SCRIPT)):
        paths[key] = os.path.join(folder, key + ".py")
        with open(paths[key], "w") as f:
            f.write(text)
    return paths


# ---- machine facts -----------------------------------------------------------------------------------------

def describe_interpreter(path):
    """{"executable", "version", "posix_spawn"} of an interpreter; a pyenv shim resolves to what it runs."""
    code = "import os, sys; print(sys.executable); print(sys.version.split()[0]); print(hasattr(os, 'posix_spawn'))"
    out = subprocess.run([path, "-c", code], stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
    executable, version, posix_spawn = out.split("\n")[:3]
    if not executable:
        raise RuntimeError("%s does not say where its interpreter is" % path)
    return {"executable": executable, "version": version, "posix_spawn": posix_spawn == "True"}


def default_interpreters():
    """The python3 a user would run (shim resolved), and Debian's /usr/bin/python3 when it is another one."""
    candidates = [p for p in (shutil.which("python3"), "/usr/bin/python3") if p and os.path.exists(p)]
    found, seen = [], set()
    for path in candidates:
        interpreter = describe_interpreter(path)
        real = os.path.realpath(interpreter["executable"])
        if real not in seen:
            seen.add(real)
            found.append(interpreter)
    return found


def cpu_model():
    """The CPU's model name from /proc/cpuinfo."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def loaded_library(fragment):
    """The real path of a shared library this process has mapped, e.g. libbpf.so.1 -> libbpf.so.1.1.2."""
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if fragment in os.path.basename(path):
                return os.path.realpath(path)
    return None


def machine_facts(engine):
    """Kernel, CPU, load, libbpf and the bench's own Python."""
    library = loaded_library("libbpf.so")
    return {
        "kernel": platform.release(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "libbpf": engine.version,
        "libbpf_file": library and os.path.basename(library),
        "bench_python": "%s (%s)" % (platform.python_version(), sys.executable),
    }


# ---- targets and output ------------------------------------------------------------------------------------

def check(target, value, what):
    """One target line: what was measured, against which limit, ok or over."""
    limit, unit = TARGETS[target]
    return {"target": target, "what": what, "value": value, "limit": limit, "unit": unit,
            "status": "ok" if value <= limit else "over"}


def evaluate_targets(figures):
    """Every target check the figures allow."""
    checks = []
    for h in figures["talkers"]["hooks"]:
        for row in h["rows"]:
            checks.append(check("talkers", row["lru_ratio"], "%s talkers / LRU, %d peers" % (h["hook"], row["peers"])))
    for h in figures.get("program", {}).get("hooks", ()):
        for f in h["frames"]:
            checks.append(check("program", f["ratio"], "%s / empty, %s" % (h["hook"], f["frame"])))
            checks.append(check("minimal", f["minimal_ratio"], "%s / minimal, %s" % (h["hook"], f["frame"])))
    for s in figures.get("start", ()):
        python = "python " + s["version"]
        checks.append(check("start", s["ratios"]["probe_to_bare_load"], "start / bare load, " + python))
        checks.append(check("rss", s["commands"]["probe"]["peak_rss_mb"], "peak RSS, " + python))
    if figures.get("size"):
        checks.append(check("size", figures["size"]["bytes"] / KB, "size of " + figures["size"]["file"]))
    for h in figures.get("line_rate", {}).get("hooks", ()):
        checks.append(check("line_rate", h["cpu_overhead_percent"], "line-rate cost over empty, " + h["hook"]))
    if "scale" in figures:
        n = figures["scale"]["interfaces"]
        for r in figures["scale"]["runs"]:
            how = "%d veths, --attach %s" % (n, r["method"])
            checks.append(check("scale_start", r["start_s"], "start to first report, " + how))
            checks.append(check("scale_rss", r["peak_rss_mb"], "peak RSS, " + how))
            checks.append(check("scale_cycle", r["cycle_cpu_ms"], "one report cycle, " + how))
        checks.append(check("scrape", figures["scale"]["scrape"]["scrape_cpu_ms"], "one scrape, %d veths" % n))
    for h in figures.get("line_rate_talkers", {}).get("hooks", ()):
        checks.append(check("line_rate", h["cpu_overhead_percent"],
                            "line-rate cost over empty, talkers on, " + h["hook"]))
    return checks



def rounded(value, digits=3):
    """The figures with every float rounded, for JSON a person can read."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def report_lines(figures):
    """The whole report as plain text."""
    m = figures["machine"]
    lines = ["KubeNetProbe benchmark  (medians of interleaved rounds; KB = 1000 B, MB = 10^6 B)",
             "machine  kernel %s, %s x %d, load %.2f %.2f %.2f"
             % ((m["kernel"], m["cpu"], m["cpus"]) + tuple(m["load_average"])),
             "libbpf   %s (%s)" % (m["libbpf"], m["libbpf_file"]),
             "bench    python %s" % m["bench_python"]]
    if "program" in figures:
        lines += [""] + program_lines(figures["program"])
    lines += [""] + talker_lines(figures["talkers"])
    if "start" in figures:
        lines += start_lines(figures)
    for key, title in (("line_rate", "6. "), ("line_rate_talkers", "7. talkers on: ")):
        if key in figures:
            lines += ["", title + "\n".join(linerate.report_lines(figures[key]))]
    if "scale" in figures:
        lines += ["", "8. " + "\n".join(scale.report_lines(figures["scale"]))]
    lines += ["", "targets (informational; the exit status ignores them)"]
    lines += linerate.table(["measure", "value", "target", "status"],
                   [[c["what"], "%.2f %s" % (c["value"], c["unit"]), "<= %g %s" % (c["limit"], c["unit"]),
                     c["status"]] for c in figures["targets"]])
    return lines


def program_lines(p):
    """Section 1: the probe's programs per packet."""
    lines = ["1. per packet, BPF_PROG_TEST_RUN, repeat %d, %d rounds (thread CPU time per run)"
             % (p["repeat"], p["rounds"])]
    for h in p["hooks"]:
        lines += ["%s: %s beside %s (empty) and %s (minimal counter, which counts IPv4 alone)" % (
            h["hook"], h["program"], h["empty"], h["minimal"])]
        lines += linerate.table(["  frame", "bytes", "probe", "empty", "minimal", "probe/empty", "probe/minimal"],
                       [["  " + f["frame"], f["frame_bytes"], "%.1f ns" % f["program_ns"], "%.1f ns" % f["empty_ns"],
                         "%.1f ns" % f["minimal_ns"], "%.2fx" % f["ratio"], "%.2fx" % f["minimal_ratio"]]
                        for f in h["frames"]])
    return lines


def talker_lines(t):
    """Section 1b: the programs counting top talkers per packet, beside the plain ones and the LRU counter."""
    lines = ["1b. top talkers per packet, a 64-byte IPv4/TCP frame, its peer alone in the table or one of 4096 there, "
             "repeat %d, %d rounds; tables of %d peers" % (t["repeat"], t["rounds"], t["capacity"])]
    for h in t["hooks"]:
        lines += ["%s: %s beside the plain program and %s (LRU hash, IPv4 source or destination -> packets)"
                  % (h["hook"], h["program"], h["lru"])]
        lines += linerate.table(["  peers", "plain", "talkers", "LRU", "talkers/LRU"],
                       [["  %d" % r["peers"], "%.1f ns" % r["plain_ns"], "%.1f ns" % r["talkers_ns"],
                         "%.1f ns" % r["lru_ns"], "%.2fx" % r["lru_ratio"]] for r in h["rows"]])
    return lines


def start_lines(figures):
    """Sections 2 to 5: start, memory, size, load to attached."""
    lines = []
    for s in figures["start"]:
        lines += ["", "2-3. start and memory, python %s (%s), %d runs, probe: %s"
                  % (s["version"], s["executable"], s["runs"], figures["probe_command"])]
        lines += linerate.table(["command", "first output", "exit", "peak RSS", "warm-up run"],
                       [[label, "%.1f ms" % c["first_output_ms"], "%.1f ms" % c["exit_ms"],
                         "%.1f MB" % c["peak_rss_mb"], "%.1f ms" % c["warmup_first_output_ms"]]
                        for label, c in s["commands"].items()])
        lines.append("probe / bare load %.2fx   probe / python -c pass %.2fx   (no RSS below the timer's %.1f MB)"
                     % (s["ratios"]["probe_to_bare_load"], s["ratios"]["probe_to_python_pass"], s["timer_rss_mb"]))
    if figures["size"]:
        lines += ["", "4. size: %s  %d bytes (%.1f KB)"
                  % (figures["size"]["file"], figures["size"]["bytes"], figures["size"]["bytes"] / KB)]
    engines = figures["engines"]
    lines += ["", "5. load to attached (object bytes -> program on the veth), %d interleaved rounds"
              % len(next(iter(engines.values()))["rounds_ms"])]
    lines += linerate.table(["loader", "median"], [[name, "%.1f ms" % e["median_ms"]] for name, e in engines.items()])
    return lines


# ---- main --------------------------------------------------------------------------------------------------

def parse_args(argv):
    """The bench's options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pyz", type=os.path.abspath, default=os.path.join(ROOT, "dist", "kubenetprobe.pyz"),
                   help="the zipapp to measure")
    p.add_argument("--empty-object", type=os.path.abspath, default=os.path.join(ROOT, "build", "empty.bpf.o"),
                   help="ELF object holding an empty program of each hook: XDP and TC")
    p.add_argument("--minimal-object", type=os.path.abspath,
                   default=os.path.join(ROOT, "build", "minimal_counter.bpf.o"),
                   help="ELF object holding a minimal counter of each hook (tests/bpf/minimal_counter.bpf.c)")
    p.add_argument("--command", help="run the probe as INTERPRETER COMMAND... instead of INTERPRETER PYZ, "
                                     "e.g. --command='-m probe' (from the checkout; mind the =)")
    p.add_argument("-m", "--interpreter", action="append",
                   help="Python to time the starts with; repeat for several (default: the python3 on PATH, "
                        "pyenv shim resolved, and /usr/bin/python3)")
    p.add_argument("--repeat", type=int, default=1000000, help="BPF_PROG_TEST_RUN repeat (default 1000000)")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds of test runs (default 15)")
    p.add_argument("--runs", type=int, default=15, help="interleaved runs of each start command (default 15)")
    p.add_argument("--line-rate-rounds", type=int, default=5,
                   help="interleaved rounds of the line-rate flood (default 5; 0 leaves it out: it takes ~2 min)")
    p.add_argument("--scale", type=int, default=500,
                   help="veth pairs of the node-agent measurement (default 500; 0 leaves it out: it takes ~1 min)")
    p.add_argument("--line-rate-seconds", type=float, default=2.0, help="seconds of each line-rate window")
    p.add_argument("--lru-object", type=os.path.abspath, default=os.path.join(ROOT, "build", "lru_talkers.bpf.o"),
                   help="ELF object holding the LRU talker counter of each hook (tests/bpf/lru_talkers.bpf.c)")
    p.add_argument("--talkers-only", action="store_true",
                   help="measure only the top talkers: per packet beside the LRU counter, and the line rate with "
                        "talkers on")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of the table")
    return p.parse_args(argv)


def probe_argv(args):
    """What follows the interpreter to run the probe: the .pyz, or --command."""
    if args.command:
        return shlex.split(args.command)
    if not os.path.isfile(args.pyz):
        raise RuntimeError("%s does not exist: run `make build`, or pass --command='-m probe'" % args.pyz)
    return [args.pyz]


def size_of(path):
    """The file's name and size, or None when it is not there."""
    if not os.path.isfile(path):
        return None
    return {"file": os.path.basename(path), "bytes": os.path.getsize(path)}


def measure_talkers_only(args):
    """The top talkers' figures alone (--talkers-only)."""
    engine = LibbpfEngine()
    figures = {"machine": machine_facts(engine),
               "talkers": measure_talkers(engine, args.lru_object, args.rounds, args.repeat)}
    if args.line_rate_rounds:
        figures["line_rate_talkers"] = linerate.measure(args.line_rate_rounds, args.line_rate_seconds, linerate.OBJECT_FILE,
                                                        args.empty_object, talkers=True)
    figures["targets"] = evaluate_targets(figures)
    return figures


def measure(args):
    """Every figure, in one run."""
    if args.talkers_only:
        return measure_talkers_only(args)
    probe = probe_argv(args)
    os.chdir(ROOT)  # so `--command '-m probe'` imports the checkout
    interpreters = list(map(describe_interpreter, args.interpreter)) if args.interpreter else default_interpreters()
    engine = LibbpfEngine()
    figures = {"machine": machine_facts(engine), "probe_command": " ".join(probe),
               "program": measure_programs(engine, args.empty_object, args.minimal_object, args.rounds, args.repeat),
               "talkers": measure_talkers(engine, args.lru_object, args.rounds, args.repeat)}
    with tempfile.TemporaryDirectory(prefix="knpbench-") as tmp:
        scripts = write_scripts(tmp)
        with veth_namespace() as interface:
            figures["start"] = [measure_interpreter(i, probe, interface, scripts, args.runs) for i in interpreters]
            figures["engines"] = measure_engines(interface, args.runs)
    figures["size"] = size_of(args.pyz)
    if args.line_rate_rounds:
        figures["line_rate"] = linerate.measure(args.line_rate_rounds, args.line_rate_seconds, linerate.OBJECT_FILE,
                                                args.empty_object)
        figures["line_rate_talkers"] = linerate.measure(args.line_rate_rounds, args.line_rate_seconds, linerate.OBJECT_FILE,
                                                        args.empty_object, talkers=True)
    if args.scale:
        figures["scale"] = scale.measure(args.scale, args.pyz)
    figures["targets"] = evaluate_targets(figures)
    return figures


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # so the namespace and temporary files are removed on the way out


def main(argv=None):
    """Measure and print; 0 unless something could not be measured at all."""
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("bench: needs root (BPF programs, XDP, network namespaces)\n")
        return 1
    signal.signal(signal.SIGTERM, _terminate)
    try:
        figures = measure(args)
    except (ProbeError, RuntimeError, OSError, subprocess.CalledProcessError) as e:
        sys.stderr.write("bench: %s\n" % e)
        return 1
    print(json.dumps(rounded(figures), indent=2) if args.json else "\n".join(report_lines(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
