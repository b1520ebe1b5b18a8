"""Stop signals where the event loop cannot take them (Windows): a plain handler passes them on."""

from __future__ import annotations

import asyncio
import os
import signal

from farm_node.cli import _install_stop_signals


class _WindowsLikeLoop(asyncio.SelectorEventLoop):
    def add_signal_handler(self, sig, callback, *args):
        raise NotImplementedError  # what asyncio's Windows loops do


def test_without_add_signal_handler_a_signal_still_reaches_the_node():
    loop = _WindowsLikeLoop()
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    requests = []
    try:
        _install_stop_signals(loop, lambda: requests.append("stop"))

        async def signalled_twice():
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.sleep(0.05)

        loop.run_until_complete(signalled_twice())
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        loop.close()
    assert requests == ["stop", "stop"]  # the first drains, the second hands jobs back
