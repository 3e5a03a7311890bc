"""``nhlink demo``: a whole over-the-air update on one machine.

It starts the built-in local hub, makes signing keys, device certificates and two
signed firmware versions of an A/B image with a U-Boot environment (with the same
code as ``nhlink fwup -c``), writes version 1 to a device image, runs the device
client against that image, publishes version 2 and shows it streaming, verifying,
switching slots and "rebooting" (simulated), then says where everything is.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from nhlink.client import Client, FwupMessage
from nhlink.errors import NHLinkError

DEVICE_ID = "nhlink-demo-0001"
IMAGE_SIZE = 64 << 20
ENV_OFFSET = 2048 * 512  # bytes; matches fwup.conf UBOOT_ENV_OFFSET
ENV_SIZE = 16 * 512
BAR_WIDTH = 32

Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo keeps its files."""

    root: Path

    @property
    def image(self) -> Path:
        return self.root / "device.img"

    @property
    def log(self) -> Path:
        return self.root / "nhlink.log"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def firmware(self) -> Path:
        return self.root / "firmware"

    @property
    def data(self) -> Path:
        return self.root / "device-data"

    @property
    def hub(self) -> Path:
        return self.root / "hub"

    @property
    def fw_env_config(self) -> Path:
        return self.root / "fw_env.config"

    @property
    def device_config(self) -> Path:
        return self.root / "device.toml"


class DemoClient(Client):
    """Shows progress on the terminal and simulates the reboot."""

    def __init__(self, say: Say, interactive: bool) -> None:
        super().__init__()
        self._say = say
        self._interactive = interactive
        self._last_percent = -1
        self.rebooted = asyncio.Event()
        self.messages: list[FwupMessage] = []

    def handle_fwup_message(self, message: FwupMessage) -> None:
        self.messages.append(message)
        if message.kind == "progress":
            self._progress(message)
        elif message.kind == "warning":
            self._newline_if_needed()
            self._say(f"   fwup: {message.text}")
        elif message.kind == "error":
            self._newline_if_needed()
            self._say(f"   fwup error: {message.text}")
        elif message.kind == "ok":
            self._newline_if_needed()
            self._say(
                "   verified: meta.conf's Ed25519 signature and the BLAKE2b-256 of every resource;"
            )
            self._say("   switched: on-finish pointed the U-Boot env at the new slot")

    def _progress(self, message: FwupMessage) -> None:
        percent = message.value
        if percent <= self._last_percent:
            return
        done = getattr(message, "bytes_done", 0)
        rate = getattr(message, "rate", None)
        figures = f"{done / 1e6:6.1f} MB"
        if rate:
            figures += f"  {rate / 1e6:6.1f} MB/s"
        if self._interactive:
            filled = BAR_WIDTH * percent // 100
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            sys.stdout.write(f"\r   [{bar}] {percent:3d}%  {figures}")
            sys.stdout.flush()
        elif percent // 10 > self._last_percent // 10 or percent == 100:
            self._say(f"   {percent:3d}%  {figures}")
        self._last_percent = percent

    def _newline_if_needed(self) -> None:
        if self._interactive and self._last_percent >= 0:
            sys.stdout.write("\n")
            self._last_percent = 101

    def reboot(self) -> None:
        self._newline_if_needed()
        self._say("5. Rebooting (simulated: the demo stops the client instead)")
        self.rebooted.set()


def _demo_conf() -> str:
    return resources.files("nhlink.demo").joinpath("fwup.conf").read_text()


def _make_payload(path: Path, size: int, seed: int) -> None:
    import random

    rng = random.Random(seed)
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            chunk = min(remaining, 1 << 20)
            out.write(rng.randbytes(chunk))
            remaining -= chunk


