#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus from real messages: the queries, names,
configs and records the tests use. Run from anywhere: python3 fuzz/seeds.py.
(snapshot_restore's seed is a real `GET /v1/snapshot` archive; see fuzz/README.md.)"""
import hashlib, json, os, struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "TXT": 16, "AAAA": 28, "SRV": 33, "OPT": 41,
         "AXFR": 252, "ANY": 255}

def name(n):
    out = b""
    for label in n.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"

def query(qname, qtype, qid=0x1234, edns=None, flags=0x0100, qdcount=1, extra=b""):
    head = struct.pack(">HHHHHH", qid, flags, qdcount, 0, 0, 1 if edns else 0)
    body = (name(qname) + struct.pack(">HH", TYPES[qtype], 1)) * qdcount
    if edns:
        payload, version = edns
        body += b"\0" + struct.pack(">HHBBHH", 41, payload, 0, version, 0, 0)
    return head + body + extra

def write(target, data):
    path = os.path.join(ROOT, target, hashlib.sha1(data).hexdigest()[:16])
    with open(path, "wb") as f:
        f.write(data)

NAMES = ["web.service.consul", "primary.web.service.consul", "v1.web.service.consul",
         "_web._tcp.service.consul", "_web._primary.service.consul", "web.service.dc1.consul",
         "big.service.consul", "db.service.consul", "master.db.service.consul", "external.service.consul",
         "web-1.node.consul", "web-1.node.dc1.consul", "13.0.0.10.in-addr.arpa", "consul", "web.query.consul",
         "web.service.cairn", "web-1.node.cairn", "WeB.SeRvIcE.CoNsUl", "unknown.service.consul",
         "web.service.dc2.consul", "db-1.node.consul", "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa",
         "gateway.example.internal", "www.example.internal", "info.example.internal", "example.internal",
         "missing.example.internal", "cairn.example.org", "addr.0a00000b.addr.dc1.consul"]
for n in NAMES:
    for t in ["A", "AAAA", "SRV", "ANY", "TXT", "SOA", "NS", "PTR"]:
        write("dns_packet", query(n, t))
    write("dns_packet", query(n, "SRV", edns=(4096, 0)))
    write("dns_packet", query(n, "A", edns=(1232, 0)))
    for t, code in [("A", 0), ("SRV", 2), ("ANY", 3), ("AAAA", 1)]:
        write("dns_name", bytes([code, 0x11]) + n.encode())
        write("dns_name", bytes([code, 0x00]) + n.encode())
write("dns_packet", query("big.service.consul", "SRV", edns=(512, 0)))
write("dns_packet", query("web.service.consul", "A", edns=(4096, 1)))          # BADVERS
write("dns_packet", query("web.service.consul", "A", qdcount=2))                # FORMERR
write("dns_packet", query("web.service.consul", "A", flags=0x2800))             # UPDATE opcode
write("dns_packet", query("web.service.consul", "A", flags=0x8180))             # a response: dropped
write("dns_packet", query("example.internal", "AXFR"))
write("dns_packet", query("web.service.consul", "A")[:20])                      # truncated
write("dns_packet", b"\x12\x34\x01\x00\x00\x01")                                # shorter than a header
write("dns_packet", query("web.service.consul", "A") + b"\xff\xff")             # trailing bytes

CONFIGS = [
    {"datacenter": "dc1", "server": True, "bootstrap_expect": 1, "client_addr": "127.0.0.1"},
    {"ports": {"http": 8500, "dns": 8600, "https": 8501}, "recursors": ["1.1.1.1"]},
    {"dns_config": {"node_ttl": "30s", "service_ttl": {"*": "5s"}, "udp_answer_limit": 3, "max_stale": "87600h"}},
    {"service": {"name": "web", "port": 80, "tags": ["v1"], "check": {"http": "http://localhost/health", "interval": "10s"}}},
    {"services": [{"name": "db", "port": 5432, "token": "x"}, {"name": "cache", "checks": [{"ttl": "30s"}]}]},
    {"acl": {"enabled": True, "default_policy": "deny", "enable_token_persistence": True,
             "tokens": {"initial_management": "root", "agent": "a", "default": "d"}}},
    {"tls": {"defaults": {"ca_file": "/nonexistent/ca.pem", "verify_incoming": True},
             "internal_rpc": {"verify_server_hostname": True}}},
    {"limits": {"http_max_conns_per_client": 200, "dns_tcp_max_conns": 100}, "log_level": "debug"},
    {"retry_join": ["127.0.0.1:8301"], "encrypt": "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="},
    {"watches": [{"type": "key", "key": "app/x", "handler_type": "http", "http_handler_config": {"path": "http://localhost/"}}]},
]
for c in CONFIGS:
    write("config_files", json.dumps(c).encode())
