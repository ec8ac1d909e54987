"""A service for the hold's tests, started by their start commands: on TCP it
greets each connection at once (``hello``), on UDP it echoes each datagram.

    python3 hold_server.py ADDRESS TCP_PORT UDP_PORT
"""

from __future__ import annotations

import selectors
import socket
import sys


def main() -> None:
    address, tcp_port, udp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((address, tcp_port))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((address, udp_port))
    tcp.listen(64)
    sel = selectors.DefaultSelector()
    sel.register(tcp, selectors.EVENT_READ)
    sel.register(udp, selectors.EVENT_READ)
    while True:
        for key, _events in sel.select():
            if key.fileobj is tcp:
                conn, _peer = tcp.accept()
                conn.sendall(b"hello\n")
                conn.close()
            else:
                data, peer = udp.recvfrom(2048)
                udp.sendto(data, peer)


if __name__ == "__main__":
    main()
