//! The caption tokenizer: BERT-style WordPiece (the paper's text-to-image model uses the BERT
//! tokenizer, E.2.1), trained on the data set's own captions, stored as `tokenizer.json`; or
//! CLIP's byte-level BPE, for imported Stable Diffusion models. As untrusted input, a file is
//! read only if every component is of a kind these two use (the only regular expressions
//! allowed are CLIP's own two, compared as text), its vocabulary is bounded, and prompts are
//! bounded in length.

use std::path::Path;

use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, PaddingParams, Tokenizer, TokenizerImpl};

pub const PAD: &str = "[PAD]";
pub const UNK: &str = "[UNK]";
pub const CLS: &str = "[CLS]";
pub const SEP: &str = "[SEP]";
/// The special tokens, ids 0 to 3 of a tokenizer made here.
const SPECIALS: [&str; SPECIAL_TOKENS] = [PAD, UNK, CLS, SEP];
pub const SPECIAL_TOKENS: usize = 4;
/// A `tokenizer.json` larger than this is refused (the shipped ones are 43 kB).
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;
/// Vocabulary entries a tokenizer may have (BERT's has 30,522, CLIP's 49,408).
const MAX_VOCABULARY: usize = 1 << 20;
/// Longest prompt, in bytes: far beyond any text encoder's context, short enough to tokenize
/// in microseconds.
pub const MAX_PROMPT_BYTES: usize = 16 << 10;
/// The component types a loaded `tokenizer.json` may use, by JSON key (null: none).
const ACCEPTED: [(&str, &[&str]); 5] = [
    ("model", &["WordPiece", "BPE"]),
    (
        "normalizer",
        &["BertNormalizer", "Sequence", "NFC", "Lowercase", "Replace"],
    ),
    (
        "pre_tokenizer",
        &[
            "BertPreTokenizer",
            "Whitespace",
            "WhitespaceSplit",
            "Sequence",
            "Split",
            "ByteLevel",
        ],
    ),
    (
        "post_processor",
        // TemplateProcessing: bert-base-uncased's tokenizer.json, which the paper's
        // text-to-image model tokenizes with.
        &["BertProcessing", "RobertaProcessing", "TemplateProcessing"],
    ),
    ("decoder", &["WordPiece", "ByteLevel"]),
];
/// CLIP's word splitting: its special tokens, English contractions, letter runs, single
/// digits, runs of other non-space characters (the pattern `transformers` writes).
pub const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// CLIP's whitespace clean-up: runs of whitespace become one space.
pub const CLIP_WHITESPACE: &str = r"\s+";

