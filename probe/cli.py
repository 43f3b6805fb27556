"""The kubenetprobe command: arguments in, reports out, every failure one line and an exit code."""
import argparse
import contextlib
import errno
import os
import select
import signal
import sys
import time

import probe
from probe import layout, stats, talkers
from probe.attach import tc, xdp
from probe.bpf import log
from probe.bpf.engine import LOADERS
from probe.bpf.objects import Map, ncpus
from probe.errors import ProbeError
from probe.follow import Follower, has_pattern
from probe.monitor import HOOKS, NetworkMonitor
from probe.net import interfaces
from probe.output import Printer
from probe.owners import DEFAULT_ROOTS, Owners
from probe.pins import PinRoot
from probe.reports import Reporter, by_owner

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DOCTOR_POINTER = "run kubenetprobe doctor for details"  # ends the errors whose cause `doctor` checks

# $EBPF_IMPLEMENTATION, the original project's loader names -> ours.
ORIGINAL_LOADERS = {"cilium": "native", "libbpfgo": "libbpf", "embedded": "auto", "object": "auto"}

DESCRIPTION = """\
Count the packets an interface receives (rx) and sends (tx), exactly, with BPF programs in the kernel:
packets, bytes and rates, broken down by L3 (IPv4, IPv6, ARP) and L4 (TCP, UDP, ICMP) protocol.
rx is counted at XDP (native, on a NIC's driver) or at TC ingress (veths, or where another XDP program
is attached: the probe counts beside it), tx at TC egress; both count wire frames, GRO and GSO undone.
Needs root (or CAP_BPF + CAP_NET_ADMIN). Stop with Ctrl-C: the final report is printed and
the programs detached. Attached through bpf_links (the default where the kernel has them: XDP 5.9+,
TCX 6.6+), nothing stays attached after the probe exits, even if it is killed; attached through
netlink (older kernels), a killed probe leaves its programs behind: `kubenetprobe detach` removes them."""

EPILOG = """\
examples:
  kubenetprobe                         watch the default route's interface, a report a second
  kubenetprobe -i eth0 -i eth1 --interval 5
  kubenetprobe -i eth0 --count 1 --interval 0 --json    one report right after attaching
  kubenetprobe --json | jq .rx.pps
  kubenetprobe -i eth0 --direction rx --hook xdp    rx only, at XDP (refused if another XDP program is there)
  kubenetprobe --all --group-by pod --listen 9199    one series per pod, found in the runtimes' state
  kubenetprobe --object prog.bpf.o     load a program of your own build; `kill -HUP PID` reloads it
  kubenetprobe --pin /sys/fs/bpf/knp   keep counting after exit; the next run with --pin takes over
  kubenetprobe detach -i eth0          remove programs a killed probe left behind (netlink only)
  kubenetprobe detach -i eth0 --pin /sys/fs/bpf/knp    end a pinned probe and remove its pins
  kubenetprobe inspect prog.bpf.o      what an object holds, and which loader can load it
  kubenetprobe doctor                  whether the probe can run here, check by check, and what to fix

signals:
  SIGINT, SIGTERM   print the final report, detach (unless --pin) and exit
  SIGHUP            reload: read the object again (the --object file, else the embedded one) and swap
                    its program in atomically, counters kept; if it fails, the running program stays

environment:
  NETWORK_INTERFACE     interface to watch when no -i is given
  KUBENETPROBE_LOADER   loader when no --loader is given: auto, libbpf or native
  EBPF_IMPLEMENTATION   the original project's loader names: cilium (native), libbpfgo (libbpf),
                        embedded (auto), object (auto, the object file $KUBENETPROBE_OBJECT)

exit status: 0 success, 1 failure (one line on stderr says why), 2 bad usage"""


def _interval(text):
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("%r is not a number of seconds >= 0" % text)
    return value


