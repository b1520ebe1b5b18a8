"""Storage: browse the bucket or folder (inputs/, outputs/ → job folders → files), download,
delete with confirmation, copy a presigned link.

The listing is one ``farm.stored_objects("")`` in the background runner, turned into a tree of folders
(``build_tree``, plain Python) and shown on a ``QStandardItemModel``. Folders show the total size
and the latest change of what they hold; deleting a folder deletes its whole prefix.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from PySide6.QtCore import QStandardPaths, Qt, QTimer
from PySide6.QtGui import QGuiApplication, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QStyle,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from farm.base.units import format_size
from farm.client import StoredObject, TransferCancelled

KEY_ROLE = Qt.ItemDataRole.UserRole + 1  # the object's key, or the folder's prefix
FOLDER_ROLE = Qt.ItemDataRole.UserRole + 2
SORT_ROLE = Qt.ItemDataRole.UserRole + 3
LINK_EXPIRES_S = 3600
PROGRESS_TICK_MS = 100
REFRESH_AFTER_JOB_MS = 1500  # a finished job's output appears without a click, a moment later
ERROR_STYLE = "color: #b3261e;"
OK_STYLE = "color: #1e7d32;"
MUTED_STYLE = "color: #5b6475;"


# -- the tree, in plain Python -------------------------------------------------------------------


@dataclass
class Folder:
    prefix: str  # "" for the root, "outputs", "outputs/<job id>"
    folders: dict[str, Folder] = field(default_factory=dict)
    files: list[StoredObject] = field(default_factory=list)
    size: int = 0
    count: int = 0
    modified: datetime | None = None

    def objects(self) -> list[StoredObject]:
        """Every object under this folder, at any depth."""
        found = list(self.files)
        for child in self.folders.values():
            found.extend(child.objects())
        return found


def build_tree(objects) -> Folder:
    """Folders from the keys' parts, each with the total size, count and latest change below it."""
    root = Folder("")
    for obj in objects:
        parts = obj.key.split("/")
        chain = [root]
        for part in parts[:-1]:
            parent = chain[-1]
            if part not in parent.folders:
                prefix = f"{parent.prefix}/{part}" if parent.prefix else part
                parent.folders[part] = Folder(prefix)
            chain.append(parent.folders[part])
        chain[-1].files.append(obj)
        for folder in chain:
            folder.size += obj.size
            folder.count += 1
            if folder.modified is None or obj.modified > folder.modified:
                folder.modified = obj.modified
    return root


