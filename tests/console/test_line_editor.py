"""The keystroke line editor: edits, cursor moves, history, split escape sequences."""

from __future__ import annotations

from nhlink.console.line_editor import Action, LineEditor


def lines(actions: list[Action]) -> list[str]:
    return [a.text for a in actions if a.kind == "line"]


def test_plain_typing_echoes_and_enter_submits() -> None:
    editor = LineEditor()
    assert editor.feed("abc") == [Action("echo", "abc")]
    assert editor.feed("\r\n") == [Action("echo", "\r\n"), Action("line", "abc")]
    assert editor.line == ""


def test_backspace_and_cursor_edits_change_the_line() -> None:
    editor = LineEditor()
    editor.feed("helo")
    editor.feed("\x1b[D")  # left
    editor.feed("l")
    assert editor.line == "hello" and editor.cursor == 4
    editor.feed("\x01X\x05!")  # Ctrl-A, insert, Ctrl-E, append
    assert editor.line == "Xhello!"
    editor.feed("\x7f\x7f")
    assert editor.line == "Xhell"
    editor.feed("\x01\x1b[C\x0b")  # home, right, kill to end
    assert editor.line == "X"
    editor.feed("yz\x1b[D\x15")  # kill to start
    assert editor.line == "z" and editor.cursor == 0
    assert lines(editor.feed("\r")) == ["z"]


def test_history_up_down_restores_lines_and_draft() -> None:
    editor = LineEditor()
    for line in ("one", "two"):
        editor.feed(line + "\r")
    editor.feed("dra")
    editor.feed("\x1b[A")
    assert editor.line == "two"
    editor.feed("\x1b[A\x1b[A")
    assert editor.line == "one"
    editor.feed("\x1b[B")
    assert editor.line == "two"
    editor.feed("\x1b[B")
    assert editor.line == "dra"
    editor.feed("\x1b[A")
    assert lines(editor.feed("\r")) == ["two"]
    assert editor.history == ["one", "two"]


def test_escape_sequence_split_across_inputs() -> None:
    editor = LineEditor()
    editor.feed("ab")
    assert editor.feed("\x1b") == []
    assert editor.feed("[") == []
    editor.feed("D")
    assert editor.cursor == 1 and editor.line == "ab"


def test_ctrl_c_interrupts_and_clears_ctrl_d_on_empty_is_eof() -> None:
    editor = LineEditor()
    editor.feed("junk")
    actions = editor.feed("\x03")
    assert Action("interrupt") in actions and editor.line == ""
    assert editor.feed("\x04") == [Action("eof")]
