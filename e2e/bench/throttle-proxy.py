#!/usr/bin/env python3
"""A TCP proxy that caps what each connection delivers to RATE bytes per second (upstream to client),
like the per-connection throughput of registries backed by object stores (ECR, GAR, ACR, Harbor on
S3). Usage: throttle-proxy.py UPSTREAM_HOST:PORT LISTEN_PORT RATE_BYTES_PER_SECOND"""
import asyncio, sys, time

upstream, port, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
up_host, up_port = upstream.rsplit(":", 1)
CHUNK = 64 << 10


async def pipe(reader, writer, limited):
    started, sent = time.monotonic(), 0
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
            if limited:
                sent += len(data)
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def serve(client_reader, client_writer):
    try:
        server_reader, server_writer = await asyncio.open_connection(up_host, int(up_port))
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, server_writer, False), pipe(server_reader, client_writer, True))


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()

asyncio.run(main())
