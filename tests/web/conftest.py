"""Fixtures of the web console tests: a gateway with the vxCube emulator, and its console."""
import pytest

from support.mail import vxcube_params
from support.web import HOOK, PASSWORD, SECRET, Client


class Console:
    def __init__(self, gw, app, config, sink):
        self.gw, self.app, self.config, self.sink = gw, app, config, sink

    def client(self, login=True):
        client = Client(self.app)
        if login:
            assert client.login().status_code == 302
        return client


@pytest.fixture
def console(vxgate, sink, vxsim, tmp_path):
    from salmon_app.web import users
    from salmon_app.web.app import create_app
    # seeded history must outlive the expiry the gateway runs at start
    gw = vxgate(SmtpHook=HOOK, SmtpReplyTimeout=0.5, QuarantineRetention=3650 * 86400.0,
                DeliveredRetention=3650 * 86400.0, **vxcube_params(vxsim))
    config = gw.gateway.config.replace(WebUsersFile=str(tmp_path / "web-users"), WebSecret=SECRET,
                                       WebBaseUrl="http://console.test/")
    users.set_password(config.WebUsersFile, "admin", PASSWORD)
    app = create_app(config)          # each app starts with empty login counters (Limiter.init_app)
    yield Console(gw, app, config, sink)
