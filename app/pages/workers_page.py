"""Workers: every farm node as a card (or a table row), with pause, resume and drain.

Cards and table show one ``NodesModel``, fed by the hub's once-a-second poll; cards are created
once per node and updated in place. Actions go to the node registry through the runner; the node
reacts within a heartbeat, and the card shows the request until the node reports the new state.
Clicking a card (or double-clicking a row) opens that node's live charts.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QSortFilterProxyModel, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QStackedWidget,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.hub import FarmHub
from app.models.nodes_model import COLUMN, NodesModel, SortRole
from app.pages.worker_detail import WorkerDetail
from app.runner import BackgroundRunner
from app.services import AppServices
from app.widgets.node_card import CARD_WIDTH, NodeCard, enabled_actions
from farm.domain.nodes import NodeStatus

# A request is done once the node reports one of these statuses.
_REACHED = {"pause": {"paused"}, "run": {"idle", "busy"}, "drain": {"draining", "offline"}}
_ASKED = {"pause": "Pause requested…", "run": "Resume requested…", "drain": "Drain requested…"}
_VERB = {"pause": "pause", "run": "resume", "drain": "drain"}


CARD_BATCH = 8  # new cards made per turn of the event loop


class _CardGrid(QWidget):
    """Cards in as many columns as the width allows, re-flowed only when that number changes."""

    SPACING = 12

    def __init__(self, parent=None):
        super().__init__(parent)
        self.cards: list[NodeCard] = []
        self._columns = 0
        self.grid = QGridLayout(self)
        self.grid.setSpacing(self.SPACING)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)

    def add(self, *cards: NodeCard) -> None:
        """Add cards and lay them out once (one reflow per card made 64 new cards cost 64 reflows)."""
        self.cards.extend(cards)
        self.cards.sort(key=lambda c: c.name)
        self._reflow(force=True)

    def remove(self, card: NodeCard) -> None:
        self.cards.remove(card)
        self.grid.removeWidget(card)
        card.deleteLater()
        self._reflow(force=True)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._reflow()

    def _reflow(self, force: bool = False) -> None:
        columns = max(1, (self.width() + self.SPACING) // (CARD_WIDTH + self.SPACING))
        if columns == self._columns and not force:
            return
        self._columns = columns
        for card in self.cards:
            self.grid.removeWidget(card)
        for index, card in enumerate(self.cards):
            self.grid.addWidget(card, index // columns, index % columns, Qt.AlignmentFlag.AlignTop)


class WorkersPage(QWidget):
    title = "Workers"
    detail_opened = Signal(object)  # the WorkerDetail window just opened

    def __init__(self, services: AppServices, runner: BackgroundRunner, hub: FarmHub, parent=None):
        super().__init__(parent)
        self.services, self.runner, self.hub = services, runner, hub
        self.setObjectName("page")
        self.model = NodesModel(self)
        self.cards: dict[str, NodeCard] = {}
        self.details: dict[str, WorkerDetail] = {}
        self._pending: dict[str, str] = {}  # node -> requested state, until the node reports it

        heading = QLabel(self.title)
        heading.setObjectName("pageTitle")
        self.summary = QLabel()
        self.summary.setObjectName("statLabel")
        self.cards_button = QPushButton("Cards")
        self.table_button = QPushButton("Table")
        self.view_buttons = QButtonGroup(self)
        for button in (self.cards_button, self.table_button):
            button.setCheckable(True)
            self.view_buttons.addButton(button)
        self.cards_button.setChecked(True)
        self.cards_button.setToolTip("One card per node")
        self.table_button.setToolTip("One row per node; right-click a row for its actions")
        self.cards_button.clicked.connect(lambda: self.set_view("cards"))
        self.table_button.clicked.connect(lambda: self.set_view("table"))
        top = QHBoxLayout()
        top.addWidget(heading)
        top.addSpacing(12)
        top.addWidget(self.summary, 1)
        top.addWidget(self.cards_button)
        top.addWidget(self.table_button)

        self.error = QLabel()
        self.error.setObjectName("notice")
        self.error.setWordWrap(True)
        self.error.hide()

        self.empty = QLabel(
            "No node has reported yet. The local farm's node appears here a few seconds "
            "after the app starts; on another machine, start one with `farm-node` pointed "
            "at this farm's Redis."
        )
        self.empty.setObjectName("statLabel")
        self.empty.setWordWrap(True)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.card_grid = _CardGrid()
        card_page = QWidget()
        card_page.setObjectName("cardPage")
        card_layout = QVBoxLayout(card_page)
        card_layout.setContentsMargins(0, 0, 0, 0)
        card_layout.addWidget(self.empty)
        card_layout.addWidget(self.card_grid)
        card_layout.addStretch(1)
        self.card_scroll = QScrollArea()
        self.card_scroll.setWidgetResizable(True)
        self.card_scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self.card_scroll.setWidget(card_page)
        # The cards sit on the page's own background, not on a box of another grey.
        self.card_scroll.setStyleSheet(
            "QScrollArea { background: transparent; } QWidget#cardPage { background: transparent; }"
        )
        self.card_scroll.viewport().setAutoFillBackground(False)

        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SortRole)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(COLUMN["name"], Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(COLUMN["jobs"], QHeaderView.ResizeMode.Stretch)
        for key, width in (
            ("name", 150),
            ("host", 120),
            ("status", 90),
            ("cpu", 60),
            ("memory", 70),
            ("last_seen", 110),
            ("encoders", 160),
            ("tags", 90),
            ("version", 70),
        ):
            self.table.setColumnWidth(COLUMN[key], width)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self._table_menu_requested)
        self.table.doubleClicked.connect(lambda index: self.open_detail(self._name_at(index.row())))

        self.stack = QStackedWidget()
        self.stack.addWidget(self.card_scroll)
        self.stack.addWidget(self.table)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 12, 16, 12)
        layout.addLayout(top)
        layout.addWidget(self.error)
        layout.addWidget(self.stack, 1)

        # "Last seen" moves with the clock even if the poll stalls (Redis away): no I/O here.
        self.clock = QTimer(self)
        self.clock.setInterval(1000)
        self.clock.timeout.connect(self._tick)
        self.clock.start()

        self._cards_stale = False  # the nodes changed while the cards were not seen
        self._batch_pending = False  # more new cards are to be made on the next turn
        hub.nodes_updated.connect(self.show_nodes)
        self.show_nodes(hub.nodes)

    # -- the page contract ---------------------------------------------------------------------------
    def refresh(self) -> None:
        self.show_nodes(self.hub.nodes)

    def set_view(self, view: str) -> None:
        """``"cards"`` or ``"table"``."""
        table = view == "table"
        self.stack.setCurrentWidget(self.table if table else self.card_scroll)
        (self.table_button if table else self.cards_button).setChecked(True)
        if not table and self._cards_stale and self.card_scroll.isVisible():
            self._update_cards()

    # -- nodes -------------------------------------------------------------------------------------
    def show_nodes(self, nodes: list[NodeStatus]) -> None:
        self.model.set_nodes(nodes)
        if not self.card_scroll.isVisible():
            # Cards of 64 nodes cost the GUI thread tens of ms a second while nobody sees them (page
            # hidden, or the table shown instead); they catch up when shown (showEvent, set_view).
            self._cards_stale = True
            self._show_summary()
            return
        self._update_cards()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._cards_stale and self.card_scroll.isVisible():
            self._update_cards()

    def _update_cards(self, only_new: bool = False) -> None:
        """Bring the cards in line with the model. Making (and first painting) 64 cards at once froze
        the window for ~250 ms, so new cards are made ``CARD_BATCH`` per turn of the event loop; the
        turns that follow make only the missing ones (``only_new``)."""
        self._cards_stale = False
        now = time.time()
        names: set[str] = set()
        new: list[NodeCard] = []
        more = False
        for node in self.model.nodes():
            names.add(node.name)
            card = self.cards.get(node.name)
            if card is None:
                if len(new) >= CARD_BATCH:
                    more = True
                    continue
                card = NodeCard(node.name)
                card.clicked.connect(self.open_detail)
                card.action_requested.connect(self.request_state)
                self.cards[node.name] = card
                new.append(card)
            elif only_new:
                continue
            card.show_node(node, now)
            self._settle_pending(node, card)
        for name in [n for n in self.cards if n not in names]:
            self.card_grid.remove(self.cards.pop(name))
        if new:
            self.card_grid.add(*new)
        if more and not self._batch_pending:
            self._batch_pending = True
            QTimer.singleShot(0, self._more_cards)
        self.empty.setVisible(not self.cards)
        self._show_summary()

    def _more_cards(self) -> None:
        self._batch_pending = False
        if self.card_scroll.isVisible():
            self._update_cards(only_new=True)
        else:
            self._cards_stale = True  # made when the cards are seen again

    def _show_summary(self) -> None:
        nodes = self.model.nodes()
        if not nodes:
            self.summary.setText("no nodes")
            return
        counts: dict[str, int] = {}
        for node in nodes:
            counts[node.status] = counts.get(node.status, 0) + 1
        parts = [f"{counts[s]} {s}" for s in ("busy", "idle", "paused", "draining", "offline") if counts.get(s)]
        self.summary.setText(f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}: {', '.join(parts)}")

    def _tick(self) -> None:
        if not self.isVisible():
            return
        now = time.time()
        for card in self.cards.values():
            card.update_last_seen(now)
        self.model.refresh_times()

    # -- actions -----------------------------------------------------------------------------------
    def request_state(self, name: str, state: str) -> None:
        """Ask node ``name`` to ``pause``, ``run`` or ``drain`` (drain asks the user first)."""
        if state == "drain" and not self.confirm_drain(name):
            return
        card = self.cards.get(name)
        self._pending[name] = state
        if card is not None:
            card.set_note(_ASKED[state])
        self.runner.run(
            lambda: self.services.farm.control_node(name, state),
            lambda _: self._requested(name, state),
            lambda exc: self._request_failed(name, state, exc),
        )

    def confirm_drain(self, name: str) -> bool:
        box = QMessageBox(
            QMessageBox.Icon.Question,
            "Drain node",
            f"Drain {name}?\n\nIt finishes the job(s) it is running, takes no new ones, and "
            "then stops. To use it again, start its farm-node again.",
            QMessageBox.StandardButton.Cancel,
            self,
        )
        drain = box.addButton("Drain", QMessageBox.ButtonRole.AcceptRole)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return box.clickedButton() is drain

    def _requested(self, name: str, state: str) -> None:
        self.error.hide()
        node = self.model.node_named(name)
        card = self.cards.get(name)
        if node is not None and card is not None:
            if not node.online and self._pending.get(name) == state:
                card.set_note(f"{_ASKED[state][:-1]}: {name} is offline, it applies when the node comes back.")
            self._settle_pending(node, card)

    def _request_failed(self, name: str, state: str, exc: Exception) -> None:
        if self._pending.get(name) == state:
            del self._pending[name]
        message = (
            f"Could not {_VERB[state]} {name}: {exc}. Check that Redis is reachable (see the status bar) and try again."
        )
        self.error.setText(message)
        self.error.show()
        card = self.cards.get(name)
        if card is not None:
            card.set_note(f"Could not {_VERB[state]}: {exc}", error=True)

    def _settle_pending(self, node: NodeStatus, card: NodeCard) -> None:
        state = self._pending.get(node.name)
        if state is not None and node.status in _REACHED[state]:
            del self._pending[node.name]
            card.set_note("")

    # -- the table's context menu -------------------------------------------------------------------
    def _name_at(self, proxy_row: int) -> str:
        return self.proxy.index(proxy_row, COLUMN["name"]).data()

    def table_menu(self, proxy_row: int) -> QMenu:
        """The context menu of a table row (built here so that tests can trigger its actions)."""
        name = self._name_at(proxy_row)
        node = self.model.node_named(name)
        allowed = enabled_actions(node.status if node else "offline")
        menu = QMenu(self)
        for state, text in (("pause", "Pause"), ("run", "Resume"), ("drain", "Drain…")):
            action = menu.addAction(text)
            action.setEnabled(state in allowed)
            action.setData(state)
            action.triggered.connect(lambda _=False, s=state: self.request_state(name, s))
        menu.addSeparator()
        charts = menu.addAction("CPU and memory charts")
        charts.triggered.connect(lambda: self.open_detail(name))
        return menu

    def _table_menu_requested(self, pos) -> None:
        index = self.table.indexAt(pos)
        if index.isValid():
            self.table_menu(index.row()).exec(self.table.viewport().mapToGlobal(pos))

    # -- detail windows ------------------------------------------------------------------------------
    def open_detail(self, name: str) -> WorkerDetail:
        """Open (or bring forward) the live charts of node ``name``."""
        detail = self.details.get(name)
        if detail is None or detail.is_closed:
            detail = WorkerDetail(self.services, self.runner, self.hub, name, self)
            detail.setWindowFlag(Qt.WindowType.Window)
            detail.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            detail.destroyed.connect(lambda *_, d=detail: self._forget_detail(name, d))
            self.details[name] = detail
            self.detail_opened.emit(detail)
        detail.show()
        detail.raise_()
        detail.activateWindow()
        return detail

    def _forget_detail(self, name: str, detail: WorkerDetail) -> None:
        if self.details.get(name) is detail:
            del self.details[name]

    def close_details(self) -> None:
        for detail in list(self.details.values()):
            detail.close()
