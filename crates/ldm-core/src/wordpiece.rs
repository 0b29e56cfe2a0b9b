//! A WordPiece vocabulary learnt from captions, the same for the same captions on every run.
//!
//! Written here because the tokenizers crate's WordPiece trainer is not reproducible: it
//! numbers the letters that continue a word in the iteration order of a randomly seeded hash
//! map and breaks ties between equally frequent merges by those numbers, so two trainings on
//! the same captions give different vocabularies (and models trained on them different
//! weights). This learner merges the most frequent adjacent pair of pieces, as the trainer
//! does, and breaks ties by the pieces' text.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{
    NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer,
};

/// The prefix of a piece that continues a word.
pub const CONTINUATION: &str = "##";

/// The pieces of a vocabulary of at most `size` entries, `reserved` of them taken (the special
/// tokens), for `captions`: every character seen, alone and as a continuation (sorted), then
/// merged pieces in the order they were learnt. Fails, naming the count, when the characters
/// alone need more than `size`.
pub fn learn<I, S>(captions: I, reserved: usize, size: usize) -> Result<Vec<String>, String>
where
    I: Iterator<Item = S>,
    S: AsRef<str>,
{
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for caption in captions {
        for word in words(caption.as_ref())? {
            *counts.entry(word).or_default() += 1;
        }
    }
    let characters: BTreeSet<char> = counts.keys().flat_map(|w| w.chars()).collect();
    let mut pieces: Vec<String> = characters.iter().map(|c| c.to_string()).collect();
    pieces.extend(characters.iter().map(|c| format!("{CONTINUATION}{c}")));
    if reserved + pieces.len() > size {
        return Err(format!(
            "the captions' characters alone need {} entries, more than the {size} asked for; raise the vocabulary size",
            reserved + pieces.len()
        ));
    }
    let mut index: HashMap<String, u32> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), i as u32))
        .collect();
    let mut words: Vec<(Vec<u32>, u64)> = counts
        .iter()
        .map(|(word, &count)| {
            let ids = word
                .chars()
                .enumerate()
                .map(|(i, c)| match i {
                    0 => index[&c.to_string()],
                    _ => index[&format!("{CONTINUATION}{c}")],
                })
                .collect();
            (ids, count)
        })
        .collect();
    while reserved + pieces.len() < size {
        let mut pairs: HashMap<(u32, u32), u64> = HashMap::new();
        for (ids, count) in &words {
            for pair in ids.windows(2) {
                *pairs.entry((pair[0], pair[1])).or_default() += count;
            }
        }
        // The most frequent pair; of equal ones, the first by text.
        let Some((&(a, b), _)) = pairs.iter().max_by(|(x, cx), (y, cy)| {
            cx.cmp(cy).then_with(|| {
                let text = |&(a, b): &(u32, u32)| (&pieces[a as usize], &pieces[b as usize]);
                text(y).cmp(&text(x))
            })
        }) else {
            break;
        };
        let merged = format!(
            "{}{}",
            pieces[a as usize],
            &pieces[b as usize][CONTINUATION.len()..]
        );
        let id = *index.entry(merged.clone()).or_insert_with(|| {
            pieces.push(merged);
            (pieces.len() - 1) as u32
        });
        for (ids, _) in &mut words {
            merge(ids, (a, b), id);
        }
    }
    Ok(pieces)
}

/// Replaces each adjacent `pair` in `ids`, left to right, by `merged`.
fn merge(ids: &mut Vec<u32>, pair: (u32, u32), merged: u32) {
    let mut out = Vec::with_capacity(ids.len());
    let mut i = 0;
    while i < ids.len() {
        if i + 1 < ids.len() && (ids[i], ids[i + 1]) == pair {
            out.push(merged);
            i += 2;
        } else {
            out.push(ids[i]);
            i += 1;
        }
    }
    *ids = out;
}

/// The words of `text` as the captions' tokenizer splits them: BERT's normalisation (lower
/// case, accents off) and its split on spaces and punctuation.
fn words(text: &str) -> Result<Vec<String>, String> {
    let mut normalized = NormalizedString::from(text);
    crate::tokenizer::bert_normalizer()
        .normalize(&mut normalized)
        .map_err(|e| e.to_string())?;
    let mut split = PreTokenizedString::from(normalized);
    BertPreTokenizer
        .pre_tokenize(&mut split)
        .map_err(|e| e.to_string())?;
    Ok(split
        .get_splits(OffsetReferential::Normalized, OffsetType::Byte)
        .into_iter()
        .map(|(word, _, _)| word.to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPTIONS: [&str; 4] = [
        "red apple, twemoji style",
        "green apple, noto style",
        "Red Heart, Twemoji Style",
        "a small blue circle in the center",
    ];

    #[test]
    fn the_same_captions_give_the_same_vocabulary_and_frequent_words_become_pieces() {
        let first = learn(CAPTIONS.iter(), 4, 80).unwrap();
        assert_eq!(first, learn(CAPTIONS.iter(), 4, 80).unwrap());
        assert_eq!(first.len(), 76);
        for piece in ["apple", "style", ",", "##e"] {
            assert!(first.contains(&piece.to_string()), "{piece}: {first:?}");
        }
        assert!(!first.iter().any(|p| p.chars().any(char::is_uppercase)));
        let distinct: BTreeSet<&String> = first.iter().collect();
        assert_eq!(distinct.len(), first.len());
    }

    #[test]
    fn learning_stops_when_every_word_is_one_piece() {
        let pieces = learn(["ab ab"].iter(), 4, 1000).unwrap();
        assert_eq!(pieces, ["a", "b", "##a", "##b", "ab"]);
        let err = learn(CAPTIONS.iter(), 4, 10).unwrap_err();
        assert!(err.contains("more than the 10 asked for"), "{err}");
    }
}
