"""Start the control panel: settings, services, runner, window, and the local farm if needed."""

from __future__ import annotations

import logging
import sys

from farm.base.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from farm.base import redact

    redact.install()  # passwords and S3 keys never reach the log, whatever a library prints
    from PySide6.QtWidgets import QApplication, QMessageBox

    app = QApplication(sys.argv if argv is None else argv)
    app.setOrganizationName("EncodeFlow")
    app.setApplicationName("EncodeFlow")
    try:
        settings = Settings.load()
    except SettingsError as exc:
        QMessageBox.critical(None, "EncodeFlow", f"The settings cannot be used:\n\n{exc}")
        return 2

    from app.local_farm import LocalFarmLauncher
    from app.main_window import RESOURCES, MainWindow
    from app.runner import BackgroundRunner
    from app.services import AppServices

    app.setStyleSheet((RESOURCES / "style.qss").read_text(encoding="utf-8"))
    app.setQuitOnLastWindowClosed(False)  # closing to the tray must not quit
    from app import credentials

    credentials.apply_to_environment()  # S3 keys from the OS keyring, for us and the local node
    services = AppServices(settings)
    runner = BackgroundRunner(max_threads=8)  # uploads hold a thread each for their whole length
    launcher = LocalFarmLauncher(services, runner)
    window = MainWindow(services, runner)
    launcher.started.connect(window.statusBar().showMessage)
    launcher.failed.connect(window.show_notice)
    window.closed.connect(app.quit)
    runner.run(services.open, None, lambda exc: window.show_notice(f"Could not open the farm's services: {exc}"))
    launcher.start()
    window.show()
    _quit_on_signals(window)
    code = app.exec()
    runner.wait()
    launcher.stop(keep_running=services.settings.keep_local_farm)
    services.close()
    return code


def _quit_on_signals(window) -> None:
    """SIGTERM (logout, `kill`) and Ctrl-C quit like the Quit menu, so the local farm is stopped.

    Python runs signal handlers only between bytecodes; an idle Qt loop runs none, so a timer lets
    the interpreter in twice a second.
    """
    import signal

    from PySide6.QtCore import QTimer

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: window.quit())
    timer = QTimer(window, interval=500)
    timer.timeout.connect(lambda: None)
    timer.start()


if __name__ == "__main__":
    sys.exit(main())
