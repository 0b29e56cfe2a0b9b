//! The committed fuzzing corpus (`fuzz/corpus/<target>/`), replayed on stable by the ordinary
//! test suite: every input goes through the library function its libFuzzer target feeds
//! (`fuzz/fuzz_targets/`), and each must return, refused or accepted, without a panic.
//! `scripts/fuzz.sh` runs the targets themselves for millions of executions.

use std::path::Path;

/// A target's name and the call its libFuzzer target makes.
type Target = (&'static str, fn(&[u8]));

fn targets() -> Vec<Target> {
    vec![
        ("manifest", |data| {
            if let Ok(text) = std::str::from_utf8(data) {
                let _ = ldm_core::Manifest::parse(text);
            }
        }),
        ("tokenizer", |data| {
            if let Ok(tokenizer) = ldm_core::TextTokenizer::from_bytes(data, "fuzz") {
                let _ = tokenizer.encode("a red apple, twemoji style", 16);
            }
        }),
        ("metadata", |data| {
            let _ = ldm_data::parse_metadata(data, Path::new("metadata.jsonl"));
        }),
        ("image", |data| {
            let _ = ldm_data::decode_image(data, 512, Path::new("image.png"));
        }),
        ("onnx", |data| {
            let dir = std::env::temp_dir();
            let _ = ldm_runtime::check_bytes(&dir, &dir.join("graph.onnx"), data);
        }),
        ("pickle", |data| {
            let _ = ldm_import::pickle::load(data);
        }),
        ("request", |data| ldm_serve::fuzz_request(planner(), data)),
    ]
}

fn planner() -> &'static ldm_runtime::Planner {
    static PLANNER: std::sync::OnceLock<ldm_runtime::Planner> = std::sync::OnceLock::new();
    PLANNER.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../export/emoji-text");
        ldm_runtime::Planner::new(&ldm_runtime::Bundle::load(&dir).unwrap()).unwrap()
    })
}

#[test]
fn every_corpus_input_is_refused_or_accepted_without_a_panic() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (target, run) in targets() {
        let dir = corpus.join(target);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            run(&bytes);
            // Every prefix too: truncated files are the commonest damage.
            for cut in [0, 1, bytes.len() / 2, bytes.len().saturating_sub(1)] {
                run(&bytes[..cut]);
            }
            inputs += 1;
        }
        assert!(inputs > 0, "no corpus for the {target} target");
    }
}
