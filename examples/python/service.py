#!/usr/bin/env python3
"""A service `clb sidecar` balances: python3 service.py [PORT] [SESSIONS]."""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

sessions = list(range(int(sys.argv[2]) if len(sys.argv) > 2 else 0))
accepting = True  # what the sidecar last said about new sessions


class Sidecar(BaseHTTPRequestHandler):
    def reply(self, text):
        body = str(text).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # GET /count: how many sessions are open
        self.reply(len(sessions))

    def do_POST(self):  # POST /shed: close n (clients reconnect); /admission
        global accepting
        body = self.rfile.read(int(self.headers["content-length"])).decode()
        if self.path == "/shed":
            closed = [sessions.pop() for _ in range(min(int(body), len(sessions)))]
            print(f"shed {len(closed)}; try {self.headers.get('x-clb-try')}", flush=True)
            return self.reply(len(closed))
        accepting = body == "accept"
        self.reply("ok")

    log_message = lambda *args: None  # one line per shed is enough


server = HTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8000), Sidecar)
print(f"listening on {server.server_address[1]}", flush=True)
server.serve_forever()
