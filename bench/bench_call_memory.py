"""Benchmark: a node's memory per answered call (RSS and Python allocations), against a baseline.

Run:  .venv/bin/python bench/bench_call_memory.py [--levels 200,1000] [--rate 100]
          [--baseline-ref main | --baseline-tree PATH | --no-baseline] [--top 15] [--no-trace]

A node (`Server`, the sandbox connector in-process, uvloop, as `spg-media serve` runs it) is
started in a child process from each tree: this one and the baseline (`--baseline-ref`: a
temporary `git worktree` of that ref, removed at the end; or `--baseline-tree`). This process
plays the callers over loopback: one UDP socket for SIP, an INVITE per call (PCMA +
telephone-event offered, a `sbx-4990-EUR-...` sandbox transaction), ACK of the 200, every
in-dialog request answered 200; their media goes to one socket that is never read (the kernel
drops what the node sends: the callers send nothing, "idle but answered"). The calls keep
listening for their card number: `ivr.first_digit_timeout_s` is short and
`ivr.max_attempts` high, so each call goes round the card prompt and its re-prompts, a prompt
playing most of the time, as a call waiting for its caller does.

For each level (calls in progress at once, ramped at `--rate` a second), after `--settle-s`
the node is measured `--samples` times `--sample-gap-s` apart (after a full garbage
collection) and the highest is kept: the node's RSS (from /proc, `VmRSS`) and, in a second
node run with `tracemalloc` on from the idle point (so RSS and trace overheads do not mix),
the Python bytes allocated since idle and the biggest holders by source line. Per call: (at
the level - idle) / calls. After the last level every call is hung up (BYE) and the node
measured again: what stays is a leak or a cache.

The machine is shared with other engineers' jobs: RSS moves with the allocator's arenas and
the moment prompts are rendered, so compare the two trees of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_tree import baseline_tree, short_commit

HERE = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


# ---- the node (child process) -------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def node(args: argparse.Namespace) -> None:
    """Runs in the child: a node of `args.tree`; answers commands on stdin with JSON lines."""
    sys.path.insert(0, str(Path(args.tree).resolve()))
    import dataclasses
    import gc
    import logging
    import tracemalloc

    import uvloop

    from spg_media.config import load_config
    from spg_media.server import Server

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    workdir = Path(args.workdir)
    base = load_config(None, env={})
    config = dataclasses.replace(
        base,
        sip=dataclasses.replace(base.sip, listen=(f"udp:{HOST}:{args.sip_port}",)),
        rtp=dataclasses.replace(base.rtp, address=HOST),
        admin=dataclasses.replace(base.admin, listen=""),
        assist=dataclasses.replace(base.assist, listen=""),
        # a shared machine: measure memory, not whether the node would refuse
        admission=dataclasses.replace(
            base.admission,
            max_tick_lag_ms=0,
            max_loop_lag_ms=0,
            **({"max_tick_busy": 0} if hasattr(base.admission, "max_tick_busy") else {}),
        ),
        ivr=dataclasses.replace(base.ivr, first_digit_timeout_s=2.0, max_attempts=10_000),
        log=dataclasses.replace(
            base.log,
            cdr_path=str(workdir / "cdr.jsonl"),
            journal_path=str(workdir / "journal.jsonl"),
        ),
        tts=dataclasses.replace(base.tts, cache_dir=str(HERE / ".spg-cache" / "prompts")),
    )

    async def main() -> None:
        server = Server(config)
        await server.start()
        assert server.services is not None
        services = server.services
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        idle: Any = None
        print(json.dumps({"ready": True}), flush=True)
        while True:
            line = (await reader.readline()).decode().strip()
            if not line or line == "quit":
                break
            gc.collect()
            answer: dict[str, Any] = {"calls": len(services.calls), "rss": rss_bytes()}
            if args.trace:
                if line == "idle":
                    tracemalloc.start(args.frames)
                    idle = tracemalloc.take_snapshot()
                    answer["traced"] = 0
                else:
                    snapshot = tracemalloc.take_snapshot()
                    answer["traced"] = tracemalloc.get_traced_memory()[0]
                    answer["top"] = [
                        (str(stat.traceback), stat.size_diff, stat.count_diff)
                        for stat in snapshot.compare_to(idle, "lineno")[: args.top]
                    ]
                    answer["top_files"] = [
                        (str(stat.traceback), stat.size_diff, stat.count_diff)
                        for stat in snapshot.compare_to(idle, "filename")[: args.top]
                    ]
            print(json.dumps(answer), flush=True)
        await server.stop(grace_s=2)

    uvloop.run(main())


# ---- the callers (this process) -----------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


_STATUS = re.compile(rb"^SIP/2\.0 (\d{3})")
_HEADER = re.compile(rb"^([A-Za-z-]+)[ \t]*:[ \t]*(.*?)\r?$", re.M)


def _headers(data: bytes) -> dict[str, bytes]:
    head = data.split(b"\r\n\r\n", 1)[0]
    found: dict[str, bytes] = {}
    for name, value in _HEADER.findall(head):
        found.setdefault(name.decode().lower(), value)
    return found


class Callers(asyncio.DatagramProtocol):
    """Many calls from one SIP socket: INVITE, ACK of the 200, 200 to whatever the node asks."""

    def __init__(self, node_port: int, media_port: int) -> None:
        self.node = (HOST, node_port)
        self.media_port = media_port
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.answered: dict[str, dict[str, bytes]] = {}  # Call-ID: the 200's headers
        self.refused: dict[str, int] = {}
        self.ended: set[str] = set()
        self.tag = f"{random.getrandbits(32):08x}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]

    def send(self, text: str) -> None:
        assert self.transport is not None
        self.transport.sendto(text.encode(), self.node)

    def via(self) -> str:
        return f"SIP/2.0/UDP {HOST}:{self.port};branch=z9hG4bK{random.getrandbits(48):012x};rport"

    def invite(self, index: int) -> str:
        call_id = f"mem-{index}-{self.tag}@{HOST}"
        sdp = (
            f"v=0\r\no=caller {index + 1} 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
            f"m=audio {self.media_port} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
        )
        uri = f"sip:pay@{HOST}:{self.node[1]}"
        self.send(
            f"INVITE {uri} SIP/2.0\r\nVia: {self.via()}\r\nMax-Forwards: 70\r\n"
            f"From: <sip:caller@{HOST}>;tag={self.tag}{index}\r\nTo: <{uri}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:caller@{HOST}:{self.port}>\r\n"
            f"X-SPG-Transaction: sbx-4990-EUR-mem{index}\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
        )
        return call_id

    def _ack(self, call_id: str, headers: dict[str, bytes], cseq: int, method: str) -> None:
        contact = re.search(rb"<([^>]+)>", headers.get("contact", b""))
        uri = contact.group(1).decode() if contact else f"sip:pay@{HOST}:{self.node[1]}"
        self.send(
            f"{method} {uri} SIP/2.0\r\nVia: {self.via()}\r\nMax-Forwards: 70\r\n"
            f"From: {headers['from'].decode()}\r\nTo: {headers['to'].decode()}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )

    def bye(self, call_id: str) -> None:
        headers = self.answered.get(call_id)
        if headers is not None and call_id not in self.ended:
            self._ack(call_id, headers, 2, "BYE")

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        headers = _headers(data)
        call_id = headers.get("call-id", b"").decode()
        status = _STATUS.match(data)
        if status is None:  # a request of the node's: BYE, REFER, UPDATE, OPTIONS, INFO...
            first = data.split(b" ", 1)[0]
            if first == b"ACK":
                return
            if first == b"BYE":
                self.ended.add(call_id)
            reply = "".join(
                f"{name}: {headers[name.lower()].decode()}\r\n"
                for name in ("Via", "From", "To", "Call-ID", "CSeq")
                if name.lower() in headers
            )
            self.send(f"SIP/2.0 200 OK\r\n{reply}Content-Length: 0\r\n\r\n")
            return
        code = int(status.group(1))
        cseq = headers.get("cseq", b"")
        if code < 200:
            return
        if cseq.endswith(b"INVITE"):
            if 200 <= code < 300:
                self._ack(call_id, headers, 1, "ACK")
                self.answered.setdefault(call_id, headers)
            else:
                self._ack(call_id, headers, 1, "ACK")
                self.refused[call_id] = code
        elif cseq.endswith(b"BYE"):
            self.ended.add(call_id)


class NodeRun:
    """One node child of a tree, measured on command."""

    def __init__(self, tree: Path, args: argparse.Namespace, trace: bool) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="spg-mem-"))
        self.sip_port = free_udp_port()
        command = [
            sys.executable, __file__, "--node", "--tree", str(tree), "--sip-port",
            str(self.sip_port), "--workdir", str(self.workdir), "--top", str(args.top),
            "--frames", str(args.frames),
        ]  # fmt: skip
        if trace:
            command.append("--trace")
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(self.workdir)
        )
        assert json.loads(self._line()).get("ready")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line:
            raise RuntimeError(f"node exited ({self.proc.wait()})")
        return line

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\n".encode())
        self.proc.stdin.flush()
        return dict(json.loads(self._line()))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("quit")
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


async def measure_tree(tree: Path, args: argparse.Namespace, trace: bool) -> dict[str, Any]:
    """Idle, each level, and after every call hung up: the node's figures at each."""
    run = NodeRun(tree, args, trace)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the callers' media: never read
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sink.bind((HOST, 0))
    loop = asyncio.get_running_loop()
    transport, callers = await loop.create_datagram_endpoint(
        lambda: Callers(run.sip_port, sink.getsockname()[1]), local_addr=(HOST, 0)
    )
    result: dict[str, Any] = {"levels": []}
    try:
        await asyncio.sleep(args.settle_s)
        result["idle"] = run.ask("idle")
        placed = 0
        for level in args.levels:
            started, first = time.monotonic(), placed
            while placed < level:
                callers.invite(placed)
                placed += 1
                due = started + (placed - first) / args.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            await asyncio.sleep(args.settle_s)
            samples = []
            for _ in range(args.samples):
                samples.append(run.ask("measure"))
                await asyncio.sleep(args.sample_gap_s)
            best = max(samples, key=lambda s: s["rss"])
            traced = max(samples, key=lambda s: s.get("traced", 0))
            result["levels"].append(
                {
                    "level": level,
                    "answered": len(callers.answered),
                    "refused": len(callers.refused),
                    "calls": best["calls"],
                    "rss": best["rss"],
                    "traced": traced.get("traced"),
                    "top": traced.get("top"),
                    "top_files": traced.get("top_files"),
                }
            )
        for call_id in list(callers.answered):
            callers.bye(call_id)
            await asyncio.sleep(0.5 / args.rate)
        await asyncio.sleep(args.settle_s)
        result["after"] = run.ask("measure")
    finally:
        transport.close()
        sink.close()
        run.close()
    return result


