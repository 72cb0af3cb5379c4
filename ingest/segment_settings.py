"""The settings document Segment's libraries fetch when they start, served by the collector.

Every Segment library asks its CDN for ``/v1/projects/{writeKey}/settings`` before it sends:

- analytics-next (analytics.js 2.0) ``GET {cdnURL}/v1/projects/{writeKey}/settings``, ``cdnURL`` from
  ``AnalyticsBrowser.load({writeKey, cdnURL})``, ``window.analytics._cdn``, or the ``https://HOST``
  before ``/analytics.js/v1/`` in the snippet's script URL (browser/index.ts, lib/parse-cdn.ts);
- analytics-kotlin and analytics-swift ``GET https://{cdnHost}/projects/{writeKey}/settings`` with
  ``cdnHost`` ``cdn-settings.segment.com/v1`` by default, so ``cdnHost = "collect.your.shop/v1"``.

What they read from it, and so what this document holds:

- ``integrations["Segment.io"].apiKey``: analytics-next puts it in every message as ``writeKey``
  (plugins/segmentio/normalize.ts), so it must be the requested key. Nothing else about keys is in
  the document: no other key, no source name.
- ``integrations["Segment.io"].apiHost``: where events go, ``HOST[:PORT][/PATH]/v1`` without a scheme.
  analytics-next posts to ``{protocol}://{apiHost}/{t,p,i,s,g,a}`` (or ``/b`` when batching) and takes
  these settings as defaults under its own ``integrations['Segment.io']`` load options; analytics-kotlin
  posts to ``https://{apiHost}/b``. So a page whose load options name no apiHost still sends here.
- ``integrations["Segment.io"].protocol``: analytics-next's scheme (``https`` unless told); not in
  Segment's own documents, added so a plain-HTTP collector works without load options.
- ``metrics.sampleRate = 0``: the libraries otherwise post their own telemetry to Segment (``/m``).
- ``plan``, ``edgeFunction``, ``middlewareSettings``, ``enabledMiddleware``, ``analyticsNextEnabled``,
  ``remotePlugins``, ``legacyVideoPluginsEnabled``: the defaults of a source with no destinations, so
  analytics-next loads no device-mode destination, middleware or plugin from a CDN.
"""

import re
from urllib.parse import urlsplit

# A Host header is used to build apiHost only if it looks like one: a name or an address, a port.
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")


def api_host_and_protocol(public_url: str, host_header: str | None, scheme: str,
                          fallback_host: str) -> tuple[str, str]:
    """``(apiHost, protocol)`` of the collector as a browser or an app reaches it.

    ``public_url`` (``SPOOR_COLLECTOR_PUBLIC_URL``, e.g. ``https://collect.your.shop`` or
    ``https://www.your.shop/spoor``) wins; empty: the request's own Host header and scheme (behind a
    proxy, the scheme it forwards in X-Forwarded-Proto when uvicorn trusts it).
    """
    if public_url:
        parts = urlsplit(public_url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"SPOOR_COLLECTOR_PUBLIC_URL is not an http(s) URL: {public_url!r}")
        return f"{parts.netloc}{parts.path.rstrip('/')}/v1", parts.scheme
    host = host_header.strip() if host_header else ""
    if not _HOST.match(host):
        host = fallback_host
    return f"{host}/v1", "https" if scheme == "https" else "http"


def settings_document(write_key: str, api_host: str, protocol: str) -> dict:
    """The document for one active write key (see the module docstring for each field)."""
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": api_host,
                "protocol": protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
                "versionSettings": {"version": "4.4.7", "componentTypes": ["browser"]},
            },
        },
        "plan": {
            "track": {"__default": {"enabled": True, "integrations": {}}},
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }
