//! `cairn lock` end to end: real processes contending for a lock and a semaphore against a
//! running agent; the child's environment, hand-over, a lost lock, signal forwarding.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{cairn_bin, wait_for, Agent};

const WAIT: Duration = Duration::from_secs(30);

/// `cairn lock [extra] PREFIX -- sh -c SCRIPT`, with stderr kept in `dir/<name>.err`.
fn lock(agent: &Agent, dir: &Path, name: &str, extra: &[&str], prefix: &str, script: &str) -> Child {
    let err = std::fs::File::create(dir.join(format!("{name}.err"))).expect("stderr file");
    Command::new(cairn_bin())
        .args(["lock", "-http-addr", &agent.http.to_string()])
        .args(extra)
        .args([prefix, "--", "sh", "-c", script])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("spawn cairn lock")
}

fn exists(dir: &Path, name: &str) -> bool {
    dir.join(name).exists()
}

fn exit_code(child: &mut Child) -> i32 {
    wait_for("cairn lock to exit", WAIT, || child.try_wait().expect("wait")).code().unwrap_or(-1)
}

fn lock_holder(agent: &Agent, key: &str) -> Option<String> {
    let r = agent.get(&format!("/v1/kv/{key}"));
    (r.status == 200).then(|| r.json()[0]["Session"].as_str().map(str::to_string)).flatten()
}

#[test]
fn cairn_lock_runs_one_holder_at_a_time_and_gives_way() {
    let agent = Agent::start(&[]);
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path();
    // Each child records that it holds the lock (and the env var), then waits for its cue.
    let script =
        |me: &str| format!("echo \"$CAIRN_LOCK_HELD\" > {me}.held; while [ ! -e {me}.go ]; do sleep 0.05; done");

    let mut a = lock(&agent, dir, "a", &[], "jobs/report", &script("a"));
    wait_for("a to hold the lock", WAIT, || exists(dir, "a.held").then_some(()));
    assert_eq!(std::fs::read_to_string(dir.join("a.held")).expect("read").trim(), "true");
    let a_session = lock_holder(&agent, "jobs/report/.lock").expect("a's session holds the key");
    let mut b = lock(&agent, dir, "b", &[], "jobs/report", &script("b"));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!exists(dir, "b.held"), "b ran while a held the lock");
    // A contender with -timeout gives up, and its child never runs.
    let mut impatient = lock(&agent, dir, "impatient", &["-timeout", "1s"], "jobs/report", "touch impatient.held");
    assert_eq!(exit_code(&mut impatient), 1);
    assert!(!exists(dir, "impatient.held"));
    let err = std::fs::read_to_string(dir.join("impatient.err")).expect("stderr");
    assert!(err.contains("Lock acquisition timed out"), "{err}");
    let detailed = Command::new(cairn_bin())
        .args(["kv", "get", "-detailed", "-http-addr", &agent.http.to_string(), "jobs/report/.lock"])
        .output()
        .expect("kv get");
    let detailed = String::from_utf8_lossy(&detailed.stdout);
    assert!(detailed.contains(&format!("Session      {a_session}")), "{detailed}");
    assert!(detailed.contains("LockIndex    1"), "{detailed}");

    // a's child ends: a releases, exits with its child's status, and b takes over.
    std::fs::write(dir.join("a.go"), "").expect("cue a");
    assert_eq!(exit_code(&mut a), 0);
    wait_for("b to hold the lock", WAIT, || exists(dir, "b.held").then_some(()));
    assert_ne!(lock_holder(&agent, "jobs/report/.lock"), Some(a_session.clone()));
    let sessions = agent.get("/v1/session/list").json();
    assert_eq!(sessions.as_array().map(Vec::len), Some(1), "a destroyed its session: {sessions}");

    // The lock is lost (its session destroyed): b's child is terminated and b exits 1.
    let b_session = lock_holder(&agent, "jobs/report/.lock").expect("b holds it");
    assert_eq!(agent.put(&format!("/v1/session/destroy/{b_session}"), "").status, 200);
    assert_eq!(exit_code(&mut b), 1);
    let err = std::fs::read_to_string(dir.join("b.err")).expect("b's stderr");
    assert!(err.contains("Lock lost"), "{err}");

    // A signal reaches the child; the exit status says which, and the lock is given back.
    let mut c = lock(&agent, dir, "c", &[], "jobs/signal", "exec sleep 60");
    wait_for("c to hold the lock", WAIT, || lock_holder(&agent, "jobs/signal/.lock"));
    // SAFETY: kill(2) on a process this test spawned.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    assert_eq!(exit_code(&mut c), 128 + libc::SIGTERM, "the child's death by SIGTERM is the exit status");
    assert_eq!(lock_holder(&agent, "jobs/signal/.lock"), None, "released on the way out");
}

#[test]
fn cairn_lock_n_is_a_semaphore() {
    let agent = Agent::start(&[]);
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path();
    let script = |me: &str| format!("touch {me}.held; while [ ! -e {me}.go ]; do sleep 0.05; done");
    let mut holders: Vec<Child> =
        ["s1", "s2"].iter().map(|me| lock(&agent, dir, me, &["-n", "2"], "jobs/pool", &script(me))).collect();
    wait_for("two holders", WAIT, || (exists(dir, "s1.held") && exists(dir, "s2.held")).then_some(()));
    let mut third = lock(&agent, dir, "s3", &["-n", "2"], "jobs/pool", &script("s3"));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!exists(dir, "s3.held"), "a third holder ran in a semaphore of 2");
    // A contender asking for another limit is refused rather than corrupting the semaphore.
    let mut wrong = lock(&agent, dir, "wrong", &["-n", "3"], "jobs/pool", "true");
    assert_eq!(exit_code(&mut wrong), 1);
    let err = std::fs::read_to_string(dir.join("wrong.err")).expect("stderr");
    assert!(err.contains("limit conflict"), "{err}");

    std::fs::write(dir.join("s1.go"), "").expect("cue s1");
    assert_eq!(exit_code(&mut holders[0]), 0);
    wait_for("s3 to take the freed slot", WAIT, || exists(dir, "s3.held").then_some(()));
    for me in ["s2", "s3"] {
        std::fs::write(dir.join(format!("{me}.go")), "").expect("cue");
    }
    assert_eq!(exit_code(&mut holders[1]), 0);
    assert_eq!(exit_code(&mut third), 0);
    let lock = agent.get("/v1/kv/jobs/pool/.lock?raw").text();
    let state: serde_json::Value = serde_json::from_str(&lock).expect("semaphore JSON");
    assert_eq!(state, serde_json::json!({"Limit": 2, "Holders": {}}), "every holder left the semaphore");
}
