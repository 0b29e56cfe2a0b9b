//! Bounding-box layouts as token sequences (paper 4.3.1, layout-to-image; appendix: each box is
//! a tuple of discrete tokens, its corners and its class). Here an object is six words: its
//! class, its colour, and its box's left, top, right and bottom edges, each rounded to a grid
//! of `bins` steps across the image ("circle red l2 t3 r7 b8"). Objects keep the order they
//! are given in, which is the drawing order: later ones lie on top.
//!
//! The words form a fixed vocabulary, tokenized by a WordPiece tokenizer that knows exactly
//! them ([`crate::TextTokenizer::from_words`]), so a layout model is a text model whose
//! prompts are layouts: every front end that takes a prompt takes a layout, as its JSON
//! (`{"objects": [{"class": "circle", "colour": "red", "box": [x0, y0, x1, y1]}]}`, corners
//! in fractions of the image's sides) or as its words. The empty layout is the empty prompt,
//! the unconditional context of guidance.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Words per object: class, colour, left, top, right, bottom.
pub const WORDS_PER_OBJECT: usize = 6;
/// Largest grid a vocabulary may quantise boxes on.
pub const MAX_BINS: usize = 256;
/// Most objects a vocabulary may let one layout hold.
pub const MAX_OBJECTS: usize = 64;
/// The edges' word prefixes, in the order they follow an object's colour.
const EDGES: [char; 4] = ['l', 't', 'r', 'b'];

/// What a layout model's prompts may name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutVocabulary {
    pub classes: Vec<String>,
    pub colours: Vec<String>,
    /// Grid steps across each side that box edges are rounded to.
    pub bins: usize,
    pub max_objects: usize,
    /// Whether the model's cross-attention reads each object's tokens only from positions
    /// inside or near its box ([`EdgeIds`]); absent in bundles made before it, which learn
    /// the boxes from the edge tokens alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub box_attention: bool,
}

/// Where a layout's edge words sit among the tokenizer's ids: what a network needs to read the
/// boxes back out of a token sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeIds {
    /// Id of "l0"; each edge's words l, t, r, b follow in turn, `bins + 1` of them.
    pub first: usize,
    pub bins: usize,
    pub max_objects: usize,
}

impl EdgeIds {
    /// For each edge (left, top, right, bottom), the coordinate in fractions of the image that
    /// each id of a `vocab_size` vocabulary stands for in that edge's place. Ids that are not
    /// that edge's words take the image's own edge (0 for left and top, 1 for right and
    /// bottom), so the tokens of no object ([CLS], [SEP], padding) cover the whole image.
    pub fn tables(&self, vocab_size: usize) -> [Vec<f32>; 4] {
        std::array::from_fn(|edge| {
            let outside = if edge < 2 { 0.0 } else { 1.0 };
            let start = self.first + edge * (self.bins + 1);
            (0..vocab_size)
                .map(|id| match id.checked_sub(start) {
                    Some(step) if step <= self.bins => step as f32 / self.bins as f32,
                    _ => outside,
                })
                .collect()
        })
    }
}

/// One object of a layout: what it is and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutObject {
    #[serde(alias = "shape")]
    pub class: String,
    #[serde(alias = "color")]
    pub colour: String,
    /// (x0, y0, x1, y1): left, top, right and bottom, in fractions of the image's width and
    /// height.
    #[serde(rename = "box")]
    pub bbox: [f64; 4],
}

/// Objects in drawing order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub objects: Vec<LayoutObject>,
}

