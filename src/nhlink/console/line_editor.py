"""A terminal line editor driven by raw keystrokes (what a TTY's readline does).

Feed it the bytes an operator's terminal sends; it answers with what to
echo and with the finished lines. Keys: printable text, Backspace, Delete,
Left/Right, Home/End, Ctrl-A/E/B/F/U/K/W/L, Up/Down for history, Tab (four
spaces), Enter, Ctrl-C (interrupt) and Ctrl-D (EOF on an empty line). Escape
sequences split across inputs are reassembled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

HISTORY_SIZE = 500
MAX_LINE = 16 * 1024
_MAX_ESCAPE = 16

ESC = "\x1b"
ActionKind = Literal["echo", "line", "interrupt", "eof"]


@dataclass(frozen=True, slots=True)
class Action:
    """``echo`` text to the terminal, a finished ``line``, an ``interrupt`` or an ``eof``."""

    kind: ActionKind
    text: str = ""


@dataclass
class LineEditor:
    """Editing state of the current line plus the history of submitted ones."""

    prompt: str = ">>> "
    history: list[str] = field(default_factory=list)
    _buffer: list[str] = field(default_factory=list)
    _cursor: int = 0
    _pending: str = ""
    _history_index: int | None = None
    _draft: str = ""
    _after_cr: bool = False

    @property
    def line(self) -> str:
        return "".join(self._buffer)

    @property
    def cursor(self) -> int:
        return self._cursor

    def feed(self, data: str) -> list[Action]:
        """Process keystrokes; returns the resulting actions in order."""
        actions: list[Action] = []
        text = self._pending + data
        self._pending = ""
        i = 0
        while i < len(text):
            char = text[i]
            if char == ESC:
                length = _escape_length(text, i)
                if length == 0:  # incomplete: wait for the rest
                    self._pending = text[i:] if len(text) - i < _MAX_ESCAPE else ""
                    break
                self._escape(text[i : i + length], actions)
                i += length
                continue
            self._key(char, actions)
            i += 1
        return _merge(actions)

    def reset(self) -> None:
        """Forget the current line (after an interrupt)."""
        self._buffer.clear()
        self._cursor = 0
        self._history_index = None
        self._draft = ""

    # -- keys --------------------------------------------------------------

    def _key(self, char: str, actions: list[Action]) -> None:
        after_cr, self._after_cr = self._after_cr, False
        if char == "\r" or char == "\n":
            if char == "\n" and after_cr:
                return
            self._after_cr = char == "\r"
            self._submit(actions)
        elif char in ("\x7f", "\x08"):
            self._delete_before(actions)
        elif char == "\x01":
            self._move_to(0, actions)
        elif char == "\x05":
            self._move_to(len(self._buffer), actions)
        elif char == "\x02":
            self._move_to(self._cursor - 1, actions)
        elif char == "\x06":
            self._move_to(self._cursor + 1, actions)
        elif char == "\x15":
            del self._buffer[: self._cursor]
            self._cursor = 0
            self._redraw(actions)
        elif char == "\x0b":
            del self._buffer[self._cursor :]
            self._redraw(actions)
        elif char == "\x17":
            self._delete_word(actions)
        elif char == "\x0c":
            actions.append(Action("echo", "\x1b[2J\x1b[H" + self.prompt))
            self._redraw(actions)
        elif char == "\x03":
            actions.append(Action("echo", "^C\r\n"))
            self.reset()
            actions.append(Action("interrupt"))
        elif char == "\x04":
            if self._buffer:
                self._delete_at(actions)
            else:
                actions.append(Action("eof"))
        elif char == "\t":
            self._insert("    ", actions)
        elif char.isprintable():
            self._insert(char, actions)

    def _escape(self, sequence: str, actions: list[Action]) -> None:
        final = sequence[-1]
        if sequence in ("\x1b[A", "\x1bOA"):
            self._history_move(-1, actions)
        elif sequence in ("\x1b[B", "\x1bOB"):
            self._history_move(1, actions)
        elif sequence in ("\x1b[C", "\x1bOC"):
            self._move_to(self._cursor + 1, actions)
        elif sequence in ("\x1b[D", "\x1bOD"):
            self._move_to(self._cursor - 1, actions)
        elif final == "H" or sequence in ("\x1b[1~", "\x1b[7~"):
            self._move_to(0, actions)
        elif final == "F" or sequence in ("\x1b[4~", "\x1b[8~"):
            self._move_to(len(self._buffer), actions)
        elif sequence == "\x1b[3~":
            self._delete_at(actions)
        # anything else (function keys, Alt-x...) is ignored

    # -- editing ---------------------------------------------------------------

    def _insert(self, text: str, actions: list[Action]) -> None:
        room = MAX_LINE - len(self._buffer)
        if room <= 0:
            actions.append(Action("echo", "\x07"))
            return
        text = text[:room]
        at_end = self._cursor == len(self._buffer)
        self._buffer[self._cursor : self._cursor] = list(text)
        self._cursor += len(text)
        actions.append(Action("echo", text))
        if not at_end:
            self._redraw_tail(actions)

    def _delete_before(self, actions: list[Action]) -> None:
        if self._cursor == 0:
            return
        self._cursor -= 1
        del self._buffer[self._cursor]
        actions.append(Action("echo", "\b"))
        self._redraw_tail(actions)

    def _delete_at(self, actions: list[Action]) -> None:
        if self._cursor < len(self._buffer):
            del self._buffer[self._cursor]
            self._redraw_tail(actions)

    def _delete_word(self, actions: list[Action]) -> None:
        start = self._cursor
        while start > 0 and self._buffer[start - 1] == " ":
            start -= 1
        while start > 0 and self._buffer[start - 1] != " ":
            start -= 1
        del self._buffer[start : self._cursor]
        self._cursor = start
        self._redraw(actions)

    def _move_to(self, position: int, actions: list[Action]) -> None:
        position = max(0, min(position, len(self._buffer)))
        if position < self._cursor:
            actions.append(Action("echo", f"\x1b[{self._cursor - position}D"))
        elif position > self._cursor:
            actions.append(Action("echo", f"\x1b[{position - self._cursor}C"))
        self._cursor = position

    def _history_move(self, step: int, actions: list[Action]) -> None:
        if not self.history:
            return
        if self._history_index is None:
            if step > 0:
                return
            self._draft = self.line
            index = len(self.history) - 1
        else:
            index = self._history_index + step
        if index < 0:
            return
        if index >= len(self.history):
            self._history_index = None
            self._replace(self._draft, actions)
            return
        self._history_index = index
        self._replace(self.history[index], actions)

    def _replace(self, text: str, actions: list[Action]) -> None:
        if self._cursor:
            actions.append(Action("echo", f"\x1b[{self._cursor}D"))
        self._buffer = list(text)
        self._cursor = len(self._buffer)
        actions.append(Action("echo", text + "\x1b[K"))

    def _submit(self, actions: list[Action]) -> None:
        line = self.line
        actions.append(Action("echo", "\r\n"))
        if line.strip() and (not self.history or self.history[-1] != line):
            self.history.append(line)
            del self.history[:-HISTORY_SIZE]
        self.reset()
        actions.append(Action("line", line))

    # -- display -----------------------------------------------------------------

    def _redraw(self, actions: list[Action]) -> None:
        """Rewrite the whole line after an edit; the terminal cursor was at the old spot."""
        actions.append(Action("echo", "\r" + self.prompt + self.line + "\x1b[K"))
        back = len(self._buffer) - self._cursor
        if back:
            actions.append(Action("echo", f"\x1b[{back}D"))

    def _redraw_tail(self, actions: list[Action]) -> None:
        """Rewrite from the cursor to the end, then put the cursor back."""
        tail = "".join(self._buffer[self._cursor :])
        actions.append(Action("echo", tail + "\x1b[K"))
        if tail:
            actions.append(Action("echo", f"\x1b[{len(tail)}D"))


def _escape_length(text: str, start: int) -> int:
    """Length of the escape sequence at ``start``; 0 when it is not complete yet."""
    if start + 1 >= len(text):
        return 0
    kind = text[start + 1]
    if kind == "O":
        return 3 if start + 2 < len(text) else 0
    if kind != "[":
        return 2  # Alt-<key>
    for end in range(start + 2, min(len(text), start + _MAX_ESCAPE)):
        if "\x40" <= text[end] <= "\x7e":
            return end - start + 1
    return 0 if len(text) - start < _MAX_ESCAPE else _MAX_ESCAPE


def _merge(actions: list[Action]) -> list[Action]:
    """Join consecutive echoes so that one keystroke batch is one output."""
    merged: list[Action] = []
    for action in actions:
        if action.kind == "echo" and merged and merged[-1].kind == "echo":
            merged[-1] = Action("echo", merged[-1].text + action.text)
        elif action.kind != "echo" or action.text:
            merged.append(action)
    return merged
