"""Tests do not depend on the shell's ``NEWSLETTER_*`` variables (the autouse fixture
``hermetic_environment`` in tests/conftest.py removes them), except the PostgreSQL URL."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import PG_ENV, ROOT, TEST_SERVICE_ENV
from tests.factories import ENV_PREFIX, clean_environ

#: Set by the subprocess test below to the PostgreSQL URL it exports: that one must survive.
PROBE = "HERMETIC_TEST_EXPECTED_PG_URL"

#: What a developer's shell might export; each of these broke tests/test_cli.py before.
POLLUTION = {
    "NEWSLETTER_MAILER": "smtp",
    "NEWSLETTER_SMTP_HOST": "nowhere.invalid",
    "NEWSLETTER_INBOX": "/nonexistent",
}


def test_a_test_sees_no_newsletter_variable_but_the_test_service_urls() -> None:
    left = {name for name in os.environ if name.startswith(ENV_PREFIX)}
    assert left <= set(TEST_SERVICE_ENV)
    if PROBE in os.environ:
        assert os.environ.get(PG_ENV) == os.environ[PROBE]


def test_tests_pass_with_a_polluted_shell_environment() -> None:
    pg_url = "postgresql://kept@pg.invalid:5432/unused"  # selects no test below: never used
    env = {**clean_environ(POLLUTION), PG_ENV: pg_url, PROBE: pg_url}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{__file__}::test_a_test_sees_no_newsletter_variable_but_the_test_service_urls",
            # a CLI run in a subprocess that mails: it failed when it inherited the variables
            "tests/test_cli.py::test_run_once_json_then_nothing_new",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed" in out.stdout