/// Whether `component` (a normalizer or pre-tokenizer, possibly a `Sequence`) is built only of
/// `kinds`, with regular expressions only where they equal CLIP's.
fn accepted(component: &serde_json::Value, kinds: &[&str], depth: usize) -> Result<(), String> {
    let kind = component.get("type").and_then(|t| t.as_str());
    let Some(kind) = kind.filter(|k| kinds.contains(k)) else {
        return Err(format!(
            "{}; this runtime reads types {}",
            kind.map_or("missing or untyped".into(), |k| format!("of type {k}")),
            kinds.join(", ")
        ));
    };
    if kind == "Sequence" {
        let parts = component
            .get("normalizers")
            .or_else(|| component.get("pretokenizers"))
            .and_then(|p| p.as_array())
            .ok_or("a Sequence without parts")?;
        if depth > 0 || parts.len() > 8 {
            return Err("a Sequence nested or longer than 8".into());
        }
        return parts.iter().try_for_each(|p| accepted(p, kinds, depth + 1));
    }
    let regex = component.get("pattern").and_then(|p| p.get("Regex"));
    let allowed = match kind {
        "Split" => Some(CLIP_SPLIT),
        "Replace" => Some(CLIP_WHITESPACE),
        _ => None,
    };
    match (regex, allowed) {
        (None, _) => Ok(()),
        (Some(r), Some(a)) if r.as_str() == Some(a) => Ok(()),
        (Some(r), _) => Err(format!(
            "a {kind} with the regular expression {r}, which is not CLIP's"
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: cannot load the tokenizer: {message}")]
    Load { path: String, message: String },
    #[error("cannot save the tokenizer to {path}: {message}")]
    Save { path: String, message: String },
    #[error("tokenizer training failed: {0}")]
    Train(String),
    #[error("tokenizer: {0}")]
    Encode(String),
    #[error("the tokenizer has no '{0}' token (a padded sequence needs one)")]
    MissingPad(String),
}

/// A prompt as the text encoder takes it: exactly `max_length` ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<i64>,
    /// Whether the prompt was longer than the context and was cut.
    pub truncated: bool,
}

pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: u32,
    /// The special token that ends every encoded prompt, if any.
    closing: Option<u32>,
    /// The file's own padding (naming its pad token), written back when saved.
    padding: Option<PaddingParams>,
}

/// Checks the bytes of a `tokenizer.json` (`source` names it in errors) as untrusted input:
/// bounded in size and vocabulary, and built only of the component types this module knows.
pub fn check_untrusted(bytes: &[u8], source: &str) -> Result<(), TokenizerError> {
    let refuse = |message: String| TokenizerError::Load {
        path: source.to_string(),
        message,
    };
    if bytes.len() as u64 > MAX_TOKENIZER_BYTES {
        return Err(refuse(format!(
            "{} bytes, above the {MAX_TOKENIZER_BYTES} a tokenizer.json may have",
            bytes.len()
        )));
    }
    let json: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| refuse(format!("not JSON: {e}")))?;
    for (key, kinds) in ACCEPTED {
        match json.get(key) {
            None | Some(serde_json::Value::Null) if key != "model" => continue,
            None => return Err(refuse(format!("its {key} is missing"))),
            Some(component) => {
                accepted(component, kinds, 0).map_err(|m| refuse(format!("its {key} is {m}")))?
            }
        }
    }
    let entries = json["model"]["vocab"].as_object().map_or(0, |v| v.len())
        + json["added_tokens"].as_array().map_or(0, |a| a.len());
    if entries > MAX_VOCABULARY {
        return Err(refuse(format!(
            "{entries} vocabulary entries, above the {MAX_VOCABULARY} a tokenizer may have"
        )));
    }
    Ok(())
}

type BertTokenizer =
    TokenizerImpl<WordPiece, BertNormalizer, BertPreTokenizer, BertProcessing, WordPieceDecoder>;

/// BERT's normalisation as the captions' tokenizers apply it: lower case, accents off.
pub(crate) fn bert_normalizer() -> BertNormalizer {
    BertNormalizer::new(true, true, None, true)
}

/// BERT's lower-casing normalisation, word splitting and decoding around `model`.
fn bert_pipeline(model: WordPiece) -> BertTokenizer {
    let mut tokenizer: BertTokenizer = TokenizerImpl::new(model);
    tokenizer
        .with_normalizer(Some(bert_normalizer()))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_decoder(Some(WordPieceDecoder::default()));
    tokenizer
}

impl TextTokenizer {
    /// Trains a lower-casing WordPiece vocabulary of at most `vocab_size` entries (special
    /// tokens included) on `captions`; the same captions give the same vocabulary
    /// ([`crate::wordpiece`]).
    pub fn train<I, S>(captions: I, vocab_size: usize) -> Result<Self, TokenizerError>
    where
        I: Iterator<Item = S>,
        S: AsRef<str>,
    {
        let pieces = crate::wordpiece::learn(captions, SPECIALS.len(), vocab_size)
            .map_err(TokenizerError::Train)?;
        Self::from_words(&pieces)
    }

    /// A lower-casing WordPiece tokenizer of exactly the special tokens then `words`, in id
    /// order: a trained vocabulary's pieces, or a layout model's fixed vocabulary
    /// ([`crate::layout`]), where each word is one token and anything else is unknown.
    pub fn from_words(words: &[String]) -> Result<Self, TokenizerError> {
        let vocab: serde_json::Map<String, serde_json::Value> = SPECIALS
            .iter()
            .map(|s| s.to_string())
            .chain(words.iter().cloned())
            .enumerate()
            .map(|(id, w)| (w, id.into()))
            .collect();
        // Through its serialised form: the builder wants the crate's own hash map type.
        let model = serde_json::json!({
            "type": "WordPiece",
            "vocab": vocab,
            "unk_token": UNK,
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
        });
        // From text: the model's deserialiser borrows its strings.
        let model: WordPiece = serde_json::from_str(&model.to_string())
            .map_err(|e| TokenizerError::Train(e.to_string()))?;
        Self::framed(bert_pipeline(model))
    }

