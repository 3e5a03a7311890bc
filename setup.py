"""Builds the native core: the C sources in src/native plus the Cython binding.

Set NHLINK_NO_NATIVE=1 to skip it (the pure-Python backend is then used).
Set NHLINK_BUILD_FLAVOR=asan|coverage for instrumented builds.
A failed native build is an error unless NHLINK_NATIVE_OPTIONAL=1.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import Extension, setup


def native_extensions() -> list[Extension]:
    if os.environ.get("NHLINK_NO_NATIVE", "") not in ("", "0"):
        return []
    from Cython.Build import cythonize

    flavor = os.environ.get("NHLINK_BUILD_FLAVOR", "release")
    cflags = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-pthread"]
    ldflags = ["-pthread"]
    if flavor == "asan":
        cflags += ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address,undefined"]
    elif flavor == "coverage":
        cflags += ["-O0", "-g", "--coverage"]
        ldflags += ["--coverage"]
    sources = ["src/nhlink/_native/_core.pyx", *sorted(glob.glob("src/native/nh_*.c"))]
    ext = Extension(
        "nhlink._native._core",
        sources=sources,
        include_dirs=["src/native"],
        libraries=["z"],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
        define_macros=[("_FILE_OFFSET_BITS", "64"), ("_GNU_SOURCE", "1")],
    )
    return cythonize(
        [ext],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
        quiet=True,
    )


try:
    exts = native_extensions()
except Exception as exc:  # pragma: no cover - only on machines without Cython
    if os.environ.get("NHLINK_NATIVE_OPTIONAL", "") in ("", "0"):
        raise
    print(f"nhlink: building without the native core: {exc}", file=sys.stderr)
    exts = []

setup(ext_modules=exts)
