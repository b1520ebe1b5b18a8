"""The Workers page on a real local farm: the node's card and row, a running job, the live chart,
pause / resume / drain, and the card turning offline when the node stops."""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from app.models.nodes_model import COLUMN, NodesModel, format_ago
from app.pages.workers_page import WorkersPage
from farm.domain.jobspec import OutputConfig
from farm.domain.nodes import NodeStatus

NODE = "test-node-1"
STYLE = Path(__file__).resolve().parents[2] / "resources" / "style.qss"


def screenshot(widget, path: Path) -> None:
    """What a user sees, with the app's stylesheet (the window applies it app-wide)."""
    app = QApplication.instance()
    app.setStyleSheet(STYLE.read_text() if STYLE.exists() else "")
    try:
        app.processEvents()
        widget.grab().save(str(path))
    finally:
        app.setStyleSheet("")


def points(curve) -> int:
    x, _ = curve.getData()
    return 0 if x is None else len(x)


def cell(page: WorkersPage, column: str) -> str:
    row = page.model.row_of(NODE)
    return page.model.index(row, COLUMN[column]).data()


def answer_next_dialog(button_text: str) -> None:
    """Click ``button_text`` in the modal dialog about to open."""

    def click():
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(20, click)
            return
        next(b for b in box.buttons() if b.text() == button_text).click()

    QTimer.singleShot(20, click)


def test_workers_page_follows_the_local_node(local_node, services, runner, hub, qtbot, make_clip, tmp_path):
    page = WorkersPage(services, runner, hub)
    qtbot.addWidget(page)
    page.resize(1100, 700)
    page.show()
    qtbot.waitExposed(page)

    qtbot.waitUntil(lambda: NODE in page.cards and page.cards[NODE].status == "idle", timeout=30_000)
    card = page.cards[NODE]
    assert card.name_label.text() == NODE
    assert card.badge.text() == "idle"
    assert "libx264" in card.encoders.text()
    host = page.model.node_named(NODE).host
    assert card.meta.text().startswith(host)
    assert card.last_seen.text().startswith("Last seen")
    assert page.model.rowCount() == 1 and cell(page, "status") == "idle" and cell(page, "name") == NODE
    assert page.summary.text() == "1 node: 1 idle"

    # A job on an 8 s 720p clip: the card shows it running, and the node's chart grows meanwhile.
    with qtbot.waitSignal(page.detail_opened, timeout=2000) as opened:
        qtbot.mouseClick(card, Qt.MouseButton.LeftButton)
    detail = opened.args[0]
    assert page.open_detail(NODE) is detail, "a second click brings the same window forward"
    clip = make_clip(1280, 720, 8.0, name="interview_720p.mp4")
    services.farm.submit([clip], OutputConfig(resolution="720p", format="hevc"))
    qtbot.waitUntil(lambda: card.status == "busy" and card.job_rows() and card.job_rows()[0][1] > 0, timeout=30_000)
    assert card.job_rows()[0][0] == "interview_720p.mp4"
    assert "interview_720p.mp4" in cell(page, "jobs")
    screenshot(page, tmp_path / "workers_busy.png")
    qtbot.waitUntil(lambda: detail.sample_count() >= 2, timeout=10_000)
    seen, drawn = detail.sample_count(), points(detail.cpu_chart.curve("cpu"))
    qtbot.waitUntil(
        lambda: (
            detail.sample_count() >= seen + 2
            and points(detail.cpu_chart.curve("cpu")) > drawn
            and points(detail.mem_chart.curve("mem")) > drawn
        ),
        timeout=10_000,
    )
    detail.resize(900, 620)
    screenshot(detail, tmp_path / "worker_detail.png")
    detail.close()
    qtbot.waitUntil(lambda: NODE not in page.details, timeout=2000)

    # Pause from the card; resume from the table's context menu.
    qtbot.mouseClick(card.buttons["pause"], Qt.MouseButton.LeftButton)
    assert card.note.text() == "Pause requested…"
    qtbot.waitUntil(lambda: card.status == "paused" and cell(page, "status") == "paused", timeout=10_000)
    assert card.note.isHidden() and not card.buttons["pause"].isEnabled() and card.buttons["run"].isEnabled()
    page.set_view("table")
    menu = page.table_menu(0)
    resume = next(a for a in menu.actions() if a.text() == "Resume")
    assert resume.isEnabled() and not next(a for a in menu.actions() if a.text() == "Pause").isEnabled()
    resume.trigger()
    qtbot.waitUntil(lambda: cell(page, "status") in ("idle", "busy"), timeout=10_000)
    screenshot(page, tmp_path / "workers_table.png")
    page.set_view("cards")
    assert card.status in ("idle", "busy"), "the cards catch up with the table when shown again"

    # Drain asks first; "Cancel" sends nothing.
    answer_next_dialog("Cancel")
    qtbot.mouseClick(card.buttons["drain"], Qt.MouseButton.LeftButton)
    assert card.note.isHidden() and NODE not in page._pending
    assert services.farm.desired_state(NODE) == "run", "a cancelled drain sends nothing"
    qtbot.waitUntil(lambda: card.status == "idle", timeout=30_000)  # the job finished
    assert page.cards[NODE].status == "idle"

    # The node stops: its card turns offline, greyed, with its actions limited.
    local_node.stop(drain_timeout=20)
    qtbot.waitUntil(lambda: card.status == "offline", timeout=15_000)
    assert card.badge.text() == "offline" and "no heartbeat" in card.last_seen.text()
    assert "dashed" in card.styleSheet(), "an offline card is greyed out"
    assert not card.buttons["drain"].isEnabled()
    assert host and card.meta.text().startswith(host), "an offline card still says which machine it is"
    assert "libx264" in card.encoders.text()
    assert cell(page, "status") == "offline" and cell(page, "cpu") == "–"
    assert page.summary.text() == "1 node: 1 offline"
    assert page.cards[NODE] is card, "cards are updated in place, never rebuilt"
    screenshot(page, tmp_path / "workers_offline.png")
    print(tmp_path)


