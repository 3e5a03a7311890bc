"""One interactive Python session: a line editor in front of ``code.InteractiveConsole``.

Code is evaluated in a worker thread so that the event loop keeps running;
Ctrl-C raises ``KeyboardInterrupt`` inside that thread with
``PyThreadState_SetAsyncExc`` (it lands at the next bytecode, so a call
blocked inside C, such as a long ``time.sleep``, is interrupted only when it
returns). The worker's stdout/stderr is captured (see :mod:`.capture`).

Every public method runs on the event loop's thread; the worker reaches the
loop only through ``call_soon`` (``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import code
import ctypes
import logging
import queue
import sys
import threading
from collections.abc import Callable, MutableMapping
from functools import partial
from typing import Any

from nhlink.console import capture
from nhlink.console.line_editor import LineEditor

logger = logging.getLogger("nhlink.console")

PS1 = ">>> "
PS2 = "... "
MAX_BUFFERED_OUTPUT = 1 << 20
TRUNCATED = "\n[output truncated]\n"

Output = Callable[[str], None]
CallSoon = Callable[[Callable[[], None]], object]


def to_terminal(text: str) -> str:
    """Line ends as a raw TTY wants them (CR LF)."""
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def raise_in_thread(ident: int, exception: type[BaseException] | None) -> int:
    """Make ``exception`` be raised in thread ``ident`` (None clears a pending one)."""
    target = ctypes.py_object(exception) if exception is not None else None
    return int(ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), target))


class _Interpreter(code.InteractiveConsole):
    def __init__(self, namespace: MutableMapping[str, Any], write: Output) -> None:
        super().__init__(namespace, filename="<console>")  # type: ignore[arg-type]
        self._write = write

    def write(self, data: str) -> None:
        self._write(data)


class PythonConsole:
    """A Python REPL fed with keystrokes; ``output`` receives terminal text.

    ``died(reason)`` is called (on the loop) when the session ends by itself,
    e.g. after ``exit()``.
    """

    def __init__(
        self,
        namespace: MutableMapping[str, Any],
        *,
        output: Output,
        died: Callable[[str], None],
        call_soon: CallSoon,
        banner: str = "",
    ) -> None:
        self.editor = LineEditor(prompt=PS1)
        self.window_size: tuple[int, int] | None = None
        """(height, width) of the operator's terminal, when known."""
        self._output = output
        self._died = died
        self._call_soon = call_soon
        self._banner = banner
        self._interpreter = _Interpreter(namespace, self._write)
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="nhlink-console", daemon=True)
        self._state_lock = threading.Lock()
        self._evaluating = False
        self._busy = False
        """A line was submitted and its prompt is not shown yet (loop side)."""
        self._interrupt_sent = False
        self._typeahead = ""
        self._out_lock = threading.Lock()
        self._out: list[str] = []
        self._out_size = 0
        self._flush_scheduled = False
        self._closed = False
        self._started = False

    @property
    def evaluating(self) -> bool:
        return self._busy

    @property
    def running(self) -> bool:
        return self._started and not self._closed

    def start(self) -> None:
        """Start the worker and show the banner and first prompt."""
        capture.install()
        self._started = True
        self._thread.start()
        self._output(to_terminal(self._banner) + self.editor.prompt)

    def stop(self) -> None:
        """End the session; a running evaluation is interrupted and its output dropped."""
        if self._closed or not self._started:
            return
        with self._out_lock:
            self._closed = True
            self._out.clear()
        self.interrupt()
        self._lines.put(None)
        capture.uninstall()

    def feed(self, data: str) -> None:
        """Keystrokes from the operator."""
        while data and not self._closed:
            if self._busy:
                if "\x03" in data:
                    self.interrupt()
                    data = data.replace("\x03", "")
                self._typeahead += data
                return
            cut = _line_end(data)
            chunk, data = data[:cut], data[cut:]
            for action in self.editor.feed(chunk):
                if action.kind == "echo":
                    self._output(action.text)
                elif action.kind == "interrupt":
                    self._interpreter.resetbuffer()
                    self.editor.prompt = PS1
                    self._output("KeyboardInterrupt\r\n" + PS1)
                elif action.kind == "line":
                    self._submit(action.text)
                # "eof" on an empty line is ignored: the session lives until it times out

    def interrupt(self) -> None:
        """Ctrl-C: raise KeyboardInterrupt in the running evaluation (once)."""
        with self._state_lock:
            if self._evaluating and not self._interrupt_sent and self._thread.ident is not None:
                self._interrupt_sent = True
                raise_in_thread(self._thread.ident, KeyboardInterrupt)

    # -- loop side -------------------------------------------------------------

    def _submit(self, line: str) -> None:
        self._busy = True
        with self._state_lock:
            self._evaluating = True
            self._interrupt_sent = False
        self._lines.put(line)

    def _evaluated(self, more: bool) -> None:
        self._flush()
        self._busy = False
        if self._closed:
            return
        self.editor.prompt = PS2 if more else PS1
        self._output(self.editor.prompt)
        typeahead, self._typeahead = self._typeahead, ""
        if typeahead:
            self.feed(typeahead)

    def _finished(self, reason: str) -> None:
        self._flush()
        if self._closed:
            return
        self._closed = True
        capture.uninstall()
        self._died(reason)

    def _flush(self) -> None:
        with self._out_lock:
            text = "".join(self._out)
            self._out.clear()
            self._out_size = 0
            self._flush_scheduled = False
        if text:
            self._output(to_terminal(text))

    # -- worker side -----------------------------------------------------------

    def _write(self, text: str) -> None:
        with self._out_lock:
            if self._closed:
                return
            if self._out_size < MAX_BUFFERED_OUTPUT:
                text = text[: MAX_BUFFERED_OUTPUT - self._out_size]
                self._out_size += len(text)
                self._out.append(text if self._out_size < MAX_BUFFERED_OUTPUT else text + TRUNCATED)
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        self._call_soon(self._flush)

    def _work(self) -> None:
        capture.register(self._write)
        reason: str | None = None
        try:
            while True:
                try:
                    line = self._lines.get()
                    if line is None:
                        return
                    more = self._evaluate(line)
                except KeyboardInterrupt:  # landed outside the interpreter's own handler
                    self._interpreter.resetbuffer()
                    self._write("KeyboardInterrupt\n")
                    more = False
                    self._done_evaluating()
                self._call_soon(partial(self._evaluated, more))
        except SystemExit as exc:
            reason = f"exit({exc.code!r})"
        except BaseException as exc:
            reason = f"{type(exc).__name__}: {exc}"
            logger.error("console worker crashed: %s", reason)
        finally:
            capture.unregister()
            if reason is not None:
                self._done_evaluating()
                self._call_soon(partial(self._finished, reason))

    def _evaluate(self, line: str) -> bool:
        capture.ensure_installed()
        try:
            return self._interpreter.push(line)
        finally:
            self._done_evaluating()

    def _done_evaluating(self) -> None:
        with self._state_lock:
            if self._interrupt_sent and self._thread.ident is not None:
                raise_in_thread(self._thread.ident, None)  # drop an interrupt that did not land
            self._evaluating = False


def _line_end(data: str) -> int:
    """Index just after the first CR or LF of ``data`` (its length if none)."""
    ends = [i for i in (data.find("\r"), data.find("\n")) if i >= 0]
    return min(ends) + 1 if ends else len(data)


def python_banner() -> str:
    return f"Python {sys.version.split()[0]} on {sys.platform} (nhlink remote console)\n"
