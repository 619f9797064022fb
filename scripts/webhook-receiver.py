#!/usr/bin/env python3
"""A small webhook receiver for the demo (and for trying notifications by hand): listens on
127.0.0.1:PORT, checks each delivery's Tollgate signature, prints one line per message.

    python3 scripts/webhook-receiver.py --port 9300 --secret-env TOLLGATE_WEBHOOK_SECRET

Verification (docs/counter.md, "Webhook signatures"): HMAC-SHA256(secret, "<X-Tollgate-Timestamp>.<raw
body>") in hex must equal X-Tollgate-Signature after its "v1=", compared in constant time, and the
timestamp must be within 300 s of this machine's clock (a captured request cannot be replayed).
Answers 200 to a valid delivery and 401 otherwise. Standard library only.
"""
import argparse
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPLAY_WINDOW_SECS = 300


def check(secret, headers, body):
    """None if the delivery is authentic and fresh, else why not."""
    ts = headers.get("x-tollgate-timestamp", "")
    sig = headers.get("x-tollgate-signature", "")
    if not ts.isdigit() or abs(time.time() - int(ts)) > REPLAY_WINDOW_SECS:
        return f"timestamp {ts!r} missing or outside the {REPLAY_WINDOW_SECS} s replay window"
    expected = "v1=" + hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, sig):
        return "signature does not match"
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--secret-env", default="TOLLGATE_WEBHOOK_SECRET", help="environment variable holding the shared secret")
    args = p.parse_args()
    secret = os.environ.get(args.secret_env, "").encode()
    if not secret:
        sys.exit(f"webhook-receiver: set {args.secret_env} to the webhook's secret")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            problem = check(secret, {k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(401 if problem else 200)
            self.send_header("content-length", "0")
            self.end_headers()
            event = self.headers.get("x-tollgate-event", "?")
            if problem:
                print(f"webhook receiver: REFUSED {event}: {problem}", flush=True)
                return
            try:
                text = json.loads(body).get("text") or json.loads(body).get("title")
            except (ValueError, AttributeError):
                text = body[:200]
            print(f"webhook receiver: {event} (signature ok): {text}", flush=True)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"webhook receiver: listening on http://127.0.0.1:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