def test_a_failed_action_is_shown_with_its_reason(services, runner, hub, qtbot):
    page = WorkersPage(services, runner, hub)
    qtbot.addWidget(page)
    page.request_state("no-such-node", "pause")
    qtbot.waitUntil(lambda: page.error.isVisibleTo(page), timeout=10_000)
    assert "Could not pause no-such-node" in page.error.text()
    assert "no node named 'no-such-node'" in page.error.text()
    assert page.empty.isVisibleTo(page) and page.summary.text() == "no nodes"


def test_cards_wait_while_nobody_sees_them_and_catch_up_when_shown(services, runner, hub, qtbot):
    page = WorkersPage(services, runner, hub)
    qtbot.addWidget(page)
    hub.nodes_updated.disconnect(page.show_nodes)  # this test feeds the nodes itself
    busy = [NodeStatus(name=f"n{i}", status="busy", cpu=80, memory=0.5, last_seen=time.time()) for i in range(3)]
    page.show_nodes(busy)  # the page is hidden: the table model follows, the cards wait
    assert page.model.rowCount() == 3 and page.cards == {}
    assert page.summary.text() == "3 nodes: 3 busy"
    page.show()
    qtbot.waitExposed(page)
    assert sorted(page.cards) == ["n0", "n1", "n2"] and page.cards["n1"].status == "busy"

    page.set_view("table")  # cards hidden behind the table: they wait again
    page.show_nodes([NodeStatus(name=n, status="idle", last_seen=time.time()) for n in ("n0", "n1", "n2")])
    assert page.cards["n1"].status == "busy"
    page.set_view("cards")
    assert page.cards["n1"].status == "idle"

    # A whole studio at once: cards are made a few per turn of the event loop, all of them soon.
    many = [NodeStatus(name=f"m{i:02d}", status="idle", last_seen=time.time()) for i in range(40)]
    page.show_nodes(many)
    assert 0 < len(page.cards) < 40
    qtbot.waitUntil(lambda: sorted(page.cards) == [n.name for n in many], timeout=5000)
    assert not page._cards_stale and not page._batch_pending