impl Layout {
    /// The layout as the JSON a layout prompt may be.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a layout serialises")
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum LayoutError {
    #[error("invalid layout vocabulary: {0}")]
    Vocabulary(String),
    #[error("the layout holds {got} objects; this model takes at most {max}")]
    TooMany { got: usize, max: usize },
    #[error("object {index}: unknown {what} '{word}' (this model knows {known})")]
    Unknown {
        index: usize,
        what: &'static str,
        word: String,
        known: String,
    },
    #[error("object {index}: its box {bbox:?} must be finite, within 0 to 1, with x0 < x1 and y0 < y1, and at least one grid step of 1/{bins} wide and high")]
    Box {
        index: usize,
        bbox: [f64; 4],
        bins: usize,
    },
    #[error("not a layout: {0}")]
    Json(String),
    #[error("not a layout: {message} (a layout prompt is its JSON, {{\"objects\": [{{\"class\": ..., \"colour\": ..., \"box\": [x0, y0, x1, y1]}}]}}, or its words, for example '{example}')")]
    Words { message: String, example: String },
}

impl LayoutVocabulary {
    pub fn validate(&self) -> Result<(), LayoutError> {
        let refuse = |m: String| Err(LayoutError::Vocabulary(m));
        if !(1..=MAX_BINS).contains(&self.bins) {
            return refuse(format!("bins = {} is outside 1..={MAX_BINS}", self.bins));
        }
        if !(1..=MAX_OBJECTS).contains(&self.max_objects) {
            return refuse(format!(
                "max_objects = {} is outside 1..={MAX_OBJECTS}",
                self.max_objects
            ));
        }
        if self.classes.is_empty() || self.colours.is_empty() {
            return refuse("it needs at least one class and one colour".into());
        }
        let names = self.classes.iter().chain(&self.colours);
        // Lower-case letters only: the tokenizer lower-cases and splits at anything else, and
        // digits would let a name look like an edge word.
        if let Some(bad) = names
            .clone()
            .find(|n| n.is_empty() || !n.chars().all(|c| c.is_ascii_lowercase()))
        {
            return refuse(format!(
                "'{bad}' is not a word of lower-case letters a to z"
            ));
        }
        let mut sorted: Vec<&String> = names.collect();
        sorted.sort();
        if let Some(pair) = sorted.windows(2).find(|p| p[0] == p[1]) {
            return refuse(format!("'{}' is named twice", pair[0]));
        }
        Ok(())
    }

    /// Every word, in id order after the tokenizer's special tokens: classes, colours, then
    /// each edge's grid positions 0..=bins.
    pub fn words(&self) -> Vec<String> {
        let edges = EDGES
            .iter()
            .flat_map(|e| (0..=self.bins).map(move |i| format!("{e}{i}")));
        self.classes
            .iter()
            .chain(&self.colours)
            .cloned()
            .chain(edges)
            .collect()
    }

    /// Where the edge words are among the ids of [`crate::TextTokenizer::from_words`]'s
    /// tokenizer of [`Self::words`].
    pub fn edge_ids(&self) -> EdgeIds {
        EdgeIds {
            first: crate::tokenizer::SPECIAL_TOKENS + self.classes.len() + self.colours.len(),
            bins: self.bins,
            max_objects: self.max_objects,
        }
    }

    /// Tokens of the longest layout: its words between the opening and closing tokens.
    pub fn max_length(&self) -> usize {
        self.max_objects * WORDS_PER_OBJECT + 2
    }

    /// The layout as its words, after checking every object against the vocabulary.
    pub fn text(&self, layout: &Layout) -> Result<String, LayoutError> {
        if layout.objects.len() > self.max_objects {
            return Err(LayoutError::TooMany {
                got: layout.objects.len(),
                max: self.max_objects,
            });
        }
        let mut words = Vec::with_capacity(layout.objects.len() * WORDS_PER_OBJECT);
        for (index, object) in layout.objects.iter().enumerate() {
            known(index, "class", &object.class, &self.classes)?;
            known(index, "colour", &object.colour, &self.colours)?;
            let edges = self.grid_box(index, object.bbox)?;
            words.push(object.class.clone());
            words.push(object.colour.clone());
            words.extend(EDGES.iter().zip(edges).map(|(e, v)| format!("{e}{v}")));
        }
        Ok(words.join(" "))
    }

