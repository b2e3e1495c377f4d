"""Production settings (docs/deploy.md): `check --deploy` is clean and the probes answer over
plain HTTP while everything else redirects to HTTPS.

Settings are read from the environment at import, so each case runs in a fresh interpreter
with the production environment."""

import json
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")


def production_env(tmp_path: Path) -> dict[str, str]:
    import os

    return {
        **{k: os.environ[k] for k in PASSTHROUGH if k in os.environ},
        "DJANGO_SETTINGS_MODULE": "entitlements_site.settings",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "example.com",
        "DJANGO_SECURE_SSL_REDIRECT": "true",
        # Never the shared development database: a file of this test's own.
        "DATABASE_URL": f"sqlite:///{tmp_path / 'deploy.sqlite3'}",
        "EMAIL_FILE_PATH": str(tmp_path / "outbox"),
        "LOG_LEVEL": "ERROR",
    }


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_under_production_settings(tmp_path):
    result = run_python(
        """
        import django
        django.setup()
        from django.core.management import call_command
        call_command("check", "--deploy", "--fail-level", "WARNING")
        """,
        production_env(tmp_path),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout + result.stderr


def test_probes_answer_over_http_while_pages_redirect_to_https(tmp_path):
    result = run_python(
        """
        import json
        import django
        django.setup()
        from django.test import Client
        client = Client(SERVER_NAME="example.com")
        answers = {}
        for path in ("/healthz", "/readyz", "/accounts/login/"):
            response = client.get(path)
            answers[path] = [response.status_code, response.get("Location")]
        https = Client(SERVER_NAME="example.com").get("/healthz", secure=True)
        answers["hsts"] = https.get("Strict-Transport-Security")
        print(json.dumps(answers))
        """,
        production_env(tmp_path),
    )

    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert answers["/healthz"] == [200, None]
    assert answers["/readyz"] == [200, None]
    assert answers["/accounts/login/"] == [301, "https://example.com/accounts/login/"]
    assert answers["hsts"] == "max-age=31536000; includeSubDomains; preload"
