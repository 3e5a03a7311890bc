"""A local NervesHub-compatible hub for tests, the demo and people trying nhlink.

`LocalHub` is the device endpoint (mutual TLS or shared-secret websockets,
Phoenix V2 channels, update bookkeeping) and owns a `FirmwareServer` (HTTPS
with Range support and `Fault` injection). `Pki` makes the certificates.
Everything records what happened for assertions.
"""

from __future__ import annotations

from nhlink.testing.errors import HubError
from nhlink.testing.faults import Fault
from nhlink.testing.firmware_server import FirmwareServer, HostedFile, RequestRecord, file_digests
from nhlink.testing.hub import LocalHub
from nhlink.testing.orchestrator import HubPolicy, update_payload
from nhlink.testing.pki import CertificateAuthority, IssuedCertificate, Pki
from nhlink.testing.records import (
    DeviceRecord,
    FrameRecord,
    InflightUpdate,
    Release,
    TlsFailureRecord,
    UpgradeRecord,
)

__all__ = [
    "CertificateAuthority",
    "DeviceRecord",
    "Fault",
    "FirmwareServer",
    "FrameRecord",
    "HostedFile",
    "HubError",
    "HubPolicy",
    "InflightUpdate",
    "IssuedCertificate",
    "LocalHub",
    "Pki",
    "Release",
    "RequestRecord",
    "TlsFailureRecord",
    "UpgradeRecord",
    "file_digests",
    "update_payload",
]
