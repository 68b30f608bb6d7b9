#!/usr/bin/env python
"""
fedmsg-twisted benchmark suite: one command, every scenario as separate
processes on loopback, one table.

    python bench/run.py            # full run (3 runs per point; ~15-25 min on 2 cores)
    python bench/run.py --quick    # smoke check, under a minute; CI
    python bench/run.py --only relay,publish --runs 5

Exit status is non-zero if a worker crashes or a zero-loss scenario loses
messages.  Speed is reported, never asserted.  See docs/performance.rst.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
SCEN = os.path.join(BENCH, "scenarios")
sys.path.insert(0, ROOT)
sys.path.insert(0, SCEN)

PY = sys.executable
PEER_PY = None  # set by setup()
WORK = None  # temp dir for configs, keys
PROFILE_DIR = None

SIZES = {"200B": 200, "10KB": 10240}


class WorkerFailed(RuntimeError):
    pass


# -- processes ------------------------------------------------------------------


class Proc:
    """
    A worker: stdin for commands, stdout lines read by a thread.
    """

    def __init__(self, label, argv, cwd=None):
        self.label = label
        self.argv = argv
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        self.p = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env
        )
        self.lines: queue.Queue = queue.Queue()
        self.stderr = b""
        self.result = None
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self):
        for raw in self.p.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith("RESULT "):
                self.result = json.loads(line[7:])
            self.lines.put(line)
        self.lines.put(None)

    def _read_err(self):
        self.stderr = self.p.stderr.read()

    def expect(self, word, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise WorkerFailed(f"{self.label}: no {word} within {timeout}s") from None
            if line is None:
                self.p.wait()
                time.sleep(0.05)
                raise WorkerFailed(
                    f"{self.label}: exited {self.p.returncode} before {word}:\n"
                    + self.stderr.decode("utf-8", "replace")[-3000:]
                )
            if line.startswith(word):
                return line

    def send(self, line):
        try:
            self.p.stdin.write((line + "\n").encode())
            self.p.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def kill(self):
        if self.p.poll() is None:
            try:
                self.p.send_signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.p.kill()
        self.p.wait()

    @property
    def pid(self):
        return self.p.pid


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def addr():
    return f"tcp://127.0.0.1:{free_port()}"


def ours(role, *a):
    return [PY, os.path.join(SCEN, "ours.py"), role, *map(str, a)]


def raw(role, *a):
    return [PY, os.path.join(SCEN, "raw.py"), role, *map(str, a)]


def peer(role, *a):
    return [PEER_PY, os.path.join(SCEN, "peer.py"), role, *map(str, a)]


# -- one measured run --------------------------------------------------------------


class Run:
    """
    Start intermediaries, receivers, senders (in that order), wait for every
    receiver to be warm, then go; collect every RESULT.
    """

    def __init__(self, middles=(), receivers=(), senders=(), timeout=120, peer_cwd=None, on_warm=None, sampler=None):
        self.specs = (list(middles), list(receivers), list(senders))
        self.timeout = timeout
        self.peer_cwd = peer_cwd
        self.on_warm = on_warm
        self.sampler = sampler

    def __call__(self):
        middles, receivers, senders = [], [], []
        procs = []

        try:
            # Start everything at once (imports dominate start-up); zmq
            # connects retry until the binding side is there, and nothing
            # measured is sent before every receiver is warm.
            for specs, into in zip(self.specs, (middles, receivers, senders)):
                for label, argv in specs:
                    p = Proc(label, argv, cwd=self.peer_cwd if argv[0] == PEER_PY else None)
                    procs.append(p)
                    into.append(p)
            for p in procs:
                p.expect("READY", 60)
            for r in receivers:
                r.expect("WARM", 60)
            if self.on_warm:
                self.on_warm(middles, receivers, senders)
            for m in middles:
                m.send("mark")
            time.sleep(0.05)
            stop_sampling = threading.Event()
            samples = []
            if self.sampler:
                pid = self.sampler(middles)

                def sample():
                    from common import rss_kb

                    while not stop_sampling.is_set():
                        try:
                            samples.append(rss_kb(pid))
                        except OSError:
                            return
                        time.sleep(0.05)

                threading.Thread(target=sample, daemon=True).start()
            for s in senders:
                s.send("go")
            for s in senders:
                s.expect("RESULT", self.timeout)
            for r in receivers:
                if getattr(r, "stopped", False):
                    continue
                r.expect("RESULT", self.timeout)
            stop_sampling.set()
            for r in receivers:
                if getattr(r, "stopped", False):
                    r.p.send_signal(signal.SIGCONT)
                    r.expect("RESULT", self.timeout)
            for m in middles + senders:
                m.send("stop")
            for m in middles:
                m.expect("RESULT", 30)
            return {
                "middles": [(p.label, p.result) for p in middles],
                "receivers": [(p.label, p.result) for p in receivers],
                "senders": [(p.label, p.result) for p in senders],
                "rss_samples": samples,
            }
        finally:
            for p in procs:
                p.send("stop")
            deadline = time.monotonic() + 3
            for p in procs:
                try:
                    p.p.wait(max(0.01, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
                p.kill()


# -- metrics -----------------------------------------------------------------------


def recv_rate(res):
    """
    Messages per second out of the pipeline: total counted by receivers over
    first-arrival .. last-arrival (per message in, for fan-out).
    """
    rs = [r for _, r in res["receivers"] if r.get("count")]
    t_first = min(r["t_first"] for r in rs)
    t_last = max(r["t_last"] for r in rs)
    n = messages_in(res)
    return (n - 1) / max(t_last - t_first, 1e-9)


def send_rate(res):
    ss = [s for _, s in res["senders"]]
    n = sum(s["sent"] for s in ss)
    return n / max(max(s["t1"] for s in ss) - min(s["t0"] for s in ss), 1e-9)


def messages_in(res):
    return sum(s["sent"] for _, s in res["senders"]) if res["senders"] else max(
        r["expected"] for _, r in res["receivers"]
    )


def lost(res, skip=()):
    return sum(max(0, r["expected"] - r["count"]) for label, r in res["receivers"] if label not in skip)


def cpu_us(res):
    """
    CPU microseconds per message for each process (sender per message sent,
    intermediary per message in, receiver per message delivered to it).
    """
    out = {}
    n_in = messages_in(res)
    for label, s in res["senders"]:
        out[label] = s["cpu"] * 1e6 / max(1, s["sent"])
    for label, m in res["middles"]:
        out[label] = m["cpu"] * 1e6 / max(1, n_in)
    for label, r in res["receivers"]:
        out[label] = r["cpu"] * 1e6 / max(1, r["count"])
    return out


# -- results table ----------------------------------------------------------------

ROWS = []  # dicts: group, variant, values (list), unit, lost, cpu (list of dicts), note
RATIOS = []  # dicts: group, name, values, target, kind (">=" or "<=")
FAILURES = []


def record(group, variant, values, unit, lost_n=0, cpus=(), note="", zero_loss=True, fmt="{:,.0f}"):
    ROWS.append(dict(group=group, variant=variant, values=values, unit=unit, lost=lost_n, cpu=list(cpus), note=note, fmt=fmt))
    if zero_loss and lost_n:
        FAILURES.append(f"{group} / {variant}: lost {lost_n} messages where zero loss is required")


def ratio(group, name, num, den, target, kind=">="):
    vals = [a / b for a, b in zip(num, den) if a and b]
    if not vals and target is None:
        return
    RATIOS.append(dict(group=group, name=name, values=vals, target=target, kind=kind))


def na(group, variant, why):
    ROWS.append(dict(group=group, variant=variant, values=[], unit="", lost=0, cpu=[], note=f"n/a ({why})", fmt=""))


def med(vals):
    return statistics.median(vals) if vals else None


def fmt_cpu(cpus):
    if not cpus:
        return ""
    labels = list(cpus[0])
    return ", ".join(f"{lab} {med([c[lab] for c in cpus if lab in c]):.0f}" for lab in labels)


def render():
    lines = []
    head = ("Scenario", "Variant", "median", "min", "max", "unit", "lost", "CPU us/msg (median, per process)")
    rows = []
    for r in ROWS:
        if not r["values"]:
            rows.append((r["group"], r["variant"], r["note"], "", "", "", "", ""))
            continue
        f = r["fmt"]
        rows.append(
            (
                r["group"],
                r["variant"],
                f.format(med(r["values"])),
                f.format(min(r["values"])),
                f.format(max(r["values"])),
                r["unit"],
                str(r["lost"]),
                fmt_cpu(r["cpu"]) + (f"  [{r['note']}]" if r["note"] else ""),
            )
        )
    rows2 = []
    for q in RATIOS:
        if not q["values"]:
            rows2.append((q["group"], q["name"], "n/a", "", "", f"{q['kind']} {q['target']}", "", "n/a"))
            continue
        m = med(q["values"])
        if q["target"] is None:
            ok = None
        else:
            ok = m >= q["target"] if q["kind"] == ">=" else m <= q["target"]
        rows2.append(
            (
                q["group"],
                q["name"],
                f"{m:.2f}",
                f"{min(q['values']):.2f}",
                f"{max(q['values']):.2f}",
                f"{q['kind']} {q['target']}" if q["target"] is not None else "(info)",
                "",
                "info" if ok is None else "met" if ok else "MISSED",
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, *rows2)]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    lines += [sep, line(head), sep.replace("-", "=")]
    lines += [line(r) for r in rows] + [sep]
    lines += [line(("Ratio", "(same run as baseline)", "median", "min", "max", "target", "", "verdict")), sep.replace("-", "=")]
    lines += [line(r) for r in rows2] + [sep]
    return "\n".join(lines)


# -- setup -------------------------------------------------------------------------


def setup(args):
    global PEER_PY, WORK, PROFILE_DIR
    WORK = tempfile.mkdtemp(prefix="fedmsg-bench-")
    PROFILE_DIR = os.path.join(BENCH, "profiles")
    os.makedirs(PROFILE_DIR, exist_ok=True)
    from tests.fedmsgpeer import ensure_peer

    print("bench: checking the real fedmsg 1.1.7 venv (tests/fedmsgpeer.py)...", file=sys.stderr)
    PEER_PY = ensure_peer()
    if args.install and any(v is None for v in fast_paths().values()):
        # Measure what an installation with the speed extra runs (README).
        reqs = speed_extra()
        print(f"bench: installing the speed extra ({', '.join(reqs)}) into {sys.prefix}...", file=sys.stderr)
        subprocess.check_call([PY, "-m", "pip", "install", "-q", *reqs])


def speed_extra():
    """
    The requirements of our C{speed} extra, as installed metadata says (the
    constants are its current value, for a checkout used without install).
    """
    import importlib.metadata

    try:
        reqs = importlib.metadata.requires("fedmsg-twisted") or []
    except importlib.metadata.PackageNotFoundError:
        reqs = []
    found = [r.split(";")[0].strip() for r in reqs if "extra == \"speed\"" in r]
    return found or ["orjson>=3.9", "pysimdjson>=6"]


def fast_paths():
    """
    The optional accelerators the workers will import, and their versions
    (None: not installed, so the standard library's paths are measured).
    """
    out = subprocess.run(
        [PY, "-c", "import importlib.metadata as m\n"
                   "for d in ('orjson', 'pysimdjson'):\n"
                   "    try: print(d, m.version(d))\n"
                   "    except m.PackageNotFoundError: print(d, '-')"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    return {name: (None if v == "-" else v) for name, v in zip(out[::2], out[1::2])}


def write_peer_config(name, extra):
    d = os.path.join(WORK, "peer-" + name)
    os.makedirs(os.path.join(d, "fedmsg.d"), exist_ok=True)
    cfg = {
        "topic_prefix": "org.bench",
        "environment": "dev",
        "high_water_mark": 0,
        "post_init_sleep": 0,
        "zmq_enabled": True,
        "ca_cert_location": None,
        "crl_location": None,
        "endpoints": {},
        "sign_messages": False,
        "validate_signatures": False,
    }
    cfg.update(extra)
    with open(os.path.join(d, "fedmsg.d", "bench.py"), "w") as f:
        f.write("config = " + repr(cfg) + "\n")
    return d


def crypto_material():
    """
    A CA and a service certificate (tests/certs.py), configs for us and fedmsg.
    """
    from tests.certs import make_pki

    pki = make_pki(os.path.join(WORK, "pki"), crl=False)
    issued = pki.issue("bench.example.org", name="bench")
    ours_cfg = {
        "ssldir": pki.directory,
        "certname": "bench",
        "certnames": {"bench": "bench"},
        "ca_cert_location": pki.ca_cert_path,
        "crl_location": None,
        "crypto_backend": "x509",
        "crypto_validate_backends": ["x509"],
    }
    path = os.path.join(WORK, "crypto.json")
    with open(path, "w") as f:
        json.dump(ours_cfg, f)
    return pki, issued, path, ours_cfg


# -- scenarios ---------------------------------------------------------------------


INFO_ONLY = ("(no JSON, info)", "+ canonical json.dumps")


def trim(args, variants):
    """
    --quick drops the variants that only inform (no target depends on them).
    """
    if not args.quick:
        return variants
    return {k: v for k, v in variants.items() if not any(m in k for m in INFO_ONLY)}


def rates(per, name, fn):
    return [fn(r) for r in per.get(name, [])]


def relay_scenario(args):
    group = "relay forwarding (unsigned, original bytes)"
    for sname, size in SIZES.items():
        n = args.n(150000 if size < 1000 else 20000)
        variants = {
            "fedmsg-twisted RelayService": lambda i, o: ours("relay", "--inbound", i, "--outbound", o),
            "zmq.proxy (C)": lambda i, o: raw("proxy", "--inbound", i, "--outbound", o),
            "Python pyzmq loop": lambda i, o: raw("pyfwd", "--inbound", i, "--outbound", o),
            "RelayService + SQLite archive": lambda i, o: ours(
                "relay", "--inbound", i, "--outbound", o, "--archive", tempfile.mkdtemp(prefix="bench-archive-")
            ),
        }
        variants = trim(args, variants)
        per = {k: [] for k in variants}
        for run in range(args.runs):
            for name, mk in variants.items():
                i, o = addr(), addr()
                res = Run(
                    middles=[("relay", mk(i, o))],
                    receivers=[("sub", raw("sub", "--connect", o, "--n", n))],
                    senders=[("pub", raw("pub", "--connect", i, "--n", n, "--size", size))],
                )()
                per[name].append(res)
        for name, results in per.items():
            record(group, f"{name}, {sname}", [recv_rate(r) for r in results], "msg/s",
                   sum(lost(r) for r in results), [cpu_us(r) for r in results], note=f"N={n}")
        ours_r = [recv_rate(r) for r in per["fedmsg-twisted RelayService"]]
        ratio(group, f"relay / zmq.proxy, {sname}", ours_r, [recv_rate(r) for r in per["zmq.proxy (C)"]], 0.6)
        ratio(group, f"relay / Python loop, {sname}", ours_r, [recv_rate(r) for r in per["Python pyzmq loop"]], None)
        with_archive = per.get("RelayService + SQLite archive", [])
        if with_archive:
            ratio(group, f"relay with archive / without, {sname}",
                  [recv_rate(r) for r in with_archive], ours_r, None)
            archive_rates = [dict(r["middles"])["relay"].get("archive_rate", 0) for r in with_archive]
            failed = sum(dict(r["middles"])["relay"].get("archive_failed", 0) for r in with_archive)
            record("archive write throughput (SQLite, batched, off the reactor)", f"messages archived, {sname}",
                   archive_rates, "msg/s", failed, note=f"N={n}; lower bound: start of stream to last commit; failed or dropped writes: {failed}")


def publish_scenario(args):
    group = "publish (passive bind) -> raw SUB"
    pcwd = write_peer_config("pub", {})
    for sname, size in SIZES.items():
        n = args.n(60000 if size < 1000 else 6000)
        variants = {
            "fedmsg-twisted PublisherService": lambda b: ours("pub", "--bind", b, "--n", n, "--size", size),
            "raw pyzmq PUB": lambda b: raw("pub", "--bind", b, "--n", n, "--size", size),
            "raw pyzmq PUB + canonical json.dumps": lambda b: raw("pub", "--bind", b, "--n", n, "--size", size, "--encode"),
            "real fedmsg.publish": lambda b: peer("pub", "--bind", b, "--n", n, "--size", size),
        }
        variants = trim(args, variants)
        per = {k: [] for k in variants}
        for run in range(args.runs):
            for name, mk in variants.items():
                b = addr()
                res = Run(
                    receivers=[("sub", raw("sub", "--connect", b, "--n", n))],
                    senders=[("pub", mk(b))],
                    peer_cwd=pcwd,
                )()
                per[name].append(res)
        for name, results in per.items():
            record(group, f"{name}, {sname}", [send_rate(r) for r in results], "msg/s",
                   sum(lost(r) for r in results), [cpu_us(r) for r in results], note=f"N={n}, sender-side rate")
        o = [send_rate(r) for r in per["fedmsg-twisted PublisherService"]]
        ratio(group, f"publish / real fedmsg, {sname}", o, [send_rate(r) for r in per["real fedmsg.publish"]], 3.0)
        ratio(group, f"publish / raw pyzmq PUB (pre-encoded), {sname}", o, [send_rate(r) for r in per["raw pyzmq PUB"]], 0.5)
        ratio(group, f"publish / raw PUB + json.dumps, {sname}", o,
              rates(per, "raw pyzmq PUB + canonical json.dumps", send_rate), None)


def subscribe_scenario(args):
    group = "subscribe to callback (no validation)"
    pcwd = write_peer_config("sub", {})
    for sname, size in SIZES.items():
        n = args.n(100000 if size < 1000 else 10000)
        variants = {
            "fedmsg-twisted SubscriberService": lambda c: ours("sub", "--connect", c, "--n", n),
            "real fedmsg tail_messages": lambda c: peer("sub", "--connect", c, "--n", n),
            "raw pyzmq SUB (no JSON, info)": lambda c: raw("sub", "--connect", c, "--n", n),
        }
        variants = trim(args, variants)
        per = {k: [] for k in variants}
        for run in range(args.runs):
            for name, mk in variants.items():
                b = addr()
                res = Run(
                    receivers=[("sub", mk(b))],
                    senders=[("pub", raw("pub", "--bind", b, "--n", n, "--size", size))],
                    peer_cwd=pcwd,
                )()
                per[name].append(res)
        for name, results in per.items():
            record(group, f"{name}, {sname}", [recv_rate(r) for r in results], "msg/s",
                   sum(lost(r) for r in results), [cpu_us(r) for r in results], note=f"N={n}")
        ratio(group, f"subscribe / real tail_messages, {sname}",
              [recv_rate(r) for r in per["fedmsg-twisted SubscriberService"]],
              [recv_rate(r) for r in per["real fedmsg tail_messages"]], 1.5)


def _crypto_available():
    try:
        import fedmsg_twisted.crypto  # noqa: F401

        from fedmsg_twisted.crypto import Signer, Validator  # noqa: F401
    except ImportError:
        return False
    return True


def signed_publish_scenario(args):
    group = "X.509-signed publish"
    if not _crypto_available():
        na(group, "all variants", "crypto module missing")
        RATIOS.append(dict(group=group, name="signed publish / raw RSA sign", values=[], target=0.8, kind=">="))
        return
    pki, issued, cpath, ocfg = crypto_material()
    pcwd = write_peer_config("signpub", {
        "sign_messages": True, "ssldir": pki.directory, "certnames": {"bench": "bench"},
        "crypto_backend": "x509", "crypto_validate_backends": ["x509"],
    })
    for sname, size in SIZES.items():
        n = args.n(3000 if size < 1000 else 1500)
        nf = 20 if args.quick else args.n(300)  # fedmsg re-reads key and cert for every message: ~30 msg/s
        per = {"fedmsg-twisted PublisherService + Signer": [], "raw RSA-2048 PKCS#1v1.5 SHA-1 sign": [],
               "real fedmsg.publish (sign_messages)": []}
        for run in range(args.runs):
            b = addr()
            per["fedmsg-twisted PublisherService + Signer"].append(Run(
                receivers=[("sub", raw("sub", "--connect", b, "--n", n))],
                senders=[("pub", ours("pub", "--bind", b, "--n", n, "--size", size, "--sign", "--crypto-config", cpath))],
            )())
            per["raw RSA-2048 PKCS#1v1.5 SHA-1 sign"].append(Run(
                senders=[("sign", raw("sign", "--n", n, "--size", size, "--key", issued.key_path))],
            )())
            b = addr()
            per["real fedmsg.publish (sign_messages)"].append(Run(
                receivers=[("sub", raw("sub", "--connect", b, "--n", nf))],
                senders=[("pub", peer("pub", "--bind", b, "--n", nf, "--size", size))],
                peer_cwd=pcwd,
            )())
        for name, results in per.items():
            record(group, f"{name}, {sname}", [send_rate(r) for r in results], "msg/s",
                   sum(lost(r) for r in results), [cpu_us(r) for r in results], note=f"N={messages_in(results[0])}")
        o = [send_rate(r) for r in per["fedmsg-twisted PublisherService + Signer"]]
        ratio(group, f"signed publish / raw RSA sign, {sname}", o,
              [send_rate(r) for r in per["raw RSA-2048 PKCS#1v1.5 SHA-1 sign"]], 0.8)
        ratio(group, f"signed publish / real fedmsg, {sname}", o,
              [send_rate(r) for r in per["real fedmsg.publish (sign_messages)"]], None)


def signed_frames_file(ocfg, size, count, path):
    """
    Pre-sign C{count} distinct envelopes (plus a signed probe) with our Signer:
    every msg_id unique, as subscribers drop duplicates.
    """
    from fedmsg_twisted import config as fconfig
    from fedmsg_twisted.crypto import Signer
    import common

    cfg = fconfig.from_dict(dict(ocfg), strict=False)
    signer = Signer.from_config(cfg, name="bench")
    with open(path, "wb") as f:
        probe_env = common.envelope({"sender": "signed-0"}, 0, common.PROBE_TOPIC)
        probe_env["msg_id"] = "2026-signed-probe"
        probe = signer.sign(probe_env)
        f.write(common.canonical(probe) + b"\n")
        for i in range(count):
            f.write(common.canonical(signer.sign(common.envelope(common.payload(size, i), i))) + b"\n")
    return path


def validated_receive_scenario(args):
    group = "X.509-validated receive"
    if not _crypto_available():
        na(group, "all variants", "crypto module missing")
        RATIOS.append(dict(group=group, name="validated receive / raw RSA verify", values=[], target=0.5, kind=">="))
        return
    pki, issued, cpath, ocfg = crypto_material()
    pcwd = write_peer_config("validate", {
        "validate_signatures": True, "ssldir": pki.directory, "ca_cert_location": pki.ca_cert_path,
        "crl_location": None, "crypto_backend": "x509", "crypto_validate_backends": ["x509"],
    })
    for sname, size in SIZES.items():
        n = args.n(3000 if size < 1000 else 1500)
        ff = signed_frames_file(ocfg, size, n, os.path.join(WORK, f"signed-{sname}.jsonl"))
        per = {"fedmsg-twisted SubscriberService + Validator": [], "raw RSA-2048 verify": [],
               "real fedmsg tail_messages (validate_signatures)": []}
        for run in range(args.runs):
            b = addr()
            per["fedmsg-twisted SubscriberService + Validator"].append(Run(
                receivers=[("sub", ours("sub", "--connect", b, "--n", n, "--validate", "--crypto-config", cpath))],
                senders=[("pub", raw("pub", "--bind", b, "--n", n, "--frames-file", ff))],
            )())
            per["raw RSA-2048 verify"].append(Run(
                receivers=[],
                senders=[("verify", raw("verify", "--n", n, "--size", size, "--key", issued.key_path))],
            )())
            b = addr()
            per["real fedmsg tail_messages (validate_signatures)"].append(Run(
                receivers=[("sub", peer("sub", "--connect", b, "--n", n))],
                senders=[("pub", raw("pub", "--bind", b, "--n", n, "--frames-file", ff))],
                peer_cwd=pcwd,
            )())
        rate = {
            "fedmsg-twisted SubscriberService + Validator": recv_rate,
            "raw RSA-2048 verify": send_rate,
            "real fedmsg tail_messages (validate_signatures)": recv_rate,
        }
        for name, results in per.items():
            rej = sum(rr.get("rejected", 0) for r in results for _, rr in r["receivers"])
            record(group, f"{name}, {sname}", [rate[name](r) for r in results], "msg/s",
                   sum(lost(r) for r in results), [cpu_us(r) for r in results],
                   note=f"N={n}" + (f", {rej} rejected" if rej else ""))
        o = [recv_rate(r) for r in per["fedmsg-twisted SubscriberService + Validator"]]
        ratio(group, f"validated receive / raw RSA verify, {sname}", o,
              [send_rate(r) for r in per["raw RSA-2048 verify"]], 0.5)
        ratio(group, f"validated receive / real fedmsg, {sname}", o,
              [recv_rate(r) for r in per["real fedmsg tail_messages (validate_signatures)"]], None)


def gpg_scenario(args):
    group = "GnuPG sign / verify"
    if not _crypto_available():
        na(group, "all variants", "crypto module missing")
        return
    if not shutil.which("gpg"):
        na(group, "all variants", "gpg not installed")
        return
    home = os.path.join(WORK, "gnupg")
    os.makedirs(home, mode=0o700, exist_ok=True)
    subprocess.run(["gpg", "--homedir", home, "--batch", "--passphrase", "", "--quick-gen-key",
                    "bench <bench@example.org>", "rsa2048", "sign", "never"], check=True, capture_output=True)
    out = subprocess.run(["gpg", "--homedir", home, "--batch", "--with-colons", "--list-secret-keys"],
                         check=True, capture_output=True, text=True).stdout
    fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
    cpath = os.path.join(WORK, "gpg.json")
    with open(cpath, "w") as f:
        json.dump({"crypto_backend": "gpg", "crypto_validate_backends": ["gpg"], "gpg_home": home,
                   "gpg_signing_key": fpr}, f)
    n = 30 if args.quick else args.n(200)
    for mode in ("sign", "verify"):
        o, b = [], []
        for run in range(args.runs):
            o.append(Run(senders=[("ours", ours("gpg", "--mode", mode, "--n", n, "--crypto-config", cpath))])())
            b.append(Run(senders=[("gpg", raw("gpgproc", "--mode", mode, "--n", n, "--home", home, "--key", fpr))])())
        record(group, f"fedmsg-twisted {mode} (threads, 4 in flight)", [send_rate(r) for r in o], "msg/s", 0,
               [cpu_us(r) for r in o], note=f"N={n}, incl. gpg children CPU")
        record(group, f"one gpg process per message, serial (fedmsg's way) {mode}", [send_rate(r) for r in b],
               "msg/s", 0, [cpu_us(r) for r in b], note=f"N={n}, incl. gpg children CPU")
        ratio(group, f"gpg {mode} / process-per-message", [send_rate(r) for r in o],
              [send_rate(r) for r in b], None)


def latency_scenario(args):
    group = "latency pub -> relay -> sub at 2,000 msg/s"
    n = args.n(20000)
    per = {"fedmsg-twisted (Publisher -> Relay -> Subscriber)": [], "raw pyzmq through Python forwarder": []}
    for run in range(args.runs):
        i, o = addr(), addr()
        per["fedmsg-twisted (Publisher -> Relay -> Subscriber)"].append(Run(
            middles=[("relay", ours("relay", "--inbound", i, "--outbound", o))],
            receivers=[("sub", ours("sub", "--connect", o, "--n", n, "--latency"))],
            senders=[("pub", ours("pub", "--connect", i, "--n", n, "--latency", "--rate", 2000))],
        )())
        i, o = addr(), addr()
        per["raw pyzmq through Python forwarder"].append(Run(
            middles=[("fwd", raw("pyfwd", "--inbound", i, "--outbound", o))],
            receivers=[("sub", raw("sub", "--connect", o, "--n", n, "--latency"))],
            senders=[("pub", raw("pub", "--connect", i, "--n", n, "--latency", "--rate", 2000))],
        )())

    def pct(res, q):
        lat = sorted(x for _, r in res["receivers"] for x in r["latency"])
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000

    p99 = {}
    for name, results in per.items():
        for q, label in ((0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")):
            vals = [pct(r, q) for r in results]
            if label == "p99":
                p99[name] = vals
            record(group, f"{name} {label}", vals, "ms", sum(lost(r) for r in results),
                   [cpu_us(r) for r in results] if label == "p50" else [],
                   note=f"N={n}, paced 2,000/s (sender tops up every 0.5 ms)" if label == "p50" else "",
                   fmt="{:.3f}")
    ratio(group, "relay p99 / raw p99", p99["fedmsg-twisted (Publisher -> Relay -> Subscriber)"],
          p99["raw pyzmq through Python forwarder"], 2.0, "<=")


def fanout_scenario(args):
    group = "fan-out: subscribers on one relay (200B)"
    points = [1, 10] if args.quick else [1, 10, 100]
    for subs in points:
        n = args.n(20000 if subs < 100 else 5000)
        nproc = min(subs, 2)
        results = []
        for run in range(args.runs):
            i, o = addr(), addr()
            recvs = [(f"subs{k}", raw("sub", "--connect", o, "--n", n, "--sockets", subs // nproc))
                     for k in range(nproc)]
            results.append(Run(
                middles=[("relay", ours("relay", "--inbound", i, "--outbound", o))],
                receivers=recvs,
                senders=[("pub", raw("pub", "--connect", i, "--n", n, "--size", 200))],
            )())
        record(group, f"{subs} subscriber(s)", [recv_rate(r) for r in results], "msg/s in",
               sum(lost(r) for r in results), [cpu_us(r) for r in results],
               note=f"N={n}; x{subs} deliveries; raw SUB sockets in {nproc} process(es)")


def fanin_scenario(args):
    group = "fan-in: publishers into one relay (200B)"
    points = [1, 10] if args.quick else [1, 10, 50]
    for pubs in points:
        total = args.n(40000)
        nproc = min(pubs, 2)
        per_sock = max(1, total // pubs)
        results = []
        for run in range(args.runs):
            i, o = addr(), addr()
            senders = [(f"pubs{k}", raw("pub", "--connect", i, "--n", per_sock, "--size", 200,
                                         "--sockets", pubs // nproc, "--id", f"p{k}")) for k in range(nproc)]
            results.append(Run(
                middles=[("relay", ours("relay", "--inbound", i, "--outbound", o))],
                receivers=[("sub", raw("sub", "--connect", o, "--n", per_sock * pubs, "--senders", pubs))],
                senders=senders,
            )())
        record(group, f"{pubs} publisher(s)", [recv_rate(r) for r in results], "msg/s",
               sum(lost(r) for r in results), [cpu_us(r) for r in results],
               note=f"N={per_sock * pubs}; raw PUB sockets in {nproc} process(es)")


#: Below the relay's forwarding rate, so its inbound queue stays empty and
#: the RSS measured is what the stopped subscriber costs.
MEMORY_PACE = 40000


def memory_scenario(args):
    group = "memory: relay RSS, one subscriber SIGSTOPped"
    n = args.n(500000)
    for hwm in (0, -1):
        peaks, drops, results = [], [], []
        for run in range(args.runs):
            i, o = addr(), addr()

            def stop_one(middles, receivers, senders):
                receivers[1].p.send_signal(signal.SIGSTOP)
                receivers[1].stopped = True

            res = Run(
                middles=[("relay", ours("relay", "--inbound", i, "--outbound", o, "--relay-hwm", hwm))],
                receivers=[("sub", raw("sub", "--connect", o, "--n", n)),
                           ("stopped", raw("sub", "--connect", o, "--n", n, "--idle", 3))],
                senders=[("pub", raw("pub", "--connect", i, "--n", n, "--size", 200, "--pace", MEMORY_PACE))],
                on_warm=stop_one,
                sampler=lambda middles: middles[0].pid,
                timeout=600,
            )()
            peaks.append(max(res["rss_samples"] or [0]) / 1024)
            stopped = dict(res["receivers"])["stopped"]
            drops.append(stopped["expected"] - stopped["count"])
            results.append(res)
        label = "0 (unlimited)" if hwm == 0 else "default (10000)"
        record(group, f"relay_high_water_mark {label}: peak RSS", peaks, "MB",
               sum(lost(r, skip=("stopped",)) for r in results), [cpu_us(r) for r in results],
               note=f"N={n} paced {MEMORY_PACE:,}/s; stopped subscriber lost (median) {med(drops):,.0f}",
               fmt="{:.1f}")
        # The target is for a relay that bounds its queues and drops (counted
        # at the subscribers, whose gap healing fetches the drops back): the
        # default.  hwm 0 asks zmq to queue everything for the stopped
        # subscriber, so its RSS grows with the backlog by design: shown, not
        # judged.
        RATIOS.append(dict(group=group, name=f"relay peak RSS MB, hwm {label}", values=peaks,
                           target=150 if hwm != 0 else None, kind="<="))


def profile_hot_paths(args):
    """
    cProfile'd relay and subscriber runs (200B and 10KB) into bench/profiles/,
    separate from the measured runs (the profiler slows the code ~2x).
    """
    for sname, size in SIZES.items():
        n = args.n(40000 if size < 1000 else 10000)
        i, o = addr(), addr()
        Run(
            middles=[("relay", ours("relay", "--inbound", i, "--outbound", o, "--profile",
                                    os.path.join(PROFILE_DIR, f"relay-{sname}.prof")))],
            receivers=[("sub", raw("sub", "--connect", o, "--n", n))],
            senders=[("pub", raw("pub", "--connect", i, "--n", n, "--size", size))],
        )()
        b = addr()
        Run(
            receivers=[("sub", ours("sub", "--connect", b, "--n", n, "--profile",
                                    os.path.join(PROFILE_DIR, f"subscriber-{sname}.prof")))],
            senders=[("pub", raw("pub", "--bind", b, "--n", n, "--size", size))],
        )()
        b = addr()
        Run(
            receivers=[("sub", raw("sub", "--connect", b, "--n", n))],
            senders=[("pub", ours("pub", "--bind", b, "--n", n, "--size", size, "--profile",
                                  os.path.join(PROFILE_DIR, f"publisher-{sname}.prof")))],
        )()
    import pstats

    for name in sorted(os.listdir(PROFILE_DIR)):
        if name.endswith(".prof"):
            path = os.path.join(PROFILE_DIR, name)
            with open(path[:-5] + ".txt", "w") as f:
                st = pstats.Stats(path, stream=f)
                st.sort_stats("tottime").print_stats(25)
                st.sort_stats("cumulative").print_stats(25)


def selftest_loss(args):
    """
    Not a benchmark: a receiver that expects more than is sent, so the
    driver's loss check (and its exit status) can be tested.
    """
    b = addr()
    res = Run(
        receivers=[("sub", raw("sub", "--connect", b, "--n", 110, "--idle", 1))],
        senders=[("pub", raw("pub", "--bind", b, "--n", 100))],
    )()
    record("selftest", "expects 110, gets 100", [send_rate(res)], "msg/s", lost(res), [cpu_us(res)])


def selftest_crash(args):
    """
    Not a benchmark: a worker that dies, which must fail the run.
    """
    Run(senders=[("crash", raw("no-such-role"))])()


HIDDEN = {"selftest-loss": selftest_loss, "selftest-crash": selftest_crash}

SCENARIOS = {
    "relay": relay_scenario,
    "publish": publish_scenario,
    "subscribe": subscribe_scenario,
    "signed-publish": signed_publish_scenario,
    "validated-receive": validated_receive_scenario,
    "gpg": gpg_scenario,
    "latency": latency_scenario,
    "fanout": fanout_scenario,
    "fanin": fanin_scenario,
    "memory": memory_scenario,
}


@functools.lru_cache(maxsize=None)
def machine():
    """
    What the numbers were measured on (after setup() installed what it may).
    """
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import zmq

    speed = ", ".join(f"{k} {v or 'NOT INSTALLED (stdlib paths)'}" for k, v in fast_paths().items())
    return (f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, {speed}")


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def update_docs(report):
    path = os.path.join(ROOT, "docs", "performance.rst")
    with open(path) as f:
        text = f.read()
    begin, end = ".. BEGIN TABLE\n", ".. END TABLE\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    block = ".. code-block:: text\n\n" + "".join("   " + line + "\n" for line in report.splitlines())
    with open(path, "w") as f:
        f.write(head + begin + "\n" + block + "\n" + end + tail)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke check: tiny N, one run, fewer points")
    p.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    p.add_argument("--runs", type=int, help="runs per point (default 3; 1 with --quick)")
    p.add_argument("--scale", type=float, help="multiply message counts (default 1; 0.01 with --quick)")
    p.add_argument("--profile", action="store_true", help="also cProfile relay and subscriber into bench/profiles/")
    p.add_argument("--json", help="write raw numbers to this file")
    p.add_argument("--no-install", dest="install", action="store_false",
                   help="do not install the speed extra (orjson, pysimdjson) when missing: measure what is there")
    p.add_argument("--update-docs", action="store_true",
                   help="write the table into docs/performance.rst (between its TABLE markers)")
    args = p.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    scale = args.scale or (0.01 if args.quick else 1.0)
    args.n = lambda full: max(100, int(full * scale))
    names = args.only.split(",") if args.only else list(SCENARIOS)
    for name in names:
        if name not in SCENARIOS and name not in HIDDEN:
            p.error(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    setup(args)
    started = time.monotonic()
    load_before = loadavg()
    print(f"bench: {machine()}; load average {load_before}", file=sys.stderr)
    for name in names:
        t = time.monotonic()
        print(f"bench: {name}...", file=sys.stderr, flush=True)
        try:
            (SCENARIOS.get(name) or HIDDEN[name])(args)
        except WorkerFailed as e:
            FAILURES.append(f"{name}: {e}")
            print(f"bench: {name} FAILED: {e}", file=sys.stderr)
        print(f"bench: {name} done in {time.monotonic() - t:.1f}s", file=sys.stderr, flush=True)
    if args.profile:
        print("bench: profiling relay and subscriber...", file=sys.stderr, flush=True)
        try:
            profile_hot_paths(args)
        except WorkerFailed as e:
            FAILURES.append(f"profile: {e}")
    report = "\n".join([
        f"fedmsg-twisted benchmark ({'quick' if args.quick else 'full'}, {args.runs} run(s) per point, "
        f"{time.monotonic() - started:.0f}s, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        f"Machine: {machine()}",
        f"Load average (1/5/15 min) before: {load_before}, after: {loadavg()}",
        render(),
    ])
    print()
    print(report)
    if args.update_docs:
        update_docs(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": ROWS, "ratios": RATIOS, "machine": machine()}, f, indent=1, default=str)
    shutil.rmtree(WORK, ignore_errors=True)
    if FAILURES:
        print("\nFAILURES:")
        for f in FAILURES:
            print("  - " + f)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