def report(name: str, rss: dict[str, Any], traced: dict[str, Any] | None, top: int) -> None:
    idle_rss = rss["idle"]["rss"]
    print(f"{name}: idle RSS {idle_rss / 2**20:.1f} MiB")
    print("| calls in progress | answered / refused | RSS | RSS per call | Python bytes per call |")
    print("|---|---|---|---|---|")
    for index, level in enumerate(rss["levels"]):
        calls = max(level["calls"], 1)
        per_call = (level["rss"] - idle_rss) / calls / 1024
        py = "-"
        if traced is not None:
            t = traced["levels"][index]
            py = f"{t['traced'] / max(t['calls'], 1) / 1024:.1f} KiB"
        print(
            f"| {level['calls']} | {level['answered']} / {level['refused']} | "
            f"{level['rss'] / 2**20:.1f} MiB | {per_call:.1f} KiB | {py} |"
        )
    after = rss["after"]
    print(
        f"after every call hung up: {after['calls']} calls, RSS "
        f"{after['rss'] / 2**20:.1f} MiB (idle + {(after['rss'] - idle_rss) / 2**20:.1f} MiB)"
        + (
            f", Python bytes still allocated since idle {traced['after']['traced'] / 1024:.0f} KiB"
            if traced is not None
            else ""
        )
    )
    if traced is None:
        return
    last = traced["levels"][-1]
    calls = max(last["calls"], 1)
    print(f"biggest holders at {last['calls']} calls (bytes per call, allocations per call):")
    for where, size, count in last["top"][:top]:
        print(f"  {size / calls:9.0f} B  {count / calls:7.1f}  {where}")
    print("by file:")
    for where, size, count in last["top_files"][:top]:
        print(f"  {size / calls:9.0f} B  {count / calls:7.1f}  {where}")
    print("still allocated since idle after every call hung up (bytes, allocations):")
    for where, size, count in (traced["after"].get("top") or [])[: max(top // 2, 5)]:
        print(f"  {size:9.0f} B  {count:7.0f}  {where}")


def parent(args: argparse.Namespace) -> None:
    with contextlib.ExitStack() as stack:
        trees: list[tuple[str, Path]] = []
        if not args.no_baseline:
            baseline = stack.enter_context(
                baseline_tree(HERE, args.baseline_ref, args.baseline_tree)
            )
            commit = short_commit(baseline)
            trees.append((f"baseline {args.baseline_tree or args.baseline_ref} {commit}", baseline))
        trees.append(("this tree", HERE))
        results: dict[str, Any] = {}
        for name, tree in trees:
            rss = asyncio.run(measure_tree(tree, args, trace=False))
            traced = None if args.no_trace else asyncio.run(measure_tree(tree, args, trace=True))
            results[name] = {"rss": rss, "traced": traced}
            report(name, rss, traced, args.top)
            print()
        if len(trees) == 2:
            base_name = trees[0][0]
            b, o = results[base_name]["rss"], results["this tree"]["rss"]
            for bl, ol in zip(b["levels"], o["levels"], strict=True):
                b_per = (bl["rss"] - b["idle"]["rss"]) / max(bl["calls"], 1)
                o_per = (ol["rss"] - o["idle"]["rss"]) / max(ol["calls"], 1)
                print(
                    f"RSS per call at {ol['level']}: {o_per / 1024:.1f} KiB against "
                    f"{b_per / 1024:.1f} KiB ({b_per / max(o_per, 1):.2f}x smaller)"
                )
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="200,1000", help="calls in progress, ascending")
    parser.add_argument("--rate", type=float, default=100.0, help="new calls a second")
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--sample-gap-s", type=float, default=1.5)
    parser.add_argument("--baseline-ref", default="main")
    parser.add_argument("--baseline-tree")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-trace", action="store_true", help="RSS only (no tracemalloc run)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--frames", type=int, default=1, help="tracemalloc traceback depth")
    parser.add_argument("--json", help="write every figure to this file")
    # the node child
    parser.add_argument("--node", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--sip-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.node:
        node(args)
        return
    args.levels = sorted(int(n) for n in args.levels.split(","))
    parent(args)


if __name__ == "__main__":
    main()
