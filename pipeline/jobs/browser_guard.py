"""
What keeps a web page in the operator's own browser from using the control API: the checks a browser's requests
must pass, and the browser's session cookie.

A page of any site can make the operator's browser send requests to 127.0.0.1: forms (POST `text/plain` or
`application/x-www-form-urlencoded`), images, scripts, and fetches whose answers it cannot read. Every port of a host
is the same *site* to a browser (SameSite=Strict does not separate them), and a page whose name resolves to
127.0.0.1 after it has loaded (DNS rebinding) is even the same *origin* as far as the browser knows, though its Host
header still carries the page's name. So:

Takes: a request's headers (`Host`, `Origin`, `Sec-Fetch-Site`, `Sec-Fetch-Mode`, `Content-Type`), its method, and
whether a browser's ambient credentials let it in (the session cookie, or no token at all: loopback's default).
Gives:
- `HostCheck(bound_host, names).allows(host_header)`: the Host is a loopback name or address, the bound address,
  one of `names` (live.control_hosts), or, on a wildcard bind, any IP address or this machine's own names;
- `change_refusal(method, headers, browser_made)` / `fetch_refusal(headers, browser_made)`: None, or the
  (status, message) a request that a page of another origin could have sent is refused with. Changes: a foreign
  `Origin` or a `Sec-Fetch-Site` other than same-origin is refused whatever the credentials; one let in by a cookie
  must show it is same-origin (browsers send `Origin` on every POST and DELETE); one let in by a cookie or by no
  token must be a JSON POST (a form cannot send `application/json`, and a page's fetch that could would need a CORS
  preflight this API never grants). Reads: a cross-origin fetch (an `<img>`, a script) of a cookie's or the
  token-less API's pictures and data is refused (a top-level navigation, to open the dashboard, is not). A client
  that is no browser (curl) sends none of these headers, and is judged by its token alone;
- `BrowserSessions(token, port)`: the cookie `depth_session_PORT` (one per service on a host, so two services do not
  overwrite each other's), valid for `SESSION_HOURS`: an expiry and an HMAC-SHA256 of it keyed by the token. The
  token itself never reaches the browser, which sends its cookies to every port of the host.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import time
from http import HTTPStatus
from urllib.parse import urlsplit

__all__ = ["BrowserSessions", "HostCheck", "change_refusal", "fetch_refusal"]

SESSION_HOURS = 12
SAME_ORIGIN = ("same-origin", "none")  # Sec-Fetch-Site of the page's own requests, and of what the user typed


def host_name(header: str) -> str:
    """A Host header's name, without its port or an IPv6 literal's brackets, in lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class HostCheck:
    def __init__(self, bound_host: str, names: tuple[str, ...] = ()):
        self.bound = bound_host.strip("[]").lower()
        self.wildcard = self.bound in ("", "0.0.0.0", "::")
        self.names = {"localhost", self.bound, *(name.lower().rstrip(".") for name in names)}
        if self.wildcard:  # (reachable under this machine's own names, whatever they are)
            self.names |= {socket.gethostname().lower(), socket.getfqdn().lower()}

    def allows(self, header: str | None) -> bool:
        if header is None:
            return True  # (an HTTP/1.0 client that is no browser: every browser sends Host)
        name = host_name(header).rstrip(".")
        if name in self.names or name.endswith(".localhost"):
            return True
        try:
            address = ipaddress.ip_address(name.partition("%")[0])
        except ValueError:
            return False
        return address.is_loopback or self.wildcard or str(address) == self.bound


def same_origin(headers) -> bool | None:
    """Whether the request comes from a page of this origin (True), of another (False), or says nothing (None)."""
    site = (headers.get("Sec-Fetch-Site") or "").strip().lower()
    origin = headers.get("Origin")
    verdicts = []
    if site:
        verdicts.append(site in SAME_ORIGIN)
    if origin is not None:
        parts = urlsplit(origin.strip())
        verdicts.append(origin.strip() != "null" and parts.scheme in ("http", "https")
                        and parts.netloc.lower() == (headers.get("Host") or "").strip().lower())
    return all(verdicts) if verdicts else None


def change_refusal(method: str, headers, browser_made: bool) -> tuple[HTTPStatus, str] | None:
    verdict = same_origin(headers)
    if verdict is False:
        return HTTPStatus.FORBIDDEN, f"{method} from another origin is refused (Origin {headers.get('Origin')!r})"
    if browser_made and verdict is None and headers.get("Cookie"):
        return HTTPStatus.FORBIDDEN, f"{method} with the session cookie must come from the dashboard's own page " \
                                     f"(Origin or Sec-Fetch-Site: same-origin)"
    kind = (headers.get("Content-Type") or "").partition(";")[0].strip().lower()
    if browser_made and method == "POST" and kind != "application/json":
        return HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"a POST must be Content-Type: application/json, got " \
                                                  f"{kind or 'none'!r}"
    return None


def fetch_refusal(headers, browser_made: bool) -> tuple[HTTPStatus, str] | None:
    mode = (headers.get("Sec-Fetch-Mode") or "").strip().lower()
    if browser_made and mode != "navigate" and same_origin(headers) is False:
        return HTTPStatus.FORBIDDEN, "a request from another origin's page is refused"
    return None


class BrowserSessions:
    def __init__(self, token: str, port: int, hours: float = SESSION_HOURS):
        self.name = f"depth_session_{port}"
        self.seconds = int(hours * 3600)
        self._key = hashlib.sha256(b"video-depth browser session\0" + token.encode()).digest()
        self._port = port

    def _mac(self, expires: int) -> str:
        return hmac.new(self._key, f"{self._port}:{expires}".encode(), hashlib.sha256).hexdigest()

    def cookie(self) -> str:
        """A Set-Cookie value for a new session."""
        expires = int(time.time()) + self.seconds
        return (f"{self.name}={expires}.{self._mac(expires)}; HttpOnly; SameSite=Strict; Path=/; "
                f"Max-Age={self.seconds}")

    def valid(self, value: str) -> bool:
        expires, _, mac = value.partition(".")
        if not expires.isascii() or not expires.isdigit() or len(expires) > 12 or int(expires) < time.time():
            return False
        return hmac.compare_digest(mac.encode("ascii", "replace"), self._mac(int(expires)).encode())
