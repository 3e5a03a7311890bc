"""``nhlink run`` and ``nhlink provision`` as commands (subprocesses)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nhlink._native import uboot_env_decode, uboot_env_encode
from nhlink.testing import LocalHub, Pki
from tests.link.support import ENV_OFFSET, ENV_SIZE, run

SRC = str(Path(__file__).resolve().parents[2] / "src")


def command(name: str) -> list[str]:
    """Run ``nhlink <name>`` through its module's main()."""
    return [
        sys.executable,
        "-c",
        f"import sys; from nhlink.cli.{name} import main; sys.exit(main())",
    ]


def environment() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=SRC + (os.pathsep + path if path else ""))


def test_run_connects_and_stops_cleanly_on_sigterm(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> tuple[int, str]:
        async with LocalHub(pki=pki) as hub:
            config = hub.write_device_config(
                "cli-run", tmp_path / "device.toml", extra={"data_path": str(tmp_path / "data")}
            )
            process = await asyncio.create_subprocess_exec(
                *command("run"),
                "--config",
                str(config),
                env=environment(),
                stderr=subprocess.PIPE,
            )
            try:
                await hub.wait_for_device("cli-run", timeout=15)
                process.send_signal(signal.SIGTERM)
                _, stderr = await asyncio.wait_for(process.communicate(), 10)
            finally:
                if process.returncode is None:
                    process.kill()
            await hub.wait_for_disconnect("cli-run")
            assert process.returncode is not None
            return process.returncode, stderr.decode()

    status, stderr = run(scenario())
    assert status == 0, stderr
    assert "nhlink.aio.link: connected to wss://127.0.0.1:" in stderr
    assert "SIGTERM received; disconnecting" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('hots = "x"\n', "unknown key 'hots' (did you mean 'host'?)"),
        ('host = "127.0.0.1:1"\n', "no shared-secret key"),
    ],
)
def test_run_config_errors_are_one_line_and_exit_2(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml + f'data_path = "{tmp_path}"\n')
    result = subprocess.run(
        [*command("run"), "--config", str(config)],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nhlink run: ") and message in lines[0]


def provision(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command("provision"), *args],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_provision_an_image_keeps_other_variables(pki: Pki, tmp_path: Path) -> None:
    cert = pki.issue_device_certificate("prov-1", name="prov-1")
    image = tmp_path / "sdcard.img"
    with open(image, "wb") as out:
        out.truncate(ENV_OFFSET + 2 * ENV_SIZE)
        out.seek(ENV_OFFSET)
        out.write(uboot_env_encode({"nerves_fw_active": "a"}, ENV_SIZE, False, 0))
    result = provision(
        "--cert",
        str(cert.cert_path),
        "--key",
        str(cert.key_path),
        "--serial",
        "SN-1",
        "--image",
        str(image),
        "--offset",
        str(ENV_OFFSET // 512),
        "--count",
        str(ENV_SIZE // 512),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"provisioned SN-1 into {image} at 0x{ENV_OFFSET:x}\n"
    block = image.read_bytes()[ENV_OFFSET : ENV_OFFSET + ENV_SIZE]
    variables, _ = uboot_env_decode(block, False)
    assert variables == {
        "nerves_fw_active": "a",
        "nerves_hub_cert": cert.cert_pem.decode(),
        "nerves_hub_key": cert.key_pem.decode(),
        "nerves_serial_number": "SN-1",
    }


def test_provision_a_blank_redundant_env_through_fw_env_config(pki: Pki, tmp_path: Path) -> None:
    cert = pki.issue_device_certificate("prov-2", name="prov-2")
    image = tmp_path / "disk.img"
    image.write_bytes(b"\xff" * (ENV_OFFSET + 2 * ENV_SIZE))
    fw_env = tmp_path / "fw_env.config"
    fw_env.write_text(
        f"{image} {ENV_OFFSET:#x} {ENV_SIZE:#x}\n{image} {ENV_OFFSET + ENV_SIZE:#x} {ENV_SIZE:#x}\n"
    )
    result = provision(
        "--cert",
        str(cert.cert_path),
        "--key",
        str(cert.key_path),
        "--serial",
        "SN-2",
        "--fw-env-config",
        str(fw_env),
    )
    assert result.returncode == 0, result.stderr
    assert "no valid U-Boot environment" in result.stderr  # the warning about creating one
    data = image.read_bytes()
    for offset in (ENV_OFFSET, ENV_OFFSET + ENV_SIZE):
        variables, flags = uboot_env_decode(data[offset : offset + ENV_SIZE], True)
        assert variables["nerves_serial_number"] == "SN-2" and flags == 1


def test_provision_refuses_a_key_of_another_certificate(pki: Pki, tmp_path: Path) -> None:
    one = pki.issue_device_certificate("prov-3", name="prov-3")
    two = pki.issue_device_certificate("prov-4", name="prov-4")
    image = tmp_path / "x.img"
    image.write_bytes(b"\0" * 65536)
    result = provision(
        "--cert",
        str(one.cert_path),
        "--key",
        str(two.key_path),
        "--serial",
        "SN",
        "--image",
        str(image),
        "--offset",
        "16",
        "--count",
        "16",
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"nhlink provision: key {two.key_path} does not belong to certificate {one.cert_path}\n"
    )
    assert image.read_bytes() == b"\0" * 65536


def test_provision_usage_errors(tmp_path: Path) -> None:
    result = provision("--cert", "c", "--key", "k", "--serial", "s", "--image", "i")
    assert result.returncode == 2 and "--image needs --offset and --count" in result.stderr
    result = provision("--cert", "c", "--key", "k", "--serial", "s")
    assert result.returncode == 2
