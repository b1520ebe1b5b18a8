import time, os
from app.widgets.live_chart import LiveChart

MODE = os.environ.get("MODE", "")

def test_one(qtbot):
    chart = LiveChart("CPU", "%", interval_ms=50)
    qtbot.addWidget(chart)
    chart.show()
    qtbot.waitExposed(chart)
    now = time.time()
    chart.append("node-a", now - 1, 1)
    if "b" in MODE:
        chart.append("node-b", now, 50)
    if "stop" in MODE:
        chart.timer.stop()
    qtbot.wait(200)

def test_two(qtbot):
    chart = LiveChart(interval_ms=30)
    qtbot.addWidget(chart)
    chart.show()
    qtbot.waitExposed(chart)
    chart.append("s", time.time(), 1)
    qtbot.wait(100)
