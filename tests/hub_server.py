"""A tiny in-memory Hugging Face Hub for tests: the API subset huggingface_hub needs to create a repo,
upload a folder (preupload + ndjson commit, every file "regular") and download it again (repo info,
tree, resolve). Runs in a thread on 127.0.0.1 (tests/http_scaffold.py); point the client at it with
HF_ENDPOINT. ``faults`` makes a route fail: {"info" | "tree" | "resolve" | "create" | "preupload" | "commit":
"500" | "cut" | "stall" | "drip" (a byte at a time from the status line) | "drip-body" (the head, then a byte
at a time; a HEAD is answered as usual) | "echo:<status>" (an error quoting the request's Authorization header
back) | "code:<status>:<X-Error-Code>" (e.g. "code:403:GatedRepo") | "slow:<seconds>" (resolve only: each file
as it is, its body spread over that many seconds)}. ``any_revision`` answers an unknown revision with main's
commit, as a permissive mirror might.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from urllib.parse import parse_qs, unquote, urlsplit

from http_scaffold import LocalServer, QuietHandler


def git_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, private: bool):
        self.private = private
        self.branches: dict[str, str] = {}
        self.commits: dict[str, dict[str, bytes]] = {}

    def files(self, rev: str, any_revision: bool = False):
        sha = self.branches.get(rev, rev)
        if any_revision and sha not in self.commits:
            sha = self.branches["main"]
        return sha, self.commits.get(sha)


class HubHandler(QuietHandler):
    @property
    def hub(self) -> "HubServer":
        return self.owner

    def _fault(self, route: str, head: bool = False) -> bool:
        """Answer with the fault set for ``route`` (True), or do nothing (False)."""
        how = self.hub.faults.get(route)
        if how == "drip-body" and head or how and how.startswith("slow:"):
            return False  # a HEAD has no body to drip: answered as usual; a slow body is sent by _resolve
        if how == "500":
            self._error(500, "InternalError", "Internal Error - We're working hard to fix this", head)
        elif how == "cut":
            self.cut()
        elif how == "stall":
            self.stall()
        elif how in ("drip", "drip-body"):
            self.drip(whole_head=how == "drip-body")
        elif how and how.startswith("echo:"):
            status = int(how[len("echo:"):])
            said = f"Invalid credentials: got Authorization: {self.headers.get('Authorization')}"
            self._error(status, "RepoNotFound" if status == 404 else "Echo", said, head)
        elif how and how.startswith("code:"):
            _, status, code = how.split(":")
            self._user()  # records the token it was sent
            self._error(int(status), code, f"{code}: refused by the stand-in Hub", head)
        return how is not None

    def _error(self, status, code, message, head=False, extra=None):
        self.send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message,
                                               **(extra or {})}, head=head)

    def _user(self):
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        if token:
            self.hub.auth_seen.append(token)
        return self.hub.tokens.get(token)

    def _repo(self, repo_id, head=False):
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and self._user() != repo_id.split("/")[0]):
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found", head)
            return None
        return repo

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head=False):
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        self.hub.requests.append(("HEAD" if head else "GET", path))
        routes = [
            ("info", r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", lambda m: (m[1], m[2] or "main")),
            ("tree", r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", lambda m: (m[1], m[2], m[3] or "", query)),
            ("resolve", r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", lambda m: (m[1], m[2], m[3], head))]
        for route, pattern, args in routes:
            m = re.fullmatch(pattern, path)
            if m:
                if self._fault(route, head):
                    return
                if route == "resolve" and not head and self.hub.faults.get(route, "").startswith("slow:"):
                    return self._resolve(*args(m))  # not under the lock: the other files come meanwhile
                with self.hub.lock:
                    return getattr(self, "_" + route)(*args(m))
        self._error(404, "NotFound", f"no route for GET {path}", head)

    def _info(self, repo_id, rev):
        repo = self._repo(repo_id)
        if repo:
            sha, files = repo.files(rev, self.hub.any_revision)
            if files is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            self.send(200, {"id": repo_id, "sha": sha, "private": repo.private,
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
            self.send(200, entries)

    def _resolve(self, repo_id, rev, filename, head):
        repo = self._repo(repo_id, head)
        if repo:
            sha, files = repo.files(rev)
            if files is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            if filename not in files:
                return self._error(404, "EntryNotFound", f"{filename} not found", head, {"X-Repo-Commit": sha})
            data = files[filename]
            headers = {"X-Repo-Commit": sha, "ETag": f'"{git_sha(data)}"', "Content-Type": "application/octet-stream"}
            slow = self.hub.faults.get("resolve", "")
            if slow.startswith("slow:") and not head:
                return self.send_slowly(data, headers, float(slow.partition(":")[2]))
            self.send(200, data, headers, head)

    def send_slowly(self, data: bytes, headers: dict, seconds: float, pieces: int = 10):
        """200 with ``data`` in ``pieces`` parts spread over ``seconds`` (a slow line, never a stall)."""
        self.send_response(200)
        for k, v in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(k, v)
        self.end_headers()
        step = -(-len(data) // pieces)
        for i in range(0, len(data), step):
            self.owner.stopping.wait(seconds / pieces)
            self.wfile.write(data[i:i + step])
            self.wfile.flush()

    def do_POST(self):
        path = unquote(urlsplit(self.path).path)
        self.hub.requests.append(("POST", path))
        body = self.body()
        user = self._user()
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/(.+)", path)
        if path == "/api/repos/create" or m:
            if self._fault(m[2] if m else "create"):
                return
        if path == "/api/validate-yaml":  # a model card's metadata check (transformers' push_to_hub writes a card)
            return self.send(200, {"errors": [], "warnings": []})
        with self.hub.lock:
            if path == "/api/repos/create":
                return self._create(json.loads(body), user)
            if m:
                repo_id, what, rev = m.groups()
                if user is None or user != repo_id.split("/")[0]:
                    return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
                if repo_id not in self.hub.repos:
                    return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                if what == "preupload":
                    files = json.loads(body)["files"]
                    return self.send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                      "shouldIgnore": False, "oid": None} for f in files]})
                return self._commit(repo_id, rev, body)
        self._error(404, "NotFound", f"no route for POST {path}")

    def _create(self, payload, user):
        if user is None:
            return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        url = {"url": f"{self.hub.url}/{repo_id}"}
        if repo_id in self.hub.repos:
            return self.send(409, {**url, "error": "You already created this model repo"})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = self.hub.repos[repo_id] = Repo(private=private)
        repo.commits[git_sha(repo_id.encode())] = {}
        repo.branches["main"] = git_sha(repo_id.encode())
        self.send(200, url)

    def _commit(self, repo_id, rev, body):
        if self.hub.fail_commits:
            return self._error(400, "BadRequest", "commit rejected by the server")
        repo = self.hub.repos[repo_id]
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
        self.send(200, {"commitUrl": f"{self.hub.url}/{repo_id}/commit/{sha}", "commitOid": sha,
                        "pullRequestUrl": None})


class HubServer(LocalServer):
    """Start with ``with HubServer(tokens={"hf_x": "alice"}) as hub: ... hub.url ...``."""

    Handler = HubHandler

    def __init__(self, tokens: dict[str, str] | None = None):
        self.tokens = tokens or {}
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.auth_seen: list[str] = []
        self.fail_commits = False
        self.any_revision = False
        self.faults: dict[str, str] = {}
        super().__init__()
