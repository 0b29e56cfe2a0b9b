//! The caption tokenizer: BERT-style WordPiece (the paper's text-to-image model uses the BERT
//! tokenizer, E.2.1), trained on the data set's own captions, stored as `tokenizer.json`.
//! Any other `tokenizer.json` can be loaded in its place.

use std::path::Path;

use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainerBuilder};
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Tokenizer, TokenizerImpl};

pub const PAD: &str = "[PAD]";
pub const UNK: &str = "[UNK]";
pub const CLS: &str = "[CLS]";
pub const SEP: &str = "[SEP]";

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
}

impl TextTokenizer {
    /// Trains a lower-casing WordPiece vocabulary of at most `vocab_size` entries (special
    /// tokens included) on `captions`.
    pub fn train<I, S>(captions: I, vocab_size: usize) -> Result<Self, TokenizerError>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let specials: Vec<AddedToken> = [PAD, UNK, CLS, SEP]
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();
        let mut trainer = WordPieceTrainerBuilder::default()
            .vocab_size(vocab_size)
            .min_frequency(1)
            .show_progress(false)
            .special_tokens(specials)
            .build();
        let mut tokenizer: TokenizerImpl<
            WordPiece,
            BertNormalizer,
            BertPreTokenizer,
            BertProcessing,
            WordPieceDecoder,
        > = TokenizerImpl::new(
            WordPiece::builder()
                .unk_token(UNK.into())
                .build()
                .map_err(|e| TokenizerError::Train(e.to_string()))?,
        );
        tokenizer
            .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
            .with_pre_tokenizer(Some(BertPreTokenizer))
            .with_decoder(Some(WordPieceDecoder::default()));
        tokenizer
            .train(&mut trainer, captions)
            .map_err(|e| TokenizerError::Train(e.to_string()))?;
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| TokenizerError::Train(format!("{t} missing after training")))
        };
        // WordPiece keeps every character of the captions even past the requested size; a
        // vocabulary larger than asked would index past the model's embedding table.
        let trained = tokenizer.get_vocab_size(true);
        if trained > vocab_size {
            return Err(TokenizerError::Train(format!(
                "the captions' characters alone need {trained} entries, more than the {vocab_size} asked for; raise the vocabulary size"
            )));
        }
        let (sep, cls) = (id(SEP)?, id(CLS)?);
        tokenizer.with_post_processor(Some(BertProcessing::new(
            (SEP.into(), sep),
            (CLS.into(), cls),
        )));
        Self::from_tokenizer(Tokenizer::from(tokenizer))
    }

    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let inner = Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_tokenizer(inner)
    }

    fn from_tokenizer(inner: Tokenizer) -> Result<Self, TokenizerError> {
        let pad_id = inner
            .token_to_id(PAD)
            .ok_or_else(|| TokenizerError::MissingPad(PAD.into()))?;
        Ok(Self { inner, pad_id })
    }

    /// Writes `tokenizer.json` atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        let save_error = |message: String| TokenizerError::Save {
            path: path.display().to_string(),
            message,
        };
        let json = self
            .inner
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

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Number of tokens of `text`, special tokens included, before padding or truncation.
    pub fn token_count(&self, text: &str) -> Result<usize, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().len())
    }

    /// Token ids of `text` with the special tokens, cut or padded to `max_length`.
    pub fn encode(&self, text: &str, max_length: usize) -> Result<Encoded, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let mut ids: Vec<i64> = encoding.get_ids().iter().map(|&i| i as i64).collect();
        let truncated = ids.len() > max_length;
        if truncated {
            // Keep the closing [SEP] (when there is one) so the sequence still ends as trained.
            let last = *ids.last().expect("longer than max_length");
            ids.truncate(max_length);
            if self.inner.id_to_token(last as u32).as_deref() == Some(SEP) {
                ids[max_length - 1] = last;
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
