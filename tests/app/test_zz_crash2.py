import os, time
import pyqtgraph as pg
from PySide6.QtGui import QPalette, QColor
from app.widgets.live_chart import ClockAxis
MODE = os.environ.get("MODE", "")

def make(qtbot):
    kw = {}
    if "clock" in MODE:
        kw["axisItems"] = {"bottom": ClockAxis(orientation="bottom")}
    if "bg" in MODE:
        kw["background"] = QColor("#ffffff")
    w = pg.PlotWidget(**kw)
    item = w.getPlotItem()
    if "title" in MODE:
        item.setTitle("CPU", color="#000000", size="10pt")
    if "pen" in MODE:
        for side in ("left", "bottom"):
            axis = item.getAxis(side)
            axis.setPen(QColor("#000000"))
            axis.setTextPen(QColor("#000000"))
    if "opts" in MODE:
        item.showGrid(x=True, y=True, alpha=0.25)
        item.setDownsampling(mode="peak")
        item.setClipToView(True)
        item.setMouseEnabled(x=False, y=False)
        item.setMenuEnabled(False)
        item.hideButtons()
        item.setYRange(0, 100, padding=0.05)
        item.enableAutoRange(y=False)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    now = time.time()
    c = item.plot([now - 2, now - 1, now], [1, 2, 3])
    item.setXRange(now - 600, now, padding=0)
    qtbot.wait(100)

def test_one(qtbot):
    make(qtbot)

def test_two(qtbot):
    make(qtbot)
