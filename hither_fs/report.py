"""``hither-fs report --html FILE``: one self-contained page that shows how a run went.

The page has no script and loads nothing: an inline SVG timeline of the jobs
on their workers (one lane per job running at once on a worker, bars coloured
by status, a tooltip per bar), above it the number of jobs waiting in queues
over time, and below it a table per function (jobs by status, run time, queue
wait) and the failures with their one-line errors. It is made from the jobs'
``spec.json`` and ``state.json`` alone (those of ended jobs as the listing's
summaries keep them: :mod:`hither_fs.summary`).
"""

import html
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from .listing import parse_time, resolve_run
from .summary import listing
from .root import Root
from .runtime.files import atomic_write

#: Bar colours by status (the legend shows them).
COLOURS = {"finished": "#2ca02c", "error": "#d62728", "cancelled": "#8c8c8c", "running": "#1f77b4"}
OTHER_COLOUR = "#9467bd"
STATUS_ORDER = ["finished", "error", "cancelled", "running", "queued", "pending"]
WAITING_COLOUR = "#ff9f40"
LANE_HEIGHT = 18
LABEL_WIDTH = 260
CHART_WIDTH = 900


def report_rows(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The listing's rows with their times as numbers."""
    return [dict(r, submitted=parse_time(r["submitted"])) for r in rows]


def _lanes(rows: List[Dict[str, Any]]) -> List[Tuple[str, List[Dict[str, Any]]]]:
    """Lanes of the timeline: per worker, as many as it ran jobs at once (first free lane wins)."""
    by_worker: Dict[str, List[Dict[str, Any]]] = {}
    for r in sorted((r for r in rows if r["start"] is not None), key=lambda r: r["start"]):
        by_worker.setdefault(r["worker"] or "?", []).append(r)
    lanes: List[Tuple[str, List[Dict[str, Any]]]] = []
    for worker, jobs in by_worker.items():
        mine: List[List[Dict[str, Any]]] = []
        for job in jobs:
            for lane in mine:
                if (lane[-1]["end"] or float("inf")) <= job["start"]:
                    lane.append(job)
                    break
            else:
                mine.append([job])
        host = jobs[0]["host"]
        for i, lane in enumerate(mine):
            lanes.append(("{} {}".format(worker, "slot {}".format(i + 1)) + (" on {}".format(host) if host and
                                                                            host not in worker else ""), lane))
    return lanes


def _seconds(x: Optional[float]) -> str:
    if x is None:
        return "-"
    if x < 1:
        return "{:.0f} ms".format(x * 1000)
    if x < 120:
        return "{:.1f} s".format(x)
    return "{:.1f} min".format(x / 60)


def _tick_step(span: float) -> float:
    for step in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600,
                 7200, 14400, 43200, 86400):
        if span / step <= 10:
            return step
    return span / 10