    /// A box's edges on the grid, refusing one that is not a box inside the image or that
    /// rounds to nothing.
    pub(crate) fn grid_box(&self, index: usize, bbox: [f64; 4]) -> Result<[usize; 4], LayoutError> {
        let [x0, y0, x1, y1] = bbox;
        let inside = bbox.iter().all(|v| (0.0..=1.0).contains(v)) && x0 < x1 && y0 < y1;
        let grid = bbox.map(|v| (v * self.bins as f64).round() as usize);
        if !inside || grid[0] >= grid[2] || grid[1] >= grid[3] {
            return Err(LayoutError::Box {
                index,
                bbox,
                bins: self.bins,
            });
        }
        Ok(grid)
    }

    /// The layout that `words` ([`Self::text`]'s form) describe, boxes on the grid; its
    /// classes and colours are checked by [`Self::text`].
    fn parse_words(&self, words: &str) -> Result<Layout, LayoutError> {
        let words: Vec<&str> = words.split_whitespace().collect();
        let refuse = |message: String| LayoutError::Words {
            message,
            example: self.example(),
        };
        if !words.len().is_multiple_of(WORDS_PER_OBJECT) {
            return Err(refuse(format!(
                "{} words do not make objects of {WORDS_PER_OBJECT} (class, colour, left, top, right, bottom)",
                words.len()
            )));
        }
        let objects = words
            .chunks(WORDS_PER_OBJECT)
            .enumerate()
            .map(|(index, w)| {
                let mut edges = [0f64; 4];
                for (k, (prefix, word)) in EDGES.iter().zip(&w[2..]).enumerate() {
                    edges[k] = word
                        .strip_prefix(*prefix)
                        .and_then(|v| v.parse::<usize>().ok())
                        .filter(|&v| v <= self.bins)
                        .ok_or_else(|| {
                            refuse(format!(
                                "object {index}: '{word}' is not an edge {prefix}0 to {prefix}{}",
                                self.bins
                            ))
                        })? as f64
                        / self.bins as f64;
                }
                Ok(LayoutObject {
                    class: w[0].to_string(),
                    colour: w[1].to_string(),
                    bbox: edges,
                })
            })
            .collect::<Result<Vec<_>, LayoutError>>()?;
        Ok(Layout { objects })
    }

    /// A prompt of a layout model, as its JSON or its words, in the words the tokenizer takes;
    /// the empty prompt stays empty (the unconditional layout).
    pub fn prompt(&self, prompt: &str) -> Result<String, LayoutError> {
        let trimmed = prompt.trim();
        if trimmed.starts_with('{') {
            let layout: Layout =
                serde_json::from_str(trimmed).map_err(|e| LayoutError::Json(e.to_string()))?;
            self.text(&layout)
        } else {
            self.text(&self.parse_words(trimmed)?)
        }
    }

