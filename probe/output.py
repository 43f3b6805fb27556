"""How reports are printed: a readable block on a terminal, plain columns in a pipe, or JSON lines."""
from probe import layout


def human_bytes(n):
    """1536 -> "1.5 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return "%d %s" % (n, unit) if unit == "B" else "%.1f %s" % (n, unit)
        n /= 1024.0


def human_rate(n, unit):
    """9800, "bit/s" -> "9.8 kbit/s" (SI prefixes, as rates are usually given)."""
    for prefix in ("", "k", "M", "G", "T"):
        if n < 1000 or prefix == "T":
            return "%.1f %s%s" % (n, prefix, unit)
        n /= 1000.0


def _classes(counters, names):
    return "  ".join("%s %d" % (name, counters[name]["packets"]) for name in names)


def format_block(report):
    """A report for a person at a terminal."""
    rx = report["rx"]
    return "\n".join([
        "%s  %s (xdp %s)%s" % (report["time"][:19].replace("T", " "), report["interface"], report["mode"],
                                 "  final" if report["final"] else ""),
        "  rx  %d packets  %s  %s  %s" % (rx["packets"], human_bytes(rx["bytes"]), human_rate(rx["pps"], "pps"),
                                          human_rate(rx["bps"], "bit/s")),
        "  l3  " + _classes(rx["l3"], layout.L3),
        "  l4  " + _classes(rx["l4"], layout.L4),
        "",
    ])


COLUMNS = (["time", "interface", "mode", "packets", "bytes", "pps", "bps"]
           + ["l3_" + n for n in layout.L3] + ["l4_" + n for n in layout.L4])


def format_header():
    """The header line of the plain, pipe-friendly output."""
    return " ".join(COLUMNS)


def format_line(report):
    """A report as one line of exact numbers, for awk and friends."""
    rx = report["rx"]
    fields = [report["time"], report["interface"], report["mode"], str(rx["packets"]), str(rx["bytes"]),
              "%.1f" % rx["pps"], "%.1f" % rx["bps"]]
    fields += [str(rx["l3"][n]["packets"]) for n in layout.L3]
    fields += [str(rx["l4"][n]["packets"]) for n in layout.L4]
    return " ".join(fields)


def format_json(report):
    """A report as one line of JSON."""
    import json  # only --json pays for it
    return json.dumps(report, sort_keys=False, separators=(", ", ": "))


class Printer(object):
    """Writes reports to a stream in the form that suits it."""

    def __init__(self, stream, json_lines=False):
        self.stream = stream
        self.json_lines = json_lines
        self.tty = not json_lines and stream.isatty()
        self._header_done = False

    def write(self, reports):
        lines = []
        for report in reports:
            if self.json_lines:
                lines.append(format_json(report))
            elif self.tty:
                lines.append(format_block(report))
            else:
                if not self._header_done:
                    lines.append(format_header())
                    self._header_done = True
                lines.append(format_line(report))
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
