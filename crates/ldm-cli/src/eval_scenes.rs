//! `ldm eval` on held-out scenes (rows with `background` and `objects`, from `ldm data
//! scenes`): whether the generated images place what the prompt asked where it asked. The
//! scene judge (`ldm_data::scene_judge`) reads the objects back from the pixels; a layout
//! bundle is scored box by box (`score_layout`), a text bundle attribute by attribute against
//! the caption (`score_caption`). Beside it: the judge on the real images (its ceiling), and
//! the same generated images scored against another row's scene, which is what an image that
//! ignores its prompt, yet looks like a scene, scores.

use image::RgbImage;
use ldm_data::scene_judge::{read_scene, score_caption, score_layout, ObjectCounts};
use ldm_data::scenes::{LayoutScene, SceneObject};
use ldm_data::Record;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct PlacementScores {
    /// "boxes" (layout bundles) or "caption" (text bundles).
    pub judged_by: String,
    /// Objects right over objects asked plus objects drawn unasked, over all rows.
    pub generated: f64,
    /// The same on the held-out images themselves.
    pub real: f64,
    /// The generated images scored against the next row's scene (the prompt ignored).
    pub other_rows: f64,
    /// The rows of each count of asked objects alone, fewest first.
    #[serde(default)]
    pub by_count: Vec<CountScores>,
}

/// Placement over the rows that ask for `objects` objects.
#[derive(Serialize, Deserialize)]
pub struct CountScores {
    pub objects: usize,
    pub rows: usize,
    /// Objects right over objects asked plus objects drawn unasked.
    pub generated: f64,
    /// Images with every asked object right and nothing more.
    pub images_right: f64,
    /// The same share of objects on the held-out images themselves.
    pub real: f64,
}

/// The scores, or None when some row is not a scene.
pub fn score(
    rows: &[Record],
    generated: &[RgbImage],
    real: &[RgbImage],
    by_boxes: bool,
) -> Option<PlacementScores> {
    let asked: Vec<Vec<SceneObject>> = rows
        .iter()
        .map(|r| LayoutScene::from_record(r).ok().map(|s| s.objects))
        .collect::<Option<_>>()?;
    if asked.is_empty() {
        return None;
    }
    let score_one = if by_boxes {
        score_layout
    } else {
        score_caption
    };
    let read = |images: &[RgbImage]| -> Vec<Vec<SceneObject>> {
        images.iter().map(|i| read_scene(i).objects).collect()
    };
    let (generated, real) = (read(generated), read(real));
    let share = |shift: usize, images: &[Vec<SceneObject>]| {
        let total = (0..asked.len()).fold(ObjectCounts::default(), |sum, i| {
            sum + score_one(&asked[(i + shift) % asked.len()], &images[i])
        });
        total.share()
    };
    let mut counts: Vec<usize> = asked.iter().map(Vec::len).collect();
    counts.sort_unstable();
    counts.dedup();
    let by_count = counts
        .into_iter()
        .map(|objects| {
            let rows: Vec<usize> = (0..asked.len())
                .filter(|&i| asked[i].len() == objects)
                .collect();
            let scored = |images: &[Vec<SceneObject>]| -> Vec<ObjectCounts> {
                rows.iter()
                    .map(|&i| score_one(&asked[i], &images[i]))
                    .collect()
            };
            let total = |counts: &[ObjectCounts]| {
                counts
                    .iter()
                    .fold(ObjectCounts::default(), |sum, &c| sum + c)
                    .share()
            };
            let generated = scored(&generated);
            let right = generated
                .iter()
                .filter(|c| c.correct == c.asked && c.extra == 0)
                .count();
            CountScores {
                objects,
                rows: rows.len(),
                generated: total(&generated),
                images_right: right as f64 / rows.len() as f64,
                real: total(&scored(&real)),
            }
        })
        .collect();
    Some(PlacementScores {
        judged_by: if by_boxes { "boxes" } else { "caption" }.into(),
        generated: share(0, &generated),
        real: share(0, &real),
        other_rows: share(1, &generated),
        by_count,
    })
}
