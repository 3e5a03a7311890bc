"""NervesKey: device identity from an ATECC508A/608A secure element on I2C.

``crc`` and ``driver`` talk to the chip, ``certs`` rebuilds X.509 certificates
from the chip's 72-byte compressed form, ``nerves_key`` reads a provisioned
NervesKey, ``configurator`` plugs it into the client configuration, ``tls``
runs a TLS client whose handshake is signed on the chip, and ``cli`` is
``nhlink nerves-key``.
"""
