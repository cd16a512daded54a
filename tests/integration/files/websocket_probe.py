# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run on a VM host: python3 websocket_probe.py SOCKET. Opens a VM's web console socket, asks for
a websocket (an HTTP upgrade) and prints the answer's status line and its first frame as JSON."""

import base64
import json
import os
import socket
import sys

sock = socket.socket(socket.AF_UNIX)
sock.settimeout(20)
sock.connect(sys.argv[1])
key = base64.b64encode(os.urandom(16)).decode()
sock.sendall(("GET / HTTP/1.1\r\nHost: vm\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n"
              "Sec-WebSocket-Protocol: binary\r\n\r\n").encode())
data = b""
while b"\r\n\r\n" not in data:
    chunk = sock.recv(4096)
    if not chunk:
        break
    data += chunk
head, dummy, rest = data.partition(b"\r\n\r\n")
while len(rest) < 2 + 12:
    chunk = sock.recv(4096)
    if not chunk:
        break
    rest += chunk
length = rest[1] & 0x7F if len(rest) > 1 else 0
print(json.dumps({"status": head.split(b"\r\n")[0].decode(), "opcode": rest[0] & 0x0F if rest else None,
                  "payload": rest[2:2 + length].decode("latin-1")}))
