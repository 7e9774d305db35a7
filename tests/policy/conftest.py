"""Messages, envelopes and a one-call hook runner for the policy engine's tests."""
import pytest

from salmon_app.policy import Envelope, HookRuntime

from support.policy_data import PLAIN  # noqa: E402


@pytest.fixture
def envelope():
    return Envelope("alice@example.org", ["bob@example.com", "carol@example.com"],
                    helo="mx.example.org", queue_id="Q1",
                    client={"hostname": "mx.example.org", "ip": "192.0.2.1", "port": 2525})


@pytest.fixture
def run(envelope):
    """run(lua_body_or_code, raw=PLAIN, analysis={}, **runtime_kw) -> Decision."""
    def run(code, raw=PLAIN, analysis=None, **kw):
        if "smtp_hook" not in code:
            code = "function smtp_hook(ctx)\n%s\nend" % code
        return HookRuntime(code, **kw).run(envelope, raw, analysis or {})
    return run


@pytest.fixture
def value(run):
    """value(lua_expression, raw=PLAIN, analysis={}) -> tostring(expression), carried out
    as a scheduled header value (the one place where a string comes back unaltered)."""
    def value(expression, raw=PLAIN, analysis=None):
        decision = run("ctx.modifier.add_header_field('X-Value', tostring(%s))\n"
                       "return {action = 'accept'}" % expression, raw, analysis)
        assert not decision.error, decision.reason
        return decision.modifications[0]["value"]
    return value
