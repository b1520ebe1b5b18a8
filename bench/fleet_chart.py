"""One fleet chart of the Metrics page with 64 nodes: the GUI-thread cost of one tick, per-node
curves against the fleet mode the page uses past 12 nodes (one curve for all nodes + their average).

A tick is what the chart's timer does every 500 ms while shown: one new point per node, ``flush()``
(``setData``), then the repaint, done here synchronously with ``repaint()`` so its cost is counted.
Each series holds 600 points (the 10 minutes a node keeps). Qt's offscreen platform unless
QT_QPA_PLATFORM says otherwise; the chart is 560x330 px, as on a 1440x900 window.

    python bench/fleet_chart.py [--reps 40] [--nodes 64]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from common import RESULTS_DIR, environment, write_result
from PySide6.QtWidgets import QApplication

from app.widgets.live_chart import LiveChart
from farm.domain.nodes import MAX_SAMPLES

VARIANTS = {"a curve per node": None, "fleet mode (past 12 nodes)": 12}


def tick_times(max_curves: int | None, nodes: int, reps: int) -> list[float]:
    rng = random.Random(7)
    chart = LiveChart(
        "CPU per node (% of the machine)",
        "%",
        y_range=(0, 100),
        capacity=MAX_SAMPLES,
        max_curves=max_curves,
        group_label="nodes",
    )
    chart.timer.stop()  # ticks are driven here
    chart.resize(560, 330)
    chart.show()
    start = time.time() - MAX_SAMPLES
    for index in range(nodes):
        times = [start + i + index / nodes for i in range(MAX_SAMPLES)]
        chart.merge(f"node-{index:02d}", times, [rng.uniform(0, 100) for _ in times])
    chart.flush()
    chart.plot.repaint()
    QApplication.processEvents()
    spent = []
    for rep in range(reps):
        t = start + MAX_SAMPLES + rep
        for index in range(nodes):
            chart.append(f"node-{index:02d}", t + index / nodes, rng.uniform(0, 100))
        began = time.perf_counter()
        chart.flush()
        chart.plot.repaint()
        spent.append((time.perf_counter() - began) * 1000)
        QApplication.processEvents()
    chart.close()
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--nodes", type=int, default=64)
    args = parser.parse_args()
    app = QApplication.instance() or QApplication([])  # noqa: F841 - widgets need it
    results = {}
    for label, max_curves in VARIANTS.items():
        spent = sorted(tick_times(max_curves, args.nodes, args.reps))
        results[label] = {
            "median_ms": round(statistics.median(spent), 1),
            "p90_ms": round(spent[int(0.9 * (len(spent) - 1))], 1),
            "max_ms": round(spent[-1], 1),
        }
        print(
            f"{label:30s} median {results[label]['median_ms']:7.1f} ms   p90 {results[label]['p90_ms']:7.1f} ms"
            f"   max {results[label]['max_ms']:7.1f} ms"
        )
    write_result(
        RESULTS_DIR / "fleet_chart.json",
        {
            "benchmark": "fleet_chart",
            "nodes": args.nodes,
            "points_per_node": MAX_SAMPLES,
            "reps": args.reps,
            "platform": os.environ.get("QT_QPA_PLATFORM"),
            "results": results,
            "environment": environment(),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