    /// The tokenizer with BERT's framing, [CLS] prompt [SEP], added.
    fn framed(mut tokenizer: BertTokenizer) -> Result<Self, TokenizerError> {
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| TokenizerError::Train(format!("the vocabulary has no {t}")))
        };
        let (sep, cls) = (id(SEP)?, id(CLS)?);
        // Matched whole in prompts and left out of decoded text.
        tokenizer.add_special_tokens(&SPECIALS.map(|t| AddedToken::from(t, true)));
        tokenizer.with_post_processor(Some(BertProcessing::new(
            (SEP.into(), sep),
            (CLS.into(), cls),
        )));
        Self::from_tokenizer(Tokenizer::from(tokenizer))
    }

    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::Load {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        Self::from_bytes(&bytes, &shown)
    }

    /// A tokenizer from the bytes of a `tokenizer.json` (`source` names it in errors), checked
    /// as untrusted input by [`check_untrusted`].
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Self, TokenizerError> {
        check_untrusted(bytes, source)?;
        let inner = Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::Load {
            path: source.to_string(),
            message: e.to_string(),
        })?;
        Self::from_tokenizer(inner)
    }

    fn from_tokenizer(mut inner: Tokenizer) -> Result<Self, TokenizerError> {
        // The pad token is the file's padding token where it names one (CLIP), else [PAD]:
        // padding and truncation are done here, so the file's own are switched off.
        let padding = inner.get_padding().cloned();
        let pad_id = match &padding {
            Some(padding) => padding.pad_id,
            None => inner
                .token_to_id(PAD)
                .ok_or_else(|| TokenizerError::MissingPad(PAD.into()))?,
        };
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        // What closes every sequence ([SEP], CLIP's end token): kept when a prompt is cut.
        let framing = inner
            .encode("", true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let closing = framing.get_ids().last().copied();
        Ok(Self {
            inner,
            pad_id,
            closing,
            padding,
        })
    }

    /// Writes `tokenizer.json` atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        let save_error = |message: String| TokenizerError::Save {
            path: path.display().to_string(),
            message,
        };
        let mut tokenizer = self.inner.clone();
        tokenizer.with_padding(self.padding.clone());
        let json = tokenizer
            .to_string(true)
            .map_err(|e| save_error(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| save_error(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The largest id the tokenizer can produce (ids need not be dense).
    pub fn max_id(&self) -> usize {
        self.inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&id| id as usize)
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Number of tokens of `text`, special tokens included, before padding or truncation.
    pub fn token_count(&self, text: &str) -> Result<usize, TokenizerError> {
        Ok(self.ids(text)?.len())
    }

    /// The ids of a prompt of at most [`MAX_PROMPT_BYTES`], special tokens included.
    fn ids(&self, text: &str) -> Result<Vec<i64>, TokenizerError> {
        if text.len() > MAX_PROMPT_BYTES {
            return Err(TokenizerError::Encode(format!(
                "the prompt is {} bytes long, above the {MAX_PROMPT_BYTES} a prompt may have",
                text.len()
            )));
        }
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Token ids of `text` with the special tokens, cut or padded to `max_length`.
    pub fn encode(&self, text: &str, max_length: usize) -> Result<Encoded, TokenizerError> {
        let mut ids = self.ids(text)?;
        let truncated = ids.len() > max_length;
        if truncated {
            // Keep the closing token (when there is one) so the sequence still ends as trained.
            ids.truncate(max_length);
            if let (Some(closing), Some(last)) = (self.closing, ids.last_mut()) {
                *last = closing as i64;
            }
        }
        ids.resize(max_length, self.pad_id as i64);
        Ok(Encoded { ids, truncated })
    }

    /// Text of ids, without special tokens.
    pub fn decode(&self, ids: &[i64]) -> Result<String, TokenizerError> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner
            .decode(&ids, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }
}
