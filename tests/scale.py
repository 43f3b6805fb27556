#!/usr/bin/env python3
"""Scale: the probe as a node agent over hundreds of veths. It reports; it never asserts.

Run as root. A network namespace this module creates holds COUNT veth pairs (their other ends in a second
namespace; IPv6 off, so nothing but the probe runs). The .pyz runs there with --all, for each attach method:
  - start to first report: from the start of the process to its first JSON report, which comes once every
    interface is attached in both directions and the first interval (--interval) has passed;
  - one report cycle: the probe's CPU time (utime + stime) per report over CYCLES reports, 500 interfaces
    read, turned into JSON and written each time;
  - peak RSS (VmHWM) and the time from SIGTERM to exit (every attachment released);
and once (the attach method does not matter to it), with --listen and nothing printed:
  - one scrape of /metrics: the probe's CPU time per request over SCRAPES requests made by a client in the
    namespace, the idle main loop between.
TCX links (`--attach link`, the default on 6.6+) are released by the kernel if the probe dies, but each attach
and each detach waits for an RCU grace period under the kernel's RTNL lock: they cannot overlap. cls_bpf
filters (`--attach netlink`) do not wait, and outlive a SIGKILL (`kubenetprobe detach` removes them).

Usage: sudo .venv/bin/python tests/scale.py [--count 500] [--pyz dist/kubenetprobe.pyz] [--json]
"""
import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERVAL = 0.5
CYCLES = 10
SCRAPES = 20
PORT = 9199
TICK = os.sysconf("SC_CLK_TCK")

# Asks /metrics `count` times from inside the namespace, each on a new connection as Prometheus would.
SCRAPER = """
import sys, urllib.request
for _ in range(int(sys.argv[2])):
    body = urllib.request.urlopen(sys.argv[1], timeout=10).read()
print(len(body))
"""


def run(*argv, **kwargs):
    """Run a command; its output (text), failure raising."""
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, universal_newlines=True, **kwargs).stdout


@contextlib.contextmanager
def veth_pairs(count):
    """Two fresh namespaces, `count` up veth pairs between them; yields the probe's namespace's name."""
    ns, peer = "knpscale-%d" % os.getpid(), "knpscale-%d-peer" % os.getpid()
    try:
        for name in (ns, peer):
            run("ip", "netns", "add", name)
            run("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1")
        batch = "".join("link add sv%d type veth peer name sp%d netns %s\n" % (i, i, peer) for i in range(count))
        run("ip", "-n", ns, "-batch", "-", input=batch)
        run("ip", "-n", ns, "-batch", "-", input="".join("link set sv%d up\n" % i for i in range(count))
            + "link set lo up\n")  # for /metrics
        run("ip", "-n", peer, "-batch", "-", input="".join("link set sp%d up\n" % i for i in range(count)))
        yield ns
    finally:
        for name in (ns, peer):
            subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def peak_rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")) / 1e6


def start_probe(ns, python, pyz, args):
    # `ip netns exec` execs the interpreter: the pid is the probe's own.
    return subprocess.Popen(["ip", "netns", "exec", ns, python, pyz, "--all"] + args, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)


def stop_probe(probe):
    """SIGTERM; seconds until it exited. Raises if it failed."""
    start = time.monotonic()
    probe.send_signal(signal.SIGTERM)
    out, err = probe.communicate(timeout=300)
    if probe.returncode != 0:
        raise RuntimeError("the probe exited %d: %s" % (probe.returncode, err.strip()))
    return time.monotonic() - start


def measure_reports(ns, python, pyz, method, count):
    """Start to first report, CPU per report cycle, peak RSS and exit time of one run with this attach method."""
    start = time.monotonic()
    probe = start_probe(ns, python, pyz, ["--json", "--attach", method, "--interval", str(INTERVAL)])
    try:
        first = json.loads(probe.stdout.readline() or "null")
        if first is None:
            raise RuntimeError("the probe printed no report: %s" % probe.stderr.read().strip())
        first_s = time.monotonic() - start
        for _ in range(count - 1):
            probe.stdout.readline()  # the rest of the first cycle's reports
        cpu = cpu_seconds(probe.pid)
        for _ in range(CYCLES * count):
            probe.stdout.readline()
        cycle_ms = 1000 * (cpu_seconds(probe.pid) - cpu) / CYCLES
        rss = peak_rss_mb(probe.pid)
    except BaseException:
        probe.kill()
        probe.wait()
        raise
    return {"method": method, "start_s": first_s, "cycle_cpu_ms": cycle_ms, "peak_rss_mb": rss,
            "exit_s": stop_probe(probe)}


def measure_scrapes(ns, python, pyz):
    """The probe's CPU time per /metrics request, nothing printed, the fast attach method."""
    probe = start_probe(ns, python, pyz, ["--attach", "netlink", "--listen", str(PORT), "-v"])
    try:
        while "serving metrics" not in probe.stderr.readline():
            if probe.poll() is not None:
                raise RuntimeError("the probe exited %d before serving" % probe.returncode)
        url = "http://127.0.0.1:%d/metrics" % PORT
        run("ip", "netns", "exec", ns, python, "-c", SCRAPER, url, "1")  # a first one, outside the window
        cpu = cpu_seconds(probe.pid)
        size = int(run("ip", "netns", "exec", ns, python, "-c", SCRAPER, url, str(SCRAPES)))
        scrape_ms = 1000 * (cpu_seconds(probe.pid) - cpu) / SCRAPES
    finally:
        probe.send_signal(signal.SIGTERM)
        probe.communicate(timeout=300)
    return {"scrape_cpu_ms": scrape_ms, "exposition_bytes": size}


def measure(count, pyz, python=sys.executable):
    """Every figure, in one set of namespaces."""
    with veth_pairs(count) as ns:
        runs = [measure_reports(ns, python, pyz, method, count) for method in ("link", "netlink")]
        return {"interfaces": count, "runs": runs, "scrape": measure_scrapes(ns, python, pyz)}


def report_lines(figures):
    lines = ["scale: --all over %d interfaces (veths; lo is left out), both directions, interval %.1f s"
             % (figures["interfaces"], INTERVAL),
             "  attach   start to first report  report cycle CPU  peak RSS  SIGTERM to exit"]
    lines += ["  %-7s  %19.1f s  %13.1f ms  %5.1f MB  %13.1f s" % (
        r["method"], r["start_s"], r["cycle_cpu_ms"], r["peak_rss_mb"], r["exit_s"]) for r in figures["runs"]]
    lines.append("  one /metrics scrape: %.1f ms CPU (%d KB)" % (figures["scrape"]["scrape_cpu_ms"],
                                                                figures["scrape"]["exposition_bytes"] // 1000))
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=500, help="veth pairs (default 500)")
    p.add_argument("--pyz", default=os.path.join(ROOT, "dist", "kubenetprobe.pyz"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    figures = measure(args.count, os.path.abspath(args.pyz))
    print(json.dumps(figures, indent=2) if args.json else "\n".join(report_lines(figures)))


if __name__ == "__main__":
    main()
