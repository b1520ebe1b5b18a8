"""The PySide6 control panel. Widgets take the services they use in their constructor; every
network, database and storage call goes through ``app.runner.BackgroundRunner``."""
