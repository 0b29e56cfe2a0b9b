//! A caption's layout as a layout planner scores it. A text model that places things can be a
//! layout model with a planner in front: a small transformer reads the caption and scores, for
//! each of the vocabulary's `max_objects` slots in the caption's order, the slot's class (or
//! no object), its colour and each edge of its box on the grid. The best-scoring layout then
//! conditions the layout model as a user's layout would, so the words that say where ("at the
//! top left", "large") are turned into boxes by a network trained on exactly that, and the
//! planned layout can be shown.

use crate::layout::{Layout, LayoutError, LayoutObject, LayoutVocabulary};

/// Whether a planner bundle plans `prompt`: any prompt but the empty one (the unconditional
/// layout) and a layout's JSON, which it draws as it is.
pub fn is_caption(prompt: &str) -> bool {
    let prompt = prompt.trim_start();
    !prompt.is_empty() && !prompt.starts_with('{')
}

/// Fields of a slot: class (the vocabulary's classes, then "no object"), colour, then the
/// left, top, right and bottom edges.
pub const FIELDS: usize = 6;

/// Where each field's scores sit in a slot's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotScores {
    classes: usize,
    colours: usize,
    /// Grid positions of an edge: 0..=bins.
    positions: usize,
}

impl SlotScores {
    pub fn of(vocabulary: &LayoutVocabulary) -> Self {
        Self {
            classes: vocabulary.classes.len(),
            colours: vocabulary.colours.len(),
            positions: vocabulary.bins + 1,
        }
    }

    /// Scores per slot.
    pub fn width(&self) -> usize {
        self.classes + 1 + self.colours + 4 * self.positions
    }

    /// Start and length of each field in a slot's row, in [`FIELDS`] order.
    pub fn fields(&self) -> [(usize, usize); FIELDS] {
        let colour = self.classes + 1;
        let edges = colour + self.colours;
        let edge = |k: usize| (edges + k * self.positions, self.positions);
        [
            (0, self.classes + 1),
            (colour, self.colours),
            edge(0),
            edge(1),
            edge(2),
            edge(3),
        ]
    }

    /// The index of "no object" in the class field.
    pub fn no_object(&self) -> usize {
        self.classes
    }
}

/// What a planner should score highest for `layout`: per slot, the index within each field
/// of the class, colour and grid edges; a slot beyond the layout's objects is "no object"
/// with its other fields free (None).
pub fn targets(
    vocabulary: &LayoutVocabulary,
    layout: &Layout,
) -> Result<Vec<[Option<usize>; FIELDS]>, LayoutError> {
    // The vocabulary's own checks: object count, names, boxes.
    vocabulary.text(layout)?;
    let slots = SlotScores::of(vocabulary);
    let index = |names: &[String], name: &str| names.iter().position(|n| n == name);
    let mut rows = Vec::with_capacity(vocabulary.max_objects);
    for (i, object) in layout.objects.iter().enumerate() {
        let [l, t, r, b] = vocabulary.grid_box(i, object.bbox)?;
        rows.push([
            index(&vocabulary.classes, &object.class),
            index(&vocabulary.colours, &object.colour),
            Some(l),
            Some(t),
            Some(r),
            Some(b),
        ]);
    }
    rows.resize(
        vocabulary.max_objects,
        [Some(slots.no_object()), None, None, None, None, None],
    );
    Ok(rows)
}

