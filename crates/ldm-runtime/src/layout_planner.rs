//! Captions to layouts through a layout bundle's `planner` graph (`ldm_core::layout_plan`):
//! each caption's ids in one batched call, each row's slot scores read as the layout they
//! pick, as its JSON, which the bundle then draws as any layout given as JSON (and which a
//! user may keep, edit and pass back).

use ldm_core::layout::LayoutVocabulary;
use ldm_core::layout_plan::{self, is_caption};
use ldm_core::{ConditionError, TextTokenizer};

use crate::{Bundle, RequestError, RuntimeError, Session, Tensor};

/// A layout bundle's caption reader.
pub(crate) struct LayoutPlanner<'a> {
    session: &'a mut dyn Session,
    tokenizer: &'a TextTokenizer,
    max_length: usize,
    vocabulary: &'a LayoutVocabulary,
}

impl<'a> LayoutPlanner<'a> {
    /// The planner of `bundle` (which has one) on its `session`.
    pub fn of(bundle: &'a Bundle, session: &'a mut dyn Session) -> Self {
        let conditioning = &bundle.manifest.conditioning;
        Self {
            session,
            tokenizer: bundle
                .planner_tokenizer
                .as_ref()
                .expect("bundles with a planner load its tokenizer"),
            max_length: conditioning.planner().expect("a planner bundle").max_length,
            vocabulary: conditioning
                .layout()
                .expect("validated: planners plan layouts"),
        }
    }

    /// Each prompt as a layout prompt: a caption as the JSON of the layout the planner reads
    /// in it, a layout's JSON and the empty prompt (the unconditional layout) as they are.
    pub fn layouts(&mut self, prompts: &[String]) -> Result<Vec<String>, RuntimeError> {
        let captions: Vec<&String> = prompts.iter().filter(|p| is_caption(p)).collect();
        let mut planned = self.plan(&captions)?.into_iter();
        Ok(prompts
            .iter()
            .map(|p| {
                if is_caption(p) {
                    planned.next().expect("one plan per caption")
                } else {
                    p.clone()
                }
            })
            .collect())
    }

    /// The layouts of `captions`, as JSON.
    fn plan(&mut self, captions: &[&String]) -> Result<Vec<String>, RuntimeError> {
        if captions.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(captions.len() * self.max_length);
        for caption in captions {
            let encoded = self
                .tokenizer
                .encode(caption, self.max_length)
                .map_err(|e| RequestError::from(ConditionError::from(e)))?;
            ids.extend(encoded.ids);
        }
        let ids = Tensor::i64(&[captions.len(), self.max_length], ids)?;
        let name = self.session.input_names()[0].clone();
        let scores = crate::pipeline::run_finite(self.session, "planner", &[(&name, &ids)])?;
        let scores = scores.as_f32().expect("checked f32");
        let per_caption = scores.len() / captions.len();
        scores
            .chunks(per_caption)
            .map(|row| {
                let layout = layout_plan::read(self.vocabulary, row)
                    .map_err(|e| RequestError::from(ConditionError::from(e)))?;
                Ok(layout.to_json())
            })
            .collect()
    }
}
