"""nox sessions for the hardening runs (issue 8).

    nox -s fuzz                  # every fuzzer for 60 s (nox -s fuzz -- 20 for 20 s)
    nox -s sanitize              # ASan/UBSan vector suites, C tests with SAN=1 and valgrind

Both run in the current environment (the project venv), since they need the
native build, the test tools and, for fuzz, atheris (installed on demand).
"""

from __future__ import annotations

import sys

import nox

nox.options.sessions = ["fuzz", "sanitize"]
nox.options.reuse_existing_virtualenvs = True


@nox.session(venv_backend="none")
def fuzz(session: nox.Session) -> None:
    """Run each libFuzzer and atheris harness for a bounded time (seconds: first posarg)."""
    seconds = session.posargs[0] if session.posargs else "60"
    session.run("scripts/fuzz.sh", seconds, env={"NHLINK_PYTHON": sys.executable}, external=True)


@nox.session(venv_backend="none")
def sanitize(session: nox.Session) -> None:
    """ASan/UBSan build of the extension over the vector suites, plus the C tests' SAN and valgrind runs."""
    session.run(
        "scripts/sanitize.sh",
        *session.posargs,
        env={"NHLINK_PYTHON": sys.executable},
        external=True,
    )