write("config_files", json.dumps(CONFIGS[0]).encode() + b"\xff" + json.dumps(CONFIGS[3]).encode()
      + b"\xff" + json.dumps(CONFIGS[4]).encode())
write("config_files", b'{"datacenter": "dc1",}')
write("config_files", b'{"unknown_key": 1}')

def rec(tag, key, value):
    value = value + b"\0" * ((-len(value)) % 4)
    return bytes([tag, len(key), len(value) // 4]) + key + value

node = json.dumps({"ID": "", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1", "TaggedAddresses": {},
                   "Meta": {}, "CreateIndex": 2, "ModifyIndex": 2}).encode()
service = json.dumps({"Node": "n1", "ServiceID": "web", "ServiceName": "web", "ServiceTags": [], "ServiceAddress": "",
                      "ServicePort": 80, "CreateIndex": 2, "ModifyIndex": 2}).encode()
write("snapshot_records", rec(1, b"n1", node))
write("snapshot_records", rec(1, b"n1", node) + rec(2, b"n1\0web", service))
write("snapshot_records", rec(5, b"app/x", b"\0" * 24 + b"hello"))
write("snapshot_records", rec(12, b"t\0abc", b"{}") + rec(7, b"t\0nodes", b"\0" * 8))

REGISTERS = [
    {"Node": "n1", "Address": "10.0.0.1"},
    {"Node": "n1", "Address": "10.0.0.1", "Service": {"Service": "web", "Port": 80, "Tags": ["v1"]}},
    {"Datacenter": "dc1", "ID": "40e4a748-2192-161a-0510-9bf59fe950b5", "Node": "n2", "Address": "192.168.10.10",
     "TaggedAddresses": {"lan": "192.168.10.10", "wan": "10.0.10.10"}, "NodeMeta": {"somekey": "somevalue"},
     "Service": {"ID": "redis1", "Service": "redis", "Tags": ["primary", "v1"], "Address": "127.0.0.1",
                 "TaggedAddresses": {"lan": {"address": "127.0.0.1", "port": 8000}},
                 "Meta": {"redis_version": "4.0"}, "Port": 8000},
     "Check": {"Node": "n2", "CheckID": "service:redis1", "Name": "Redis health check", "Notes": "Script based",
               "Status": "passing", "ServiceID": "redis1"}, "SkipNodeUpdate": False},
    {"Node": "n1", "Address": "10.0.0.1", "Checks": [{"CheckID": "c1", "Name": "c", "Status": "critical"}]},
    {"Node": "fuzz", "SkipNodeUpdate": True, "Service": {"Service": "svc", "Port": 1}},
]
for r in REGISTERS:
    write("http_catalog_register", json.dumps(r).encode())
write("http_catalog_register", b'{"Node": "n1"}')
write("http_catalog_register", b'{"Node": 5, "Address": []}')

SERVICES = [
    {"Name": "web", "Port": 80},
    {"ID": "web1", "Name": "web", "Tags": ["v1", "primary"], "Address": "10.0.0.5", "Port": 8080,
     "Meta": {"version": "1"}, "EnableTagOverride": False, "Weights": {"Passing": 10, "Warning": 1},
     "Check": {"HTTP": "http://127.0.0.1:9/health", "Interval": "10s", "Timeout": "1s"}},
    {"Name": "db", "Port": 5432, "Checks": [{"TTL": "30s", "Status": "passing"}, {"TCP": "127.0.0.1:9", "Interval": "5s"}]},
    {"Name": "api", "Kind": "", "Proxy": None, "Connect": None, "Token": "t", "TaggedAddresses": {"wan": {"Address": "1.2.3.4", "Port": 80}}},
]
for s in SERVICES:
    write("http_service_register", json.dumps(s).encode())
write("http_service_register", b'{"Name": "web", "Port": 70000}')

CHECKS = [
    {"Name": "mem", "TTL": "30s"},
    {"ID": "disk", "Name": "Disk", "Notes": "n", "HTTP": "http://127.0.0.1:9/", "Method": "POST",
     "Header": {"X-A": ["b"]}, "Body": "{}", "Interval": "10s", "Timeout": "2s", "TLSSkipVerify": True},
    {"Name": "tcp", "TCP": "127.0.0.1:9", "Interval": "5s", "DeregisterCriticalServiceAfter": "1m",
     "SuccessBeforePassing": 2, "FailuresBeforeCritical": 3},
    {"Name": "script", "Args": ["/bin/true"], "Interval": "5s"},
]
for c in CHECKS:
    write("http_check_register", json.dumps(c).encode())

TXNS = [
    [{"KV": {"Verb": "set", "Key": "app/a", "Value": "aGVsbG8="}}],
    [{"KV": {"Verb": "set", "Key": "app/a", "Value": "aGVsbG8=", "Flags": 5}},
     {"KV": {"Verb": "cas", "Key": "app/b", "Value": "eA==", "Index": 0}},
     {"KV": {"Verb": "get", "Key": "app/a"}}, {"KV": {"Verb": "get-tree", "Key": "app/"}}],
    [{"KV": {"Verb": "check-not-exists", "Key": "x"}}, {"KV": {"Verb": "delete-tree", "Key": "app/"}}],
    [{"KV": {"Verb": "check-index", "Key": "app/a", "Index": 99}}, {"KV": {"Verb": "set", "Key": "y", "Value": ""}}],
    [{"KV": {"Verb": "lock", "Key": "l", "Value": "", "Session": "00000000-0000-0000-0000-000000000000"}}],
    [{"KV": {"Verb": "nonsense", "Key": "z"}}],
]
for t in TXNS:
    write("http_txn", json.dumps(t).encode())

def frame(message, blob=b""):
    body = json.dumps(message).encode()
    return b"\x01" + struct.pack(">II", len(body), len(blob)) + body + blob

FRAMES = [
    ({"Hello": {"cluster": "dc1", "from": 1, "to": 2}}, b""),
    ({"HelloWan": {"from_datacenter": "dc2", "datacenter": "dc1", "from": 1, "to": 2}}, b""),
    ("Status", b""),
    ({"ReadIndex": {"consistent": True}}, b""),
    ({"Dns": {"tcp": False}}, query("web.service.consul", "A")),
    ({"Http": {"method": "GET", "uri": "/v1/catalog/services?stale", "headers": [["x-consul-token", "t"]]}}, b""),
    ({"Http": {"method": "PUT", "uri": "/v1/kv/a", "headers": []}}, b"value"),
    ({"NodeCatalog": {"node": "n1", "token": "t"}}, b""),
    ({"NodeCatalog": {"node": "n1"}}, b""),
    ({"RenewSession": {"id": "abc"}}, b""),
    ({"Forward": {"v": 1, "commands": [{"KvSet": {"key": "k", "value": "dg==", "flags": 0, "cas": None}}]}}, b""),
    ({"AgentWrite": {"proposal": {"v": 1, "commands": [{"Deregister": {"node": "n1", "service_id": "web",
                                                                         "check_id": None}}]},
                     "tokens": ["secret"]}}, b""),
    ({"Vote": {"vote": {"leader_id": {"term": 1, "node_id": 1}, "committed": False}, "last_log_id": None}}, b""),
]
for message, blob in FRAMES:
    write("rpc_frame", frame(message, blob))
write("rpc_frame", b"\x02" + frame("Status")[1:])
write("rpc_frame", b"\x01\xff\xff\xff\xff\x00\x00\x00\x00")
