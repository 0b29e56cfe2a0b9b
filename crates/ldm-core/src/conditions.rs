//! The conditioner's inputs of a batch, as every engine builds them: token ids of the prompts
//! (text models) or class ids (class models), then, when guided, the unconditional rows
//! (the negative prompt, or the null class `classes`) in the same order as the images.

use crate::guided::repeat;
use crate::layout::{LayoutError, LayoutVocabulary};
use crate::{Encoded, TextTokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum ConditionError {
    #[error("unknown class: '{prompt}' is neither a class name of this model ({names}) nor an id below {classes}")]
    UnknownClass {
        prompt: String,
        classes: usize,
        names: String,
    },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

/// The prompts of a text model, with its layout vocabulary if it draws layouts.
#[derive(Clone, Copy)]
pub struct TextPrompts<'a> {
    pub tokenizer: &'a TextTokenizer,
    pub layout: Option<&'a LayoutVocabulary>,
    pub max_length: usize,
}

impl TextPrompts<'_> {
    /// A prompt as the tokenizer takes it: itself, or a layout model's layout (its JSON or
    /// its words) in the vocabulary's words, refused if it is not one.
    fn words(&self, prompt: &str) -> Result<String, ConditionError> {
        Ok(match self.layout {
            Some(layout) => layout.prompt(prompt)?,
            None => prompt.to_string(),
        })
    }

    /// The `max_length` ids of one prompt.
    pub fn encode(&self, prompt: &str) -> Result<Encoded, ConditionError> {
        Ok(self
            .tokenizer
            .encode(&self.words(prompt)?, self.max_length)?)
    }

    /// Token ids [rows, max_length] of `prompts`, then `negative` once per prompt when
    /// `guided`.
    pub fn ids(
        &self,
        prompts: &[String],
        negative: &str,
        guided: bool,
    ) -> Result<Vec<i64>, ConditionError> {
        let rows = prompts.len() * if guided { 2 } else { 1 };
        let mut ids = Vec::with_capacity(rows * self.max_length);
        for prompt in prompts {
            ids.extend(self.encode(prompt)?.ids);
        }
        if guided {
            let negative = self.encode(negative)?.ids;
            ids.extend(repeat(&negative, prompts.len()));
        }
        Ok(ids)
    }
}

/// Class ids [rows] of `prompts` (class names, or ids below `classes`), then the null class
/// `classes` once per prompt when `guided`.
pub fn class_ids(
    prompts: &[String],
    classes: usize,
    names: &[String],
    guided: bool,
) -> Result<Vec<i64>, ConditionError> {
    let mut ids = prompts
        .iter()
        .map(|p| class_id(p, classes, names))
        .collect::<Result<Vec<_>, _>>()?;
    if guided {
        ids.extend(std::iter::repeat_n(classes as i64, prompts.len()));
    }
    Ok(ids)
}

/// A class name's index in `names`, or a number below `classes`.
pub fn class_id(prompt: &str, classes: usize, names: &[String]) -> Result<i64, ConditionError> {
    if let Some(i) = names.iter().position(|n| n == prompt) {
        return Ok(i as i64);
    }
    match prompt.parse::<usize>() {
        Ok(id) if id < classes => Ok(id as i64),
        _ => Err(ConditionError::UnknownClass {
            prompt: prompt.into(),
            classes,
            names: names.join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_and_ids_are_accepted_then_the_null_class_follows() {
        let names = vec!["cat".to_string(), "dog".to_string()];
        let ids = class_ids(&["dog".into(), "0".into()], 3, &names, true).unwrap();
        assert_eq!(ids, [1, 0, 3, 3]);
        let err = class_id("3", 3, &names).unwrap_err().to_string();
        assert!(
            err.contains("'3' is neither") && err.contains("cat, dog"),
            "{err}"
        );
    }
}
