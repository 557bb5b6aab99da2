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
                let input = std::fs::read(&file).expect("corpus file");
                let outcome = std::panic::catch_unwind(|| check(&input));
                assert!(outcome.is_ok(), "{target}: {} fails its checks", file.display());
                replayed += 1;
            }
        }
        assert!(root.join("corpus").join(target).is_dir(), "{target} has no seed corpus");
    }
    assert!(replayed > 0, "no corpus inputs found under {}", root.display());
}
