#!/usr/bin/env python3
"""Stand-in SMTP edges for the GeoDNS benchmark: greet every connection with 220 and close.
Usage: edges.py PORT ADDR... (runs until killed)."""
import asyncio
import sys


async def greet(reader, writer):
    try:
        writer.write(b"220 bench edge ESMTP\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.read(64), 1.0)
    except Exception:
        pass
    finally:
        writer.close()


async def main():
    port = int(sys.argv[1])
    servers = [await asyncio.start_server(greet, a, port) for a in sys.argv[2:]]
    await asyncio.gather(*(s.serve_forever() for s in servers))


asyncio.run(main())