/// The layout that `scores` ([max_objects x [`SlotScores::width`]], as the planner writes
/// them) pick: in each slot the best class, colour and edges, the slots whose best class is
/// "no object" left out. A right (bottom) edge is the best one right of (below) the left
/// (top) edge, so every box keeps at least one grid step.
pub fn read(vocabulary: &LayoutVocabulary, scores: &[f32]) -> Result<Layout, LayoutError> {
    let slots = SlotScores::of(vocabulary);
    let width = slots.width();
    if scores.len() != vocabulary.max_objects * width {
        return Err(LayoutError::Vocabulary(format!(
            "a plan of {} scores does not fill {} slots of {width}",
            scores.len(),
            vocabulary.max_objects
        )));
    }
    let bins = vocabulary.bins;
    let mut objects = Vec::new();
    for row in scores.chunks(width) {
        let [class, colour, left, top, right, bottom] =
            slots.fields().map(|(start, len)| &row[start..start + len]);
        let class = best(class, 0);
        if class == slots.no_object() {
            continue;
        }
        let x0 = best(&left[..bins], 0);
        let y0 = best(&top[..bins], 0);
        let x1 = best(&right[x0 + 1..], x0 + 1);
        let y1 = best(&bottom[y0 + 1..], y0 + 1);
        let fraction = |v: usize| v as f64 / bins as f64;
        objects.push(LayoutObject {
            class: vocabulary.classes[class].clone(),
            colour: vocabulary.colours[best(colour, 0)].clone(),
            bbox: [fraction(x0), fraction(y0), fraction(x1), fraction(y1)],
        });
    }
    Ok(Layout { objects })
}

/// `offset` plus the index of the highest score (the first of equals; NaN never wins).
fn best(scores: &[f32], offset: usize) -> usize {
    let mut top = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[top] || scores[top].is_nan() {
            top = i;
        }
    }
    offset + top
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocabulary() -> LayoutVocabulary {
        LayoutVocabulary {
            classes: vec!["circle".into(), "star".into()],
            colours: vec!["red".into(), "blue".into(), "green".into()],
            bins: 4,
            max_objects: 2,
            box_attention: true,
        }
    }

    /// Scores that are 1 at `targets` and 0 elsewhere.
    fn one_hot(v: &LayoutVocabulary, targets: &[[Option<usize>; FIELDS]]) -> Vec<f32> {
        let slots = SlotScores::of(v);
        let mut scores = vec![0.0; v.max_objects * slots.width()];
        for (row, target) in scores.chunks_mut(slots.width()).zip(targets) {
            for ((start, _), t) in slots.fields().iter().zip(target) {
                if let Some(t) = t {
                    row[start + t] = 1.0;
                }
            }
        }
        scores
    }

    #[test]
    fn a_layout_read_back_from_its_own_targets_is_itself_on_the_grid() {
        let v = vocabulary();
        let layout: Layout = serde_json::from_str(
            r#"{"objects": [{"class": "star", "colour": "green", "box": [0.25, 0.5, 0.75, 1.0]}]}"#,
        )
        .unwrap();
        let targets = targets(&v, &layout).unwrap();
        assert_eq!(
            targets,
            vec![
                [Some(1), Some(2), Some(1), Some(2), Some(3), Some(4)],
                [Some(2), None, None, None, None, None],
            ]
        );
        assert_eq!(SlotScores::of(&v).width(), 3 + 3 + 4 * 5);
        assert_eq!(read(&v, &one_hot(&v, &targets)).unwrap(), layout);
    }

    #[test]
    fn a_plan_always_reads_as_boxes_the_vocabulary_accepts() {
        let v = vocabulary();
        // Both slots "circle red", their right and bottom edges best left of and above their
        // left and top edges: each box still spans a grid step.
        let targets = [[Some(0), Some(0), Some(3), Some(3), Some(1), Some(1)]; 2];
        let layout = read(&v, &one_hot(&v, &targets)).unwrap();
        assert_eq!(layout.objects.len(), 2);
        assert_eq!(layout.objects[0].bbox, [0.75, 0.75, 1.0, 1.0]);
        v.text(&layout).unwrap();
        // A left edge at the last position leaves no room: the best of the others is taken.
        let at_the_edge = [[Some(0), Some(0), Some(4), Some(0), Some(1), Some(1)]; 2];
        let layout = read(&v, &one_hot(&v, &at_the_edge)).unwrap();
        assert_eq!(layout.objects[0].bbox, [0.0, 0.0, 0.25, 0.25]);
        let mut nan = one_hot(&v, &targets);
        nan[0] = f32::NAN;
        v.text(&read(&v, &nan).unwrap()).unwrap();
        assert!(read(&v, &[0.0; 7]).is_err());
    }
}
