#!/usr/bin/env python3
"""Data for the DNS benchmark (bench/dns/run.sh): one catalog, three forms.

  gen.py files DIR [N]          consul.zone (Knot, NSD), queries-a.txt, queries-srv.txt
  gen.py load HTTP_PORT [N]     registers the catalog in a running cairn over HTTP

The catalog: services svc-1 .. svc-N (N = 1000 unless given), each with 3 instances
svc-K-1..3 on nodes node-K-1..3 (3N nodes), addresses 10.I.(K >> 8).(K & 255), port 8080 + I.
A larger N holds the smaller catalog: loading 10,000 into a cairn that holds 1,000 adds
the other 9,000.
The static zone holds the same answers cairn gives (A: 3 records; SRV: 3 SRV records
with the node names as targets and their A records in the additional section), TTL 0
like cairn's default.
"""
import json
import random
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

SERVICES = 1000
INSTANCES = 3


def instances():
    """Every instance of the catalog: (service number, instance, node, address, port)."""
    for k in range(1, SERVICES + 1):
        for i in range(1, INSTANCES + 1):
            yield k, i, f"node-{k}-{i}", f"10.{i}.{k >> 8}.{k & 255}", 8080 + i


def write_files(out):
    with open(f"{out}/consul.zone", "w") as z:
        z.write("$ORIGIN consul.\n$TTL 0\n")
        z.write("@ IN SOA ns.consul. hostmaster.consul. 1 3600 600 86400 0\n")
        z.write("@ IN NS ns.consul.\nns IN A 127.0.0.1\n")
        for k, i, node, addr, port in instances():
            z.write(f"svc-{k}.service IN A {addr}\n")
            # cairn's SRV target is <node>.node.<dc>.consul. with the node's A record
            # in the additional section.
            z.write(f"svc-{k}.service IN SRV 1 1 {port} {node}.node.dc1.consul.\n")
            z.write(f"{node}.node.dc1 IN A {addr}\n")
    rng = random.Random(1)
    for qtype, name in (("A", "queries-a.txt"), ("SRV", "queries-srv.txt")):
        names = [f"svc-{k}.service.consul." for k in range(1, SERVICES + 1)]
        rng.shuffle(names)
        with open(f"{out}/{name}", "w") as q:
            q.writelines(f"{n} {qtype}\n" for n in names)


def load(http_port):
    url = f"http://127.0.0.1:{http_port}/v1/catalog/register"

    def put(inst):
        k, i, node, addr, port = inst
        body = {"Node": node, "Address": addr,
                "Service": {"ID": f"svc-{k}-{i}", "Service": f"svc-{k}", "Port": port}}
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode().strip()
            if resp.status != 200 or text != "true":
                raise RuntimeError(f"register {node}/svc-{k}-{i}: {resp.status} {text}")

    # Each write is a durable commit; parallel clients let cairn batch them.
    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(put, instances()))
    print(f"registered {SERVICES} services x {INSTANCES} instances")


if __name__ == "__main__":
    if len(sys.argv) == 4:
        SERVICES = int(sys.argv.pop())
    if len(sys.argv) == 3 and sys.argv[1] == "files":
        write_files(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "load":
        load(int(sys.argv[2]))
    else:
        sys.exit(__doc__)
