//! The layout planner (`ldm_core::layout_plan`): a caption's tokens through the paper's text
//! transformer (E.2.1), then one query per layout slot, each the caption's [CLS] feature plus a
//! learned slot embedding, through `depth` decoder blocks (self-attention among the slots, so
//! two slots do not claim one object; cross-attention to the caption; MLP), and a linear head
//! to the slot's scores. Slots are filled in the caption's order, as DETR's queries are, but
//! matched to objects by order rather than by assignment: the captions name objects in the
//! layout's drawing order.

use ldm_core::layout::LayoutVocabulary;
use ldm_core::layout_plan::SlotScores;

use crate::conditioning::ldm_text_encoder;
use crate::config::PlannerConfig;
use crate::layers::{layer_norm, linear, multi_head_attention, Path};
use crate::ops::{Init, Keys, Ops, Result};

/// Caption token ids [B, max_length] (int64) -> scores [B, max_objects, slot width].
pub fn forward<O: Ops>(
    o: &mut O,
    ids: &O::T,
    config: &PlannerConfig,
    layout: &LayoutVocabulary,
) -> Result<O::T> {
    let shape = config.encoder_shape();
    let (width, heads, head_dim) = (shape.width, shape.heads, shape.head_dim);
    let caption = ldm_text_encoder(o, ids, shape)?;
    let first = o.narrow(&caption, 1, 0, 1)?;
    let slots = o.param(
        "slot_emb.weight",
        &[layout.max_objects, width],
        Init::Normal(0.02),
    )?;
    // [B, 1, width] + [slots, width] -> [B, slots, width]
    let mut x = o.add(&first, &slots)?;
    for i in 0..config.depth {
        let p = Path::root("decoder").pp(i);
        let attend = |o: &mut O, name: &str, x: &O::T, context: Option<&O::T>| {
            let n = layer_norm(o, &p.pp(format!("{name}_norm")), x, width)?;
            let a = multi_head_attention(
                o,
                &p.pp(name),
                &n,
                context.unwrap_or(&n),
                width,
                width,
                heads,
                head_dim,
                Keys::Sequence,
                None,
            )?;
            o.add(x, &a)
        };
        x = attend(o, "self_attn", &x, None)?;
        x = attend(o, "cross_attn", &x, Some(&caption))?;
        let n = layer_norm(o, &p.pp("ff_norm"), &x, width)?;
        let h = linear(o, &p.pp("ff").pp(0), &n, width, 4 * width, true)?;
        let h = o.gelu(&h)?;
        let h = linear(o, &p.pp("ff").pp(2), &h, 4 * width, width, true)?;
        x = o.add(&x, &h)?;
    }
    let x = layer_norm(o, &Path::root("norm"), &x, width)?;
    let scores = SlotScores::of(layout).width();
    linear(o, &Path::root("head"), &x, width, scores, true)
}
