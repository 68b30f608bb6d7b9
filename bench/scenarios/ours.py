"""
fedmsg-twisted under test: RelayService, PublisherService, SubscriberService,
the crypto Signer/Validator.  Each role runs one Twisted reactor.

Roles: relay, pub, sub, gpg (sign/verify through the crypto module).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
import common  # noqa: E402

from twisted.internet import defer, reactor, task  # noqa: E402

from fedmsg_twisted import config as fconfig  # noqa: E402


def _config(args, **extra):
    d = {
        "topic_prefix": "org.bench",
        "environment": "dev",
        "high_water_mark": args.hwm,
        "post_init_sleep": 5.0,
        "zmq_linger": 2000,
        "endpoints": {},
    }
    d.update(extra)
    if args.crypto_config:
        import json

        with open(args.crypto_config) as f:
            d.update(json.load(f))
    return fconfig.from_dict(d, strict=False)


def _stdin(handler):
    """
    Read control lines in a thread; hand them to the reactor.
    """

    def run():
        for line in sys.stdin:
            reactor.callFromThread(handler, line.strip())
        reactor.callFromThread(handler, "stop")

    threading.Thread(target=run, daemon=True).start()


class _Profile:
    def __init__(self, path):
        self.path = path
        self.prof = None

    def start(self):
        if self.path:
            import cProfile

            self.prof = cProfile.Profile()
            self.prof.enable()

    def stop(self):
        if self.prof is not None:
            self.prof.disable()
            self.prof.dump_stats(self.path)
            self.prof = None


def relay(args):
    import time

    from fedmsg_twisted.relay import RelayService

    extra = {} if args.relay_hwm < 0 else {"relay_high_water_mark": args.relay_hwm}
    cfg = _config(args, endpoints={"relay_outbound": [args.outbound]}, relay_inbound=[args.inbound], **extra)
    svc = RelayService(cfg)
    archive = None
    if args.archive:
        # The relay as twistd runs it with its default SQLite archive.
        from fedmsg_twisted.store import Archive

        archive = Archive(None, state_directory=args.archive)
        archive.start()
        svc.add_sink(archive.add)
    svc.startService()
    prof = _Profile(args.profile)
    state = {"c0": common.cpu(), "n0": 0, "t0": time.monotonic(), "s0": 0}

    def control(line):
        if line == "mark":
            state["c0"] = common.cpu()
            state["n0"] = svc.counters.get("received")
            state["t0"] = time.monotonic()
            state["s0"] = archive.counters["stored"] if archive is not None else 0
            prof.start()
        elif line == "stop" and reactor.running:
            prof.stop()

            def report(_=None):
                extra = {}
                if archive is not None:
                    stored = archive.counters["stored"] - state["s0"]
                    elapsed = time.monotonic() - state["t0"]
                    extra = {"archived": stored, "archive_rate": stored / max(elapsed, 1e-9),
                             "archive_failed": archive.counters["failed"] + archive.counters["dropped"]}
                common.result(
                    role="relay",
                    cpu=common.cpu() - state["c0"],
                    rss_kb=common.rss_kb(),
                    forwarded=svc.counters.get("forwarded"),
                    received=svc.counters.get("received") - state["n0"],
                    dropped=svc.counters.get("dropped"),
                    **extra,
                )
                svc.stopService()
                d = archive.stop() if archive is not None else None
                if d is not None:
                    d.addBoth(lambda _: reactor.stop())
                else:
                    reactor.stop()

            if archive is not None:
                # Archive write throughput: everything received is on disk.
                archive.flush().addBoth(report)
            else:
                report()

    _stdin(control)
    common.say("READY")
    reactor.run()


def pub(args):
    from fedmsg_twisted.publisher import PublisherService

    signer = None
    services = []
    for k in range(args.sockets):
        if args.bind:
            cfg = _config(args, endpoints={"bench": [args.bind]}, name="bench")
        else:
            cfg = _config(args, relay_inbound=[args.connect[0]], active=True, name="relay_inbound")
        if args.sign and signer is None:
            from fedmsg_twisted.crypto import Signer

            signer = Signer.from_config(cfg, name="bench")
        svc = PublisherService(cfg, signer=signer)
        svc.startService()
        services.append(svc)
    state = {"go": False}
    size = args.size

    def probes():
        for k, svc in enumerate(services):
            svc.publish("bench" + common.PROBE, {"sender": f"{args.id}-{k}"}, modname="bench")

    probing = task.LoopingCall(probes)
    probing.start(0.02)

    prof = _Profile(args.profile)

    def finish(t0, c0):
        prof.stop()
        t1, c1 = time.monotonic(), common.cpu()
        common.result(role="sender", sent=args.n * len(services), t0=t0, t1=t1, cpu=c1 - c0)

    async def run():
        ring = [common.payload(size, j) for j in range(64)]
        prof.start()
        t0, c0 = time.monotonic(), common.cpu()
        ds = []
        if args.latency:
            tick = 1.0 / args.rate
            i = 0
            while i < args.n:
                due = min(args.n, int((time.monotonic() - t0) / tick) + 1)
                while i < due:
                    msg = common.payload(size, i)
                    msg["ts"] = time.monotonic()
                    services[i % len(services)].publish("data", msg, modname="bench")
                    i += 1
                await task.deferLater(reactor, 0.0005, lambda: None)
        else:
            chunk = 500
            total = args.n * len(services)
            i = 0
            nsvc = len(services)
            # The same 64 prebuilt payloads as the raw and fedmsg senders use.
            while i < total:
                for j in range(i, min(total, i + chunk)):
                    d = services[j % nsvc].publish("data", ring[j % 64], modname="bench")
                    if signer is not None and signer.backend == "gpg":
                        ds.append(d)
                i += chunk
                await task.deferLater(reactor, 0, lambda: None)
            if ds:
                await defer.gatherResults(ds)
        finish(t0, c0)

    def control(line):
        if line == "go" and not state["go"]:
            state["go"] = True
            probing.stop()
            defer.Deferred.fromCoroutine(run()).addErrback(lambda f: (f.printTraceback(), os._exit(3)))
        elif line == "stop" and reactor.running:
            for svc in services:
                svc.stopService()
            reactor.callLater(0.2, reactor.stop)

    _stdin(control)
    common.say("READY")
    reactor.run()


def sub(args):
    from fedmsg_twisted.subscriber import SubscriberService

    cfg = _config(args)
    validator = None
    if args.validate:
        from fedmsg_twisted.crypto import Validator

        validator = Validator.from_config(cfg)
    k_subs = args.subs
    rcv = common.Receiver(args.n * k_subs, args.senders * k_subs, args.latency)
    prof = _Profile(args.profile)
    services = []

    def make_cb(k):
        def cb(name, endpoint, topic, env):
            if common.is_probe(topic):
                rcv.probe((k, env["msg"]["sender"]))
                return
            if not rcv.count:
                prof.start()
            rcv.got(env["msg"] if args.latency else None)
            if rcv.done:
                prof.stop()

        return cb

    for k in range(k_subs):
        svc = SubscriberService(cfg, make_cb(k), endpoints={"bench": list(args.connect)}, validator=validator)
        svc.startService()
        services.append(svc)
    state = {"last": time.monotonic(), "count": 0}

    def check():
        now = time.monotonic()
        if rcv.count != state["count"]:
            state["count"], state["last"] = rcv.count, now
        idle = now - state["last"]
        if rcv.done or (rcv.warm and rcv.count and idle > args.idle) or idle > 120:
            prof.stop()
            rejected = sum(s.counters.get("rejected") for s in services)
            dropped = sum(s.counters.get("dropped") for s in services)
            rcv.report(rejected=rejected, dropped=dropped)
            loop.stop()
            for s in services:
                s.stopService()
            reactor.stop()

    loop = task.LoopingCall(check)
    loop.start(0.05)
    common.say("READY")
    reactor.run()


def gpg(args):
    """
    Sign (or validate) N envelopes with the crypto module's gpg backend, up
    to C{--inflight} at once, as a Twisted service would.
    """
    from fedmsg_twisted.crypto import Signer, Validator

    cfg = _config(args)
    signer = Signer.from_config(cfg)
    envs = [common.envelope(common.payload(args.size, i), i) for i in range(64)]

    go = defer.Deferred()
    _stdin(lambda line: go.callback(None) if line == "go" and not go.called else None)

    async def run():
        signed = [await signer.sign_async(e) for e in envs[:8]]
        validator = Validator.from_config(cfg)
        common.say("READY")
        await go
        sem = defer.DeferredSemaphore(args.inflight)
        c0, t0 = common.cpu(), time.monotonic()
        if args.mode == "sign":
            ds = [sem.run(signer.sign_async, envs[i % 64]) for i in range(args.n)]
        else:
            ds = [sem.run(validator.validate_async, signed[i % 8]) for i in range(args.n)]
        results = await defer.gatherResults(ds)
        t1 = time.monotonic()
        if args.mode != "sign":
            bad = [r for r in results if not r.ok]
            if bad:
                raise RuntimeError(f"{len(bad)} gpg validations failed: {bad[0].reason}")
        common.result(role="sender", sent=args.n, t0=t0, t1=t1, cpu=common.cpu() - c0 + _children())

    def done(_):
        reactor.stop()

    def failed(f):
        f.printTraceback()
        reactor.stop()
        os._exit(3)

    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(run()).addCallbacks(done, failed))
    reactor.run()


def _children():
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


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
    p.add_argument("--subs", type=int, default=1)
    p.add_argument("--hwm", type=int, default=0)
    p.add_argument("--relay-hwm", type=int, default=0,
                   help="relay_high_water_mark (-1: leave the config default)")
    p.add_argument("--rate", type=float, default=2000)
    p.add_argument("--latency", action="store_true")
    p.add_argument("--idle", type=float, default=5.0)
    p.add_argument("--id", default="ours")
    p.add_argument("--sign", action="store_true")
    p.add_argument("--validate", action="store_true")
    p.add_argument("--crypto-config")
    p.add_argument("--profile")
    p.add_argument("--archive", help="state directory: archive every forwarded message in SQLite there")
    p.add_argument("--mode", default="sign")
    p.add_argument("--inflight", type=int, default=4)
    args = p.parse_args()
    globals()[args.role](args)


if __name__ == "__main__":
    main()
