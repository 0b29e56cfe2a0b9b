//! The caption tokenizer: trained on captions, padded and truncated to the context length,
//! identical after a save/load round trip.

use ldm_core::TextTokenizer;

const CAPTIONS: [&str; 6] = [
    "red apple, twemoji style",
    "green apple, noto style",
    "waving hand, light skin tone, noto style",
    "a large red star at the top left on a white background",
    "a small blue circle in the center on a black background",
    "White Heart, Twemoji Style",
];

fn trained() -> TextTokenizer {
    TextTokenizer::train(CAPTIONS.iter().copied(), 120).unwrap()
}

#[test]
fn captions_encode_to_padded_ids_and_decode_back() {
    let tokenizer = trained();
    assert!(tokenizer.vocab_size() <= 120);
    let encoded = tokenizer.encode("Red apple, twemoji style", 12).unwrap();
    assert_eq!(encoded.ids.len(), 12);
    assert!(!encoded.truncated);
    assert_eq!(*encoded.ids.last().unwrap(), tokenizer.pad_id() as i64);
    assert_eq!(
        tokenizer.decode(&encoded.ids).unwrap(),
        "red apple, twemoji style"
    );
    // Different prompts, different ids.
    assert_ne!(
        encoded,
        tokenizer.encode("green apple, noto style", 12).unwrap()
    );
}

#[test]
fn long_prompts_are_cut_to_the_context_and_flagged() {
    let tokenizer = trained();
    let long = CAPTIONS.join(" and ");
    let encoded = tokenizer.encode(&long, 8).unwrap();
    assert_eq!(encoded.ids.len(), 8);
    assert!(encoded.truncated);
    let full = tokenizer.encode(&long, 200).unwrap();
    assert_eq!(encoded.ids[..7], full.ids[..7]);
    assert_eq!(
        encoded.ids[7],
        full.ids
            .iter()
            .rev()
            .find(|&&i| i != tokenizer.pad_id() as i64)
            .copied()
            .unwrap(),
        "ends with [SEP]"
    );
}

#[test]
fn a_saved_tokenizer_loads_and_encodes_identically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let tokenizer = trained();
    tokenizer.save(&path).unwrap();
    let loaded = TextTokenizer::load(&path).unwrap();
    for caption in CAPTIONS {
        assert_eq!(
            tokenizer.encode(caption, 16).unwrap(),
            loaded.encode(caption, 16).unwrap()
        );
    }
    std::fs::write(&path, "{ not json").unwrap();
    let err = TextTokenizer::load(&path).err().unwrap().to_string();
    assert!(
        err.contains("tokenizer.json: cannot load the tokenizer"),
        "{err}"
    );
}

#[test]
fn training_twice_on_the_same_captions_writes_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let paths = [dir.path().join("a.json"), dir.path().join("b.json")];
    for path in &paths {
        trained().save(path).unwrap();
    }
    let [a, b] = paths.map(|p| std::fs::read(p).unwrap());
    assert_eq!(a, b);
}

#[test]
fn a_vocabulary_smaller_than_the_alphabet_is_refused() {
    let err = TextTokenizer::train(CAPTIONS.iter().copied(), 10)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("more than the 10 asked for"), "{err}");
}

#[test]
fn a_layout_vocabulary_tokenizes_one_id_a_word_in_its_order_and_survives_a_round_trip() {
    let vocabulary = ldm_core::layout::LayoutVocabulary {
        classes: vec!["circle".into(), "star".into()],
        colours: vec!["red".into()],
        bins: 4,
        max_objects: 2,
        box_attention: false,
    };
    let words = vocabulary.words();
    let tokenizer = TextTokenizer::from_words(&words).unwrap();
    assert_eq!(tokenizer.vocab_size(), words.len() + 4);
    let text = "star red l1 t0 r4 b2";
    let ids = tokenizer.encode(text, vocabulary.max_length()).unwrap().ids;
    // [PAD] [UNK] [CLS] [SEP] come first, then the words in order.
    let id = |w: &str| 4 + words.iter().position(|x| x == w).unwrap() as i64;
    let framed: Vec<i64> = std::iter::once(2)
        .chain(text.split(' ').map(id))
        .chain([3, 0, 0, 0, 0, 0, 0])
        .collect();
    assert_eq!(ids, framed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tokenizer.save(&path).unwrap();
    let loaded = TextTokenizer::load(&path).unwrap();
    assert_eq!(loaded.encode(text, 14).unwrap().ids, ids);
    assert_eq!(
        loaded.encode("", 14).unwrap().ids[..3],
        [2, 3, 0],
        "the empty layout is the empty prompt"
    );
}
