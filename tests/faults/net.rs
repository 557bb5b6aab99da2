//! A private network for the harness's agents: each in a network namespace of its own, its
//! `eth0` one end of a veth pair whose other end is a port of one bridge in a hub
//! namespace. The harness itself (workers, checks) reaches every agent from the host's
//! namespace through one more veth on that bridge, so a fault between agents never cuts the
//! harness off from them.
//!
//! Link faults are nftables rules on the bridge's forward hook in the hub namespace: a cut
//! drops every packet between two groups of nodes (both ways, silently, as a real partition
//! does: no reset, no ICMP), a lossy link drops a share of them at random. A slow link would
//! be `sch_netem`'s job, which this machine's kernel does not have (`CONFIG_NET_SCH_NETEM`
//! is not set): delay is an `NFQUEUE` rule (iptables) in each sending node's namespace and a
//! harness thread that gives the packets back late (`delay.rs`).
//!
//! Everything is named after the harness's pid (`cairn-faults-<pid>-*`), traffic stays on
//! the private subnet, and dropping a [`Net`] deletes its namespaces (which deletes their
//! links); namespaces left by a harness that died are deleted by the next one.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::delay::Delayer;

const PREFIX: &str = "cairn-faults-";

pub struct Net {
    /// Namespace names start with this (`cairn-faults-<pid>-<n>-`).
    stem: String,
    /// The host's end of the harness's link (`cf<pid>n<n>`: interface names are at most 15
    /// bytes).
    host_link: String,
    /// The private /24: agents are .1, .2, ...; the harness's end is .254.
    subnet: [u8; 3],
    nodes: usize,
    /// The readers of the delay queues in place, with the namespaces holding their rules.
    delays: Mutex<Vec<(usize, Delayer)>>,
}

impl Net {
    /// Makes the network for `nodes` agents, or says why it cannot (no `CAP_NET_ADMIN`, no
    /// `ip` or `nft`, a kernel without veth, bridges or nftables), leaving nothing behind.
    pub fn create(nodes: usize) -> Result<Net, String> {
        remove_stale();
        // Numbered: a network's links die with its namespaces a little after it is dropped,
        // so the next one must not reuse their names.
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let subnet = free_subnet(pid.wrapping_add(n))?;
        let net = Net {
            stem: format!("{PREFIX}{pid}-{n}-"),
            host_link: format!("cf{pid}n{}", n % 1000),
            subnet,
            nodes,
            delays: Mutex::default(),
        };
        // On failure the half-built network is dropped here, which deletes what was made.
        net.build()?;
        Ok(net)
    }

