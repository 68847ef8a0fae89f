"""The report: ``benchmarks.md`` (goals, one table per area, the anchors) and a bar chart.

Cells are median [min–max] over the reps.  A goal's value is the median of
its per-rep ratios, each taken between two rows of the same rep (seconds
apart), as the anchors' RESULTS.md does; the goal is met if that median is.
The markdown keeps whatever precedes ``MARKER`` in the existing file (the
hand-written method and how to reproduce) and replaces everything after it.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from typing import Any

from bench import AREAS, FANOUT, LOOKUP, ONEWAY, RR, Bench, Column, Goal
from bench.anchors import ANCHORS, SCALE_CALLERS, nats_server
from bench.runner import Outcome

__all__ = ["MARKER", "machine_info", "render", "write_markdown", "plot"]

MARKER = "<!-- Everything below is written by `python -m bench`; edit above this line only. -->"


# -------------------------------------------------------------------- numbers
def fmt(value: Any, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "bool":
        return "yes" if value else "NO"
    if kind == "int":
        return f"{value:,.0f}".replace(",", " ")
    if kind == "rate":
        if value >= 1e6:
            return f"{value / 1e6:.2f}M"
        if value >= 1e5:
            return f"{value / 1e3:.0f}k"
        if value >= 1e4:
            return f"{value / 1e3:.1f}k"
        return f"{value:.0f}"
    if kind == "us":
        return f"{value:.0f}" if value >= 100 else f"{value:.1f}"
    if kind == "ms":
        return f"{value:.1f}" if value < 100 else f"{value:.0f}"
    if kind == "ratio":
        return f"{value:.0f}" if value >= 100 else f"{value:.2f}"
    return str(value)


def spread(values: list[Any], kind: str) -> str:
    """median [min–max] of the measured values (booleans: yes only if every rep)."""
    present = [v for v in values if v is not None]
    if not present:
        return "–"
    if kind == "bool":
        return fmt(all(present), kind)
    middle = statistics.median(present)
    if len(present) == 1:
        return fmt(middle, kind)
    return f"{fmt(middle, kind)} [{fmt(min(present), kind)}–{fmt(max(present), kind)}]"


def metric(outcome: Outcome, key: str, name: str) -> list[Any]:
    return [r.get(name) if r else None for r in outcome.results.get(key, [])]


def ratios(outcome: Outcome, num: tuple[str, str], den: tuple[str, str] | None) -> list[float]:
    """Per-rep values of a goal: num/den within each rep (or num alone)."""
    tops = metric(outcome, *num)
    if den is None:
        return [float(t) for t in tops if t is not None]
    bottoms = metric(outcome, *den)
    return [t / b for t, b in zip(tops, bottoms) if t is not None and b]


def goal_value(outcome: Outcome, goal: Goal) -> float | None:
    values = ratios(outcome, goal.num, goal.den)
    return statistics.median(values) if values else None


def _label(key: str, rows: dict[str, Bench]) -> str:
    row = rows.get(key) or ANCHORS.get(key)
    return row.label if row else key


def _goal_cell(outcome: Outcome, goal: Goal) -> tuple[str, str]:
    """(value median [min–max], verdict)."""
    values = ratios(outcome, goal.num, goal.den)
    kind = "ratio" if goal.unit == "x" else "ms"
    if not values:
        why = (outcome.skipped.get(goal.den[0]) if goal.den else None) \
            or outcome.skipped.get(goal.num[0])
        return "–", "not measured" + (f" ({why.split(':')[0]})" if why else "")
    value = statistics.median(values)
    unit = "×" if goal.unit == "x" else f" {goal.unit}"
    return spread(values, kind) + unit, "**met**" if goal.met(value) else "**NOT met**"


# --------------------------------------------------------------------- tables
# every row's CPU (user+system, every process involved) per message, call or lookup
CPU: Column = ("cpu_us_per_op", "CPU µs/op", "us")

def _header(name: str, columns: tuple[Column, ...]) -> str:
    return next((title for metric_name, title, _ in columns if metric_name == name), name)


def _table(outcome: Outcome, rows: list[Bench], all_rows: dict[str, Bench],
           goals: list[Goal], with_goals: bool) -> list[str]:
    columns: tuple[Column, ...] = rows[0].columns
    if all(name != CPU[0] for name, _, _ in columns):
        columns += (CPU,)
    head = ["system", "n"] + [title for _, title, _ in columns]
    if with_goals:
        head += ["same-run ratio", "goal"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row.key in outcome.skipped:
            cells = [row.label, "–"] + ["skipped"] + ["–"] * (len(head) - 3)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        ns = metric(outcome, row.key, "n_target")
        cells = [row.label, fmt(next((n for n in ns if n), None), "int")]
        cells += [spread(metric(outcome, row.key, name), kind) for name, _, kind in columns]
        if with_goals:
            compared, verdicts = [], []
            mine = [g for g in goals if g.num[0] == row.key]
            for goal in mine:
                value, verdict = _goal_cell(outcome, goal)
                against = (f" vs {_label(goal.den[0], all_rows)}" if goal.den else "")
                compared.append(f"{_header(goal.num[1], columns)} {value}{against}")
                verdicts.append(f"{goal.text}: {verdict}")
            # throughput if the row has one (higher is better), else its first metric
            headline = next((name for name, _, kind in columns if kind == "rate"),
                            columns[0][0])
            named = {goal.den[0] for goal in mine if goal.den}
            against = ([] if mine or not row.versus else [row.versus]) + [
                key for key in row.beside if key not in named]
            for key in against:
                values = ratios(outcome, (row.key, headline), (key, headline))
                compared.append(f"{_header(headline, columns)} {spread(values, 'ratio')}× vs "
                                f"{_label(key, all_rows)}" if values else "–")
            if not mine and against:
                verdicts.append("none (for reference)")
            cells += ["<br>".join(compared) or "–", "<br>".join(verdicts) or "none"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _grouped(rows: Iterable[Bench]) -> list[list[Bench]]:
    groups: dict[tuple[Column, ...], list[Bench]] = {}
    for row in rows:
        groups.setdefault(row.columns, []).append(row)
    return list(groups.values())


def render(outcome: Outcome, info: dict[str, str], pending: list[tuple[str, str, str]],
           command: str) -> str:
    rows = {row.key: row for row in outcome.order}
    lines = ["## Results", ""]
    if outcome.interrupted:
        lines += ["**INTERRUPTED: an incomplete run; some rows have fewer reps than stated.**",
                  ""]
    lines += [f"Command: `{command}` — {outcome.reps} rep(s) per row, round robin, "
              f"scale {outcome.scale:g}, wall time {outcome.elapsed:.0f} s, "
              f"finished {info['finished']}.",
              "",
              f"Machine: {info['nproc']} cores ({info['cpu']}), kernel {info['kernel']}, "
              f"Python {info['python']}, pyzmq {info['pyzmq']} / libzmq {info['libzmq']}, "
              f"msgpack {info['msgpack']}; anchors: Pyro5 {info['Pyro5']}, nats-py "
              f"{info['nats-py']}, {info['nats-server']}. Load average (1 min) "
              f"{info['load_before']} before the run, {info['load_after']} after.",
              ""]
    # goals first: what the suite is for
    lines += ["### Goals", "",
              "| goal | area | measured (median [min–max] of same-run values) | verdict |",
              "|---|---|---|---|"]
    met = measured = 0
    for goal in outcome.goals:
        value, verdict = _goal_cell(outcome, goal)
        if verdict.startswith("**"):
            measured += 1
            met += verdict == "**met**"
        lines.append(f"| {goal.text} | {goal.issue} | {value} | {verdict} |")
    lines += ["", f"{met} of {measured} measured goals met"
              + (f"; {len(outcome.goals) - measured} not measured" if
                 len(outcome.goals) > measured else "") + ".", ""]
    # posa's rows, area by area
    for area, title, _ in AREAS:
        area_rows = [row for row in outcome.order if row.area == area]
        if not area_rows:
            continue
        lines += [f"### {title}", ""]
        for group in _grouped(area_rows):
            lines += _table(outcome, group, rows, outcome.goals, True) + [""]
        for row in area_rows:
            if row.note:
                lines += [f"- {row.label}: {row.note}"]
        if any(row.note for row in area_rows):
            lines.append("")
    if pending:
        lines += ["### Slots not filled yet", ""]
        lines += [f"- `bench/{area}.py` — {title}: {what}" for area, title, what in pending]
        lines.append("")
    anchor_rows = [row for row in outcome.order if row.area == "anchors"]
    if anchor_rows:
        lines += ["### Anchors (measured by ../shared/anchors in the same run)", ""]
        for group in _grouped(anchor_rows):
            lines += _table(outcome, group, rows, outcome.goals, False) + [""]
    notes = [f"- skipped {_label(k, rows)}: {why}" for k, why in outcome.skipped.items()]
    notes += [f"- {failure.splitlines()[0]}" for failure in outcome.failures]
    if notes:
        lines += ["### Skipped and failed", ""] + notes + [""]
    return "\n".join(lines)


def write_markdown(path: str, body: str, default_header_from: str) -> None:
    """Write ``body`` after the header (everything up to ``MARKER``) of the file at
    ``path``, or of ``default_header_from`` if that file has none."""
    header = "# posa benchmarks\n\n"
    for source in (path, default_header_from):
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except OSError:
            continue
        if MARKER in text:
            header = text.split(MARKER, 1)[0]
            break
    with open(path, "w", encoding="utf-8") as f:
        f.write(header + MARKER + "\n\n" + body.rstrip() + "\n")


# -------------------------------------------------------------------- machine
def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"n/a ({exc})"
    return (done.stdout.strip() or done.stderr.strip()) if done.returncode == 0 else "missing"


def machine_info(anchor_python: str) -> dict[str, str]:
    """What the report says about the machine (``load_after``/``finished`` set later)."""
    import msgpack
    import zmq
    cpu = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), "?")
    except OSError:
        pass
    version = "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))"
    nats = nats_server(anchor_python)
    return {
        "nproc": str(os.cpu_count()), "cpu": cpu, "kernel": platform.release(),
        "python": platform.python_version(), "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(), "msgpack": ".".join(map(str, msgpack.version)),
        "Pyro5": _run([anchor_python, "-c", version, "Pyro5"]),
        "nats-py": _run([anchor_python, "-c", version, "nats-py"]),
        "nats-server": (_run([nats, "--version"]) if nats else "nats-server missing"),
        "load_before": f"{os.getloadavg()[0]:.1f}",
    }


def finish_info(info: dict[str, str]) -> None:
    info["load_after"] = f"{os.getloadavg()[0]:.1f}"
    info["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


# ----------------------------------------------------------------------- plot
# (metric, title, the column set whose rows (or rows extending it) the panel shows)
PANELS = (("msgs_per_s", "one-way msgs/s", ONEWAY),
          ("calls_per_s", "request-reply calls/s (sequential, 1 client)", RR),
          ("lookups_per_s", "name lookups/s (log scale)", LOOKUP),
          ("per_sub_msgs_per_s", "fan-out msgs/s per subscriber", FANOUT))


# rate against concurrent callers (bench/scale.py):
# (metric, title, [(label, row key prefix, colour)])
SCALE_PANELS = (
    ("calls_per_s", "request-reply calls/s against concurrent callers",
     (("posa Peer.request (threads)", "scale_calls_", "#1f77b4"),
      ("posa.aio Peer.request (tasks)", "scale_aio_", "#17becf"),
      ("Pyro5 (threads)", "scale_pyro_", "#7f7f7f"),
      ("NATS nc.request (tasks)", "scale_nats_", "#ff7f0e"))),
    ("lookups_per_s", "uncached name lookups/s against concurrent callers",
     (("posa RegistryClient (threads)", "scale_lookup_", "#1f77b4"),
      ("Pyro5 name server (threads)", "scale_pyro_lookup_", "#7f7f7f"))),
)


Series = list[tuple[str, str, list[tuple[int, list[float]]]]]   # (label, colour, points)


def _scale_series(outcome: Outcome) -> list[tuple[str, str, Series]]:
    """For each scale panel with data: (title, metric, [(label, colour, [(N, values)])])."""
    panels = []
    for name, title, series in SCALE_PANELS:
        lines: Series = []
        for label, prefix, colour in series:
            points = [(callers, [v for v in metric(outcome, f"{prefix}{callers}", name) if v])
                      for callers in SCALE_CALLERS]
            points = [(callers, values) for callers, values in points if values]
            if points:
                lines.append((label, colour, points))
        if lines:
            panels.append((title, name, lines))
    return panels


def _scale_keys() -> set[str]:
    return {f"{prefix}{callers}" for _, _, series in SCALE_PANELS for _, prefix, _ in series
            for callers in SCALE_CALLERS}


def _draw_scale(ax: Any, title: str, lines: Series) -> None:
    for label, colour, points in lines:
        xs = [callers for callers, _ in points]
        medians = [statistics.median(values) for _, values in points]
        low = [m - min(v) for m, (_, v) in zip(medians, points)]
        high = [max(v) - m for m, (_, v) in zip(medians, points)]
        ax.errorbar(xs, medians, yerr=[low, high], marker="o", capsize=2, label=label,
                    color=colour)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(SCALE_CALLERS), [str(c) for c in SCALE_CALLERS])
    ax.set_xlabel("concurrent callers", fontsize=7)
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9, loc="left")
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def plot(outcome: Outcome, path: str) -> str | None:
    """Draw throughput per system as horizontal bars (median, min–max whiskers), and
    the scale rows' rate against the number of callers as lines.

    Returns None when written, else why not (matplotlib missing, nothing to draw)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (f"matplotlib is not installed in {sys.executable}: no plot "
                "(bash bench/setup.sh makes an environment that has it)")
    panels = []
    scale_keys = _scale_keys()
    for name, title, columns in PANELS:
        bars = []
        for row in outcome.order:
            if row.columns[:len(columns)] != columns or row.key in scale_keys:
                continue
            values = [v for v in metric(outcome, row.key, name) if v]
            if values:
                bars.append((row.label, row.area != "anchors", values))
        if bars:
            panels.append((title, name, bars))
    scale = _scale_series(outcome)
    if not panels and not scale:
        return "nothing to plot"
    heights = [0.6 + 0.32 * len(bars) for _, _, bars in panels] + [3.0] * len(scale)
    fig, axes = plt.subplots(len(heights), 1, figsize=(12, sum(heights) + 0.8),
                             gridspec_kw={"height_ratios": heights}, squeeze=False,
                             layout="constrained")
    for ax, (title, _, lines) in zip(axes[len(panels):, 0], scale):
        _draw_scale(ax, title, lines)
    for ax, (title, name, bars) in zip(axes[:, 0], panels):
        labels = [label for label, _, _ in bars][::-1]
        medians = [statistics.median(v) for _, _, v in bars][::-1]
        low = [m - min(v) for m, (_, _, v) in zip(medians, bars[::-1])]
        high = [max(v) - m for m, (_, _, v) in zip(medians, bars[::-1])]
        colors = ["#1f77b4" if posa else "#9a9a9a" for _, posa, _ in bars][::-1]
        ax.barh(range(len(bars)), medians, xerr=[low, high], color=colors,
                error_kw={"elinewidth": 0.8, "capsize": 2})
        ax.set_yticks(range(len(bars)), labels, fontsize=7)
        ax.set_title(title, fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=7)
        if name == "lookups_per_s":
            ax.set_xscale("log")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"posa (blue) and the anchors (grey): median of {outcome.reps} rep(s), "
                 "whiskers min–max", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
