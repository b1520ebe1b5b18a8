"""One job's error and the end of its FFmpeg log, as text the user can select and copy."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout

from app.models.job_query import parse_time, short_id
from app.models.jobs_model import format_config

NO_ERROR = "No error was recorded for this job."
NO_LOG = "No FFmpeg log was recorded for this job (it has not run, or stopped before FFmpeg started)."


class JobDetailsDialog(QDialog):
    """Built from a job dict (``Farm.show``), log tail included; shows what it was given."""

    def __init__(self, job: dict, parent=None):
        super().__init__(parent)
        self.job = job
        video = job.get("video") or {}
        self.setWindowTitle(f"Job {short_id(job['id'])} – error and log")
        self.resize(760, 560)
        layout = QVBoxLayout(self)

        facts = QFormLayout()
        facts.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        for label, value in self._facts(job, video):
            field = QLabel(value)
            field.setTextFormat(Qt.TextFormat.PlainText)  # a file's name is not markup, whatever it holds
            field.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            field.setWordWrap(True)
            facts.addRow(label, field)
        layout.addLayout(facts)

        layout.addWidget(self._heading("Error"))
        self.error_text = self._text_box(job.get("error") or "", NO_ERROR, monospace=False)
        self.error_text.setMaximumHeight(110)
        layout.addWidget(self.error_text)

        layout.addWidget(self._heading("FFmpeg log (the last lines)"))
        self.log_text = self._text_box(job.get("log_tail") or "", NO_LOG, monospace=True)
        layout.addWidget(self.log_text, 1)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.copy_button = QPushButton("Copy all")
        self.copy_button.setToolTip("Copy the job id, error and log to the clipboard")
        buttons.addButton(self.copy_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.copy_button.clicked.connect(self.copy_all)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        # Scroll the log to its end: the last lines say why FFmpeg stopped.
        self.log_text.verticalScrollBar().setValue(self.log_text.verticalScrollBar().maximum())

    @staticmethod
    def _facts(job: dict, video: dict) -> list[tuple[str, str]]:
        def when(key: str) -> str:
            moment = parse_time(job.get(key))
            return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "–"

        output = job.get("output") or {}
        attempts = job.get("attempts") or 0
        return [
            ("Job", job["id"]),
            ("File", video.get("name") or "–"),
            (
                "Status",
                f"{job['status']}, after {attempts} attempt{'' if attempts == 1 else 's'}"
                if attempts
                else job["status"],
            ),
            ("Output", format_config(job.get("config")) + (f" → {output['key']}" if output.get("key") else "")),
            ("Node", job.get("node") or "–"),
            ("Created / started / finished", f"{when('created_at')} / {when('started_at')} / {when('finished_at')}"),
        ]

    @staticmethod
    def _heading(text: str) -> QLabel:
        label = QLabel(text)
        font = label.font()
        font.setBold(True)
        label.setFont(font)
        return label

    @staticmethod
    def _text_box(text: str, placeholder: str, *, monospace: bool) -> QPlainTextEdit:
        box = QPlainTextEdit()
        box.setReadOnly(True)
        box.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse | Qt.TextInteractionFlag.TextSelectableByKeyboard
        )
        box.setPlaceholderText(placeholder)
        box.setPlainText(text)
        if monospace:
            box.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
            box.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        return box

    def copy_all(self) -> None:
        job = self.job
        parts = [
            f"Job {job['id']} ({job['status']})",
            f"Error: {job.get('error') or '(none)'}",
            "FFmpeg log:",
            job.get("log_tail") or "(none)",
        ]
        QGuiApplication.clipboard().setText("\n".join(parts))