def local_time(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M") if moment else ""


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


# -- download progress, shared between a pool thread and the GUI timer ---------------------------


class _Transfer:
    """Bytes done so far (written by the pool thread, read by the GUI's timer) and a cancel flag."""

    def __init__(self, total: int, count: int):
        self.total = total
        self.count = count
        self.base = 0  # bytes of the files already finished
        self.current = 0
        self.index = 0
        self.name = ""
        self.cancel = threading.Event()

    @property
    def done(self) -> int:
        return self.base + self.current


# -- the page ------------------------------------------------------------------------------------


class StoragePage(QWidget):
    title = "Storage"

    def __init__(self, services, runner, hub, parent=None):
        super().__init__(parent)
        self.setObjectName("page")
        self.services, self.runner, self.hub = services, runner, hub
        self.tree_data = Folder("")
        self._generation = 0
        self._loaded_once = False
        self._transfer: _Transfer | None = None

        layout = QVBoxLayout(self)
        heading = QLabel(self.title)
        heading.setObjectName("pageTitle")
        layout.addWidget(heading)

        bar = QHBoxLayout()
        self.refresh_button = self._button("Refresh", QStyle.StandardPixmap.SP_BrowserReload, self.refresh, "F5")
        self.download_button = self._button("Download…", QStyle.StandardPixmap.SP_DialogSaveButton, self.download)
        self.delete_button = self._button("Delete…", QStyle.StandardPixmap.SP_TrashIcon, self.delete, "Del")
        self.link_button = self._button("Copy link", QStyle.StandardPixmap.SP_FileLinkIcon, self.copy_link)
        self.link_button.setToolTip(
            f"Copy a link that reads the file without credentials, valid for {LINK_EXPIRES_S // 3600} hour"
        )
        for button in (self.refresh_button, self.download_button, self.delete_button, self.link_button):
            bar.addWidget(button)
        bar.addStretch(1)
        self.summary = QLabel()
        self.summary.setObjectName("storageSummary")
        self.summary.setStyleSheet(MUTED_STYLE)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        bar.addWidget(self.summary)
        layout.addLayout(bar)

        self.error = QLabel()
        self.error.setObjectName("storageError")
        self.error.setWordWrap(True)
        self.error.setStyleSheet(
            f"{ERROR_STYLE} background: #fdecea; border: 1px solid #f3b8b2; border-radius: 6px; padding: 6px 10px;"
        )
        self.error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error.hide()
        layout.addWidget(self.error)

        self.model = QStandardItemModel(0, 3, self)
        self.model.setHorizontalHeaderLabels(["Name", "Size", "Modified"])
        self.model.setSortRole(SORT_ROLE)
        self.view = QTreeView()
        self.view.setObjectName("storageTree")
        self.view.setModel(self.model)
        self.view.setUniformRowHeights(True)
        self.view.setAlternatingRowColors(True)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        header = self.view.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self.view.selectionModel().selectionChanged.connect(lambda *_: self._update_actions())
        self.view.doubleClicked.connect(self._double_clicked)
        layout.addWidget(self.view, 1)

        transfer_bar = QHBoxLayout()
        self.progress_label = QLabel()
        self.progress_label.setTextFormat(Qt.TextFormat.PlainText)  # it names objects: any key, not markup
        self.progress_label.setObjectName("transferLabel")
        self.progress = QProgressBar()
        self.progress.setObjectName("transferProgress")
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_download)
        transfer_bar.addWidget(self.progress_label, 1)
        transfer_bar.addWidget(self.progress, 1)
        transfer_bar.addWidget(self.cancel_button)
        self.transfer_widgets = (self.progress, self.cancel_button)
        for widget in self.transfer_widgets:
            widget.hide()
        layout.addLayout(transfer_bar)
        self.progress_timer = QTimer(self)
        self.progress_timer.setInterval(PROGRESS_TICK_MS)
        self.progress_timer.timeout.connect(self._show_progress)

        self.refresh_later = QTimer(self)
        self.refresh_later.setSingleShot(True)
        self.refresh_later.setInterval(REFRESH_AFTER_JOB_MS)
        self.refresh_later.timeout.connect(self._refresh_if_visible)
        if hub is not None:
            hub.job_event.connect(self._job_event)
        self._update_actions()

    def _button(self, text, icon, slot, shortcut: str | None = None) -> QPushButton:
        button = QPushButton(self.style().standardIcon(icon), text)
        button.clicked.connect(lambda _checked=False: slot())
        if shortcut:
            button.setShortcut(shortcut)
        return button

    # -- listing -----------------------------------------------------------------------------
    def refresh(self) -> None:
        """List the storage in the background and show it; a newer refresh wins over an older one."""
        self._generation += 1
        generation = self._generation
        services = self.services
        self.refresh_button.setEnabled(False)
        self.summary.setText("Loading…")

        def listing():
            farm = services.farm
            return farm.storage_url, farm.stored_objects("")

        self.runner.run(
            listing, lambda result: self._listed(generation, *result), lambda exc: self._list_failed(generation, exc)
        )

    def _listed(self, generation: int, url: str, objects: list[StoredObject]) -> None:
        if generation != self._generation:
            return
        self.refresh_button.setEnabled(True)
        self.error.hide()
        expanded = self._expanded_prefixes() if self._loaded_once else {"inputs", "outputs"}
        selected = {key for key, _folder in self.selected_targets()}
        self.tree_data = build_tree(objects)
        self.model.removeRows(0, self.model.rowCount())
        self._add_folder(self.model.invisibleRootItem(), self.tree_data)
        self.view.sortByColumn(self.view.header().sortIndicatorSection(), self.view.header().sortIndicatorOrder())
        self._restore(expanded, selected)
        self._loaded_once = True
        if objects:
            self.summary.setText(f"{url} — {plural(len(objects), 'object')}, {format_size(self.tree_data.size)}")
        else:
            self.summary.setText(f"{url} — empty: uploaded videos appear under inputs/, results under outputs/")
        self._update_actions()

    def _list_failed(self, generation: int, exc: Exception) -> None:
        if generation != self._generation:
            return
        self.refresh_button.setEnabled(True)
        self.summary.setText("")
        self._show_error(
            f"Cannot list the storage: {exc}. Check the Storage URL on the Settings page "
            "(its Test button says what is wrong), then press Refresh."
        )

    def _add_folder(self, parent: QStandardItem, folder: Folder) -> None:
        icons = self.style()
        folder_icon = icons.standardIcon(QStyle.StandardPixmap.SP_DirIcon)
        file_icon = icons.standardIcon(QStyle.StandardPixmap.SP_FileIcon)
        for name, child in folder.folders.items():
            row = self._row(f"{name}/", child.prefix, True, child.size, child.modified, folder_icon)
            row[0].setToolTip(f"{child.prefix}/ — {plural(child.count, 'object')}")
            parent.appendRow(row)
            self._add_folder(row[0], child)
        for obj in folder.files:
            name = obj.key.rsplit("/", 1)[-1]
            row = self._row(name, obj.key, False, obj.size, obj.modified, file_icon)
            row[0].setToolTip(obj.key)
            parent.appendRow(row)

    @staticmethod
    def _row(name, key, is_folder, size, modified, icon) -> list[QStandardItem]:
        name_item = QStandardItem(icon, name)
        # Folders sort before files whichever way the column is sorted by name.
        name_item.setData(f"{0 if is_folder else 1}{name.lower()}", SORT_ROLE)
        size_item = QStandardItem(format_size(size))
        size_item.setData(size, SORT_ROLE)
        size_item.setData(f"{size:,} bytes", Qt.ItemDataRole.ToolTipRole)
        size_item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        time_item = QStandardItem(local_time(modified))
        time_item.setData(modified.timestamp() if modified else 0.0, SORT_ROLE)
        for item in (name_item, size_item, time_item):
            item.setData(key, KEY_ROLE)
            item.setData(is_folder, FOLDER_ROLE)
        return [name_item, size_item, time_item]

    def _expanded_prefixes(self) -> set[str]:
        found = set()

        def walk(parent):
            for row in range(self.model.rowCount(parent)):
                index = self.model.index(row, 0, parent)
                if index.data(FOLDER_ROLE) and self.view.isExpanded(index):
                    found.add(index.data(KEY_ROLE))
                    walk(index)

        walk(self.model.index(-1, -1))
        return found

    def _restore(self, expanded: set[str], selected: set[str]) -> None:
        selection = self.view.selectionModel()

        def walk(parent):
            for row in range(self.model.rowCount(parent)):
                index = self.model.index(row, 0, parent)
                key = index.data(KEY_ROLE)
                if key in selected:
                    selection.select(index, selection.SelectionFlag.Select | selection.SelectionFlag.Rows)
                if index.data(FOLDER_ROLE):
                    if key in expanded:
                        self.view.setExpanded(index, True)
                    walk(index)

        walk(self.model.index(-1, -1))

    # -- selection ---------------------------------------------------------------------------
    def selected_targets(self) -> list[tuple[str, bool]]:
        """(key or prefix, is folder) for each selected row; rows inside a selected folder are dropped."""
        rows = [index for index in self.view.selectionModel().selectedRows(0)]
        targets = [(index.data(KEY_ROLE), bool(index.data(FOLDER_ROLE))) for index in rows]
        folders = [key for key, is_folder in targets if is_folder]
        return sorted(
            (key, is_folder)
            for key, is_folder in targets
            if not any(key != folder and key.startswith(folder + "/") for folder in folders)
        )

    def _objects_for(self, targets) -> list[tuple[StoredObject, str]]:
        """Each object to fetch, with its path relative to the download folder."""
        by_key = {obj.key: obj for obj in self.tree_data.objects()}
        found = []
        for key, is_folder in targets:
            if not is_folder:
                if key in by_key:
                    found.append((by_key[key], key.rsplit("/", 1)[-1]))
                continue
            # The folder itself is recreated in the chosen place: outputs/<job>/x -> <place>/<job>/x.
            parent = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
            for obj in by_key.values():
                if obj.key.startswith(key + "/"):
                    found.append((obj, obj.key[len(parent) :]))
        return found

    def _update_actions(self) -> None:
        targets = self.selected_targets()
        busy = self._transfer is not None
        self.download_button.setEnabled(bool(targets) and not busy)
        self.delete_button.setEnabled(bool(targets))
        self.link_button.setEnabled(len(targets) == 1 and not targets[0][1])

    def _context_menu(self, pos) -> None:
        if not self.selected_targets():
            return
        menu = QMenu(self)
        for button in (self.download_button, self.link_button, self.delete_button):
            action = menu.addAction(button.icon(), button.text())
            action.setEnabled(button.isEnabled())
            action.triggered.connect(button.click)
        menu.exec(self.view.viewport().mapToGlobal(pos))

    def _double_clicked(self, index) -> None:
        if not index.data(FOLDER_ROLE):
            self.download()

    # -- download ----------------------------------------------------------------------------
    def download(self) -> None:
        targets = self.selected_targets()
        items = self._objects_for(targets)
        if not items or self._transfer is not None:
            return
        location = QStandardPaths.StandardLocation.DownloadLocation
        downloads = QStandardPaths.writableLocation(location) or str(Path.home())
        if len(targets) == 1 and not targets[0][1]:
            obj, name = items[0]
            chosen, _ = QFileDialog.getSaveFileName(self, "Download", str(Path(downloads) / name))
            if not chosen:
                return
            plan = [(obj.key, Path(chosen), obj.size)]
        else:
            folder = QFileDialog.getExistingDirectory(self, "Download into folder", downloads)
            if not folder:
                return
            plan = [(obj.key, Path(folder) / relative, obj.size) for obj, relative in items]
        self._start_download(plan)

    def _start_download(self, plan: list[tuple[str, Path, int]]) -> None:
        transfer = _Transfer(sum(size for _key, _dest, size in plan), len(plan))
        self._transfer = transfer
        services = self.services

        def task():
            farm = services.farm
            for index, (key, dest, size) in enumerate(plan):
                transfer.index, transfer.name, transfer.current = index + 1, key.rsplit("/", 1)[-1], 0
                farm.download_object(key, dest, progress=_setter(transfer), cancel=transfer.cancel)
                transfer.base += size
                transfer.current = 0
            return plan

        for widget in self.transfer_widgets:
            widget.show()
        self.progress.setValue(0)
        self.cancel_button.setEnabled(True)
        self._show_progress()
        self.progress_timer.start()
        self._update_actions()
        self.runner.run(task, self._downloaded, self._download_failed)

    def cancel_download(self) -> None:
        if self._transfer is not None:
            self._transfer.cancel.set()
            self.cancel_button.setEnabled(False)
            self.progress_label.setText("Cancelling…")

    def _show_progress(self) -> None:
        transfer = self._transfer
        if transfer is None or transfer.cancel.is_set():
            return
        done = min(transfer.done, transfer.total)
        self.progress.setValue(int(1000 * done / transfer.total) if transfer.total else 0)
        self.progress.setFormat(f"{done * 100 // transfer.total if transfer.total else 0} %")
        which = f" ({transfer.index} of {transfer.count})" if transfer.count > 1 else ""
        self.progress_label.setStyleSheet(MUTED_STYLE)
        self.progress_label.setText(
            f"Downloading {transfer.name}{which} — {format_size(done)} of {format_size(transfer.total)}"
        )

    def _finish_transfer(self) -> None:
        self.progress_timer.stop()
        self._transfer = None
        for widget in self.transfer_widgets:
            widget.hide()
        self._update_actions()

    def _downloaded(self, plan) -> None:
        total = sum(size for _key, _dest, size in plan)
        self._finish_transfer()
        where = plan[0][1] if len(plan) == 1 else _common_folder([dest for _key, dest, _size in plan])
        self.progress_label.setStyleSheet(OK_STYLE)
        self.progress_label.setText(f"Downloaded {plural(len(plan), 'file')} ({format_size(total)}) to {where}")

    def _download_failed(self, exc: Exception) -> None:
        self._finish_transfer()
        if isinstance(exc, TransferCancelled):
            self.progress_label.setStyleSheet(MUTED_STYLE)
            self.progress_label.setText("Download cancelled; files finished before it are kept.")
            return
        self.progress_label.setStyleSheet(ERROR_STYLE)
        self.progress_label.setText(f"Download failed: {exc}")

    # -- delete ------------------------------------------------------------------------------
    def delete(self) -> None:
        targets = self.selected_targets()
        if not targets:
            return
        question = self._delete_question(targets)
        buttons = QMessageBox.StandardButton
        answer = QMessageBox.question(self, "Delete from storage", question, buttons.Yes | buttons.No, buttons.No)
        if answer != QMessageBox.StandardButton.Yes:
            return
        services = self.services

        def task():
            farm = services.farm
            removed = 0
            for key, is_folder in targets:
                if is_folder:
                    removed += farm.delete_prefix(key)
                else:
                    farm.delete_object(key)
                    removed += 1
            return removed

        self.delete_button.setEnabled(False)
        self.summary.setText("Deleting…")
        self.runner.run(task, self._deleted, self._delete_failed)

    def _delete_question(self, targets) -> str:
        counts = {folder.prefix: folder.count for folder in _all_folders(self.tree_data)}
        names = []
        for key, is_folder in targets[:10]:
            names.append(
                f"• {key}/ (the folder and its {plural(counts.get(key, 0), 'object')})" if is_folder else f"• {key}"
            )
        if len(targets) > 10:
            names.append(f"• … and {len(targets) - 10} more")
        what = "this" if len(targets) == 1 else f"these {len(targets)} items"
        text = f"Delete {what} from the storage?\n\n" + "\n".join(names)
        if any(key == "inputs" or key.startswith("inputs/") for key, _folder in targets):
            text += "\n\nQueued or running jobs that still read these inputs will fail."
        return text + "\n\nThis cannot be undone."

    def _deleted(self, removed: int) -> None:
        self.progress_label.setStyleSheet(OK_STYLE)
        self.progress_label.setText(f"Deleted {plural(removed, 'object')}.")
        self.refresh()

    def _delete_failed(self, exc: Exception) -> None:
        self._show_error(f"Delete failed: {exc}")
        self.refresh()

    # -- link --------------------------------------------------------------------------------
    def copy_link(self) -> None:
        targets = self.selected_targets()
        if len(targets) != 1 or targets[0][1]:
            return
        key = targets[0][0]
        services = self.services

        def task():
            return services.farm.link(key, expires=LINK_EXPIRES_S)

        self.runner.run(
            task,
            lambda url: self._link_ready(key, url),
            lambda exc: self._show_error(f"Cannot make a link to {key}: {exc}"),
        )

    def _link_ready(self, key: str, url: str) -> None:
        QGuiApplication.clipboard().setText(url)
        name = key.rsplit("/", 1)[-1]
        if url.startswith("file:"):
            note = "a file:// link to the storage folder: it opens on this computer (or where the folder is shared)"
        else:
            note = f"valid for {LINK_EXPIRES_S // 3600} hour, no credentials needed"
        self.progress_label.setStyleSheet(OK_STYLE)
        self.progress_label.setText(f"Link to {name} copied to the clipboard ({note}).")

    # -- misc --------------------------------------------------------------------------------
    def _show_error(self, text: str) -> None:
        self.error.setText(text)
        self.error.show()

    def _job_event(self, event) -> None:
        if getattr(event, "event", None) in ("completed", "removed"):
            self.refresh_later.start()

    def _refresh_if_visible(self) -> None:
        if self.isVisible() and self._loaded_once:
            self.refresh()


def _setter(transfer: _Transfer):
    def progress(done: int) -> None:
        transfer.current = done  # one int assignment: safe to read from the GUI thread

    return progress


def _all_folders(folder: Folder):
    for child in folder.folders.values():
        yield child
        yield from _all_folders(child)


def _common_folder(paths: list[Path]) -> Path:
    import os

    return Path(os.path.commonpath([str(p.parent) for p in paths]))
