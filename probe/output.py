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


def _where(report, direction):
    """The hook that counts a direction, with XDP's mode: "xdp native", "tc"."""
    hook = report["hooks"][direction]
    return "%s %s" % (hook, report["mode"]) if hook == "xdp" else hook


TERMINAL_TALKERS = 5  # peers per direction the terminal shows at most, beside `other`


def talker_lines(report, direction, limit=TERMINAL_TALKERS):
    """The lines of a direction's top peers (--talkers) under its counters in the terminal view, `other` last;
    none without talkers."""
    listed = (report.get("talkers") or {}).get(direction)
    if not listed:
        return []
    shown = [p for p in listed if p["address"] != "other"][:limit]
    rest = [p for p in listed if p["address"] != "other"][limit:] + [p for p in listed if p["address"] == "other"]
    other = {k: sum(p[k] for p in rest) for k in ("packets", "bytes", "pps", "bps")}
    width = max(len(p["address"]) for p in shown + [{"address": "other"}])
    return ["      %-*s  %d packets  %s  %s  %s" % (width, p["address"], p["packets"], human_bytes(p["bytes"]),
                                                 human_rate(p["pps"], "pps"), human_rate(p["bps"], "bit/s"))
            for p in shown + [dict(other, address="other")]]


def format_block(report):
    """A report for a person at a terminal."""
    lines = ["%s  %s%s" % (report["time"][:19].replace("T", " "), report["interface"],
                           "  final" if report["final"] else "")]
    for direction in layout.DIRECTIONS:
        if direction not in report:
            continue
        c = report[direction]
        lines += [
            "  %s  %d packets  %s  %s  %s  (%s)" % (direction, c["packets"], human_bytes(c["bytes"]),
                                                  human_rate(c["pps"], "pps"), human_rate(c["bps"], "bit/s"),
                                                  _where(report, direction)),
            "      l3  " + _classes(c["l3"], layout.L3),
            "      l4  " + _classes(c["l4"], layout.L4),
        ] + talker_lines(report, direction)
    return "\n".join(lines + [""])


COLUMNS = (["time", "interface", "direction", "hook", "packets", "bytes", "pps", "bps"]
           + ["l3_" + n for n in layout.L3] + ["l4_" + n for n in layout.L4])


def format_header():
    """The header line of the plain, pipe-friendly output."""
    return " ".join(COLUMNS)


def format_lines(report):
    """A report as one line of exact numbers per direction, for awk and friends."""
    lines = []
    for direction in layout.DIRECTIONS:
        if direction not in report:
            continue
        c = report[direction]
        fields = [report["time"], report["interface"], direction, _where(report, direction).replace(" ", "-"),
                  str(c["packets"]), str(c["bytes"]), "%.1f" % c["pps"], "%.1f" % c["bps"]]
        fields += [str(c["l3"][n]["packets"]) for n in layout.L3]
        fields += [str(c["l4"][n]["packets"]) for n in layout.L4]
        lines.append(" ".join(fields))
    return lines


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
                lines += format_lines(report)
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
