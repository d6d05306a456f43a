"""An HTTP API on loopback for API-source tests: a real socket, five
endpoints with the pagination styles sources meet (cursor, page number,
`Link` headers, offset, one page), nested objects and arrays, a parent and
a child endpoint, 429s with `Retry-After`, 500s, a slow page, and a field
whose type changes between pages. Every request is logged, so a test can
say what was fetched."""
import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

TOKEN = "s3cret-token"
OAUTH_TOKEN = "issued-token"


def customer(i):
    return {
        "id": i,
        "name": f"Customer {i}",
        "updatedAt": f"2026-01-{1 + i // 100:02d}T{(i // 10) % 24:02d}:{i % 60:02d}:00Z",
        "address": {"city": f"City {i % 7}", "zip": f"0{i:04d}"},
        "tags": [f"t{i % 3}", f"t{i % 5}"],
        # An integer on the first pages, then a text: the column widens.
        "score": i if i <= 60 else f"grade-{i % 4}",
        "active": i % 2 == 0,
    }


def order(i):
    return {"id": 1000 + i, "total": round(i * 1.25, 2),
            "lines": [{"sku": f"SKU-{i}-{k}", "qty": k + 1} for k in range(i % 3 + 1)]}


def event(i):
    return {"uuid": f"ev-{i}", "kind": ["click", "view"][i % 2], "at": f"2026-02-01T00:00:{i % 60:02d}Z"}


def survey(i):
    return {"id": i, "title": f"Survey {i}",
            "questions": [{"q": f"Q{i}.{k}", "options": [{"o": o} for o in range(2)]} for k in range(2)]}


def responses(survey_id):
    return [{"rid": f"{survey_id}-{k}", "answer": f"A{k}"} for k in range(survey_id % 3)]


class FakeApi:
    """The API's data (mutable by tests), its request log, its faults."""

    def __init__(self, customers=120, orders=25, events=30, surveys=45):
        self.customers = [customer(i) for i in range(1, customers + 1)]
        self.orders = [order(i) for i in range(1, orders + 1)]
        self.events = [event(i) for i in range(1, events + 1)]
        self.surveys = [survey(i) for i in range(1, surveys + 1)]
        self.requests = []
        self.faults = {}  # (path, page) -> list of statuses to answer first
        self.slow = {}  # (path, page) -> seconds
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                api.handle(self)

            def do_POST(self):
                api.do_POST(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def add_customers(self, first, last):
        with self.lock:
            self.customers += [customer(i) for i in range(first, last + 1)]

    def fetched(self, path):
        return [q for p, q in self.requests if p == path]

    def handle(self, h):
        u = urlparse(h.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        with self.lock:
            self.requests.append((u.path, q))
        if not self.authorized(h, q):
            return self.send(h, 401, {"error": "a bearer token is required"})
        page = q.get("page") or q.get("cursor") or q.get("offset") or "first"
        key = (u.path, page)
        with self.lock:
            pending = self.faults.get(key)
            status = pending.pop(0) if pending else None
        if status == 429:
            return self.send(h, 429, {"error": "slow down"}, {"Retry-After": "1"})
        if status is not None:
            return self.send(h, status, {"error": "boom"})
        if key in self.slow:
            time.sleep(self.slow[key])
        parts = u.path.strip("/").split("/")
        if parts == ["customers"]:
            since = q.get("since", "")
            rows = [c for c in self.customers if c["updatedAt"] > since]
            at = int(q.get("cursor", "0"))
            chunk = rows[at:at + 50]
            nxt = str(at + 50) if at + 50 < len(rows) else None
            return self.send(h, 200, {"data": chunk, "cursors": {"next": nxt}})
        if parts == ["orders"]:
            n = int(q.get("page", "1"))
            per = 10
            total = (len(self.orders) + per - 1) // per
            return self.send(h, 200, {"items": self.orders[(n - 1) * per:n * per], "total_pages": total})
        if parts == ["events"]:
            n = int(q.get("page", "1"))
            per = 10
            chunk = self.events[(n - 1) * per:n * per]
            headers = {}
            if n * per < len(self.events):
                headers["Link"] = f'<{self.url}/events?page={n + 1}>; rel="next"'
            return self.send(h, 200, chunk, headers)
        if parts == ["surveys"]:
            off, lim = int(q.get("offset", "0")), int(q.get("limit", "20"))
            return self.send(h, 200, {"results": self.surveys[off:off + lim]})
        if len(parts) == 3 and parts[0] == "surveys" and parts[2] == "responses":
            return self.send(h, 200, responses(int(parts[1])))
        return self.send(h, 404, {"error": "no such endpoint"})

    def authorized(self, h, q):
        """The bearer token, the OAuth2 token /token issued, HTTP basic
        (user:pass) or ?key=KEY."""
        got = h.headers.get("Authorization", "")
        return got in (f"Bearer {TOKEN}", f"Bearer {OAUTH_TOKEN}",
                       "Basic " + base64.b64encode(b"user:pass").decode()) or q.get("key") == "KEY"

    def do_POST(self, h):
        """/token: OAuth2 client credentials (client id `cid`, secret `csecret`)."""
        with self.lock:
            self.requests.append((urlparse(h.path).path, {}))
        body = h.rfile.read(int(h.headers.get("Content-Length", "0"))).decode()
        form = parse_qs(body)
        # As dlt sends them: the client's id and secret in the form.
        if form.get("client_id") != ["cid"] or form.get("client_secret") != ["csecret"] \
                or form.get("grant_type") != ["client_credentials"] or form.get("scope") != ["read"]:
            return self.send(h, 401, {"error": "invalid_client"})
        return self.send(h, 200, {"access_token": OAUTH_TOKEN, "token_type": "bearer", "expires_in": 3600})

    def send(self, h, status, body, headers=None):
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)


def source_file(api_url, name="shop", destination=None):
    """The source file a data engineer writes for this API (dlt's rest_api
    configuration and sluice's keys)."""
    doc = {
        "name": name,
        "client": {
            "base_url": api_url,
            "auth": {"type": "bearer", "token": TOKEN},
        },
        "resource_defaults": {"write_disposition": "append"},
        "resources": [
            {"name": "customers", "primary_key": "id", "write_disposition": "merge",
             "endpoint": {"path": "customers", "data_selector": "data",
                          "paginator": {"type": "cursor", "cursor_path": "cursors.next",
                                        "cursor_param": "cursor"},
                          "incremental": {"cursor_path": "updatedAt", "start_param": "since",
                                          "initial_value": "2000-01-01T00:00:00Z"}}},
            {"name": "orders", "primary_key": "id",
             "endpoint": {"path": "orders", "data_selector": "items",
                          "paginator": {"type": "page_number", "base_page": 1,
                                        "total_path": "total_pages"}}},
            {"name": "events", "endpoint": {"path": "events", "paginator": "header_link"}},
            {"name": "surveys", "primary_key": "id",
             "endpoint": {"path": "surveys",
                          "paginator": {"type": "offset", "limit": 20}}},
            {"name": "responses", "include_from_parent": ["title"],
             "endpoint": {"path": "surveys/{survey_id}/responses", "paginator": "single_page",
                          "params": {"survey_id": {"type": "resolve", "resource": "surveys",
                                                   "field": "id"}}}},
        ],
    }
    if destination:
        doc["destination"] = destination
    return doc
