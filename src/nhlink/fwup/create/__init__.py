"""The host side of ``nhlink fwup``: create, sign and re-sign .fw archives.

* :func:`create_archive` - ``fwup -c``: fwup.conf -> .fw (meta.conf byte for
  byte like fwup 1.16, signature optional);
* :func:`resign_archive` - ``fwup -S``: replace an archive's signature;
* :func:`sign_meta_conf` - the 64-byte Ed25519 signature of meta.conf.

Key files live in :mod:`nhlink.fwup.keys`.
"""

from nhlink.fwup.create.archive import CreatedArchive, create_archive, sign_meta_conf
from nhlink.fwup.create.confparse import parse_conf
from nhlink.fwup.create.emit import emit_meta_conf
from nhlink.fwup.create.resign import resign_archive

__all__ = [
    "CreatedArchive",
    "create_archive",
    "emit_meta_conf",
    "parse_conf",
    "resign_archive",
    "sign_meta_conf",
]
