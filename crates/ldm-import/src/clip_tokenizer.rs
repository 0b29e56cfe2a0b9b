//! CLIP's byte-level BPE tokenizer, from the `vocab.json` and `merges.txt` a checkpoint's
//! `tokenizer/` folder holds, written as the `tokenizer.json` bundles carry: the text is NFC
//! normalised, its whitespace runs made single spaces and lower-cased, split into words,
//! numbers and punctuation runs, encoded byte-level with `</w>` ending each word, and framed
//! by `<|startoftext|>` and `<|endoftext|>`; the pad token is the folder's (CLIP's end token in
//! Stable Diffusion 1.x, `!` in 2.x).

use std::path::Path;

use ldm_core::tokenizer::{CLIP_SPLIT, CLIP_WHITESPACE};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as Normalizers, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, PaddingParams, PaddingStrategy, SplitDelimiterBehavior, Tokenizer};

use crate::ImportError;

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
/// CLIP's vocab.json is 1.6 MB and merges.txt 0.5 MB.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// The `tokenizer.json` text of the CLIP tokenizer in `dir`: its own `tokenizer.json` where
/// it has one (checked as untrusted input), else one built from `vocab.json` and
/// `merges.txt`; the pad token from `special_tokens_map.json` or `tokenizer_config.json` when
/// they name one, CLIP's end token otherwise.
pub fn from_folder(dir: &Path, max_length: usize) -> Result<String, ImportError> {
    let pad_token = pad_token(dir)?.unwrap_or_else(|| EOS.to_string());
    if dir.join("tokenizer.json").is_file() {
        let text = read_tokenizer_json(dir, "tokenizer.json")?;
        let shown = dir.join("tokenizer.json").display().to_string();
        let mut tokenizer =
            Tokenizer::from_bytes(text.as_bytes()).map_err(|e| ImportError::Checkpoint {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        return with_padding(&mut tokenizer, &pad_token, max_length, &shown);
    }
    from_vocabulary(dir, &pad_token, max_length)
}

/// The text of `dir/name`, a `tokenizer.json` read confined to `dir`, bounded in size and
/// checked as untrusted input.
pub(crate) fn read_tokenizer_json(dir: &Path, name: &str) -> Result<String, ImportError> {
    let path = dir.join(name);
    let bytes = ldm_core::confined::read_confined(dir, name, MAX_FILE_BYTES)
        .map_err(|e| ImportError::io(&path, e.reason))?;
    let shown = path.display().to_string();
    let bad = |message: String| ImportError::Checkpoint {
        path: shown.clone(),
        message,
    };
    ldm_core::tokenizer::check_untrusted(&bytes, &shown).map_err(|e| bad(e.to_string()))?;
    String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))
}

/// `tokenizer` with `pad_token` as its padding, as `tokenizer.json` text.
fn with_padding(
    tokenizer: &mut Tokenizer,
    pad_token: &str,
    max_length: usize,
    shown: &str,
) -> Result<String, ImportError> {
    let pad = tokenizer
        .token_to_id(pad_token)
        .ok_or_else(|| ImportError::Checkpoint {
            path: shown.to_string(),
            message: format!("the vocabulary has no pad token '{pad_token}'"),
        })?;
    // A special token, as transformers makes it: a `!` in a prompt is then the pad id too
    // (Stable Diffusion 2.x pads with `!`), as the diffusers pipelines tokenize it.
    tokenizer.add_special_tokens(&[AddedToken::from(pad_token, true)]);
    // The runtime pads every prompt to max_length with this token.
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::Fixed(max_length),
        pad_id: pad,
        pad_token: pad_token.to_string(),
        ..PaddingParams::default()
    }));
    tokenizer
        .to_string(true)
        .map_err(|e| ImportError::Checkpoint {
            path: shown.to_string(),
            message: e.to_string(),
        })
}

fn from_vocabulary(dir: &Path, pad_token: &str, max_length: usize) -> Result<String, ImportError> {
    let path = |name: &str| -> Result<String, ImportError> {
        let file = ldm_core::confined::confined(dir, name)
            .map_err(|e| ImportError::io(&dir.join(name), e.reason))?;
        let size = std::fs::metadata(&file)
            .map_err(|e| ImportError::io(&file, e))?
            .len();
        if size > MAX_FILE_BYTES {
            return Err(ImportError::io(
                &file,
                format!("{size} bytes is too large for a tokenizer file"),
            ));
        }
        Ok(file.display().to_string())
    };
    let (vocab, merges) = (path("vocab.json")?, path("merges.txt")?);
    let bad = |e: tokenizers::Error| ImportError::Checkpoint {
        path: dir.display().to_string(),
        message: format!("cannot build CLIP's tokenizer: {e}"),
    };
    let bpe = BPE::from_file(&vocab, &merges)
        .unk_token(EOS.into())
        .end_of_word_suffix("</w>".into())
        .fuse_unk(false)
        .build()
        .map_err(bad)?;
    let mut tokenizer = Tokenizer::new(bpe);
    let id = |t: &Tokenizer, token: &str| {
        t.token_to_id(token).ok_or_else(|| ImportError::Checkpoint {
            path: vocab.clone(),
            message: format!("the vocabulary has no '{token}'"),
        })
    };
    let (bos, eos) = (id(&tokenizer, BOS)?, id(&tokenizer, EOS)?);
    tokenizer
        .with_normalizer(Some(Normalizers::new(vec![
            NFC.into(),
            Replace::new(
                tokenizers::normalizers::replace::ReplacePattern::Regex(CLIP_WHITESPACE.into()),
                " ",
            )
            .map_err(bad)?
            .into(),
            Lowercase.into(),
        ])))
        .with_pre_tokenizer(Some(PreTokenizers::new(vec![
            Split::new(
                SplitPattern::Regex(CLIP_SPLIT.into()),
                SplitDelimiterBehavior::Removed,
                true,
            )
            .map_err(bad)?
            .into(),
            ByteLevel::new(false, true, true).into(),
        ])))
        .with_post_processor(Some(
            RobertaProcessing::new((EOS.into(), eos), (BOS.into(), bos))
                .trim_offsets(false)
                .add_prefix_space(false),
        ))
        .with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer.add_special_tokens(&[AddedToken::from(BOS, true), AddedToken::from(EOS, true)]);
    with_padding(
        &mut tokenizer,
        pad_token,
        max_length,
        &dir.display().to_string(),
    )
}

/// The `pad_token` of the folder's special-token files, if it names one.
fn pad_token(dir: &Path) -> Result<Option<String>, ImportError> {
    for name in ["special_tokens_map.json", "tokenizer_config.json"] {
        let Ok(bytes) = ldm_core::confined::read_confined(dir, name, MAX_FILE_BYTES) else {
            continue;
        };
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ImportError::io(&dir.join(name), e))?;
        let token = match json.get("pad_token") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(v) => v
                .get("content")
                .and_then(|c| c.as_str())
                .map(str::to_string),
            None => None,
        };
        if token.is_some() {
            return Ok(token);
        }
    }
    Ok(None)
}
