//! A real Consul client library, unchanged, against a running agent: py-consul (installed by
//! `.ci/run`) runs `tests/compat/py_consul_client.py`.

mod support;

use std::process::Command;

use support::Agent;

#[test]
fn py_consul_works_unchanged() {
    let agent = Agent::start(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat/py_consul_client.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(agent.http.ip().to_string())
        .arg(agent.http.port().to_string())
        .output()
        .expect("python3 must be installed (see .ci/run)");
    assert!(
        output.status.success(),
        "py-consul failed against cairn (is py-consul installed? see .ci/run)\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
