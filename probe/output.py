"""How reports are printed: a table redrawn in place on a terminal, plain columns in a pipe, or JSON lines."""
import shutil

from probe import layout


def _where(report, direction):
    """The hook that counts a direction, with XDP's mode: "xdp native", "tc"."""
    hook = report["hooks"][direction]
    return "%s %s" % (hook, report["mode"]) if hook == "xdp" else hook


def _top(report, level, names):
    """The class of a level with most packets in both directions, and its share: "ipv4 98%"."""
    counts = [sum(report[d][level][n]["packets"] for d in layout.DIRECTIONS if d in report) for n in names]
    total = sum(counts)
    if not total:
        return "-"
    top = max(range(len(names)), key=counts.__getitem__)
    return "%s %d%%" % (names[top], 100 * counts[top] // total)


def _compact(n):
    """9800 -> "9.8k": a rate in a table column, its unit in the column's head."""
    for prefix in ("", "k", "M", "G"):
        if n < 1000 or prefix == "G":
            return ("%.0f%s" if prefix == "" else "%.1f%s") % (n, prefix)
        n /= 1000.0


_HEAD = ("INTERFACE", "RX pps", "RX bit/s", "TX pps", "TX bit/s", "RX packets", "TX packets", "L3", "L4", "OWNER",
         "")
_ALIGN = ("<", ">", ">", ">", ">", ">", ">", "<", "<", "<", "<")
_OWNER = _HEAD.index("OWNER")


def _row(report, gone):
    cells = [report["interface"]]
    for direction in layout.DIRECTIONS:
        c = report.get(direction)
        cells += [_compact(c["pps"]), _compact(c["bps"])] if c else ["-", "-"]
    cells += [str(report[d]["packets"]) if d in report else "-" for d in layout.DIRECTIONS]
    return cells + [_top(report, "l3", layout.L3), _top(report, "l4", layout.L4),
                    owner_label(report.get("owner")), "gone" if gone else ""]


def _total(reports):
    sums = {(d, k): sum(r[d][k] for r in reports if d in r) for d in layout.DIRECTIONS
            for k in ("pps", "bps", "packets")}
    return (["total"] + [_compact(sums[d, k]) for d in layout.DIRECTIONS for k in ("pps", "bps")]
            + [str(sums[d, "packets"]) for d in layout.DIRECTIONS] + ["", "", "", ""])


TERMINAL_TALKERS = 5  # peers per direction the terminal shows at most, beside `other`


def talker_lines(report, limit=TERMINAL_TALKERS):
    """The lines under an interface's row of its top peers (--talkers) in each direction, `other` last (every
    peer beyond the first `limit` and the report's own other); none without talkers."""
    lines = []
    for direction in layout.DIRECTIONS:
        listed = (report.get("talkers") or {}).get(direction)
        if not listed:
            continue
        peers = [p for p in listed if p["address"] != "other"]
        rest = peers[limit:] + [p for p in listed if p["address"] == "other"]
        other = dict({k: sum(p[k] for p in rest) for k in ("packets", "bytes", "pps", "bps")}, address="other")
        width = max(len(p["address"]) for p in peers[:limit] + [other])
        lines += ["  %s %-*s  %7s pps  %7s bit/s  %d packets" % (direction, width, p["address"], _compact(p["pps"]),
                                                                  _compact(p["bps"]), p["packets"])
                  for p in peers[:limit] + [other]]
    return lines


def _traffic(report):
    return sum(report[d]["bps"] for d in layout.DIRECTIONS if d in report)


def format_table(reports, height=None, gone=()):
    """Reports as a table for a terminal: a row per interface (and per one `gone` since the last table),
    busiest first, each with its top talkers under it (--talkers), and a total row; with a height, the quietest
    rows give way to a line saying how many. The owner column is there when some interface has an owner."""
    ordered = sorted([(r, False) for r in reports] + [(r, True) for r in gone],
                     key=lambda pair: (-_traffic(pair[0]), pair[0]["interface"]))
    reports = [r for r, _ in ordered]
    rows = [(_row(r, g), talker_lines(r)) for r, g in ordered]  # each with the lines under it
    if height is not None:
        room = max(height - 4, 2)  # the title, head, total and the cursor's line
        if sum(1 + len(under) for _, under in rows) > room:
            room -= 1  # for the line saying how many are left out
            shown = 0
            while shown < len(rows) and 1 + len(rows[shown][1]) <= room:
                room -= 1 + len(rows[shown][1])
                shown += 1
            shown = max(shown, 1)
            rows = rows[:shown] + [(["(%d quieter)" % (len(rows) - shown)] + [""] * (len(_HEAD) - 1), [])]
    rows = [(list(_HEAD), [])] + rows + [(_total(reports), [])]
    columns = [i for i in range(len(_HEAD)) if i != _OWNER or any(r.get("owner") for r in reports)]
    rows = [([row[i] for i in columns], under) for row, under in rows]
    aligns = [_ALIGN[i] for i in columns]
    widths = [max(len(row[i]) for row, _ in rows) for i in range(len(columns))]
    when = reports[0]["time"][11:19] if reports else ""
    lines = ["kubenetprobe  %s UTC  %d interface%s" % (when, len(reports), "" if len(reports) == 1 else "s")]
    for row, under in rows:
        lines.append("  ".join("{:{}{}}".format(cell, align, width) for cell, align, width
                               in zip(row, aligns, widths)).rstrip())
        lines += under
    return lines


COLUMNS = (["time", "interface", "direction", "hook", "packets", "bytes", "pps", "bps"]
           + ["l3_" + n for n in layout.L3] + ["l4_" + n for n in layout.L4] + ["owner"])


def owner_label(owner):
    """How a line names a report's owner: NAMESPACE/POD, a container's name, or - for none known."""
    if not owner:
        return "-"
    return "%s/%s" % (owner["namespace"], owner["name"]) if owner["kind"] == "pod" else owner["name"]


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
        fields.append(owner_label(report.get("owner")))
        lines.append(" ".join(fields))
    return lines


def format_json(report):
    """A report as one line of JSON."""
    import json  # only --json pays for it
    return json.dumps(report, sort_keys=False, separators=(", ", ": "))


class Printer(object):
    """Writes reports to a stream in the form that suits it: on a terminal, one table redrawn in place."""

    def __init__(self, stream, json_lines=False, height=None):
        self.stream = stream
        self.json_lines = json_lines
        self.tty = not json_lines and stream.isatty()
        self.height = height
        self._header_done = False
        self._drawn = 0  # lines of the table on the screen, to go back over
        self._gone = []  # final reports of vanished interfaces, shown in the next table

    def write(self, reports):
        if self.tty:
            return self._draw(reports)
        lines = []
        for report in reports:
            if self.json_lines:
                lines.append(format_json(report))
            else:
                if not self._header_done:
                    lines.append(format_header())
                    self._header_done = True
                lines += format_lines(report)
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()

    def vanished(self, reports):
        """Final reports of interfaces that went away between intervals: on a terminal, rows of the next table."""
        if self.tty:
            self._gone += reports
        else:
            self.write(reports)

    def _draw(self, reports):
        height = self.height or shutil.get_terminal_size().lines
        lines = format_table(reports, height, self._gone)
        self._gone = []
        # Back to the previous table's first line, clear to the end of the screen, draw over it.
        self.stream.write(("\x1b[%dF\x1b[J" % self._drawn if self._drawn else "") + "\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn = len(lines)
