"""The Upload page's file list on screen: ``UploadDelegate`` paints a row (thumbnail, name, duration ·
resolution · codecs, status, progress bar, Cancel button) and ``UploadListView`` shows a hint in
place of an empty list."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QModelIndex, QPersistentModelIndex, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPalette
from PySide6.QtWidgets import (
    QApplication,
    QListView,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionButton,
    QStyleOptionProgressBar,
    QStyleOptionViewItem,
)

from app.models.upload_list_model import CHECKING, REFUSED, UploadListModel

THUMB_SIZE = QSize(112, 63)


class UploadDelegate(QStyledItemDelegate):
    """Paints a row; a click on its Cancel button emits ``cancel_clicked(key)``."""

    cancel_clicked = Signal(int)
    ROW_HEIGHT = THUMB_SIZE.height() + 14
    STATUS_SHARE = 0.42  # of the row's width, at least STATUS_MIN_WIDTH: refusal reasons are long
    STATUS_MIN_WIDTH = 260
    BUTTON_SIZE = QSize(80, 28)

    def sizeHint(self, option, index) -> QSize:
        return QSize(600, self.ROW_HEIGHT)

    def cancel_rect(self, rect: QRect) -> QRect:
        size = self.BUTTON_SIZE
        return QRect(
            rect.right() - size.width() - 10, rect.center().y() - size.height() // 2, size.width(), size.height()
        )

    def paint(
        self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> None:
        model = UploadListModel
        widget = option.widget
        style = widget.style() if widget else QApplication.style()
        painter.save()
        style.drawPrimitive(QStyle.PrimitiveElement.PE_PanelItemViewItem, option, painter, widget)
        rect = option.rect
        palette = option.palette
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        dark = palette.color(QPalette.ColorRole.Base).lightness() < 128

        thumb = QRect(rect.left() + 8, rect.top() + 7, THUMB_SIZE.width(), THUMB_SIZE.height())
        self._paint_thumbnail(painter, thumb, index.data(model.ThumbnailRole), index.data(model.StateRole), palette)

        cancellable = bool(index.data(model.CancellableRole))
        right = self.cancel_rect(rect).left() - 12
        width = max(self.STATUS_MIN_WIDTH, int(rect.width() * self.STATUS_SHARE))
        status = QRect(right - width, rect.top() + 4, width, rect.height() - 8)
        text = QRect(thumb.right() + 12, rect.top() + 8, status.left() - thumb.right() - 24, rect.height() - 16)

        name_font = QFont(option.font)
        name_font.setBold(True)
        painter.setFont(name_font)
        painter.setPen(palette.color(QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text))
        top = QRect(text.left(), text.top() + 4, text.width(), text.height() // 2 - 2)
        painter.drawText(
            top,
            Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
            painter.fontMetrics().elidedText(index.data(), Qt.TextElideMode.ElideMiddle, top.width()),
        )
        painter.setFont(option.font)
        if not selected:
            painter.setPen(palette.color(QPalette.ColorRole.PlaceholderText))
        bottom = QRect(text.left(), text.center().y() + 2, text.width(), text.height() // 2 - 4)
        painter.drawText(
            bottom,
            Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
            painter.fontMetrics().elidedText(
                index.data(model.DetailsRole), Qt.TextElideMode.ElideRight, bottom.width()
            ),
        )

        percent = index.data(model.ProgressRole)
        tone = index.data(model.ToneRole)
        color = _tone_color(tone, dark) or palette.color(
            QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text
        )
        status_font = QFont(option.font)
        status_font.setBold(tone in ("warning", "ok"))
        painter.setFont(status_font)
        painter.setPen(color)
        if percent >= 0:
            line = QRect(status.left(), status.top() + 2, status.width(), status.height() // 2 - 2)
            bar = QStyleOptionProgressBar()
            bar.rect = QRect(status.left(), status.center().y() + 3, status.width(), 16)
            bar.minimum, bar.maximum, bar.progress = 0, 100, percent
            bar.textVisible = False
            bar.state = QStyle.StateFlag.State_Enabled | QStyle.StateFlag.State_Horizontal
            bar.palette = palette
            style.drawControl(QStyle.ControlElement.CE_ProgressBar, bar, painter, widget)
            flags = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
            status_text = painter.fontMetrics().elidedText(
                index.data(model.StatusRole), Qt.TextElideMode.ElideRight, line.width()
            )
        else:
            line = status
            flags = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter | Qt.TextFlag.TextWordWrap
            status_text = _elide_lines(painter, index.data(model.StatusRole), line, 3)
        painter.drawText(line, flags, status_text)

        if cancellable:
            button = QStyleOptionButton()
            button.rect = self.cancel_rect(rect)
            button.text = "Cancel"
            button.icon = style.standardIcon(QStyle.StandardPixmap.SP_DialogCancelButton)
            button.iconSize = QSize(14, 14)
            button.state = QStyle.StateFlag.State_Enabled | QStyle.StateFlag.State_Raised
            button.palette = palette
            style.drawControl(QStyle.ControlElement.CE_PushButton, button, painter, widget)
        painter.restore()

    def _paint_thumbnail(
        self, painter: QPainter, rect: QRect, image: QImage | None, state: str, palette: QPalette
    ) -> None:
        painter.fillRect(rect, QColor(24, 24, 24))
        if image is not None and not image.isNull():
            scaled = image.scaled(
                rect.size(), Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
            )
            x = rect.left() + (rect.width() - scaled.width()) // 2
            y = rect.top() + (rect.height() - scaled.height()) // 2
            painter.drawImage(x, y, scaled)
            return
        words = {CHECKING: "…", REFUSED: "not a video"}.get(state, "no preview")
        painter.setPen(QColor(200, 200, 200))
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, words)

    def editorEvent(self, event, model, option, index) -> bool:
        if (
            event.type() == QEvent.Type.MouseButtonRelease
            and event.button() == Qt.MouseButton.LeftButton
            and index.data(UploadListModel.CancellableRole)
            and self.cancel_rect(option.rect).contains(event.position().toPoint())
        ):
            self.cancel_clicked.emit(index.data(UploadListModel.KeyRole))
            return True
        return super().editorEvent(event, model, option, index)


def _tone_color(tone: str, dark: bool) -> QColor | None:
    colors = {"warning": ("#b3261e", "#ff8a80"), "ok": ("#1b6e20", "#81c784"), "muted": ("#5f6368", "#a0a4a8")}
    pair = colors.get(tone)
    return QColor(pair[1] if dark else pair[0]) if pair else None


def _elide_lines(painter: QPainter, text: str, rect: QRect, lines: int) -> str:
    """Word-wrapped text that fits ``lines`` lines, with an ellipsis when it does not (tooltip has it all)."""
    metrics = painter.fontMetrics()
    if metrics.boundingRect(rect, Qt.TextFlag.TextWordWrap, text).height() <= metrics.lineSpacing() * lines:
        return text
    words, kept = text.split(), ""
    for word in words:
        trial = f"{kept} {word}".strip()
        if metrics.boundingRect(rect, Qt.TextFlag.TextWordWrap, trial + "…").height() > metrics.lineSpacing() * lines:
            break
        kept = trial
    return kept + "…"


class UploadListView(QListView):
    """The file list, with a hint in place of an empty list."""

    def paintEvent(self, event) -> None:
        super().paintEvent(event)
        if self.model() is not None and self.model().rowCount() == 0:
            painter = QPainter(self.viewport())
            painter.setPen(self.palette().color(QPalette.ColorRole.PlaceholderText))
            painter.drawText(
                self.viewport().rect(),
                Qt.AlignmentFlag.AlignCenter,
                "No files yet: drop videos or folders here, or click “Add files…”.",
            )
