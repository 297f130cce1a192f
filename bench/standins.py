#!/usr/bin/env python3
"""Loopback stand-ins for the isolation run of bench/load.sh.

  standins.py twilio PORT DELAY_S   a Twilio Messages endpoint that answers 201 after DELAY_S
  standins.py relay PORT TARGET     a TCP relay 127.0.0.1:PORT -> 127.0.0.1:TARGET (kill it to
                                    make the database behind it unreachable)
"""
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def twilio(port, delay):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            time.sleep(delay)
            body = json.dumps({"sid": "SM" + "0" * 32, "status": "queued"}).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def relay(port, target):
    def pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    while True:
        client, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", target))
        threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "twilio":
        twilio(int(sys.argv[2]), float(sys.argv[3]))
    elif mode == "relay":
        relay(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(__doc__)
