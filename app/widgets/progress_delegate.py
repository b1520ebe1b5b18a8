"""A progress bar painted inside a table cell: no widget per row, so 10,000 rows cost nothing."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QSize, Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QStyle, QStyledItemDelegate, QStyleOptionProgressBar, QStyleOptionViewItem


class ProgressDelegate(QStyledItemDelegate):
    """Paints ``index.data(role)`` (0-100, or None for no bar) with the style's own progress bar;
    where ``index.data(enabled_role)`` is False the bar is drawn grey (a run that did not succeed)."""

    def __init__(self, role: int, parent=None, *, enabled_role: int | None = None, margin: int = 3):
        super().__init__(parent)
        self.role = role
        self.enabled_role = enabled_role
        self.margin = margin

    def paint(self, painter, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> None:
        widget = option.widget
        style = widget.style() if widget is not None else QApplication.style()
        # The cell itself first (selection, hover, alternate row colour), without its text.
        cell = QStyleOptionViewItem(option)
        self.initStyleOption(cell, index)
        cell.text = ""
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, cell, painter, widget)

        value = index.data(self.role)
        if value is None:
            return
        value = min(100.0, max(0.0, float(value)))
        bar = QStyleOptionProgressBar()
        bar.rect = option.rect.adjusted(self.margin + 1, self.margin, -self.margin - 1, -self.margin)
        bar.palette = QPalette(option.palette)
        if self.enabled_role is not None and index.data(self.enabled_role) is False:
            # Greyed, but with dark text: the style's disabled colours are too faint to read.
            bar.palette.setColor(QPalette.ColorRole.Highlight, QColor("#c4c8cf"))
            bar.palette.setColor(QPalette.ColorRole.HighlightedText, QColor("#1f2430"))
        bar.state = (option.state & QStyle.StateFlag.State_Enabled) | QStyle.StateFlag.State_Horizontal
        bar.direction = option.direction
        bar.fontMetrics = option.fontMetrics
        bar.minimum, bar.maximum = 0, 1000
        bar.progress = round(value * 10)
        bar.text = f"{value:.0f}%"
        bar.textVisible = True
        bar.textAlignment = Qt.AlignmentFlag.AlignCenter
        style.drawControl(QStyle.ControlElement.CE_ProgressBar, bar, painter, widget)

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> QSize:
        return QSize(110, max(22, option.fontMetrics.height() + 2 * self.margin + 4))