def _timeline(rows: List[Dict[str, Any]], now: float) -> str:
    lanes = _lanes(rows)
    times = [t for r in rows for t in (r["submitted"], r["start"], r["end"]) if t is not None]
    if any(r["start"] is not None and r["end"] is None for r in rows):
        times.append(now)  # a running job's bar reaches the present
    t0, t1 = (min(times), max(times)) if times else (now, now + 1)
    t1 = max(t1, t0 + 1e-3)
    scale = CHART_WIDTH / (t1 - t0)

    def x(t: float) -> float:
        return LABEL_WIDTH + (t - t0) * scale

    wait_height = 60
    top = wait_height + 30
    height = top + LANE_HEIGHT * max(len(lanes), 1) + 40
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" '
           'font-size="11" id="timeline">'.format(LABEL_WIDTH + CHART_WIDTH + 20, height)]
    # jobs waiting in queues over time: a step chart
    events = sorted([(r["submitted"], 1) for r in rows if r["submitted"] is not None] +
                    [(r["start"] if r["start"] is not None else (r["end"] or t1), -1)
                     for r in rows if r["submitted"] is not None])
    waiting, peak, points = 0, 1, [(t0, 0)]
    for t, d in events:
        points.append((t, waiting))
        waiting += d
        points.append((t, waiting))
        peak = max(peak, waiting)
    points.append((t1, waiting))
    path = " ".join("{:.1f},{:.1f}".format(x(t), wait_height - n * (wait_height - 5) / peak) for t, n in points)
    out.append('<text x="4" y="{}">jobs waiting (peak {})</text>'.format(wait_height // 2, peak))
    out.append('<polygon id="waiting" fill="{}" fill-opacity="0.6" stroke="none" points="{:.1f},{} {} {:.1f},{}"/>'
               .format(WAITING_COLOUR, x(t0), wait_height, path, x(t1), wait_height))
    # the lanes and their jobs
    for i, (name, jobs) in enumerate(lanes):
        y = top + i * LANE_HEIGHT
        if i % 2 == 0:
            out.append('<rect x="0" y="{}" width="{}" height="{}" fill="#f3f3f3"/>'.format(
                y, LABEL_WIDTH + CHART_WIDTH + 20, LANE_HEIGHT))
        out.append('<text x="4" y="{}">{}</text>'.format(y + 13, html.escape(name[:44])))
        for r in jobs:
            end = r["end"] if r["end"] is not None else now
            colour = COLOURS.get(r["status"], OTHER_COLOUR)
            wait = max(0.0, r["start"] - r["submitted"]) if r["submitted"] is not None else None  # clocks differ
            tip = "{} {} ({})\nqueued {}, ran {}{}".format(
                r["function"], r["id"], r["status"], _seconds(wait), _seconds(end - r["start"]),
                "\n" + r["error"][:300] if r["error"] else "")
            out.append('<rect class="job {}" x="{:.1f}" y="{}" width="{:.1f}" height="{}" fill="{}">'
                       '<title>{}</title></rect>'.format(
                           html.escape(r["status"]), x(r["start"]), y + 2, max((end - r["start"]) * scale, 1.5),
                           LANE_HEIGHT - 4, colour, html.escape(tip)))
    # the time axis
    axis = top + LANE_HEIGHT * max(len(lanes), 1) + 4
    out.append('<line x1="{0}" x2="{1}" y1="{2}" y2="{2}" stroke="#444"/>'.format(LABEL_WIDTH, LABEL_WIDTH +
                                                                                 CHART_WIDTH, axis))
    step = _tick_step(t1 - t0)
    k = 0
    while k * step <= (t1 - t0) + 1e-9:
        tx = x(t0 + k * step)
        out.append('<line x1="{0:.1f}" x2="{0:.1f}" y1="{1}" y2="{2}" stroke="#444"/>'
                   '<text x="{0:.1f}" y="{3}" text-anchor="middle">{4}</text>'.format(
                       tx, axis, axis + 4, axis + 16, _seconds(k * step) if k else "0"))
        k += 1
    out.append("</svg>")
    return "\n".join(out)


def _function_table(rows: List[Dict[str, Any]]) -> str:
    by_function: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        by_function.setdefault(r["function"], []).append(r)
    statuses = STATUS_ORDER
    head = "".join("<th>{}</th>".format(s) for s in ["function", "jobs"] + statuses +
                   ["run time: total", "mean", "max", "queue wait: mean", "max"])
    body = []
    for name, jobs in sorted(by_function.items()):
        ran = [r["end"] - r["start"] for r in jobs if r["start"] is not None and r["end"] is not None]
        waits = [max(0.0, r["start"] - r["submitted"]) for r in jobs
                 if r["start"] is not None and r["submitted"] is not None]
        counts = [sum(1 for r in jobs if r["status"] == s) for s in statuses]
        cells = [html.escape(name), str(len(jobs))] + [str(c) if c else "" for c in counts] + [
            _seconds(sum(ran)) if ran else "-", _seconds(sum(ran) / len(ran)) if ran else "-",
            _seconds(max(ran)) if ran else "-", _seconds(sum(waits) / len(waits)) if waits else "-",
            _seconds(max(waits)) if waits else "-"]
        body.append("<tr>" + "".join("<td>{}</td>".format(c) for c in cells) + "</tr>")
    return '<table id="functions"><tr>{}</tr>{}</table>'.format(head, "".join(body))


def _failures(rows: List[Dict[str, Any]], limit: int = 50) -> str:
    failed = [r for r in rows if r["status"] == "error"]
    if not failed:
        return "<p>No job failed.</p>"
    lines = ["<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>".format(
        r["id"], html.escape(r["function"]), html.escape(r["error"][:300])) for r in failed[:limit]]
    more = "<p>... and {} more.</p>".format(len(failed) - limit) if len(failed) > limit else ""
    return '<table id="failures"><tr><th>job</th><th>function</th><th>error</th></tr>{}</table>{}'.format(
        "".join(lines), more)


def render(root: Root, run: str, rows: List[Dict[str, Any]], now: float) -> str:
    """The whole page."""
    counts: Dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    legend = " ".join('<span class="key" style="background:{}"></span>{}'.format(c, s) for s, c in
                      list(COLOURS.items()) + [("waiting in a queue", WAITING_COLOUR)])
    labels = sorted({r["label"] for r in rows if r["label"]})
    summary = ", ".join("{} {}".format(counts[s], s) for s in sorted(
        counts, key=lambda s: (STATUS_ORDER.index(s) if s in STATUS_ORDER else len(STATUS_ORDER), s)))
    return """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>hither_fs run {run}</title>
<style>
body {{ font-family: sans-serif; font-size: 13px; margin: 16px; background: #fff; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 16px 0; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
.key {{ display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; vertical-align: middle; }}
</style></head><body>
<h1>Run {run}</h1>
<p>Root <code>{root}</code>{labels}. {n} jobs: {summary}.</p>
<p>{legend}</p>
{timeline}
<h2>By function</h2>
{functions}
<h2>Failures</h2>
{failures}
</body></html>
""".format(run=html.escape(run or "(no run id)"), root=html.escape(root.path),
           labels="; label " + html.escape(", ".join(labels)) if labels else "", n=len(rows),
           summary=html.escape(summary), legend=legend, timeline=_timeline(rows, now),
           functions=_function_table(rows), failures=_failures(rows))


def write_report(root: Root, path: str, run: Optional[str] = None, now: Optional[float] = None) -> Tuple[str, int]:
    """Write the page of ``run`` (a unique prefix; None: the newest run) to ``path``.
    Returns the run's id and its number of jobs."""
    jobs = listing(root)
    chosen = resolve_run(jobs.runs(), run) if run is not None else jobs.newest_run()
    rows = report_rows(jobs.select(run=chosen).rows())
    page = render(root, chosen, rows, time.time() if now is None else now)
    atomic_write(os.path.abspath(path), lambda f: f.write(page.encode("utf-8")))
    return chosen, len(rows)
