"""
Baselines on plain pyzmq and C{cryptography}: what our code is compared to.

Roles (first argument): pub, sub, proxy (C{zmq.proxy}, C), pyfwd (a plain
Python forwarding loop), sign / verify (raw RSA rates), gpgproc (one gpg
process per message, as fedmsg does).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import zlib
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import zmq  # noqa: E402


def _sock(ctx, kind, hwm):
    s = ctx.socket(kind)
    s.setsockopt(zmq.SNDHWM, hwm)
    s.setsockopt(zmq.RCVHWM, hwm)
    s.setsockopt(zmq.LINGER, 2000)
    return s


def _attach(s, args):
    if args.bind:
        s.bind(args.bind)
    for a in args.connect or ():
        s.connect(a)


def pub(args):
    ctx = zmq.Context()
    socks = []
    for k in range(args.sockets):
        s = _sock(ctx, zmq.PUB, args.hwm)
        _attach(s, args)
        socks.append(s)
    ctl = common.Control()
    if args.frames_file:
        with open(args.frames_file, "rb") as f:
            bodies = [line.rstrip(b"\n") for line in f if line.strip()]
        probe_body, bodies = bodies[0], bodies[1:]
        probes = [[common.PROBE_TOPIC.encode(), probe_body]] * len(socks)
        ring = [[common.TOPIC.encode(), b] for b in bodies]
    else:
        probes = None
        bodies = common.Bodies(args.size)
    common.say("READY")
    while True:
        for k, s in enumerate(socks):
            s.send_multipart(probes[k] if probes else common.probe_frames(f"{args.id}-{k}"))
        if "go" in ctl.lines(0.02) or ctl.eof:
            break
    total = args.n * len(socks)
    c0, t0 = common.cpu(), time.monotonic()
    if args.latency:
        tick = 1.0 / args.rate
        i = 0
        while i < total:
            due = min(total, int((time.monotonic() - t0) / tick) + 1)
            while i < due:
                msg = common.payload(args.size, i)
                msg["ts"] = time.monotonic()
                socks[i % len(socks)].send_multipart([common.TOPIC.encode(), common.canonical(common.envelope(msg, i))])
                i += 1
            time.sleep(0.0005)
    elif args.frames_file:
        k = len(ring)
        if total > k:
            raise SystemExit(f"{args.frames_file} has {k} bodies, {total} needed (msg_ids must be unique)")
        send = socks[0].send_multipart
        for i in range(total):
            send(ring[i])
    else:
        nsock = len(socks)
        # Unique msg_ids: per-process offset so fan-in senders differ too.
        base = (zlib.crc32(args.id.encode()) % 10**6) * 10**6
        if args.encode:
            # What any publisher of a dict must at least do: encode it.
            msgs = [common.payload(args.size, i) for i in range(64)]
            send = socks[0].send_multipart
            topic = common.TOPIC.encode()
            canonical, envelope = common.canonical, common.envelope
            for i in range(total):
                send([topic, canonical(envelope(msgs[i % 64], i))])
        elif args.pace:
            # Paced: top up to the schedule every millisecond.
            send = socks[0].send_multipart
            make = bodies.frames
            tick = 1.0 / args.pace
            i = 0
            while i < total:
                due = min(total, int((time.monotonic() - t0) / tick) + 1)
                while i < due:
                    send(make(base + i))
                    i += 1
                time.sleep(0.001)
        elif nsock == 1:
            send = socks[0].send_multipart
            make = bodies.frames
            for i in range(total):
                send(make(base + i))
        else:
            make = bodies.frames
            for i in range(total):
                socks[i % nsock].send_multipart(make(base + i))
    t1, c1 = time.monotonic(), common.cpu()
    common.result(role="sender", sent=total, t0=t0, t1=t1, cpu=c1 - c0)
    ctl.wait_for("stop", 60)
    for s in socks:
        s.close()
    ctx.term()


def sub(args):
    ctx = zmq.Context()
    poller = zmq.Poller()
    socks = {}
    for k in range(args.sockets):
        s = _sock(ctx, zmq.SUB, args.hwm)
        s.setsockopt(zmq.SUBSCRIBE, b"")
        _attach(s, args)
        poller.register(s, zmq.POLLIN)
        socks[s] = k
    rcv = common.Receiver(args.n * args.sockets, args.senders * args.sockets, args.latency)
    common.say("READY")
    idle = args.idle
    last = time.monotonic()
    while not rcv.done:
        events = poller.poll(100)
        if not events:
            if rcv.warm and rcv.count and time.monotonic() - last > idle:
                break
            if time.monotonic() - last > 120:
                break
            continue
        last = time.monotonic()
        for s, _ in events:
            for _ in range(256):
                try:
                    topic, body = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if common.is_heartbeat(topic):
                    continue
                if common.is_probe(topic):
                    rcv.probe((socks[s], json.loads(body)["msg"]["sender"]))
                elif args.latency:
                    rcv.got(json.loads(body)["msg"])
                else:
                    rcv.got()
    rcv.report()
    for s in socks:
        s.close()
    ctx.term()


class _Window:
    """
    CPU between C{mark} and C{stop} for an intermediary.
    """

    def __init__(self):
        self.c0 = common.cpu()

    def handle(self, lines):
        for line in lines:
            if line == "mark":
                self.c0 = common.cpu()
            elif line == "stop":
                return True
        return False

    def report(self, **kw):
        common.result(role="relay", cpu=common.cpu() - self.c0, rss_kb=common.rss_kb(), **kw)


def proxy(args):
    ctx = zmq.Context()
    inn = _sock(ctx, zmq.SUB, args.hwm)
    inn.setsockopt(zmq.SUBSCRIBE, b"")
    inn.bind(args.inbound)
    out = _sock(ctx, zmq.PUB, args.hwm)
    out.bind(args.outbound)
    t = threading.Thread(target=lambda: _run_proxy(inn, out), daemon=True)
    t.start()
    ctl = common.Control()
    w = _Window()
    common.say("READY")
    while not w.handle(ctl.lines(0.2)):
        pass
    w.report(forwarded=None)
    os._exit(0)


def _run_proxy(inn, out):
    try:
        zmq.proxy(inn, out)
    except zmq.ZMQError:
        pass


def pyfwd(args):
    ctx = zmq.Context()
    inn = _sock(ctx, zmq.SUB, args.hwm)
    inn.setsockopt(zmq.SUBSCRIBE, b"")
    inn.bind(args.inbound)
    out = _sock(ctx, zmq.PUB, args.hwm)
    out.bind(args.outbound)
    poller = zmq.Poller()
    poller.register(inn, zmq.POLLIN)
    poller.register(0, zmq.POLLIN)
    ctl = common.Control()
    w = _Window()
    common.say("READY")
    n = 0
    recv, send = inn.recv_multipart, out.send_multipart
    while True:
        events = dict(poller.poll())
        if inn in events:
            # Drain what is there, then look at stdin again.
            for _ in range(256):
                try:
                    send(recv(zmq.NOBLOCK))
                    n += 1
                except zmq.Again:
                    break
        if 0 in events and w.handle(ctl.lines(0)):
            break
    w.report(forwarded=n)
    os._exit(0)


def _ready():
    """
    Standalone rate loops still start on the driver's C{go}.
    """
    common.say("READY")
    common.Control().wait_for("go", 60)


def _load_key(path):
    from cryptography.hazmat.primitives import serialization

    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), None)


def sign(args):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    key = _load_key(args.key)
    data = [common.canonical(common.envelope(common.payload(args.size, i), i)) for i in range(64)]
    _ready()
    c0, t0 = common.cpu(), time.monotonic()
    for i in range(args.n):
        key.sign(data[i % 64], padding.PKCS1v15(), hashes.SHA1())
    t1, c1 = time.monotonic(), common.cpu()
    common.result(role="sender", sent=args.n, t0=t0, t1=t1, cpu=c1 - c0)


def verify(args):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    key = _load_key(args.key)
    pub_key = key.public_key()
    data = [common.canonical(common.envelope(common.payload(args.size, i), i)) for i in range(64)]
    sigs = [key.sign(d, padding.PKCS1v15(), hashes.SHA1()) for d in data]
    _ready()
    c0, t0 = common.cpu(), time.monotonic()
    for i in range(args.n):
        pub_key.verify(sigs[i % 64], data[i % 64], padding.PKCS1v15(), hashes.SHA1())
    t1, c1 = time.monotonic(), common.cpu()
    common.result(role="sender", sent=args.n, t0=t0, t1=t1, cpu=c1 - c0)


def gpgproc(args):
    """
    fedmsg's gpg cost: one C{gpg} process per message (sign or verify).
    Children's CPU is counted (RUSAGE_CHILDREN).
    """
    import resource
    import tempfile

    def children():
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    tmp = tempfile.mkdtemp(prefix="bench-gpg-")
    data = os.path.join(tmp, "data")
    sig = os.path.join(tmp, "data.sig")
    with open(data, "wb") as f:
        f.write(common.canonical(common.payload(args.size)))
    base = ["gpg", "--homedir", args.home, "--batch", "--yes", "-q"]
    subprocess.run(base + ["--local-user", args.key, "--detach-sign", "-o", sig, data], check=True)
    _ready()
    c0, k0, t0 = common.cpu(), children(), time.monotonic()
    for _ in range(args.n):
        if args.mode == "sign":
            subprocess.run(base + ["--local-user", args.key, "--detach-sign", "-o", sig, data], check=True)
        else:
            subprocess.run(base + ["--verify", sig, data], check=True, capture_output=True)
    t1 = time.monotonic()
    cpu_used = common.cpu() - c0 + children() - k0
    common.result(role="sender", sent=args.n, t0=t0, t1=t1, cpu=cpu_used)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("role")
    p.add_argument("--bind")
    p.add_argument("--connect", action="append")
    p.add_argument("--inbound")
    p.add_argument("--outbound")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--size", type=int, default=200)
    p.add_argument("--senders", type=int, default=1)
    p.add_argument("--sockets", type=int, default=1)
    p.add_argument("--frames-file")
    p.add_argument("--encode", action="store_true", help="json-encode every message (pub)")
    p.add_argument("--hwm", type=int, default=0)
    p.add_argument("--rate", type=float, default=2000)
    p.add_argument("--pace", type=float, default=0, help="messages per second (pub; 0 = unpaced)")
    p.add_argument("--latency", action="store_true")
    p.add_argument("--idle", type=float, default=5.0)
    p.add_argument("--id", default="raw")
    p.add_argument("--key")
    p.add_argument("--home")
    p.add_argument("--mode", default="sign")
    args = p.parse_args()
    globals()[args.role](args)


if __name__ == "__main__":
    main()
