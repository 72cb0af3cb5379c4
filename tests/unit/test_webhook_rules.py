"""The rules of outgoing webhooks (spoor/webhooks.py), for campaign webhooks and alert notifiers alike,
over real local HTTP: no redirects followed, no internal addresses unless allowed, at most 64 KiB of an
answer read, no alert webhook signed with an empty key."""

import asyncio
import logging
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from spoor.alerts.alert_metrics import NOTIFICATIONS
from spoor.alerts.notifiers import HttpNotifier, NotifierHub, RetryPolicy
from spoor.campaigns.campaign_spec import parse_campaign
from spoor.campaigns.webhook_delivery import Sender
from spoor.settings import Settings

ALERT = {"fingerprint": "fp", "rule_id": "orders-drop", "metric": "orders", "dimension": "global",
         "resolution": "5m", "severity": "critical", "status": "firing",
         "started_at": datetime(2024, 1, 1, tzinfo=timezone.utc), "fired_at": None, "resolved_at": None,
         "evidence": {"observed": 0, "expected": 20}, "summary": None, "runbook": None}
HUGE = 64 * 1024 * 1024  # far more than the kernel's socket buffers hold


class Server:
    """A local HTTP server; ``answer(handler)`` answers every request, which are recorded as (method, path)."""

    def __init__(self, answer):
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append((self.command, self.path))
                answer(self)

            do_GET = do_POST = _any  # noqa: N815 - http.server's names

            def log_message(self, *_args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def ok(handler):
    handler.send_response(200)
    handler.send_header("Content-Length", "2")
    handler.end_headers()
    handler.wfile.write(b"{}")


def redirect_to(url):
    def answer(handler):
        handler.send_response(302)
        handler.send_header("Location", url)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return answer


class Endless:
    """Answers 200 with a 64 MiB body and counts how much of it the client let it write."""

    def __init__(self):
        self.written = 0
        self.done = threading.Event()

    def __call__(self, handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(HUGE))
        handler.end_headers()
        chunk = b"x" * 65536
        try:
            while self.written < HUGE:
                handler.wfile.write(chunk)
                self.written += len(chunk)
        except OSError:  # the client closed the connection
            pass
        finally:
            handler.close_connection = True
            self.done.set()


@pytest.fixture
def servers():
    started = []

    def start(answer):
        server = Server(answer)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def campaign_sender(**overrides) -> Sender:
    return Sender(Settings(campaign_webhook_secret="s", campaign_webhook_timeout_s=5.0, **overrides))


def campaign(url: str):
    return parse_campaign({"name": "c", "audience": {"trigger": "cart_abandonment"}, "action": {"webhook": url}})


def send_alert(notifier: HttpNotifier, allow_private: bool, attempts: int = 2) -> None:
    async def scenario():
        hub = NotifierHub([notifier], retry=RetryPolicy(attempts=attempts, first_backoff_s=0.05), timeout_s=5.0,
                          allow_private_addresses=allow_private)
        hub.notify(ALERT)
        await asyncio.wait_for(hub.idle(), 30)
        await hub.stop()
    asyncio.run(scenario())


def failed(name: str) -> float:
    return NOTIFICATIONS.labels(name, "failed")._value.get()


# Redirects

def test_a_campaign_webhook_does_not_follow_a_redirect(servers):
    elsewhere = servers(ok)
    redirecting = servers(redirect_to(elsewhere.url))
    outcome = campaign_sender(webhook_allow_private_addresses=True).send(campaign(redirecting.url), b"{}", "k", "u")
    assert elsewhere.requests == []  # the old urllib sender re-sent it as a GET, signature and all
    assert redirecting.requests == [("POST", "/hook")]
    assert not outcome.ok and outcome.permanent and outcome.status_code == 302
    assert "redirect" in outcome.error and elsewhere.url in outcome.error


def test_an_alert_notifier_does_not_follow_a_redirect(servers, caplog):
    elsewhere = servers(ok)
    redirecting = servers(redirect_to(elsewhere.url))
    before = failed("redirected-slack")
    with caplog.at_level(logging.ERROR, logger="alerts.notifiers"):
        send_alert(HttpNotifier("redirected-slack", redirecting.url, "slack"), allow_private=True, attempts=3)
    assert elsewhere.requests == []  # aiohttp followed it as a GET before
    assert redirecting.requests == [("POST", "/hook")]  # given up at once, like a 4xx
    assert failed("redirected-slack") == before + 1
    assert "HTTP 302: redirect to" in caplog.text and "not followed" in caplog.text


# Internal addresses

def test_a_campaign_webhook_to_an_internal_address_is_refused(servers):
    receiver = servers(ok)
    sender = campaign_sender()  # webhook_allow_private_addresses defaults to false
    for url in (receiver.url, f"http://localhost:{receiver.port}/hook", f"http://[::ffff:127.0.0.1]:{receiver.port}/"):
        outcome = sender.send(campaign(url), b"{}", "k", "u")
        assert not outcome.ok and outcome.permanent and "loopback" in outcome.error, (url, outcome)
    assert receiver.requests == []
    allowed = campaign_sender(webhook_allow_private_addresses=True).send(campaign(receiver.url), b"{}", "k", "u")
    assert allowed.ok and receiver.requests == [("POST", "/hook")]


def test_a_campaign_with_an_internal_webhook_is_refused_when_defined():
    from spoor.campaigns.webhook_delivery import DeliveryConfigError, check_webhook
    settings = Settings(campaign_webhook_secret="s")
    for url in ("http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.1.2.3/", "http://169.254.169.254/",
                "http://[::1]/", "http://[fe80::1]/", "http://[::ffff:192.168.0.1]/", "http://0.0.0.0/",
                "http://224.0.0.1/", "http://100.64.0.1/", "http://2130706433/"):
        with pytest.raises(DeliveryConfigError, match="SPOOR_WEBHOOK_ALLOW_PRIVATE_ADDRESSES"):
            check_webhook(campaign(url), settings)
    check_webhook(campaign("https://hooks.invalid/spoor"), settings)  # not resolvable now: the send checks
    check_webhook(campaign("http://8.8.8.8/hook"), settings)
    allowed = settings.model_copy(update={"webhook_allow_private_addresses": True})
    check_webhook(campaign("http://127.0.0.1:9/hook"), allowed)


def test_every_resolved_address_is_checked_ipv4_and_ipv6():
    from spoor.webhooks import RefusedAddress, check_addresses, refusal
    assert refusal("8.8.8.8") is None and refusal("2001:4860:4860::8888") is None
    assert refusal("::ffff:8.8.8.8") is None and refusal("64:ff9b::808:808") is None  # IPv4 inside IPv6
    for address, kind in (("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
                          ("2002:7f00:1::", "loopback"), ("10.0.0.1", "private"), ("192.168.1.1", "private"),
                          ("fc00::1", "private"), ("64:ff9b::a00:1", "private"), ("169.254.169.254", "link-local"),
                          ("fe80::1%eth0", "link-local"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
                          ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("100.64.0.1", "not a public")):
        assert kind in (refusal(address) or ""), address
    with pytest.raises(RefusedAddress, match="10.0.0.1"):
        check_addresses("mixed.example", ["8.8.8.8", "10.0.0.1"])  # one bad address is enough
    with pytest.raises(RefusedAddress, match="no address"):
        check_addresses("empty.example", [])


def test_an_alert_notifier_to_an_internal_address_is_refused(servers, caplog):
    receiver = servers(ok)
    before = failed("internal-slack"), failed("internal-slack-by-name")
    with caplog.at_level(logging.ERROR, logger="alerts.notifiers"):
        send_alert(HttpNotifier("internal-slack", receiver.url, "slack"), allow_private=False, attempts=3)
        send_alert(HttpNotifier("internal-slack-by-name", f"http://localhost:{receiver.port}/hook", "slack"),
                   allow_private=False, attempts=3)
    assert receiver.requests == []
    assert (failed("internal-slack"), failed("internal-slack-by-name")) == (before[0] + 1, before[1] + 1)
    assert caplog.text.count("is a loopback address") == 2
    send_alert(HttpNotifier("internal-slack-allowed", receiver.url, "slack"), allow_private=True)
    # Alertmanager is exempt (an internal service the operator configures; see alerts/notifiers.py).
    send_alert(HttpNotifier("internal-alertmanager", f"http://127.0.0.1:{receiver.port}", "alertmanager"),
               allow_private=False)
    assert receiver.requests == [("POST", "/hook"), ("POST", "/api/v2/alerts")]


# Bounded answers

def test_a_campaign_webhook_reads_at_most_64_kib_of_the_answer(servers):
    endless = Endless()
    receiver = servers(endless)
    started = time.monotonic()
    outcome = campaign_sender(webhook_allow_private_addresses=True).send(campaign(receiver.url), b"{}", "k", "u")
    assert endless.done.wait(30)
    assert outcome.ok and len(outcome.response) <= 2000
    assert endless.written < HUGE // 4, endless.written  # the old sender read all 64 MiB
    assert time.monotonic() - started < 20


def test_an_alert_notifier_reads_at_most_64_kib_of_the_answer(servers):
    endless = Endless()
    receiver = servers(endless)
    send_alert(HttpNotifier("endless-slack", receiver.url, "slack"), allow_private=True)
    assert endless.done.wait(30)
    assert endless.written < HUGE // 4, endless.written


# The alert webhook's key

def test_the_alert_webhook_is_never_signed_with_an_empty_key():
    for secret in (None, b""):
        with pytest.raises(ValueError, match="SPOOR_ALERT_WEBHOOK_SECRET"):
            HttpNotifier("webhook", "https://hooks.example/spoor", "webhook", secret)
    from spoor.alerts.notifiers import check_settings
    from spoor.stream_processors.metric_agent import notifier_hub
    unsigned = Settings(alert_webhook_url="https://hooks.example/spoor", alert_webhook_secret="")
    with pytest.raises(ValueError, match="SPOOR_ALERT_WEBHOOK_SECRET is not"):
        check_settings(unsigned)
    with pytest.raises(ValueError, match="SPOOR_ALERT_WEBHOOK_SECRET"):
        notifier_hub(unsigned, None)
    signed = unsigned.model_copy(update={"alert_webhook_secret": "k"})
    check_settings(signed)
    assert notifier_hub(signed, None).names == ["webhook"]
    with pytest.raises(ValueError, match="SPOOR_ALERT_SLACK_WEBHOOK_URL: .*loopback"):
        check_settings(Settings(alert_slack_webhook_url="http://127.0.0.1:9/slack"))
    check_settings(Settings(alertmanager_url="http://127.0.0.1:9093"))  # exempt
    check_settings(Settings(alert_slack_webhook_url="http://127.0.0.1:9/slack", webhook_allow_private_addresses=True))

