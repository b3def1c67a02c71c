"""What two signature headers cost a bare NATS hop: publish -> callback on another connection,
over an embedded nats-server on 127.0.0.1, with and without ``Rampart-Key``/``Rampart-Sig``
(a fixed, valid signature of a 220-byte body), alternating ABBA in one run.

Run: ``.venv/bin/python benches/header_hop.py [--iterations 4000]``
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

import nats
import uvloop
from nats.aio.msg import Msg

from rampart.embedded import EmbeddedNatsServer
from rampart.signing import SigningKey, sign_headers


async def main(iterations: int) -> None:
    server = EmbeddedNatsServer(store_dir=tempfile.mkdtemp(prefix="rampart-hop-"))
    url = await asyncio.to_thread(server.start)
    try:
        a, b = await nats.connect(url), await nats.connect(url)
        loop = asyncio.get_running_loop()
        box: dict[str, asyncio.Future[int]] = {}

        async def on_msg(_: Msg) -> None:
            box["f"].set_result(time.perf_counter_ns())

        await b.subscribe("hop", cb=on_msg)
        await b.flush()
        body = b"y" * 220
        headers = sign_headers(SigningKey.generate(), "hop", body)
        samples: dict[str, list[int]] = {"without headers": [], "with headers": []}
        for i in range(iterations + 200):
            mode = "with headers" if i % 4 in (1, 2) else "without headers"
            box["f"] = loop.create_future()
            start = time.perf_counter_ns()
            await a.publish("hop", body, headers=headers if mode == "with headers" else None)
            arrived = await asyncio.wait_for(box["f"], 5)
            if i >= 200:
                samples[mode].append(arrived - start)
        for mode, values in samples.items():
            values.sort()
            p50, p99 = values[len(values) // 2], values[int(len(values) * 0.99)]
            print(f"{mode:>16}: p50 {p50 / 1e3:.1f} us, p99 {p99 / 1e3:.1f} us ({len(values)})")
        await a.close()
        await b.close()
    finally:
        await asyncio.to_thread(server.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=4000)
    uvloop.run(main(parser.parse_args().iterations))
