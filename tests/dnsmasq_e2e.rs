//! End to end through the set-up operators use: dnsmasq forwarding `consul` to cairn
//! (`server=/consul/127.0.0.1#PORT`), queried with dig. `tests/setup.sh` installs both.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::{wait_for, Agent};

struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    // A port free for both UDP and TCP right now.
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// dig's output, or `None` when dig got no answer (exit status not 0: dnsmasq not
/// listening yet, or timed out). dig prints its "communications error" to stdout even
/// with `+short`, so the output alone cannot tell an answer from a failure.
fn try_dig(port: u16, args: &[&str]) -> Option<String> {
    let output = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig must be installed (tests/setup.sh installs bind9-dnsutils)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    output.status.success().then_some(stdout)
}

fn dig(port: u16, args: &[&str]) -> String {
    try_dig(port, args).unwrap_or_else(|| panic!("dig {args:?} through dnsmasq got no answer"))
}

#[test]
fn dig_through_dnsmasq_reaches_cairn() {
    let agent = Agent::start(&[]);
    let body = json!({"Node": "my-node", "Address": "192.168.10.10",
                      "Service": {"ID": "redis1", "Service": "redis", "Tags": ["master"], "Port": 8000}});
    assert_eq!(agent.put("/v1/catalog/register", body.to_string()).text(), "true");

    let port = free_port();
    let child = Command::new("dnsmasq")
        .args([
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            &format!("--port={port}"),
            &format!("--server=/consul/127.0.0.1#{}", agent.dns.port()),
            "--cache-size=0",
            "--user=root",
            "--pid-file=",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq must be installed (tests/setup.sh installs dnsmasq-base)");
    let _dnsmasq = Dnsmasq(child);

    let short = wait_for("dnsmasq to answer", Duration::from_secs(20), || {
        try_dig(port, &["redis.service.consul", "+short"]).filter(|out| !out.trim().is_empty())
    });
    assert_eq!(short.trim(), "192.168.10.10");
    let srv = dig(port, &["_redis._tcp.service.consul", "SRV", "+short"]);
    assert_eq!(srv.trim(), "1 1 8000 my-node.node.dc1.consul.");
    let nx = dig(port, &["nope.service.consul"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    let tagged = dig(port, &["master.redis.service.consul", "+short"]);
    assert_eq!(tagged.trim(), "192.168.10.10");
}
