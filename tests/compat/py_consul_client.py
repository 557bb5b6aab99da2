"""Drives a running cairn agent with py-consul, a real Consul client library, unchanged.

Usage: python3 py_consul_client.py HOST PORT. Exits non-zero (with a traceback) on any
mismatch. Run by tests/client_compat.rs.
"""

import sys
import threading
import time

import consul


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    c = consul.Consul(host=host, port=port)

    # Agent and status.
    me = c.agent.self()
    assert me["Config"]["Datacenter"] == "dc1", me
    assert c.status.leader(), "no leader reported"
    assert c.catalog.datacenters() == ["dc1"]

    # Gossip members: this agent, alive, a server; in the WAN pool as node.dc; joining
    # through its own gossip address works; force-leaving an unknown node fails.
    members = c.agent.members()
    assert [m["Name"] for m in members] == [me["Config"]["NodeName"]], members
    assert members[0]["Status"] == 1 and members[0]["Tags"]["role"] == "consul", members
    assert me["Member"]["Name"] == me["Config"]["NodeName"], me["Member"]
    wan = c.agent.members(wan=True)
    assert [m["Name"] for m in wan] == [me["Config"]["NodeName"] + ".dc1"], wan
    assert c.agent.join(f"{members[0]['Addr']}:{members[0]['Port']}") is True
    assert c.agent.force_leave("no-such-node") is False

    # KV: put/get, flags, cas, recurse, keys, delete.
    assert c.kv.put("compat/a", "1", flags=7) is True
    index, entry = c.kv.get("compat/a")
    assert entry["Value"] == b"1" and entry["Flags"] == 7, entry
    assert c.kv.put("compat/a", "2", cas=entry["ModifyIndex"] + 1000) is False
    assert c.kv.put("compat/a", "2", cas=entry["ModifyIndex"]) is True
    c.kv.put("compat/b/c", "3")
    _, entries = c.kv.get("compat/", recurse=True)
    assert [e["Key"] for e in entries] == ["compat/a", "compat/b/c"], entries
    _, keys = c.kv.get("compat/", keys=True, separator="/")
    assert keys == ["compat/a", "compat/b/"], keys
    _, missing = c.kv.get("compat/none")
    assert missing is None

    # A blocking get returns when another thread writes the key.
    index, _ = c.kv.get("compat/a")
    threading.Timer(0.3, lambda: consul.Consul(host=host, port=port).kv.put("compat/a", "woken")).start()
    started = time.monotonic()
    new_index, entry = c.kv.get("compat/a", index=index, wait="30s")
    assert entry["Value"] == b"woken" and int(new_index) > int(index), (new_index, entry)
    assert time.monotonic() - started < 20

    assert c.kv.delete("compat/", recurse=True) is True
    _, gone = c.kv.get("compat/", recurse=True)
    assert gone is None

    # Transactions.
    result = c.txn.put([{"KV": {"Verb": "set", "Key": "compat/txn", "Value": "eA=="}}])
    assert result["Errors"] is None and len(result["Results"]) == 1, result

    # Catalog and health.
    service = {"Service": "redis", "ID": "redis1", "Tags": ["master", "v1"], "Port": 8000}
    check = {"Node": "py-node", "CheckID": "service:redis1", "Name": "redis alive",
             "Status": "passing", "ServiceID": "redis1"}
    assert c.catalog.register("py-node", "10.9.9.9", service=service, check=check) is True
    _, services = c.catalog.services()
    assert "redis" in services and sorted(services["redis"]) == ["master", "v1"], services
    _, nodes = c.catalog.service("redis", tag="master")
    assert nodes[0]["ServicePort"] == 8000 and nodes[0]["Address"] == "10.9.9.9", nodes
    _, healthy = c.health.service("redis", passing=True)
    assert healthy[0]["Service"]["ID"] == "redis1" and healthy[0]["Checks"][0]["Status"] == "passing", healthy
    _, node = c.catalog.node("py-node")
    assert "redis1" in node["Services"], node
    _, checks = c.health.node("py-node")
    assert checks[0]["CheckID"] == "service:redis1", checks

    # Prepared queries: create (py-consul sends lowercase keys and a template), list, get,
    # execute by name, explain, delete.
    created = c.query.create("redis", name="py-redis", onlypassing=True, tags=["master"], ttl="10s")
    query_id = created["ID"]
    assert [q["ID"] for q in c.query.list()] == [query_id]
    assert c.query.get(query_id)[0]["Service"]["OnlyPassing"] is True
    result = c.query.execute("py-redis")
    assert [n["Service"]["ID"] for n in result["Nodes"]] == ["redis1"], result
    assert result["DNS"]["TTL"] == "10s" and result["Datacenter"] == "dc1", result
    assert c.query.explain("py-redis")["Query"]["Name"] == "py-redis"
    assert c.query.delete(query_id) is True
    assert c.query.list() == []
    assert c.catalog.deregister("py-node", service_id="redis1") is True
    _, healthy = c.health.service("redis")
    assert healthy == [], healthy
    assert c.catalog.deregister("py-node") is True

    print("py-consul compatibility: all checks passed")


if __name__ == "__main__":
    main()
