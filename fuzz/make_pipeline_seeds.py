#!/usr/bin/env python3
"""Writes the seed corpus of the frame_pipeline target: real-shaped guest frames
(ARP, DHCP, DNS, TCP SYN, UDP, ICMP echo, fragments), one scenario per file, in the
target's record format (2-byte big-endian length, frame; length 0 = one second passes;
lengths 0xfff0 and up are host-side events, see engine/src/fuzz.rs: the seed
`host_conversation` that uses them is written by a unit test of that file)."""
import os, struct

GW = bytes.fromhex("52550a000202")
ME = bytes.fromhex("020000000064")
BC = b"\xff" * 6

def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff

def ip(src, dst, proto, payload, ident=1, flags=0):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, flags, 64, proto, 0,
                    bytes(src), bytes(dst))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload

def l4sum(src, dst, proto, seg):
    return csum(bytes(src) + bytes(dst) + struct.pack("!BBH", 0, proto, len(seg)) + seg)

def udp(src, dst, sport, dport, data):
    seg = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    c = l4sum(src, dst, 17, seg) or 0xffff
    return seg[:6] + struct.pack("!H", c) + seg[8:]

def tcp_syn(src, dst, sport, dport):
    seg = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, 0x02, 65535, 0, 0)
    c = l4sum(src, dst, 6, seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]

def eth(dst, payload, et=0x0800):
    return dst + ME + struct.pack("!H", et) + payload

G = [10, 0, 2, 100]; GWIP = [10, 0, 2, 2]; DNS = [10, 0, 2, 3]; OUT = [198, 51, 100, 1]
arp = eth(BC, struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, ME, bytes(G), b"\0" * 6, bytes(GWIP)), 0x0806)
grat = eth(BC, struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, ME, bytes(G), b"\0" * 6, bytes(G)), 0x0806)
bootp = bytearray(240)
bootp[0:4] = b"\x01\x01\x06\x00"; bootp[4:8] = b"\x12\x34\x56\x78"; bootp[10] = 0x80
bootp[28:34] = ME; bootp[236:240] = b"\x63\x82\x53\x63"
discover = bytes(bootp) + b"\x35\x01\x01\x37\x04\x01\x03\x06\x1a\xff"
request = bytes(bootp) + b"\x35\x01\x03\x32\x04\x0a\x00\x02\x0f\x36\x04\x0a\x00\x02\x02\xff"
dhcp1 = eth(BC, ip([0, 0, 0, 0], [255] * 4, 17, udp([0] * 4, [255] * 4, 68, 67, discover)))
dhcp2 = eth(BC, ip([0, 0, 0, 0], [255] * 4, 17, udp([0] * 4, [255] * 4, 68, 67, request)))
q = struct.pack("!HHHHHH", 0xbeef, 0x0100, 1, 0, 0, 0) + b"\x04host\x07usernet\x08internal\x00" + struct.pack("!HH", 1, 1)
dnsq = eth(GW, ip(G, DNS, 17, udp(G, DNS, 40000, 53, q)))
syn = eth(GW, ip(G, OUT, 6, tcp_syn(G, OUT, 40001, 80)))
syn_gw = eth(GW, ip(G, GWIP, 6, tcp_syn(G, GWIP, 40002, 22)))
u = eth(GW, ip(G, OUT, 17, udp(G, OUT, 40003, 9, b"x" * 32)))
icmp = struct.pack("!BBHHH", 8, 0, 0, 7, 1) + b"ping" * 8
icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
ping_gw = eth(GW, ip(G, GWIP, 1, icmp))
big = udp(G, OUT, 40004, 9, bytes(range(256)) * 12)
f1 = eth(GW, ip(G, OUT, 17, big[:1480], ident=77, flags=0x2000))
f2 = eth(GW, ip(G, OUT, 17, big[1480:], ident=77, flags=1480 // 8))

def rec(*frames):
    out = b""
    for f in frames:
        out += struct.pack("!H", len(f)) + f
    return out

seeds = {
    "arp": rec(arp, grat), "dhcp": rec(dhcp1, dhcp2), "dns_local": rec(dnsq),
    "tcp_syn": rec(syn, syn_gw, b"", syn), "udp": rec(u), "ping_gateway": rec(ping_gw),
    "fragments": rec(f1, f2, f2, b"", f1), "mixed": rec(arp, dhcp1, dnsq, syn, u, ping_gw, f1, f2),
}
d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "frame_pipeline")
os.makedirs(d, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(d, name), "wb") as fh:
        fh.write(data)
