"""atheris harness: the NervesKey compressed-certificate decoder (nhlink.nerves_key.certs).

A 72-byte compressed certificate (plus public keys, device SN and OTP serial,
or the vectors' NervesKey fixture, chosen by a mode byte; see
fuzz_drivers.nerveskey_outcome) is rebuilt into an X.509 certificate. Any
input must rebuild or raise CertificateError; anything else is a crash.
"""

from __future__ import annotations

import sys

import atheris

# The driver is instrumented too: its mode branches (fixture or own keys, signer
# or device, override) are coverage, so seeds of every mode stay in the corpus.
with atheris.instrument_imports(include=["nhlink", "fuzz_drivers"]):
    import fuzz_drivers

    import nhlink.nerves_key.certs
    import nhlink.nerves_key.nerves_key  # noqa: F401


def test_one_input(data: bytes) -> None:
    fuzz_drivers.nerveskey_outcome(data)


if __name__ == "__main__":
    fuzz_drivers.nerveskey_fixture()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
