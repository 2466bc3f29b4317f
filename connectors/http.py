"""The requests session every requests-based vendor client runs on.

The client libraries (pysnow, zenpy, simple-salesforce) each take a ``requests.Session``;
this one makes them behave the way the bridge needs, in one place:

* the connection's timeout and CA bundle on every call. requests lets REQUESTS_CA_BUNDLE /
  CURL_CA_BUNDLE override a session's own ``verify``, so an enterprise's private CA bundle
  would silently be ignored: here the session's bundle wins;
* no transport retries: the bridge's worker alone decides when to retry;
* ``close()`` closes pooled sockets (urllib3 2.8's ``PoolManager.clear()`` only forgets
  them, leaving keep-alive TLS sockets to the garbage collector);
* each thread's last response is remembered, for libraries whose exceptions drop the
  headers (Retry-After);
* with a connection's ``rate_limit_per_second``, calls are paced under the vendor's API
  limit (requests-ratelimiter's token bucket), so a backlog drains at that rate instead of
  in a storm of 429s. ``pace`` does the same for clients with their own session (jira);
* the environment (proxy variables, REQUESTS_CA_BUNDLE) is read once per process and host,
  not on every call: requests scans all of ``os.environ`` twice a call for proxies, about a
  sixth of a read-back's CPU (bench/). ``read_environment_once`` fits other sessions (jira).
"""

from __future__ import annotations

import os
import threading
import types
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.sessions import merge_setting
from requests.utils import get_environ_proxies
from pyrate_limiter import Limiter
from requests_ratelimiter import LimiterAdapter


def _merge_environment_once(self: requests.Session, url: str, proxies: dict | None, stream: Any, verify: Any, cert: Any) -> dict:
    """``requests.Session.merge_environment_settings`` with what it reads from the
    environment remembered per host. A call's own proxies and verify win, as in requests,
    and so does the session's own CA bundle (a connection's ``ca_bundle``), which requests
    lets REQUESTS_CA_BUNDLE override."""
    proxies = {} if proxies is None else proxies
    if self.trust_env:
        environment_proxies, ca_bundle = _environment(urlsplit(url)[:2], proxies.get("no_proxy"))
        for scheme, proxy in environment_proxies.items():
            proxies.setdefault(scheme, proxy)
        if (verify is True or verify is None) and self.verify is True:
            verify = ca_bundle or verify
    return {"proxies": merge_setting(proxies, self.proxies), "stream": merge_setting(stream, self.stream),
            "verify": merge_setting(verify, self.verify), "cert": merge_setting(cert, self.cert)}


@lru_cache(maxsize=256)
def _environment(origin: tuple[str, str], no_proxy: str | None) -> tuple[dict[str, str], str | None]:
    """The proxies for ``origin`` (scheme, host) and the CA bundle the environment names."""
    return (get_environ_proxies(f"{origin[0]}://{origin[1]}/", no_proxy=no_proxy),
            os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE"))


def read_environment_once(session: requests.Session) -> None:
    """Make a client library's own session read the environment once per host, as
    PinnedSession does."""
    session.merge_environment_settings = types.MethodType(_merge_environment_once, session)  # type: ignore[method-assign]


class PinnedSession(requests.Session):
    timeout: float = 30.0
    merge_environment_settings = _merge_environment_once  # type: ignore[assignment]

    def pin(self, *, timeout: float, ca_bundle: str | None, per_second: float | None = None,
            name: str = "") -> "PinnedSession":
        """Set the timeout and bundle, drop transport retries, pace connection ``name`` to
        ``per_second``; returns self (usable on subclasses that mix in other sessions, e.g.
        OAuth2Session)."""
        self.timeout = timeout
        self.verify = ca_bundle or True
        pace(self, per_second, name=name)
        return self

    def pin_to(self, config: Any) -> "PinnedSession":
        """``pin`` with a connection's settings (a ``ConnectionConfig``)."""
        return self.pin(timeout=config.timeout_seconds, ca_bundle=config.ca_bundle,
                        per_second=config.rate_limit_per_second, name=config.name)

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        kwargs["timeout"] = kwargs.get("timeout") or self.timeout
        local = self._thread_local()
        local.last = None
        response = super().request(method, url, *args, **kwargs)
        local.last = response
        return response

    def last_header(self, name: str) -> str | None:
        last = getattr(self._thread_local(), "last", None)
        return None if last is None else last.headers.get(name)

    def close(self) -> None:
        for adapter in {id(a): a for a in self.adapters.values()}.values():
            pools = getattr(getattr(adapter, "poolmanager", None), "pools", None)
            for key in list(pools.keys()) if pools is not None else []:
                pool = pools.get(key)
                if pool is not None:
                    pool.close()
        super().close()

    def _thread_local(self) -> threading.local:
        local = self.__dict__.get("_local")
        if local is None:
            local = self.__dict__.setdefault("_local", threading.local())
        return local


def pace(session: requests.Session, per_second: float | None, *, name: str = "") -> None:
    """Mount adapters without transport retries that hold each call until connection
    ``name`` is under ``per_second``. The bucket is shared by every session paced under
    that name in this process (the bridge has one connector per thread); None: unpaced."""
    if not per_second:
        adapter: HTTPAdapter = HTTPAdapter(max_retries=0)
    else:
        with _PACING_LOCK:
            limiter = _LIMITERS.get((name, per_second))
            if limiter is None:  # the library's own limiter for this rate, kept for every session
                limiter = _LIMITERS[(name, per_second)] = LimiterAdapter(per_second=per_second, per_host=False).limiter
        adapter = LimiterAdapter(limiter=limiter, per_host=False, bucket_name=f"connection:{name}", max_retries=0)
    for prefix in ("http://", "https://"):
        session.mount(prefix, adapter)


_PACING_LOCK = threading.Lock()
_LIMITERS: dict[tuple[str, float], Limiter] = {}
