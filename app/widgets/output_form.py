"""The output config form: a preset combo (built-in and the user's own), the fields, "Save as preset…".

Choosing a preset fills the fields; changing a field shows "Custom" until the values match a preset
again. Presets are read and saved through the runner (``presets.toml`` may sit on a slow share);
until the user's presets are read the built-in ones are listed. Problems are shown under the form
in words, never in a pop-up the user has to dismiss.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from app.runner import BackgroundRunner
from app.services import AppServices
from farm.domain.jobspec import BUILTIN_PRESETS, FORMATS, RESOLUTIONS, OutputConfig

FORMAT_LABELS = {
    "mp4": "MP4 (H.264 + AAC)",
    "webm": "WebM (VP9 + Opus)",
    "hevc": "HEVC (H.265 + AAC in MP4)",
}
CUSTOM = "Custom"
FALLBACK_PRESET = "720p-mp4"


class OutputForm(QGroupBox):
    config_changed = Signal(object)  # OutputConfig
    preset_saved = Signal(str)

    def __init__(self, services: AppServices, runner: BackgroundRunner, parent: QWidget | None = None):
        super().__init__("Output", parent)
        self.services = services
        self.runner = runner
        self._presets: dict[str, OutputConfig] = dict(BUILTIN_PRESETS)
        self._filling = False

        self.preset_combo = QComboBox()
        self.preset_combo.setMinimumContentsLength(18)
        self.preset_combo.setToolTip("Built-in presets, then your own")
        self.save_button = QPushButton("Save as preset…")
        self.save_button.setToolTip("Keep the current settings under a name of your choice")
        self.resolution_combo = QComboBox()
        for name, lines in RESOLUTIONS.items():
            self.resolution_combo.addItem(name, name)
            self.resolution_combo.setItemData(
                self.resolution_combo.count() - 1,
                f"The short side of the frame becomes {lines} pixels",
                Qt.ItemDataRole.ToolTipRole,
            )
        self.format_combo = QComboBox()
        for name in FORMATS:
            self.format_combo.addItem(FORMAT_LABELS.get(name, name), name)
        self.audio_check = QCheckBox("Include audio")
        self.upscale_check = QCheckBox("Allow upscale")
        self.upscale_check.setToolTip(
            "Scale sources smaller than the chosen resolution up to it (off: they keep their own size)"
        )
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()

        preset_row = QHBoxLayout()
        preset_row.addWidget(self.preset_combo, 1)
        preset_row.addWidget(self.save_button)
        checks = QHBoxLayout()
        checks.addWidget(self.audio_check)
        checks.addWidget(self.upscale_check)
        checks.addStretch(1)
        form = QFormLayout(self)
        form.addRow("Preset:", preset_row)
        form.addRow("Resolution:", self.resolution_combo)
        form.addRow("Format:", self.format_combo)
        form.addRow("", checks)
        form.addRow(self.message)

        self._fill_combo(select=self._default_preset())
        self.preset_combo.currentIndexChanged.connect(self._preset_chosen)
        self.resolution_combo.currentIndexChanged.connect(self._field_changed)
        self.format_combo.currentIndexChanged.connect(self._field_changed)
        self.audio_check.toggled.connect(self._field_changed)
        self.upscale_check.toggled.connect(self._field_changed)
        self.save_button.clicked.connect(self.ask_preset_name)
        self.reload_presets()

    # -- reading the form ---------------------------------------------------------------------
    def config(self) -> OutputConfig:
        """The output config the fields show (always valid: every field is a fixed choice)."""
        return OutputConfig(
            resolution=self.resolution_combo.currentData(),
            format=self.format_combo.currentData(),
            include_audio=self.audio_check.isChecked(),
            allow_upscale=self.upscale_check.isChecked(),
        )

    def preset_name(self) -> str | None:
        """The chosen preset, or None when the fields were changed away from every preset."""
        return self.preset_combo.currentData()

    def set_config(self, config: OutputConfig) -> None:
        self._filling = True
        try:
            self.resolution_combo.setCurrentIndex(self.resolution_combo.findData(config.resolution))
            self.format_combo.setCurrentIndex(self.format_combo.findData(config.format))
            self.audio_check.setChecked(config.include_audio)
            self.upscale_check.setChecked(config.allow_upscale)
        finally:
            self._filling = False
        self._field_changed()

    # -- presets ------------------------------------------------------------------------------
    def reload_presets(self, select: str | None = None) -> None:
        """Read the presets (built-in and ``presets.toml``) in the background and list them."""
        store = self.services.presets
        self.runner.run(
            store.all,
            lambda presets: self._presets_loaded(presets, select),
            lambda exc: self._presets_failed(store.path, exc),
        )

    def _presets_loaded(self, presets: dict[str, OutputConfig], select: str | None) -> None:
        self._presets = presets
        # The preset chosen when they land, not when they were asked for: fields the user changed
        # meanwhile stay as they are.
        self._fill_combo(select or self.preset_name())

    def _presets_failed(self, path, exc: Exception) -> None:
        self._presets = dict(BUILTIN_PRESETS)
        self._fill_combo(self.preset_name())
        self.show_message(
            f"Your presets could not be read from {path}: {exc}. "
            "The built-in presets are listed; fix or delete that file to get yours back.",
            error=True,
        )

    def _default_preset(self) -> str:
        return self.services.settings.default_preset or FALLBACK_PRESET

    def _fill_combo(self, select: str | None) -> None:
        current = self.config()
        self._filling = True
        try:
            combo = self.preset_combo
            combo.clear()
            combo.addItem(CUSTOM, None)
            for name in BUILTIN_PRESETS:
                self._add_preset_item(name, user=False)
            user = [name for name in self._presets if name not in BUILTIN_PRESETS]
            if user:
                combo.insertSeparator(combo.count())
                for name in sorted(user, key=str.casefold):
                    self._add_preset_item(name, user=True)
        finally:
            self._filling = False
        if select and select in self._presets:
            self.preset_combo.setCurrentIndex(self.preset_combo.findData(select))
            self._preset_chosen()
        else:
            self.set_config(current)

    def _add_preset_item(self, name: str, user: bool) -> None:
        config = self._presets[name]
        audio = "with audio" if config.include_audio else "no audio"
        self.preset_combo.addItem(f"{name} (yours)" if user else name, name)
        self.preset_combo.setItemData(
            self.preset_combo.count() - 1,
            f"{config.resolution}, {FORMAT_LABELS.get(config.format, config.format)}, {audio}"
            + (", upscaling allowed" if config.allow_upscale else ""),
            Qt.ItemDataRole.ToolTipRole,
        )

    def _preset_chosen(self, *_args) -> None:
        if self._filling:
            return
        name = self.preset_name()
        if name is not None:
            self.set_config(self._presets[name])

    def _field_changed(self, *_args) -> None:
        if self._filling:
            return
        config = self.config()
        name = self.preset_name()
        if name is None or self._presets.get(name) != config:
            match = next((n for n, c in self._presets.items() if c == config), None)
            self._filling = True
            self.preset_combo.setCurrentIndex(self.preset_combo.findData(match) if match else 0)
            self._filling = False
        self.config_changed.emit(config)

    # -- saving a preset ----------------------------------------------------------------------
    def ask_preset_name(self) -> None:
        dialog = QInputDialog(self)
        dialog.setWindowTitle("Save as preset")
        dialog.setLabelText("Name for a preset with the current output settings:")
        dialog.setTextEchoMode(QLineEdit.EchoMode.Normal)
        current = self.preset_name()
        if current and current not in BUILTIN_PRESETS:
            dialog.setTextValue(current)
        if dialog.exec() == QInputDialog.DialogCode.Accepted:
            self.save_preset(dialog.textValue())

    def save_preset(self, name: str) -> None:
        """Store the current values under ``name`` (in the background), then list and select it."""
        name = name.strip()
        error = _preset_name_error(name)
        if error:
            self.show_message(error, error=True)
            return
        config = self.config()
        store = self.services.presets
        replacing = name in self._presets

        def saved(_result) -> None:
            self.show_message(f"{'Updated' if replacing else 'Saved'} preset “{name}”.")
            self._presets_loaded({**self._presets, name: config}, name)
            self.preset_saved.emit(name)

        self.runner.run(
            lambda: store.save(name, config),
            saved,
            lambda exc: self.show_message(f"Could not save preset “{name}”: {exc}", error=True),
        )

    def show_message(self, text: str, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setProperty("error", error)
        self.message.setStyleSheet("color: #c62828; font-weight: bold;" if error else "")
        self.message.setVisible(bool(text))


def _preset_name_error(name: str) -> str | None:
    if not name:
        return "Give the preset a name."
    if len(name) > 64:
        return "A preset name can be at most 64 characters."
    if name in BUILTIN_PRESETS:
        return f"“{name}” is a built-in preset; pick another name."
    return None
