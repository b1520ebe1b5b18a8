"""A URL field that never shows the password in it.

A service URL may carry a password (``redis://:secret@host``, ``postgresql://user:secret@db``). The
field shows it masked (``redis://:***@host``) once it is loaded or typed, so neither a screenshot nor
someone looking over the user's shoulder sees it; the real URL stays in memory. Editing another part
of a masked URL (the host, say) keeps the hidden password; typing a new one replaces it.
"""

from __future__ import annotations

from PySide6.QtWidgets import QLineEdit

from farm.base.redact import MASK, redact_url


class UrlEdit(QLineEdit):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._url: str | None = None
        self.editingFinished.connect(self._mask)

    def set_url(self, url: str | None) -> None:
        self._url = url or None
        self.setText(redact_url(url) if url else "")

    def url(self) -> str | None:
        """The URL the field stands for, with the hidden password put back where the mask is."""
        text = self.text().strip()
        if not text:
            return None
        hidden = _hidden_part(self._url)
        if hidden is not None and text.count(MASK) == 1:
            return text.replace(MASK, hidden)
        return text

    def _mask(self) -> None:
        url = self.url()
        self._url = url
        shown = redact_url(url) if url else ""
        if shown != self.text().strip():
            self.setText(shown)


def _hidden_part(url: str | None) -> str | None:
    """What ``redact_url`` replaced by the mask in ``url``, or ``None`` when it hid nothing."""
    if not url:
        return None
    shown = redact_url(url)
    if shown == url or shown.count(MASK) != 1:
        return None
    start = shown.index(MASK)
    tail = len(shown) - start - len(MASK)
    return url[start : len(url) - tail]