    fn build(&self) -> Result<(), String> {
        let hub = self.hub();
        run(&["ip", "netns", "add", &hub])?;
        run(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &hub, "link", "set", "br0", "up"])?;
        for node in 0..self.nodes {
            let ns = self.namespace(node);
            let port = format!("p{node}");
            run(&["ip", "netns", "add", &ns])?;
            run(&["ip", "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            run(&["ip", "-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            run(&["ip", "-n", &ns, "addr", "add", &format!("{}/24", self.addr(node)), "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        // The harness's own link, from the host's namespace.
        let host_end = &self.host_link;
        run(&["ip", "link", "add", host_end, "type", "veth", "peer", "name", "harness", "netns", &hub])?;
        run(&["ip", "addr", "add", &format!("{}/24", self.harness_addr()), "dev", host_end])?;
        run(&["ip", "link", "set", host_end, "up"])?;
        run(&["ip", "-n", &hub, "link", "set", "harness", "master", "br0", "up"])?;
        self.nft("add table bridge faults")?;
        self.nft("add chain bridge faults forward { type filter hook forward priority 0 ; policy accept ; }")?;
        Ok(())
    }

    /// Agent `node`'s address (its namespace's only one besides loopback).
    pub fn addr(&self, node: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, node as u8 + 1)
    }

    fn harness_addr(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 254)
    }

    /// The command that runs a program in agent `node`'s namespace (it execs in place, so
    /// the pid and signals are the program's own).
    pub fn wrapper(&self, node: usize) -> Vec<String> {
        ["ip", "netns", "exec"].iter().map(|s| s.to_string()).chain([self.namespace(node)]).collect()
    }

    /// Drops every packet between a node of `a` and a node of `b`, both ways.
    pub fn cut(&self, a: &[usize], b: &[usize]) {
        self.drop_between(a, b, None);
    }

    /// Drops `percent` of the packets between `node` and each of `others`, both ways, at
    /// random.
    pub fn lose(&self, node: usize, others: &[usize], percent: u32) {
        self.drop_between(&[node], others, Some(percent));
    }

    fn drop_between(&self, a: &[usize], b: &[usize], percent: Option<u32>) {
        let share = percent.map(|p| format!("numgen random mod 100 < {p} ")).unwrap_or_default();
        for (from, to) in [(a, b), (b, a)] {
            let rule = format!(
                "add rule bridge faults forward ip saddr {} ip daddr {} {share}drop",
                self.set_of(from),
                self.set_of(to)
            );
            self.nft(&rule).expect("add a link fault");
        }
    }

    /// Delays every packet between `node` and each of `others` by `delay`, both ways.
    pub fn delay(&self, node: usize, others: &[usize], delay: Duration) {
        let mut delays = self.delays.lock().unwrap_or_else(|e| e.into_inner());
        let links = others.iter().map(|o| (node, *o)).chain(others.iter().map(|o| (*o, node)));
        for (from, to) in links {
            // The reader first: a packet queued before it binds would be dropped.
            if !delays.iter().any(|(n, _)| *n == from) {
                let reader = Delayer::start(&self.namespace(from), 0, delay).unwrap_or_else(|e| panic!("{e}"));
                delays.push((from, reader));
            }
            let ns = self.namespace(from);
            let to = self.addr(to).to_string();
            // --queue-bypass: should the reader be gone, packets pass undelayed, not dropped.
            let rule = ["-A", "OUTPUT", "-d", &to, "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"];
            let mut args = vec!["ip", "netns", "exec", &ns, "iptables"];
            args.extend(rule);
            run(&args).expect("add a delay rule");
        }
    }

    /// Whether [`Net::delay`] works here (iptables with the NFQUEUE target, nfnetlink_queue):
    /// `Err` says why not.
    pub fn probe_delay(&self) -> Result<(), String> {
        let ns = self.namespace(0);
        let reader = Delayer::start(&ns, 0, Duration::from_millis(1))?;
        let rule = ["-A", "OUTPUT", "-d", "192.0.2.1", "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"];
        let mut args = vec!["ip", "netns", "exec", &ns, "iptables"];
        args.extend(rule);
        let added = run(&args);
        let _ = run(&["ip", "netns", "exec", &ns, "iptables", "-F", "OUTPUT"]);
        drop(reader);
        added
    }

    /// Removes every link fault.
    pub fn heal(&self) {
        self.nft("flush chain bridge faults forward").expect("remove the link faults");
        let mut delays = self.delays.lock().unwrap_or_else(|e| e.into_inner());
        for (node, _) in delays.iter() {
            run(&["ip", "netns", "exec", &self.namespace(*node), "iptables", "-F", "OUTPUT"]).expect("remove a delay");
        }
        // Dropping a reader gives back what it still holds.
        delays.clear();
    }

    fn set_of(&self, nodes: &[usize]) -> String {
        let addrs: Vec<String> = nodes.iter().map(|n| self.addr(*n).to_string()).collect();
        format!("{{ {} }}", addrs.join(", "))
    }

    fn nft(&self, command: &str) -> Result<(), String> {
        let hub = self.hub();
        let mut args = vec!["ip", "netns", "exec", &hub, "nft"];
        args.extend(command.split(' '));
        run(&args)
    }

    fn hub(&self) -> String {
        format!("{}hub", self.stem)
    }

    fn namespace(&self, node: usize) -> String {
        format!("{}{node}", self.stem)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.delays.get_mut().unwrap_or_else(|e| e.into_inner()).clear();
        for node in 0..self.nodes {
            let _ = run(&["ip", "netns", "del", &self.namespace(node)]);
        }
        let _ = run(&["ip", "netns", "del", &self.hub()]);
        // Deleting the hub deletes the harness link's peer and so the link, but not at once.
        let _ = run(&["ip", "link", "del", &self.host_link]);
    }
}

/// Runs a command, its failure an error naming it with what it printed.
fn run(args: &[&str]) -> Result<(), String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("`{}`: cannot run {}: {e}", args.join(" "), args[0]))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!("`{}` failed ({}): {}", args.join(" "), output.status, String::from_utf8_lossy(&output.stderr).trim()))
}

/// A 10.213.x.0/24 no route of the host mentions, the search starting at `start`.
fn free_subnet(start: u32) -> Result<[u8; 3], String> {
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .map_err(|e| format!("`ip -4 route`: cannot run ip: {e}"))?;
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    (0..250u32)
        .map(|i| (start.wrapping_add(i) % 250 + 1) as u8)
        .map(|x| [10, 213, x])
        .find(|[a, b, c]| !routes.contains(&format!("{a}.{b}.{c}.")))
        .ok_or_else(|| "no free 10.213.x.0/24 subnet for the harness's network".to_string())
}

/// Deletes namespaces a harness that is gone left behind, killing the agents still in them.
fn remove_stale() {
    let Ok(list) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|rest| rest.split('-').next()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
                for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                    let _ = run(&["kill", "-9", pid]);
                }
            }
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}
