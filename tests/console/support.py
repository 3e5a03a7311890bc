"""A terminal on the hub side of a remote console: type keys, wait for output."""

from __future__ import annotations

import re

from nhlink.testing import LocalHub
from nhlink.testing.records import DeviceRecord

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Terminal:
    """What an operator sees of one device's console, read in order."""

    def __init__(self, hub: LocalHub, device: DeviceRecord) -> None:
        self.hub = hub
        self.device = device
        self.seen = 0
        """Characters of the output already consumed by :meth:`expect`."""

    @property
    def output(self) -> str:
        return "".join(self.device.console_output)

    async def type(self, data: str) -> None:
        await self.hub.push_console(self.device.identifier, data)

    async def expect(self, text: str, timeout: float = 10.0) -> str:
        """Wait until ``text`` appears after what was consumed; returns the output up to it."""

        def check() -> str | None:
            output = self.output
            at = output.find(text, self.seen)
            if at < 0:
                return None
            chunk = output[self.seen : at + len(text)]
            self.seen = at + len(text)
            return chunk

        try:
            return await self.hub.wait_until(check, timeout, f"console output {text!r}")
        except Exception as exc:
            raise AssertionError(
                f"{text!r} not seen; output: {self.output[self.seen :]!r}"
            ) from exc

    async def run(self, line: str, timeout: float = 10.0) -> str:
        """Type ``line`` + Enter; returns the output up to the next prompt (without echo)."""
        await self.type(line + "\r")
        await self.expect(line + "\r\n", timeout)
        return (await self.expect(">>> ", timeout))[: -len(">>> ")]