def build_firmware(paths: DemoPaths, payload_mib: int, say: Say) -> tuple[Path, Path, str]:
    """Keys and two signed archives. Returns (v1, v2, public key base64)."""
    from nhlink.fwup.create import create_archive
    from nhlink.fwup.keys import generate_keypair, read_private_key_file

    paths.keys.mkdir(parents=True, exist_ok=True)
    paths.firmware.mkdir(parents=True, exist_ok=True)
    prefix = paths.keys / "demo-key"
    generate_keypair(str(prefix))
    private = read_private_key_file(f"{prefix}.priv")
    public_b64 = Path(f"{prefix}.pub").read_text().strip()
    conf = paths.firmware / "fwup.conf"
    conf.write_text(_demo_conf())
    archives = []
    for number, version in enumerate(("1.0.0", "2.0.0"), start=1):
        rootfs = paths.firmware / f"rootfs-{version}.img"
        _make_payload(rootfs, payload_mib << 20, seed=number)
        archive = paths.firmware / f"demo-{version}.fw"
        environ = {
            "DEMO_VERSION": version,
            "DEMO_ROOTFS": str(rootfs),
            "DEMO_DEVPATH": str(paths.image),
            "DEMO_SERIAL": DEVICE_ID,
        }
        create_archive(str(conf), str(archive), signing_key=private, environ=environ)
        rootfs.unlink()
        archives.append(archive)
        say(f"   {archive.name}: {archive.stat().st_size / 1e6:.1f} MB, signed with {prefix.name}")
    return archives[0], archives[1], public_b64


def burn_image(paths: DemoPaths, archive: Path, public_b64: str) -> None:
    """Write version 1 to the device image with the ``complete`` task (like burning an SD card)."""
    from nhlink.fwup import Engine

    with open(paths.image, "wb") as image:
        image.truncate(IMAGE_SIZE)
    engine = Engine(
        mode="apply",
        destination=str(paths.image),
        task="complete",
        public_keys=[base64.b64decode(public_b64)],
    )
    frames = []
    with open(archive, "rb") as source:
        while not engine.done:
            chunk = source.read(1 << 20)
            frames += engine.feed(chunk) if chunk else engine.finish()
    if not engine.succeeded:
        raise NHLinkError(f"burning the demo image failed: {frames[-1].text}")
    paths.fw_env_config.write_text(
        "# device  offset  size  (the demo image's U-Boot environment)\n"
        f"{paths.image} 0x{ENV_OFFSET:x} 0x{ENV_SIZE:x}\n"
    )


def describe_slots(paths: DemoPaths) -> str:
    from nhlink.config import KVConfig
    from nhlink.kv import KV

    kv = KV.load(KVConfig(fw_env_config=str(paths.fw_env_config)))
    active = kv.active_slot
    version = kv.get(f"{active}.nerves_fw_version")
    validated = kv.get("nerves_fw_validated")
    return f"slot {active} active, firmware {version}, validated={validated}"


async def run_update(
    paths: DemoPaths, v2: Path, public_b64: str, say: Say, interactive: bool, timeout: float
) -> dict[str, Any]:
    """Start the hub and the device, publish v2, wait for the simulated reboot."""
    from nhlink.aio.link import NervesHubLink
    from nhlink.aio.updater import Updater
    from nhlink.config import load_config
    from nhlink.testing import LocalHub

    async with LocalHub(directory=paths.hub) as hub:
        hub.add_device(DEVICE_ID)
        hosted = hub.firmware.add_file(v2.name, v2)
        hub.write_device_config(
            DEVICE_ID,
            paths.device_config,
            extra={
                "fwup_public_keys": [public_b64],
                "fwup_devpath": str(paths.image),
                "fwup_task": "upgrade",
                "data_path": str(paths.data),
                "kv": {"fw_env_config": str(paths.fw_env_config)},
            },
        )
        config = load_config(paths.device_config, environ={})
        say(
            f"   local hub on wss://{hub.host} (mutual TLS), firmware server on {hub.firmware.base_url}"
        )
        client = DemoClient(say, interactive)
        link = NervesHubLink(config, client, update_handler=Updater())
        device_task = asyncio.create_task(link.run())
        try:
            await hub.wait_for_device(DEVICE_ID, timeout=timeout)
            params = hub.devices[DEVICE_ID].join_params or {}
            say(
                "3. Device connected and joined: firmware "
                f"{params.get('nerves_fw_version')} (uuid {str(params.get('nerves_fw_uuid'))[:8]}...)"
            )
            meta = _firmware_meta(v2)
            say(
                f"4. Publishing firmware {meta['version']} ({hosted.size / 1e6:.1f} MB) to the device"
            )
            started = time.monotonic()
            await hub.push_update(DEVICE_ID, hosted.url, meta, **hosted.update_kwargs())
            await _wait_for_outcome(hub, client, timeout)
            elapsed = time.monotonic() - started
        finally:
            await link.stop()
            device_task.cancel()
            await asyncio.gather(device_task, return_exceptions=True)
        statuses = [s.get("status") for s in hub.devices[DEVICE_ID].statuses]
        return {"elapsed": elapsed, "statuses": statuses, "bytes": hosted.size}


