"""A stand-in Hugging Face Hub on 127.0.0.1: the `/<repo>/resolve/<revision>/<file>` routes that
huggingface_hub's HEAD (metadata) and GET (transfer, with Range) use, with the hub's headers
(X-Repo-Commit, ETag = sha256 as for LFS files, X-Error-Code for gated / missing repos and files).

Failure injection: `cut_after[name] = n` sends the first n bytes of the next GET of that file, then
closes the connection; `outage` answers every GET with HTTP 503 (a transfer that cannot continue).
"""
from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Repo:
    files: dict[str, bytes]
    gated_tokens: set[str] | None = None  # None: public; else the tokens whose account accepted the licence
    wrong_content: dict[str, bytes] = field(default_factory=dict)  # served instead of the file (hash stays the file's)


class HubDouble:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None, str | None]] = []  # (method, path, Range, Authorization)
        self.cut_after: dict[str, int] = {}
        self.outage = False
        self.invalid_tokens: set[str] = set()  # answered as the hub answers an expired or mistyped token
        self.bytes_sent: dict[str, int] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "HubDouble":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def gets(self, filename: str) -> list[tuple[str, str, str | None, str | None]]:
        return [r for r in self.requests if r[0] == "GET" and r[1].endswith("/" + filename)]

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _error(self, status: int, code: str, message: str) -> None:
                body = message.encode()
                self.send_response(status)
                if code:
                    self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _serve(self) -> None:
                hub.requests.append((self.command, self.path, self.headers.get("Range"), self.headers.get("Authorization")))
                match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
                if not match:
                    return self._error(404, "RepoNotFound", "not a resolve url")
                repo_id, _revision, filename = match.groups()
                if self.headers.get("Authorization", "").removeprefix("Bearer ") in hub.invalid_tokens:
                    return self._error(401, "", "Invalid credentials in Authorization header")
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(401, "RepoNotFound", "Repository not found")
                if repo.gated_tokens is not None:
                    auth = self.headers.get("Authorization", "")
                    token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
                    if token is None:
                        return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. Please log in.")
                    if token not in repo.gated_tokens:
                        return self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the authorized list.")
                if filename not in repo.files:
                    return self._error(404, "EntryNotFound", f"{filename} does not exist on main")
                data = repo.files[filename]
                digest = hashlib.sha256(data).hexdigest()
                body = repo.wrong_content.get(filename, data)
                start = 0
                ranged = self.headers.get("Range")
                if self.command == "GET" and ranged:
                    start = int(re.fullmatch(r"bytes=(\d+)-", ranged).group(1))
                if self.command == "GET" and hub.outage:
                    return self._error(503, "ServiceUnavailable", "try again later")
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{digest}"')
                self.send_header("X-Linked-Etag", f'"{digest}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(body) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                if self.command == "HEAD":
                    return
                payload = body[start:]
                cut = hub.cut_after.pop(filename, None)
                if cut is not None:
                    self.wfile.write(payload[:cut])
                    self.wfile.flush()
                    hub.bytes_sent[filename] = hub.bytes_sent.get(filename, 0) + cut
                    self.close_connection = True
                    hub.outage = True  # the network stays down: the client's retries fail too
                    return
                self.wfile.write(payload)
                hub.bytes_sent[filename] = hub.bytes_sent.get(filename, 0) + len(payload)

            do_HEAD = _serve
            do_GET = _serve

        return Handler
