"""Matplotlib figures described as data, in E2B's chart shape (``e2b/chart``).

Runs inside the Python kernel (loaded by ``kernel_startup``), on whatever matplotlib the
template has. Each Axes is read back from its artists: lines -> ``line``, scatter collections ->
``scatter``, bar containers -> ``bar``, wedges -> ``pie``, the lines ``boxplot`` draws ->
``box_and_whisker``. A figure with several charted Axes is a ``superchart`` of them. Anything
this cannot read is ``unknown`` with the title kept, never an exception in the user's cell.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional


def _num(v: Any) -> Any:
    """JSON-safe scalar: numpy numbers to Python, NaN/inf to None, dates to ISO strings."""
    try:
        import numpy as np
        if isinstance(v, np.generic):
            v = v.item()
    except ImportError:
        pass
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, (int, float, str)) or v is None:
        return v
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def _label(artist) -> str:
    """The legend label; matplotlib's placeholders for unlabelled artists (``_child0``) are
    no label at all."""
    label = artist.get_label() or ""
    return "" if label.startswith("_") else label


def _converter(axis):
    getter = getattr(axis, "get_converter", None)      # matplotlib >= 3.10
    return getter() if getter is not None else getattr(axis, "converter", None)


def _is_dates(ax, axis) -> bool:
    """Whether the axis holds dates: matplotlib's date converter, or pandas' time series
    plotting (which draws periods as ordinals and sets ``ax.freq``)."""
    converter = _converter(axis)
    module = type(converter).__module__ if converter is not None else ""
    return "date" in module or (module.startswith("pandas") and axis is ax.xaxis
                                and getattr(ax, "freq", None) is not None)


def _axis(ax, which: str) -> Dict[str, Any]:
    axis = ax.xaxis if which == "x" else ax.yaxis
    label = axis.get_label().get_text() or None
    ticks = [_num(t) for t in axis.get_ticklocs()]
    tick_labels = [t.get_text() for t in axis.get_ticklabels()]
    scale = axis.get_scale()
    converter = _converter(axis)
    if _is_dates(ax, axis):
        scale = "datetime"
        ticks = _dates(ax, axis.get_ticklocs())
    elif converter is not None and "category" in type(converter).__module__:
        scale = "categorical"
    return {f"{which}_label": label, f"{which}_unit": None, f"{which}_ticks": ticks,
            f"{which}_tick_labels": tick_labels, f"{which}_scale": scale}


def _dates(ax, values) -> List[Any]:
    freq = getattr(ax, "freq", None)
    out = []
    for v in values:
        try:
            if freq is not None:
                import pandas as pd
                out.append(pd.Period(ordinal=int(round(float(v))), freq=freq)
                           .to_timestamp().isoformat())
            else:
                import matplotlib.dates as mdates
                out.append(mdates.num2date(float(v)).isoformat())
        except Exception:  # noqa: BLE001 - a value that is no date stays as it is
            out.append(_num(v))
    return out


def _base(ax, kind: str) -> Dict[str, Any]:
    return {"type": kind, "title": ax.get_title() or None}


def _two_d(ax, kind: str, elements: List[Any]) -> Dict[str, Any]:
    chart = _base(ax, kind)
    chart.update(_axis(ax, "x"))
    chart.update(_axis(ax, "y"))
    chart["elements"] = elements
    return chart


def _x_values(ax, xs) -> List[Any]:
    """x values as the plot holds them (numbers after unit conversion); dates as ISO text."""
    if _is_dates(ax, ax.xaxis):
        return _dates(ax, xs)
    return [_num(x) for x in xs]


def _box(ax) -> Optional[Dict[str, Any]]:
    """Boxes drawn by ``boxplot`` (vertical): a closed 5-point line per box, a 2-point median,
    whiskers and caps as 2-point lines, outliers as marker-only lines."""
    lines = ax.get_lines()
    boxes = [l for l in lines if len(l.get_xdata()) == 5 and l.get_linestyle() != "None"
             and l.get_xdata()[0] == l.get_xdata()[-1] and l.get_ydata()[0] == l.get_ydata()[-1]]
    if not boxes:
        from matplotlib.patches import PathPatch
        patches = [p for p in ax.patches if isinstance(p, PathPatch)]
        boxes = patches
        if not boxes:
            return None
    labels = [t.get_text() for t in ax.xaxis.get_ticklabels()]
    elements = []
    for i, box in enumerate(boxes):
        if hasattr(box, "get_xdata"):
            xs, ys = list(box.get_xdata()), list(box.get_ydata())
        else:
            verts = box.get_path().vertices
            xs, ys = list(verts[:, 0]), list(verts[:, 1])
        left, right, q1, q3 = min(xs), max(xs), min(ys), max(ys)
        centre = (left + right) / 2
        inside = [l for l in lines if len(l.get_xdata()) == 2 and l.get_linestyle() != "None"
                  and all(left - 1e-9 <= x <= right + 1e-9 for x in l.get_xdata())]
        medians = [l for l in inside if l.get_ydata()[0] == l.get_ydata()[1]
                   and q1 <= l.get_ydata()[0] <= q3 and l.get_xdata()[0] != l.get_xdata()[1]
                   and abs(l.get_xdata()[1] - l.get_xdata()[0]) >= (right - left) * 0.99]
        whiskers = [l for l in inside if l.get_xdata()[0] == l.get_xdata()[1]]
        lows = [min(l.get_ydata()) for l in whiskers if max(l.get_ydata()) <= q1 + 1e-9]
        highs = [max(l.get_ydata()) for l in whiskers if min(l.get_ydata()) >= q3 - 1e-9]
        fliers = [l for l in lines if l.get_linestyle() == "None"
                  and len(l.get_xdata()) and all(abs(x - centre) < (right - left) for x in l.get_xdata())]
        median = medians[0].get_ydata()[0] if medians else (q1 + q3) / 2
        elements.append({
            "label": labels[i] if i < len(labels) else str(i + 1),
            "min": _num(min(lows) if lows else q1), "first_quartile": _num(q1),
            "median": _num(median), "third_quartile": _num(q3),
            "max": _num(max(highs) if highs else q3),
            "outliers": [_num(y) for l in fliers for y in l.get_ydata()],
        })
    return _two_d(ax, "box_and_whisker", elements)


def describe_axes(ax) -> Optional[Dict[str, Any]]:
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer
    from matplotlib.patches import Wedge

    wedges = [p for p in ax.patches if isinstance(p, Wedge)]
    if wedges:
        chart = _base(ax, "pie")
        chart["elements"] = [{"label": _label(w), "angle": _num(abs(w.theta2 - w.theta1)),
                              "radius": _num(w.r)} for w in wedges]
        return chart
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    if bars:
        labels = [t.get_text() for t in ax.xaxis.get_ticklabels()]
        ticks = list(ax.get_xticks())
        elements = []
        for container in bars:
            group = _label(container)
            for rect in container.patches:
                x = rect.get_x() + rect.get_width() / 2
                label = None
                if ticks and labels:
                    nearest = min(range(len(ticks)), key=lambda i: abs(ticks[i] - x))
                    label = labels[nearest] if nearest < len(labels) else None
                elements.append({"label": label if label else _num(x),
                                 "value": _num(rect.get_height()), "group": group})
        return _two_d(ax, "bar", elements)
    box = _box(ax)
    if box is not None:
        return box
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)
                and len(c.get_offsets())]
    if scatters:
        elements = []
        for c in scatters:
            offsets = c.get_offsets()
            xs = _x_values(ax, [p[0] for p in offsets])
            elements.append({"label": _label(c),
                             "points": [[x, _num(p[1])] for x, p in zip(xs, offsets)]})
        return _two_d(ax, "scatter", elements)
    lines = [l for l in ax.get_lines() if len(l.get_xdata())]
    if lines:
        elements = []
        for line in lines:
            xs = _x_values(ax, list(line.get_xdata(orig=False)))
            elements.append({"label": _label(line),
                             "points": [[x, _num(y)]
                                        for x, y in zip(xs, line.get_ydata(orig=False))]})
        return _two_d(ax, "line", elements)
    return None


def describe(figure) -> Optional[Dict[str, Any]]:
    """The ``e2b/chart`` document for a figure, or None when it holds nothing to describe."""
    charts = []
    for ax in figure.get_axes():
        try:
            chart = describe_axes(ax)
        except Exception:  # noqa: BLE001 - an odd plot must not break the user's cell
            chart = {"type": "unknown", "title": ax.get_title() or None, "elements": []}
        if chart is not None:
            charts.append(chart)
    if not charts:
        return None
    if len(charts) == 1:
        return charts[0]
    title = figure._suptitle.get_text() if getattr(figure, "_suptitle", None) else None
    return {"type": "superchart", "title": title, "elements": charts}