async def _wait_for_outcome(hub: Any, client: DemoClient, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not client.rebooted.is_set():
        last = hub.devices[DEVICE_ID].last_status or {}
        if last.get("status") in ("failed", "ignored", "rescheduled"):
            raise NHLinkError(f"the update ended {last.get('status')}: {last}")
        if time.monotonic() > deadline:
            raise NHLinkError(f"the update did not finish within {timeout:.0f} s")
        await asyncio.sleep(0.05)


def _firmware_meta(archive: Path) -> dict[str, str]:
    """The hub's firmware metadata (the nine keys) from the archive's meta.conf."""
    from nhlink.fwup import Engine

    engine = Engine(mode="metadata")
    frames = []
    with open(archive, "rb") as source:
        while not engine.done:
            chunk = source.read(1 << 16)
            frames += engine.feed(chunk) if chunk else engine.finish()
    values: dict[str, str] = {}
    for line in frames[-1].text.splitlines():
        key, _, value = line.partition("=")
        values[key.removeprefix("meta-")] = value.strip('"')
    keys = ("architecture", "author", "description", "misc", "platform", "product", "uuid")
    meta = {key: values.get(key, "") for key in keys}
    meta["version"] = values.get("version", "")
    meta["vcs_identifier"] = values.get("vcs-identifier", "")
    return meta


def _configure_logging(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("nhlink")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    root.propagate = False  # the terminal shows the story; the details go to the log file
    return handler


def run_demo(
    directory: str | os.PathLike[str],
    *,
    payload_mib: int = 24,
    say: Say = print,
    interactive: bool | None = None,
    timeout: float = 120.0,
) -> int:
    """Run the whole demo in ``directory`` (emptied first). Returns an exit status."""
    paths = DemoPaths(Path(directory).resolve())
    if paths.root.exists():
        shutil.rmtree(paths.root)
    paths.root.mkdir(parents=True)
    if interactive is None:
        interactive = sys.stdout.isatty()
    handler = _configure_logging(paths.log)
    started = time.monotonic()
    try:
        say(f"nhlink demo: a signed A/B firmware update, end to end, in {paths.root}")
        say("1. Making signing keys and two signed firmware versions (nhlink fwup -c)")
        v1, v2, public_b64 = build_firmware(paths, payload_mib, say)
        say("2. Writing firmware 1.0.0 to a device image (task 'complete')")
        burn_image(paths, v1, public_b64)
        say(f"   {paths.image.name}: {describe_slots(paths)}")
        outcome = asyncio.run(run_update(paths, v2, public_b64, say, interactive, timeout))
        rate = outcome["bytes"] / outcome["elapsed"] / 1e6
        say(
            f"   update took {outcome['elapsed']:.1f} s ({rate:.0f} MB/s); "
            f"statuses the hub saw: {', '.join(str(s) for s in outcome['statuses'])}"
        )
        say(f"6. After the reboot the device would boot: {describe_slots(paths)}")
        say("")
        say(f"Device image:   {paths.image}")
        say(f"U-Boot env:     {paths.fw_env_config} (fw_printenv-style config)")
        say(f"Firmware:       {paths.firmware}")
        say(f"Device config:  {paths.device_config}")
        say(f"Logs:           {paths.log}")
        say(f"Done in {time.monotonic() - started:.1f} s.")
        return 0
    except NHLinkError as exc:
        say(f"nhlink demo: {exc} (logs: {paths.log})")
        return 1
    finally:
        logger = logging.getLogger("nhlink")
        logger.removeHandler(handler)
        logger.propagate = True
        handler.close()
