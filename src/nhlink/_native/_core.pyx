# cython: language_level=3
"""Native backend: Cython binding over the C core in src/native.

The module is assembled from .pxi parts, one per C module, so that the
cdef classes can reach each other's C pointers (ZipStream writes into a
BlockCache's nh_cache).
"""

include "_crypto.pxi"
include "_cache.pxi"
include "_uboot.pxi"
include "_framing.pxi"
include "_zip.pxi"
include "_vcdiff.pxi"
