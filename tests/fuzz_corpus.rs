//! Replays the fuzz corpora (`fuzz/corpus/<target>/*`) and the inputs of crashes found and
//! fixed (`fuzz/regressions/<target>/*`) through the same checks the fuzz targets run
//! (`tests/hostile`), on stable Rust and without a fuzzer: every input CI has ever been
//! handed keeps passing.

mod hostile;

use std::path::Path;

#[test]
fn every_corpus_and_regression_input_passes_its_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for (target, check) in hostile::TARGETS {
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
            let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
            files.sort();
            for file in files {
                // A fuzzer running beside this test may drop a file it has minimized.
                let Ok(input) = std::fs::read(&file) else { continue };
                let outcome = std::panic::catch_unwind(|| check(&input));
                assert!(outcome.is_ok(), "{target}: {} fails its checks", file.display());
                replayed += 1;
            }
        }
        assert!(root.join("corpus").join(target).is_dir(), "{target} has no seed corpus");
    }
    assert!(replayed > 0, "no corpus inputs found under {}", root.display());
}

/// Writes real gossip packets (two members meeting: announce, pings, acks, their
/// membership updates) as seeds for `gossip_packet`. Run by hand:
/// `cargo test --test fuzz_corpus write_gossip_seeds -- --ignored`.
#[test]
#[ignore]
fn write_gossip_seeds() {
    use cairn::gossip::core::{Core, Timings};
    use cairn::gossip::envelope::{Envelope, GossipKey};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/gossip_packet");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let now = std::time::Instant::now();
    let (a_id, b_id) = (hostile::peers::member("a", 8301), hostile::peers::member("b", 8302));
    let mut a = Core::new(a_id.clone(), Timings::lan(), 1, now);
    let mut b = Core::new(b_id.clone(), Timings::lan(), 2, now);
    a.announce(now, b_id.clone());
    let mut written = 0;
    for round in 0..6 {
        let at = now + std::time::Duration::from_millis(200 * round);
        a.fire_due(at);
        b.fire_due(at);
        let from_a = a.take_outbox();
        let from_b = b.take_outbox();
        for (_, packet) in &from_a {
            let _ = b.handle_packet(at, a_id.addr, packet);
        }
        for (_, packet) in &from_b {
            let _ = a.handle_packet(at, b_id.addr, packet);
        }
        for (_, packet) in from_a.iter().chain(&from_b) {
            let mut seed = vec![0u8];
            seed.extend_from_slice(packet);
            std::fs::write(dir.join(format!("real-{written}")), seed).expect("write seed");
            // The same through the envelope `check_gossip_packet` opens odd-mode packets with.
            let key = GossipKey::from_base64(hostile::peers::GOSSIP_KEY).expect("key");
            let mut sealed = vec![1u8];
            sealed.extend(Envelope::new(&[key]).seal(packet, hostile::peers::GOSSIP_NOW_MS));
            std::fs::write(dir.join(format!("sealed-{written}")), sealed).expect("write seed");
            written += 1;
        }
    }
    assert!(written > 0, "the members exchanged nothing");
}
