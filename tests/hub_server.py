"""A tiny in-memory Hugging Face Hub for tests: the API subset huggingface_hub needs to create a repo,
upload a folder (preupload + ndjson commit, every file "regular") and download it again (repo info,
tree, resolve). Runs in a thread on 127.0.0.1; point the client at it with HF_ENDPOINT.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


def git_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, private: bool):
        self.private = private
        self.branches: dict[str, str] = {}
        self.commits: dict[str, dict[str, bytes]] = {}

    def files(self, rev: str):
        sha = self.branches.get(rev, rev)
        return sha, self.commits.get(sha)


class HubServer:
    """Start with ``with HubServer(tokens={"hf_x": "alice"}) as hub: ... hub.url ...``."""

    def __init__(self, tokens: dict[str, str] | None = None):
        self.tokens = tokens or {}
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.auth_seen: list[str] = []
        self.fail_commits = False
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, body=b"", headers=None, head=False):
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                    headers = {"Content-Type": "application/json", **(headers or {})}
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _error(self, status, code, message, head=False, extra=None):
                self._send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message,
                                                        **(extra or {})}, head=head)

            def _user(self):
                auth = self.headers.get("Authorization", "")
                token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
                if token:
                    hub.auth_seen.append(token)
                return hub.tokens.get(token)

            def _body(self):
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _repo(self, repo_id, head=False):
                repo = hub.repos.get(repo_id)
                if repo is None or (repo.private and self._user() != repo_id.split("/")[0]):
                    self._error(404, "RepoNotFound", f"Repository {repo_id} not found", head)
                    return None
                return repo

            def do_HEAD(self):
                self.do_GET(head=True)

            def do_GET(self, head=False):
                url = urlsplit(self.path)
                path, query = unquote(url.path), parse_qs(url.query)
                hub.requests.append(("HEAD" if head else "GET", path))
                with hub.lock:
                    m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path)
                    if m:
                        return self._info(m.group(1), m.group(2) or "main")
                    m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
                    if m:
                        return self._tree(m.group(1), m.group(2), m.group(3) or "", query)
                    m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                    if m:
                        return self._resolve(m.group(1), m.group(2), m.group(3), head)
                self._error(404, "NotFound", f"no route for GET {path}", head)

            def _info(self, repo_id, rev):
                repo = self._repo(repo_id)
                if repo:
                    sha, files = repo.files(rev)
                    if files is None:
                        return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                    self._send(200, {"id": repo_id, "sha": sha, "private": repo.private,
                                     "siblings": [{"rfilename": p} for p in sorted(files)]})

            def _tree(self, repo_id, rev, prefix, query):
                repo = self._repo(repo_id)
                if repo:
                    sha, files = repo.files(rev)
                    if files is None:
                        return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                    entries = [{"type": "file", "path": p, "size": len(d), "oid": git_sha(d)}
                               for p, d in sorted(files.items()) if p.startswith(prefix)]
                    dirs = sorted({"/".join(p.split("/")[:i]) for p in files
                                   for i in range(1, p.count("/") + 1)})
                    entries += [{"type": "directory", "path": d, "oid": "0" * 40} for d in dirs]
                    self._send(200, entries)

            def _resolve(self, repo_id, rev, filename, head):
                repo = self._repo(repo_id, head)
                if repo:
                    sha, files = repo.files(rev)
                    if files is None:
                        return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
                    if filename not in files:
                        return self._error(404, "EntryNotFound", f"{filename} not found", head,
                                           {"X-Repo-Commit": sha})
                    data = files[filename]
                    self._send(200, data, {"X-Repo-Commit": sha, "ETag": f'"{git_sha(data)}"',
                                           "Content-Type": "application/octet-stream"}, head)

            def do_POST(self):
                path = unquote(urlsplit(self.path).path)
                hub.requests.append(("POST", path))
                body = self._body()
                user = self._user()
                with hub.lock:
                    if path == "/api/repos/create":
                        return self._create(json.loads(body), user)
                    m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/(.+)", path)
                    if m:
                        repo_id, what, rev = m.groups()
                        if user is None or user != repo_id.split("/")[0]:
                            return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
                        if repo_id not in hub.repos:
                            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                        if what == "preupload":
                            files = json.loads(body)["files"]
                            return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                               "shouldIgnore": False, "oid": None}
                                                              for f in files]})
                        return self._commit(repo_id, rev, body)
                self._error(404, "NotFound", f"no route for POST {path}")

            def _create(self, payload, user):
                if user is None:
                    return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
                repo_id = f"{payload.get('organization') or user}/{payload['name']}"
                url = {"url": f"{hub.url}/{repo_id}"}
                if repo_id in hub.repos:
                    return self._send(409, {**url, "error": "You already created this model repo"})
                repo = hub.repos[repo_id] = Repo(private=payload.get("visibility") == "private"
                                                  or bool(payload.get("private")))
                repo.commits[git_sha(repo_id.encode())] = {}
                repo.branches["main"] = git_sha(repo_id.encode())
                self._send(200, url)

            def _commit(self, repo_id, rev, body):
                if hub.fail_commits:
                    return self._error(400, "BadRequest", "commit rejected by the server")
                repo = hub.repos[repo_id]
                _, files = repo.files(rev)
                files = dict(files or {})
                for line in body.splitlines():
                    item = json.loads(line)
                    key, value = item["key"], item["value"]
                    if key == "file":
                        files[value["path"]] = base64.b64decode(value["content"])
                    elif key == "deletedFile":
                        files.pop(value["path"], None)
                    elif key != "header":
                        return self._error(400, "BadRequest", f"unsupported commit entry {key}")
                sha = hashlib.sha1(json.dumps(sorted((p, git_sha(d)) for p, d in files.items())).encode()
                                   + str(len(repo.commits)).encode()).hexdigest()
                repo.commits[sha] = files
                repo.branches[rev] = sha
                self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha,
                                 "pullRequestUrl": None})

        return Handler