def _count(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("%r is not a whole number >= 1" % text)
    return value


def _natural(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError("%r is not a whole number >= 0" % text)
    return value


def _capacity(text):
    value = _natural(text)
    if not 1 <= value <= talkers.MAX_CAPACITY:
        raise argparse.ArgumentTypeError("%r is not a number of peers from 1 to %d" % (text, talkers.MAX_CAPACITY))
    return value


def _talkers_memory():
    """What the default peer tables take here, for --help."""
    cpus = ncpus()
    return "%.1f MiB for %d peers on this machine's %d CPUs" % (
        talkers.memory_bytes(layout.PEERS_DEFAULT, cpus) / float(1 << 20), layout.PEERS_DEFAULT, cpus)


def parser():
    """The argument parser of the kubenetprobe command."""
    p = argparse.ArgumentParser(prog="kubenetprobe", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--interface", action="append", metavar="NAME",
                   help="interface to watch, or a shell-style pattern (quoted: -i 'veth*') that also takes "
                        "matching interfaces as they appear; repeat for several (default: "
                        "$NETWORK_INTERFACE, else the default route's interface)")
    p.add_argument("--all", action="store_true",
                   help="watch every interface but lo, and those that appear while the probe runs")
    p.add_argument("--exclude", action="append", metavar="PATTERN", default=[],
                   help="leave out interfaces matching this shell-style pattern; repeatable")
    p.add_argument("--interval", type=_interval, default=1.0, metavar="SECONDS",
                   help="seconds between reports (default: 1)")
    p.add_argument("--count", type=_count, metavar="N", help="stop after N reports (default: run until stopped)")
    p.add_argument("--json", action="store_true", help="print one JSON object per interface per report")
    p.add_argument("--listen", metavar="[HOST:]PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (and /healthz); HOST defaults "
                        "to 127.0.0.1 (0.0.0.0 for every address); implies --quiet unless --json")
    p.add_argument("--group-by", choices=("interface", "pod"), default="interface",
                   help="one report (and series) per interface (default), or per pod: the interfaces of a pod or "
                        "container summed into one, labelled with it; interfaces of no pod stay as they are")
    p.add_argument("--runtime-root", action="append", metavar="DIR",
                   help="a container runtime's state folder to find pods in, instead of the usual places (%s); "
                        "repeat for several" % ", ".join(DEFAULT_ROOTS))
    p.add_argument("--quiet", action="store_true", help="print no report per interval (the final one too)")
    p.add_argument("--talkers", type=_natural, default=0, metavar="K",
                   help="add the top K peers (rx: source address, tx: destination) by bytes in the last interval "
                        "to each report, per direction, and `other` for the rest, so that they add up to the IPv4 "
                        "and IPv6 totals exactly; to the terminal view the top 5 at most (default: 0, off)")
    p.add_argument("--talkers-capacity", type=_capacity, default=layout.PEERS_DEFAULT, metavar="N",
                   help="peers the kernel counts apart, for every interface together (default: %d); a peer beyond "
                        "counts in `other`, and peers idle for %d intervals give their room back. Kernel memory, "
                        "taken at start: two tables of 2 x N entries (rounded up to a power of two) of "
                        "%d + %d x CPUs bytes, %s" % (layout.PEERS_DEFAULT, talkers.RETIRE_AFTER, talkers.ENTRY_BYTES,
                                                       layout.PEER.size, _talkers_memory()))
    p.add_argument("--direction", choices=("rx", "tx", "both"), default="both",
                   help="what to count: received, sent, or both (default)")
    p.add_argument("--hook", choices=HOOKS, default="auto",
                   help="where rx is counted: xdp, tc (ingress), or auto: native XDP where the driver has it, "
                        "the interface is no veth and no other XDP program is attached, else tc (default); "
                        "tx is always counted at tc egress")
    p.add_argument("--mode", choices=xdp.MODES, default="auto",
                   help="XDP mode, for rx at xdp: native (in the driver), generic (in the stack), or auto: "
                        "native where the driver has it, else generic (default); native or generic implies "
                        "--hook xdp")
    p.add_argument("--loader", choices=LOADERS,
                   help="what loads the program: libbpf (the system's libbpf.so), native (bpf(2) alone, "
                        "no libbpf needed), or auto: libbpf where it is installed, else native (default: "
                        "$KUBENETPROBE_LOADER, else $EBPF_IMPLEMENTATION, else auto)")
    p.add_argument("--object", metavar="PATH",
                   help="load the programs from this ELF object instead of the embedded one; SIGHUP "
                        "reloads it (default: $KUBENETPROBE_OBJECT when $EBPF_IMPLEMENTATION=object)")
    p.add_argument("--pin", metavar="DIR",
                   help="pin the stats map and the link in DIR (on a bpffs; one is mounted at /sys/fs/bpf "
                        "if none is): the program keeps counting after exit and the next run with the "
                        "same DIR takes it over, counters included")
    p.add_argument("--attach", choices=xdp.METHODS, default="auto", dest="method",
                   help="how to attach: link (a bpf_link: XDP 5.9+, TCX 6.6+, gone when the probe is), netlink "
                        "(older kernels: XDP through netlink, TC as a cls_bpf filter on a clsact qdisc), or "
                        "auto: link where the kernel has it, else netlink (default)")
    p.add_argument("--force", action="store_true",
                   help="with --hook xdp, replace an XDP program that is already attached (default: refuse)")
    p.add_argument("-v", "--verbose", action="store_true", help="say more; on failure, show the traceback and "
                                                                  "libbpf's or the verifier's log")
    p.add_argument("--version", action="version", version="kubenetprobe " + probe.__version__)
    return p


def loader_from(environ):
    """The loader named by the environment: $KUBENETPROBE_LOADER, else $EBPF_IMPLEMENTATION, else auto."""
    loader = environ.get("KUBENETPROBE_LOADER")
    if loader:
        if loader not in LOADERS:
            raise ProbeError("$KUBENETPROBE_LOADER is %r" % loader, hint="use one of %s" % ", ".join(LOADERS))
        return loader
    original = environ.get("EBPF_IMPLEMENTATION")
    if original:
        if original not in ORIGINAL_LOADERS:
            raise ProbeError("$EBPF_IMPLEMENTATION is %r" % original,
                             hint="use one of %s" % ", ".join(sorted(ORIGINAL_LOADERS)))
        return ORIGINAL_LOADERS[original]
    return "auto"


def object_from(environ):
    """The object file named by the environment, for $EBPF_IMPLEMENTATION=object; else None."""
    if environ.get("EBPF_IMPLEMENTATION") != "object":
        return None
    path = environ.get("KUBENETPROBE_OBJECT")
    if not path:
        raise ProbeError("$EBPF_IMPLEMENTATION is 'object' but $KUBENETPROBE_OBJECT is not set",
                         hint="set it to the object's path, or use --object PATH")
    return path


def detach_parser():
    """The argument parser of `kubenetprobe detach`."""
    p = argparse.ArgumentParser(prog="kubenetprobe detach",
                                description="Remove the programs that a killed kubenetprobe left on an "
                                            "interface (possible when it attached through netlink, or pinned): its "
                                            "XDP program, its TC filters and TCX links; nothing else.")
    p.add_argument("-i", "--interface", action="append", metavar="NAME", required=True,
                   help="interface to clean; repeat for several")
    p.add_argument("--force", action="store_true",
                   help="remove the XDP program, and the TC filters at the probe's place, even if not kubenetprobe's")
    p.add_argument("--pin", metavar="DIR", help="the --pin DIR of the run to end: its pins are removed too")
    p.add_argument("-v", "--verbose", action="store_true", help="on failure, show the traceback")
    return p


def run_detach(args):
    """Remove kubenetprobe's program (and pins, and keys in the pinned stats map) from each interface named; the
    stats map's pin goes once no interface is left pinned."""
    root = PinRoot(args.pin) if args.pin else None
    try:
        for name in args.interface:
            pins = root.interface(name) if root else None
            unpinned = pins is not None and pins.exists()
            if unpinned:
                pins.release()
                _delete_pinned_keys(root, name)
            removed = xdp.detach(name, layout.OWNER, force=args.force)
            if removed:
                print("detached XDP program %s from %s" % (removed, name))
            filters = tc.detach(name, layout.OWNER, force=args.force)
            for p in filters:
                print("detached TC %s program id %d (%s) from %s" % (p.direction, p.prog_id, p.name, name))
            if unpinned and not (removed or filters):
                print("removed the pins of %s" % name)
            elif not (removed or filters or unpinned):
                raise ProbeError("%s has no program of kubenetprobe's" % name)
    finally:
        if root:
            root.unpin_map_if_unused()
    return EXIT_OK


def _delete_pinned_keys(root, name):
    """Stop the pinned maps counting an interface (knp_slots[ifindex] = 0), where it still has the maps and the
    interface; its slot is free for the next run (which rebuilds what is given from the interfaces pinned)."""
    if not root.has_map():
        return
    try:
        index = interfaces.ifindex(name)
    except ProbeError:
        return  # gone, and its ifindex with it: a run that gets that ifindex again gives it a slot, zeroed
    map_fd = root.open_map(layout.SLOTS_MAP)
    try:
        stats.unfollow(Map(map_fd), index)
    finally:
        os.close(map_fd)


def inspect_parser():
    """The argument parser of `kubenetprobe inspect`."""
    p = argparse.ArgumentParser(prog="kubenetprobe inspect",
                                description="Show what a BPF object file holds, without loading anything: its "
                                            "programs, maps, global data, BTF, CO-RE relocations and externs; "
                                            "and whether the native loader can load it and the system's libbpf "
                                            "can open it (if not, the reason a load would give). Needs no root.",
                                epilog="example: kubenetprobe inspect prog.bpf.o --json | jq .maps")
    p.add_argument("object", metavar="OBJECT", help="the ELF object file (clang -target bpf)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("-v", "--verbose", action="store_true", help="on failure, show the traceback")
    return p


def run_inspect(args):
    """Describe an object file."""
    from probe.inspect import describe, format_text
    try:
        with open(args.object, "rb") as f:
            data = f.read()
    except (IOError, OSError) as e:
        raise ProbeError("cannot read %s: %s" % (args.object, e.strerror), errno=e.errno)
    try:
        info = describe(data)
    except ProbeError as e:
        raise e.wrap(args.object) from e
    if args.json:
        import json
        print(json.dumps(info, indent=2))
    else:
        print(format_text(args.object, info))
    return EXIT_OK


class _Signals(object):
    """Turns SIGINT and SIGTERM into a stop, SIGHUP into a reload, each waking the wait between reports."""

    STOP, RELOAD, OTHER = "stop", "reload", "other"

    def __init__(self):
        self.stopped = self.reload = False
        self._read, write = os.pipe()
        os.set_blocking(write, False)
        os.set_blocking(self._read, False)
        signal.set_wakeup_fd(write)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._stop)
        signal.signal(signal.SIGHUP, self._reload)

    def _stop(self, signum, frame):
        self.stopped = True

    def _reload(self, signum, frame):
        self.reload = True

    def wait(self, seconds, other=None):
        """Sleep up to `seconds`; STOP or RELOAD when such a signal came, OTHER when `other` (something with a
        fileno) became readable, else None."""
        if not (self.stopped or self.reload) and seconds > 0:
            readable = select.select([self._read] + ([other] if other is not None else []), [], [], seconds)[0]
            if self._read in readable:
                os.read(self._read, 512)
            elif readable:
                return self.OTHER
        if self.stopped:
            return self.STOP
        if self.reload:
            self.reload = False
            return self.RELOAD
        return None


def _reload(monitor, verbose):
    try:
        monitor.reload()
    except ProbeError as e:
        if verbose:
            _traceback()
        log.warning("reload failed; the running program stays: %s", e)
        return
    for a in monitor.attachments:
        log.info("reloaded %s: %s runs %s (reload %d)", monitor.source, a.interface,
                 ", ".join("program id %d for %s" % (h.program_id, d) for d, h in sorted(a.hooks.items())),
                 a.reloads)


def _to_stderr(level, text):
    sys.stderr.write("kubenetprobe: %s\n" % text)


def _traceback():
    import traceback
    traceback.print_exc()


class _Unlocked(object):
    """The lock of a run with no thread to keep apart: nothing to take."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_UNLOCKED = _Unlocked()


def _choose(args):
    """(names to attach now, patterns to follow or None for --all, whether to follow): -i names must exist
    (attaching says so), patterns and --all follow interfaces as they come and go."""
    if args.all:
        return [], None, True
    given = args.interface or [os.environ.get("NETWORK_INTERFACE") or interfaces.default_interface()]
    patterns = [name for name in given if has_pattern(name)]
    names = [name for name in given if not has_pattern(name)]
    return names, names + patterns if patterns else None, bool(patterns)


def run(args):
    """Attach to the interfaces, print reports until the count is reached or a signal comes, detach."""
    names, patterns, follow = _choose(args)
    signals = _Signals()  # before attaching, so a signal during attach still ends in a detach
    printer = Printer(sys.stdout, json_lines=args.json)
    owners = Owners(args.runtime_root)
    group = args.group_by == "pod"

    def grouped(reports):
        return by_owner(reports) if group else reports

    quiet = args.quiet or (args.listen and not args.json)
    with NetworkMonitor(loader=args.loader or loader_from(os.environ), pin_dir=args.pin,
                        object_path=args.object or object_from(os.environ), talkers=args.talkers,
                        talkers_capacity=args.talkers_capacity) as monitor:
        def attach(name):
            return monitor.attach(name, mode=args.mode, force=args.force, method=args.method, hook=args.hook,
                                  directions=("rx", "tx") if args.direction == "both" else (args.direction,))

        for name in names:
            attach(name)
        follower = Follower(monitor, patterns, args.exclude, attach) if follow else None
        with contextlib.ExitStack() as stack:
            reporter = Reporter(monitor, owners)

            def farewell(a):
                return reporter.report(a, final=True)

            if follower is not None:
                stack.callback(follower.close)
                finals = follower.start(farewell)
                if not quiet:
                    printer.vanished(grouped(finals))
            lock = _serve(args.listen, monitor, stack, owners, group) if args.listen else _UNLOCKED
            done = 0
            due = time.monotonic() + args.interval
            while True:
                event = signals.wait(due - time.monotonic(), follower)
                with lock:
                    if event == signals.RELOAD:
                        _reload(monitor, args.verbose)
                        continue
                    if event == signals.OTHER:
                        finals = follower.update(farewell)
                        if not quiet:
                            printer.vanished(grouped(finals))
                        continue
                    done += 1
                    last = event == signals.STOP or (args.count is not None and done >= args.count)
                    reports = reporter.reports(final=last)
                if not quiet:
                    printer.write(grouped(reports))
                if not last:
                    due = max(due + args.interval, time.monotonic())
                    continue
                if args.pin:
                    log.info("left pinned in %s, counting; `kubenetprobe detach -i IFACE --pin %s` ends it",
                             args.pin, args.pin)
                return EXIT_OK


def _serve(listen, monitor, stack, owners, group):
    """Serve /metrics from a thread of its own until the stack closes; returns the lock that keeps its reads
    apart from the main loop's changes to the monitor."""
    import threading
    from probe.bpf import syscall
    from probe.metrics import families
    from probe.prometheus import MetricsServer, format_address, parse_listen, render

    lock = threading.Lock()
    try:
        stack.callback(os.close, syscall.enable_run_time_stats())  # the stats stay on while this fd is open
        run_stats = True
    except ProbeError as e:
        log.debug("no BPF run-time statistics (kernel 5.8+): %s", e)
        run_stats = False

    def metrics():
        with lock:
            return render(families(monitor, monitor.packet_stats(), run_stats, owners, group))

    server = stack.enter_context(MetricsServer(parse_listen(listen), metrics))
    log.info("serving metrics at http://%s/metrics", format_address(*server.address))
    return lock


def _explain(e):
    """Add what to do to errors that arrive without it, and the pointer to doctor to those it explains."""
    if e.hint is None and e.errno == errno.ENOSYS:
        e.hint = "this kernel has no bpf(2); kubenetprobe needs Linux 4.18 or newer with BPF enabled"
        e.doctor = True
    if e.doctor:
        e.hint = "%s; %s" % (e.hint, DOCTOR_POINTER) if e.hint else DOCTOR_POINTER
    return e


def main(argv=None):
    """Run the command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["detach"]:
        args, action = detach_parser().parse_args(argv[1:]), run_detach
    elif argv[:1] == ["inspect"]:
        args, action = inspect_parser().parse_args(argv[1:]), run_inspect
    elif argv[:1] == ["doctor"]:
        from probe import doctor
        args, action = doctor.parser().parse_args(argv[1:]), doctor.run
    else:
        args, action = parser().parse_args(argv), run
    log.use_handler(_to_stderr, log.DEBUG if args.verbose else log.INFO)
    try:
        return action(args)
    except ProbeError as e:
        if args.verbose:
            _traceback()
            if e.log:
                sys.stderr.write(e.log if e.log.endswith("\n") else e.log + "\n")
        sys.stderr.write("kubenetprobe: error: %s\n" % _explain(e))
        return EXIT_FAILURE
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, like other tools in a pipe.
        sys.stdout = open(os.devnull, "w")
        return EXIT_OK
    except Exception as e:  # a bug: still one line, with the traceback under -v
        if args.verbose:
            _traceback()
        sys.stderr.write("kubenetprobe: error: unexpected %s: %s; run with -v and report it\n"
                         % (type(e).__name__, e))
        return EXIT_FAILURE