def test_nodes_model_updates_rows_in_place(qtmodeltester):
    model = NodesModel(clock=lambda: 1000.0)
    qtmodeltester.check(model)
    inserted, removed, resets = [], [], []
    model.rowsInserted.connect(lambda _, first, last: inserted.append(first))
    model.rowsRemoved.connect(lambda _, first, last: removed.append(first))
    model.modelReset.connect(lambda: resets.append(1))

    def nodes(*specs):
        return [
            NodeStatus(
                name=n,
                host=f"{n}.lan",
                status=s,
                cpu=50,
                memory=0.25,
                last_seen=995,
                encoders=["libx264", "libx265", "libvpx-vp9", "aac"],
            )
            for n, s in specs
        ]

    model.set_nodes(nodes(("b", "idle"), ("d", "busy")))
    model.set_nodes(nodes(("a", "idle"), ("b", "paused"), ("c", "idle"), ("d", "busy")))
    assert inserted == [0, 1, 0, 2] and removed == [] and resets == []
    assert [model.index(r, COLUMN["name"]).data() for r in range(4)] == ["a", "b", "c", "d"]
    assert model.index(1, COLUMN["status"]).data() == "paused"
    assert model.index(0, COLUMN["memory"]).data() == "25 %"
    assert model.index(0, COLUMN["last_seen"]).data() == "5 s ago"
    assert model.index(0, COLUMN["encoders"]).data() == "libx264, libx265, libvpx-vp9 +1 more"

    # "c" is gone from the registry; "b" stopped beating: listed offline, still with its host.
    model.set_nodes([*nodes(("a", "idle"), ("d", "busy")), NodeStatus(name="b", status="offline", last_seen=990)])
    assert removed == [2] and model.rowCount() == 3
    assert model.index(1, COLUMN["status"]).data() == "offline"
    assert model.index(1, COLUMN["host"]).data() == "b.lan"
    assert model.index(1, COLUMN["cpu"]).data() == "–"
    qtmodeltester.check(model)


def test_format_ago():
    assert [format_ago(s) for s in (0.4, 2, 89, 120, 7200, 3 * 86400)] == [
        "just now",
        "2 s ago",
        "89 s ago",
        "2 min ago",
        "2 h ago",
        "3 d ago",
    ]


def test_a_node_with_no_room_says_why_on_its_card(qtbot, tmp_path):
    """A node whose work dir is full takes no jobs: its card says so, with the node's own words."""
    from app.widgets.node_card import NodeCard

    card = NodeCard("render-07")
    qtbot.addWidget(card)
    reason = "work dir /srv/work has 18.0 MB free; a job needed about 30.0 MB; free some space there"
    card.show_node(
        NodeStatus(
            name="render-07",
            host="render-07",
            status="disk full",
            reason=reason,
            last_seen=time.time(),
            version="0.1.0",
        )
    )
    card.resize(360, card.sizeHint().height())
    card.show()
    qtbot.waitExposed(card)
    assert card.badge.text() == "disk full"
    assert card.reason.isVisible() and card.reason.text() == reason
    assert card.buttons["pause"].isEnabled() and card.buttons["drain"].isEnabled()
    assert not card.buttons["run"].isEnabled(), "it takes jobs again by itself once there is room"
    card.grab().save(str(tmp_path / "disk_full_card.png"))

    card.show_node(NodeStatus(name="render-07", host="render-07", status="idle", last_seen=time.time()))
    assert card.badge.text() == "idle" and not card.reason.isVisible()
