"""U-Boot environment access through the block cache (spec 5).

Redundant environments keep a wrapping 8-bit counter in byte 4 of each copy.
Reading prefers the redundant copy when ``(flags2 - flags1) mod 256`` is in
1..127, else the primary, and falls back to the other copy if the preferred one
is corrupt. Writing stores ``flags + 1`` of the copy that was read into the
*other* copy, so the copies alternate; ``clearenv`` writes both with flags 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from nhlink.errors import UBootEnvError
from nhlink.fwup.metaconf import MetaConf, UBootEnvironment
from nhlink.fwup.primitives import BlockCacheAPI, Primitives

BLOCK_SIZE = 512
MAX_BLOCKS = 65534


@dataclass(frozen=True, slots=True)
class EnvContents:
    """What a read found: the variables, the flags byte and which copy (0 or 1) held them."""

    variables: dict[str, str]
    flags: int
    copy: int


class UBootEnv:
    """One ``uboot-environment`` of meta.conf, read and written through ``cache``."""

    def __init__(
        self, definition: UBootEnvironment, cache: BlockCacheAPI, primitives: Primitives
    ) -> None:
        name = definition.name
        if definition.block_offset is None or definition.block_offset < 0:
            raise UBootEnvError(f"uboot-environment '{name}' needs a block-offset")
        count = definition.block_count
        if count is None or not 1 <= count <= MAX_BLOCKS:
            raise UBootEnvError(
                f"uboot-environment '{name}' block-count must be between 1 and {MAX_BLOCKS}"
            )
        self.blocks = [definition.block_offset]
        redund = definition.block_offset_redund
        if redund is not None:
            if redund < 0 or abs(redund - definition.block_offset) < count:
                raise UBootEnvError(
                    f"uboot-environment '{name}' block-offset-redund overlaps the primary copy"
                )
            self.blocks.append(redund)
        self.size = count * BLOCK_SIZE
        self._cache = cache
        self._primitives = primitives

    @classmethod
    def lookup(
        cls, conf: MetaConf, name: str, cache: BlockCacheAPI, primitives: Primitives
    ) -> UBootEnv:
        definition = conf.uboot_environments.get(name)
        if definition is None:
            raise UBootEnvError(f"uboot-environment '{name}' not found in meta.conf")
        return cls(definition, cache, primitives)

    @property
    def redundant(self) -> bool:
        return len(self.blocks) == 2

    @property
    def units(self) -> int:
        """Progress units of one uboot_* action: the bytes of every copy."""
        return self.size * len(self.blocks)

    def _raw(self, copy: int) -> bytes:
        return self._cache.read(self.blocks[copy] * BLOCK_SIZE, self.size)

    def read(self) -> EnvContents:
        """The current environment; a CRC (or format) error of every copy raises UBootEnvError."""
        raws = [self._raw(copy) for copy in range(len(self.blocks))]
        order = [0, 1] if self.redundant else [0]
        if self.redundant and 1 <= (raws[1][4] - raws[0][4]) % 256 <= 127:
            order = [1, 0]
        failure: UBootEnvError | None = None
        for copy in order:
            try:
                variables, flags = self._primitives.uboot_env_decode(raws[copy], self.redundant)
            except UBootEnvError as error:
                failure = failure or UBootEnvError(
                    f"U-boot environment (block {self.blocks[copy]}) {error}"
                )
                continue
            return EnvContents(variables, flags, copy)
        assert failure is not None
        raise failure

    def _write(self, variables: dict[str, str], after: EnvContents) -> None:
        copy = 1 - after.copy if self.redundant else 0
        flags = (after.flags + 1) & 0xFF if self.redundant else 0
        block = self._primitives.uboot_env_encode(variables, self.size, self.redundant, flags)
        self._cache.write(self.blocks[copy] * BLOCK_SIZE, block)

    def setenv(self, name: str, value: str) -> None:
        contents = self.read()
        variables = dict(contents.variables)
        variables[name] = value
        self._write(variables, contents)

    def unsetenv(self, name: str) -> None:
        contents = self.read()
        variables = dict(contents.variables)
        variables.pop(name, None)
        self._write(variables, contents)

    def clearenv(self) -> None:
        """Write an empty environment (every copy; flags 1 when redundant)."""
        flags = 1 if self.redundant else 0
        block = self._primitives.uboot_env_encode({}, self.size, self.redundant, flags)
        for copy_block in self.blocks:
            self._cache.write(copy_block * BLOCK_SIZE, block)

    def recover(self) -> None:
        """Write an empty environment only if no copy reads back valid."""
        try:
            self.read()
        except UBootEnvError:
            self.clearenv()

    def get(self, name: str) -> str | None:
        return self.read().variables.get(name)
