"""The examples in deploy/ (issue 17): every service unit sandboxed the same way, with
``systemd-analyze security`` at 3.0 or less when systemd is installed; their commands real
commands of this CLI; the timer's service acting on ``run --once``'s exit statuses; the job
itself running under the unit's memory-deny-write-execute rule (the kernel's PR_SET_MDWE)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli import cli
from tests.conftest import ROOT
from tests.factories import clean_environ, workspace_env

DEPLOY = ROOT / "deploy"
SERVICES = ("newsletter.service", "newsletter-web.service", "newsletter-worker.service")
ALL_SERVICES = (*SERVICES, "newsletter-once.service")
BINARY = "/srv/newsletter/.venv/bin/newsletter"

#: Every service unit of deploy/ carries exactly these sandbox settings.
SANDBOX = {
    "ProtectSystem": ["strict"],
    "ProtectHome": ["true"],
    "PrivateTmp": ["true"],
    "PrivateDevices": ["true"],
    "PrivateMounts": ["true"],
    "UMask": ["0077"],
    "NoNewPrivileges": ["true"],
    "CapabilityBoundingSet": [""],
    "AmbientCapabilities": [""],
    "ProtectKernelTunables": ["true"],
    "ProtectKernelModules": ["true"],
    "ProtectKernelLogs": ["true"],
    "ProtectControlGroups": ["true"],
    "ProtectClock": ["true"],
    "ProtectHostname": ["true"],
    "ProtectProc": ["invisible"],
    "RestrictNamespaces": ["true"],
    "RestrictRealtime": ["true"],
    "RestrictSUIDSGID": ["true"],
    "LockPersonality": ["true"],
    "RemoveIPC": ["true"],
    "MemoryDenyWriteExecute": ["true"],
    "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
    "SystemCallArchitectures": ["native"],
    "SystemCallFilter": ["@system-service", "~@privileged @resources"],
    "SystemCallErrorNumber": ["EPERM"],
}

#: What each unit may write (its state folders).
WRITABLE = {
    "newsletter.service": ["/srv/newsletter/var /srv/newsletter/seeds"],
    "newsletter-once.service": ["/srv/newsletter/var /srv/newsletter/seeds"],
    "newsletter-web.service": ["/srv/newsletter/var"],
    "newsletter-worker.service": ["/srv/newsletter/var"],
}


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section → key → values in order (a key may repeat, as systemd allows;
    comments and blank lines skipped, no line continuations in these files)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in (DEPLOY / name).read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        assert not stripped.endswith("\\"), f"{name}: line continuation in {line!r}"
        if stripped.startswith("["):
            current = sections.setdefault(stripped.strip("[]"), {})
            continue
        key, sep, value = stripped.partition("=")
        assert sep and current is not None, f"{name}: not a setting: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_deploy_holds_the_documented_units() -> None:
    assert sorted(p.name for p in DEPLOY.iterdir()) == sorted(
        [*ALL_SERVICES, "newsletter-once.timer", "nginx.conf"]
    )


@pytest.mark.parametrize("name", ALL_SERVICES)
def test_every_service_is_sandboxed_the_same_way(name: str) -> None:
    service = unit(name)["Service"]
    assert {key: service.get(key) for key in SANDBOX} == SANDBOX
    assert service["ReadWritePaths"] == WRITABLE[name]
    assert (service["User"], service["Group"]) == (["newsletter"], ["newsletter"])


@pytest.mark.parametrize("name", ALL_SERVICES)
def test_exec_start_is_a_command_of_this_cli(name: str) -> None:
    (command,) = unit(name)["Service"]["ExecStart"]
    binary, *args = shlex.split(command)
    assert binary == BINARY
    # --help after the arguments: click parses them first (an unknown command or option
    # fails with status 2), then prints the help instead of running the command.
    result = CliRunner().invoke(cli, [*args, "--help"], prog_name="newsletter")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: newsletter {args[0]} [OPTIONS]")
    wrong = CliRunner().invoke(cli, [*args, "--no-such-option", "--help"])
    assert wrong.exit_code == 2  # the check would see a wrong option


def test_the_timers_service_retries_75_and_alerts_on_1() -> None:
    service = unit("newsletter-once.service")
    assert service["Service"]["Type"] == ["oneshot"]
    assert service["Service"]["Restart"] == ["on-failure"]
    assert service["Service"]["RestartPreventExitStatus"] == ["1 2"]
    assert service["Service"]["RestartSec"] == ["5min"]
    timer = unit("newsletter-once.timer")
    assert timer["Timer"]["OnCalendar"] == ["*-*-* 07:00"]
    assert timer["Timer"]["Persistent"] == ["true"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]
    assert "Unit" not in timer["Timer"]  # the service of the same name


def test_the_daemon_does_not_restart_on_a_second_daemon() -> None:
    service = unit("newsletter.service")["Service"]
    assert service["RestartPreventExitStatus"] == ["3"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_the_web_service_listens_on_loopback_behind_the_proxy() -> None:
    (command,) = unit("newsletter-web.service")["Service"]["ExecStart"]
    assert shlex.split(command)[1:] == ["serve", "--host", "127.0.0.1", "--port", "8080"]
    proxy = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    assert "server 127.0.0.1:8080;" in proxy
    for directive in (
        "listen 443 ssl http2;",
        "ssl_certificate ",
        "return 301 https://$host$request_uri;",
        "gzip on;",
        "location /feeds/ {",
        "proxy_cache_revalidate on;",
        "deny all;",
    ):
        assert directive in proxy, directive
    # The feeds' validators and Cache-Control are the app's: never hidden or replaced.
    assert not re.search(r"proxy_hide_header|proxy_ignore_headers|expires ", proxy)
    assert "$request_uri" not in proxy.split("log_format", 1)[1].split(";", 1)[0]


# ---------------------------------------------------------------------- systemd's verdict


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed: the security score is not checked")
    return found


@pytest.mark.parametrize("name", ALL_SERVICES)
def test_systemd_scores_every_service_3_or_less(name: str) -> None:
    analyze = systemd_analyze()
    result = subprocess.run(
        [analyze, "security", "--offline=yes", str(DEPLOY / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "--offline" in result.stderr and result.returncode != 0:
        pytest.skip(f"this systemd-analyze has no --offline: {result.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) ", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 3.0, result.stdout


@pytest.mark.parametrize("name", [*ALL_SERVICES, "newsletter-once.timer"])
def test_systemd_accepts_every_unit(name: str) -> None:
    """``systemd-analyze verify``: no complaint but the binary not being installed here."""
    analyze = systemd_analyze()
    result = subprocess.run(
        [analyze, "verify", f"./{name}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=DEPLOY,
    )
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line and f"Command {BINARY} is not executable" not in line
    ]
    assert complaints == []


# ---------------------------------------------------------------------- MemoryDenyWriteExecute

#: prctl(PR_SET_MDWE = 65, PR_MDWE_REFUSE_EXEC_GAIN = 1), kept across execve.
SET_MDWE = "import ctypes, sys; sys.exit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0))"
UNDER_MDWE = """\
import ctypes, os, sys
if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(99)
os.execv(sys.executable, [sys.executable, "-m", "newsletter", *sys.argv[1:]])
"""


def test_run_once_works_under_memory_deny_write_execute(workdir: Path) -> None:
    """What MemoryDenyWriteExecute=true does, done by the kernel (Linux 6.3+): no mapping may
    become writable and executable. The whole job (ingest, ranking with numpy, scipy and
    scikit-learn, rendering with lxml, delivery) must not need one."""
    if subprocess.run([sys.executable, "-c", SET_MDWE]).returncode != 0:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+): MDWE not checked")
    env = workspace_env(workdir, f"sqlite:///{workdir / 'var' / 'mdwe.db'}")
    result = subprocess.run(
        [sys.executable, "-c", UNDER_MDWE, "run", "--once", "--now", "2026-11-23T09:00+00:00"],
        env=clean_environ(env),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "issues: 3 delivered" in result.stdout
