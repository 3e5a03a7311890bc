"""FAT12/16/32 inside the destination, worked through the block cache (fwup's fat_* actions).

``layout`` parses and formats the boot sector, ``table`` is the allocation
table, ``names`` the 8.3 and long-name rules, ``volume`` directories and
files, ``ops`` the fwup operations the actions call.
"""

from nhlink.fwup.fat.ops import FatSessions
from nhlink.fwup.fat.volume import FileWriter, Volume

__all__ = ["FatSessions", "FileWriter", "Volume"]
