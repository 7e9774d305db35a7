"""Secrets never reach the log: the boot's real handler (config/logging.conf's file) is read back."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API_KEY, SMTP_PASSWORD = "11111111-2222-3333-4444-555555555555", "smtp-Pass-w0rd"

LOGGING = r"""
import logging
import config.boot
log = logging.getLogger("vxgate")
for secret in %r:
    log.info("a line with %%s in it", secret)
    log.warning("a line that shows the setting Plain(%%s) or HMAC(%%s)", secret, secret)
    try:
        raise ValueError("an error that quotes " + secret)
    except ValueError:
        log.exception("a failure")
log.info("done None")
"""


@pytest.mark.parametrize("setting, secret", [
    ("Plain(zip-Pass-123)", "zip-Pass-123"),
    ("HMAC(hmac-Secret-456)", "hmac-Secret-456"),
    ("plain( spaced-Pass-789 )", "spaced-Pass-789"),
])
def test_no_secret_in_the_log_file(tmp_path, setting, secret):
    ini = tmp_path / "vxgate.ini"
    ini.write_text("[Root]\nVxcubeApiKey = %s\n[MailD]\nRepackPassword = %s\nBccReporterPassword = %s\n"
                   % (API_KEY, setting, SMTP_PASSWORD))
    env = dict(os.environ, VXGATE_CONFIG=str(ini), PYTHONPATH=ROOT,
               VXGATE_LOGGING=os.path.join(ROOT, "config", "logging.conf"))
    secrets = [secret, API_KEY, SMTP_PASSWORD]
    result = subprocess.run([sys.executable, "-c", LOGGING % (secrets,)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "logs" / "vxgate.log").read_text()
    assert text.count("a failure") == 3 and "Traceback" in text and "done None" in text
    for value in secrets:
        assert value not in text
    assert text.count("***") >= 12
