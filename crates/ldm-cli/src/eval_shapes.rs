//! `ldm eval` on procedural shapes (rows with `colour`, `shape`, `size` and `position`, from
//! `ldm data shapes`): the pixel judge (`ldm_data::judge`) reads each image's one shape back,
//! and each attribute of the caption is scored on its own and all together, beside the judge
//! on the real images and the most common combination.

use image::RgbImage;
use ldm_data::judge::{judge, Judgement};
use ldm_data::Record;

use crate::eval::{majority, Accuracy};

/// Colour and shape together, then `caption_attributes`: each attribute, then all four; or
/// nothing when some row is not a procedural shape.
pub fn score(
    rows: &[Record],
    generated: &[RgbImage],
    real: &[RgbImage],
) -> (Option<Accuracy>, Vec<Accuracy>) {
    let single_shapes = rows
        .iter()
        .all(|r| SHAPE_ATTRIBUTES.iter().all(|a| r.column(a).is_some()));
    if !single_shapes {
        return (None, Vec::new());
    }
    let judged_generated: Vec<_> = generated.iter().map(judge).collect();
    let judged_real: Vec<_> = real.iter().map(judge).collect();
    let mut judged = [["colour", "shape"].as_slice()]
        .into_iter()
        .chain(SHAPE_ATTRIBUTES.iter().map(std::slice::from_ref))
        .chain([SHAPE_ATTRIBUTES.as_slice()])
        .map(|attributes| caption_accuracy(rows, &judged_generated, &judged_real, attributes));
    (judged.next(), judged.collect())
}

/// The columns of a procedural shapes row that its caption names.
const SHAPE_ATTRIBUTES: [&str; 4] = ["colour", "shape", "size", "position"];

/// Images whose shape the pixel judge read back (`generated` and `real`, one judgement per
/// image) with every one of `attributes` as its row says; the most common combination's share
/// beside.
fn caption_accuracy(
    rows: &[Record],
    generated: &[Option<Judgement>],
    real: &[Option<Judgement>],
    attributes: &[&str],
) -> Accuracy {
    let share = |judged: &[Option<Judgement>]| {
        let right = rows
            .iter()
            .zip(judged)
            .filter(|(row, j)| {
                j.as_ref().is_some_and(|j| {
                    attributes.iter().all(|a| {
                        row.column(a)
                            .is_some_and(|v| j.attribute(a) == Some(v.as_str()))
                    })
                })
            })
            .count();
        right as f64 / rows.len().max(1) as f64
    };
    Accuracy {
        column: attributes.join("+"),
        generated: share(generated),
        real: share(real),
        majority: majority(rows.iter().map(|row| {
            Some(
                attributes
                    .iter()
                    .map(|a| row.column(a).unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })),
    }
}