    /// A one-object layout in words, for messages.
    fn example(&self) -> String {
        let b = self.bins;
        format!(
            "{} {} l0 t0 r{} b{}",
            self.classes[0],
            self.colours[0],
            b.div_ceil(2),
            b.div_ceil(2)
        )
    }
}

fn known(
    index: usize,
    what: &'static str,
    word: &str,
    names: &[String],
) -> Result<(), LayoutError> {
    if names.iter().any(|n| n == word) {
        return Ok(());
    }
    Err(LayoutError::Unknown {
        index,
        what,
        word: word.chars().take(64).collect(),
        known: names.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocabulary() -> LayoutVocabulary {
        LayoutVocabulary {
            classes: vec!["circle".into(), "star".into()],
            colours: vec!["red".into(), "blue".into()],
            bins: 8,
            max_objects: 2,
            box_attention: false,
        }
    }

    #[test]
    fn the_edge_tables_read_each_token_back_as_its_coordinate() {
        let v = vocabulary();
        let tokenizer = crate::TextTokenizer::from_words(&v.words()).unwrap();
        let ids = tokenizer.encode("star blue l1 t2 r4 b8", 14).unwrap().ids;
        let tables = v.edge_ids().tables(tokenizer.vocab_size());
        let at = |position: usize| tables.each_ref().map(|t| t[ids[position] as usize]);
        // [CLS] star blue l1 t2 r4 b8 [SEP]: each edge word in its own place,
        assert_eq!(
            [at(3)[0], at(4)[1], at(5)[2], at(6)[3]],
            [0.125, 0.25, 0.5, 1.0]
        );
        // and every other token the whole image, in any place.
        for position in [0, 1, 2, 7, 8, 13] {
            assert_eq!(at(position), [0.0, 0.0, 1.0, 1.0], "position {position}");
        }
        assert_eq!(at(3)[1], 0.0, "l1 is no top edge");
    }

    #[test]
    fn a_layout_becomes_six_words_an_object_and_reads_back_on_the_grid() {
        let v = vocabulary();
        let json = r#"{"objects": [{"class": "star", "colour": "blue", "box": [0.1, 0.26, 0.5, 1.0]},
                                   {"shape": "circle", "color": "red", "box": [0, 0, 0.25, 0.25]}]}"#;
        let words = v.prompt(json).unwrap();
        assert_eq!(words, "star blue l1 t2 r4 b8 circle red l0 t0 r2 b2");
        let back = v.parse_words(&words).unwrap();
        assert_eq!(back.objects[0].bbox, [0.125, 0.25, 0.5, 1.0]);
        assert_eq!(v.prompt(&words).unwrap(), words);
        assert_eq!(v.prompt("  ").unwrap(), "");
        assert_eq!(v.max_length(), 14);
        assert_eq!(v.words().len(), 4 + 4 * 9);
    }

    #[test]
    fn what_the_vocabulary_does_not_hold_is_refused_by_name() {
        let v = vocabulary();
        let one = |class: &str, colour: &str, bbox: [f64; 4]| Layout {
            objects: vec![LayoutObject {
                class: class.into(),
                colour: colour.into(),
                bbox,
            }],
        };
        let err = v
            .text(&one("square", "red", [0.0, 0.0, 0.5, 0.5]))
            .unwrap_err();
        assert!(err.to_string().contains("unknown class 'square'"), "{err}");
        let err = v
            .text(&one("star", "green", [0.0, 0.0, 0.5, 0.5]))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown colour 'green' (this model knows red, blue)"),
            "{err}"
        );
        for bbox in [
            [0.5, 0.0, 0.2, 0.5],
            [0.0, 0.0, 1.5, 0.5],
            [f64::NAN, 0.0, 0.5, 0.5],
            [0.0, 0.0, 0.01, 0.5],
        ] {
            assert!(matches!(
                v.text(&one("star", "red", bbox)),
                Err(LayoutError::Box { .. })
            ));
        }
        let three = Layout {
            objects: vec![one("star", "red", [0.0, 0.0, 0.5, 0.5]).objects[0].clone(); 3],
        };
        assert_eq!(v.text(&three), Err(LayoutError::TooMany { got: 3, max: 2 }));
        for words in [
            "a red circle",
            "star red l0 t0 r9 b2",
            "star red t0 l0 r2 b2",
        ] {
            let err = v.prompt(words).unwrap_err();
            assert!(err.to_string().contains("circle red l0 t0 r4 b4"), "{err}");
        }
        assert!(matches!(
            v.prompt(r#"{"objects": [{"class": "star"}]}"#),
            Err(LayoutError::Json(_))
        ));
        assert!(matches!(
            v.prompt(r#"{"objects": [], "extra": 1}"#),
            Err(LayoutError::Json(_))
        ));
    }

    #[test]
    fn a_vocabulary_whose_words_the_tokenizer_would_split_or_confuse_is_refused() {
        for (classes, bins) in [
            (vec!["traffic light"], 8),
            (vec!["l3"], 8),
            (vec!["red"], 8),
            (vec!["Circle"], 8),
            (vec!["circle"], 0),
        ] {
            let v = LayoutVocabulary {
                classes: classes.into_iter().map(String::from).collect(),
                bins,
                ..vocabulary()
            };
            assert!(v.validate().is_err(), "{v:?}");
        }
        assert!(vocabulary().validate().is_ok());
    }
}
