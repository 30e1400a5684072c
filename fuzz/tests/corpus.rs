//! Replays every committed corpus file through its target (no libFuzzer needed).

use std::path::PathBuf;

#[test]
fn every_target_has_a_corpus_and_replays_it() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, f) in usernet_fuzz::TARGETS {
        let dir = root.join(name);
        let mut n = 0;
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
        for e in entries {
            let p = e.unwrap().path();
            if p.is_file() {
                let data = std::fs::read(&p).unwrap();
                f(&data);
                n += 1;
            }
        }
        assert!(
            n > 0,
            "target {name} has an empty corpus in {}",
            dir.display()
        );
        eprintln!("{name}: replayed {n} inputs");
    }
}
