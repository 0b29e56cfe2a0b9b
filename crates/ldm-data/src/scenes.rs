//! Scenes of 1 to 4 shapes with their layouts, for semantic synthesis, layout-to-image and
//! text that places things (paper 4.3). Each image comes with its semantic map (a PNG whose
//! pixel values are class ids, `CLASSES` naming them), every shape's class, colour, size,
//! grid cell and box in `metadata.jsonl`, and a caption that names every shape and where it
//! is. The same seed writes the same bytes. Some (shape, colour, size, position)
//! combinations never appear in `train/`: every scene holding one is held out.

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma, Rgb, RgbImage};
use ldm_core::layout::{Layout, LayoutObject};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::shapes::{
    coverage, jittered_centre, rgb_of, BACKGROUNDS, COLOURS, LARGE_RADII, POSITIONS, SHAPES,
    SMALL_RADII, VALIDATION_PERCENT,
};
use crate::{DataError, Record, Split, SplitWriter, StagingDir, SEMANTIC_MAP};

/// Class ids of the semantic maps: 0 is the background, then the shapes in SHAPES' order.
pub const CLASSES: [&str; 5] = ["background", "circle", "square", "triangle", "star"];
pub const MAX_OBJECTS: usize = 4;
/// Every shape keeps at least this share of its pixels visible under those drawn after it,
/// so that each can be read back from the pixels.
const MIN_VISIBLE: f32 = 0.9;
/// Layouts drawn per scene before the least occluded one is kept.
const LAYOUT_ATTEMPTS: usize = 64;
/// One (shape, colour, size, position) combination in this many is held out of training.
const HELD_OUT_ONE_IN: u32 = 20;

#[derive(Debug, Clone, Copy)]
pub struct ScenesConfig {
    /// Number of scenes, train and validation together.
    pub count: usize,
    /// Side of the square images, in pixels.
    pub size: u32,
    /// Seed of the scene generator: the same seed writes the same bytes.
    pub seed: u64,
    /// Shapes per scene are drawn uniformly from 1 to this.
    pub max_objects: usize,
}

impl ScenesConfig {
    pub fn validate(&self) -> Result<(), DataError> {
        crate::shapes::ShapesConfig {
            count: self.count,
            size: self.size,
            seed: self.seed,
        }
        .validate()?;
        if !(1..=MAX_OBJECTS).contains(&self.max_objects) {
            return Err(DataError::InvalidOption {
                name: "max-objects",
                message: format!("{} (expected 1 to {MAX_OBJECTS})", self.max_objects),
            });
        }
        Ok(())
    }
}

/// One shape of a scene. `bbox` is (x0, y0, x1, y1) in fractions of the side: the pixels
/// it covers at least half of, occlusion ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneObject {
    pub shape: String,
    pub colour: String,
    pub large: bool,
    pub position: String,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// Centre and radius as fractions of the side.
    pub centre: (f32, f32),
    pub radius: f32,
}

impl SceneObject {
    /// Its class id in the semantic maps.
    pub fn class_id(&self) -> u8 {
        class_id(&self.shape)
    }

    /// "a large red circle at the top left".
    pub fn phrase(&self) -> String {
        let size = if self.large { "large" } else { "small" };
        let place = if self.position == "center" {
            "in the center".to_string()
        } else {
            format!("at the {}", self.position)
        };
        format!("a {size} {} {} {place}", self.colour, self.shape)
    }

    fn held_out(&self) -> bool {
        let size = if self.large { "large" } else { "small" };
        let key = format!("{} {} {size} {}", self.shape, self.colour, self.position);
        crc32fast::hash(key.as_bytes()).is_multiple_of(HELD_OUT_ONE_IN)
    }
}

/// The class id of a shape name; 0 (background) for anything else.
pub fn class_id(shape: &str) -> u8 {
    CLASSES.iter().position(|c| *c == shape).unwrap_or(0) as u8
}

/// A background and the shapes drawn on it, in drawing order (later ones on top).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayoutScene {
    pub background: String,
    pub objects: Vec<SceneObject>,
}

impl LayoutScene {
    fn sample(rng: &mut ChaCha8Rng, size: u32, max_objects: usize) -> LayoutScene {
        let background = BACKGROUNDS[rng.random_range(0..BACKGROUNDS.len())].0;
        let count = rng.random_range(1..=max_objects);
        let mut best: Option<(f32, LayoutScene)> = None;
        for _ in 0..LAYOUT_ATTEMPTS {
            let (objects, covers) = sample_objects(rng, count, size);
            let scene = LayoutScene {
                background: background.to_string(),
                objects,
            };
            let visible = least_visible_share(&covers);
            if visible >= MIN_VISIBLE {
                return scene;
            }
            if best.as_ref().is_none_or(|(v, _)| visible > *v) {
                best = Some((visible, scene));
            }
        }
        best.expect("at least one attempt").1
    }

    /// "a large red circle at the top left and a small blue star in the center on a white
    /// background".
    pub fn caption(&self) -> String {
        let phrases: Vec<String> = self.objects.iter().map(SceneObject::phrase).collect();
        let listed = match phrases.as_slice() {
            [] => "nothing".to_string(),
            [one] => one.clone(),
            [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
        };
        format!("{listed} on a {} background", self.background)
    }

    /// The image (4x4 supersampled) and its semantic map: each pixel's class is that of the
    /// topmost shape covering at least half of it.
    pub fn render(&self, size: u32) -> (RgbImage, GrayImage) {
        let bg = rgb_of(&BACKGROUNDS, &self.background);
        let pixels = (size * size) as usize;
        let mut rgb: Vec<[f32; 3]> = vec![bg.map(f32::from); pixels];
        let mut map = vec![0u8; pixels];
        for object in &self.objects {
            let fg = rgb_of(&COLOURS, &object.colour).map(f32::from);
            let cover = coverage(&object.shape, object.centre, object.radius, size);
            for (i, &c) in cover.iter().enumerate() {
                rgb[i] = std::array::from_fn(|k| rgb[i][k] * (1.0 - c) + fg[k] * c);
                if c >= 0.5 {
                    map[i] = object.class_id();
                }
            }
        }
        let image = RgbImage::from_fn(size, size, |x, y| {
            Rgb(rgb[(y * size + x) as usize].map(|v| v.round() as u8))
        });
        let map = GrayImage::from_fn(size, size, |x, y| Luma([map[(y * size + x) as usize]]));
        (image, map)
    }

    fn record(&self, file_name: String, map_name: String) -> Record {
        let attributes = [
            ("background", json!(self.background)),
            ("objects", json!(self.objects)),
            (SEMANTIC_MAP, json!(map_name)),
            ("classes", json!(CLASSES)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Record {
            file_name,
            text: Some(self.caption()),
            label: None,
            attributes,
        }
    }

    /// The layout of its shapes, in drawing order.
    pub fn layout(&self) -> Layout {
        Layout {
            objects: self
                .objects
                .iter()
                .map(|o| LayoutObject {
                    class: o.shape.clone(),
                    colour: o.colour.clone(),
                    bbox: o.bbox.map(f64::from),
                })
                .collect(),
        }
    }

    /// The scene a metadata row describes (its `background` and `objects`).
    pub fn from_record(record: &Record) -> Result<LayoutScene, String> {
        let field = |name: &str| {
            record
                .attributes
                .get(name)
                .cloned()
                .ok_or_else(|| format!("{}: no `{name}` column", record.file_name))
        };
        let background = serde_json::from_value(field("background")?)
            .map_err(|e| format!("{}: background: {e}", record.file_name))?;
        let objects = serde_json::from_value(field("objects")?)
            .map_err(|e| format!("{}: objects: {e}", record.file_name))?;
        Ok(LayoutScene {
            background,
            objects,
        })
    }
}

/// The smallest share of any shape's pixels (`covers`, in drawing order) left visible by
/// those drawn after it.
fn least_visible_share(covers: &[Vec<f32>]) -> f32 {
    (0..covers.len())
        .map(|i| {
            let own = covers[i].iter().filter(|&&c| c >= 0.5).count().max(1);
            let visible = (0..covers[i].len())
                .filter(|&p| covers[i][p] >= 0.5 && covers[i + 1..].iter().all(|c| c[p] < 0.5))
                .count();
            visible as f32 / own as f32
        })
        .fold(1.0, f32::min)
}

/// `count` shapes in distinct grid cells and of distinct colours (so that each is told
/// apart by its colour), with their boxes measured at `size` pixels, and each one's coverage
/// of the pixels.
fn sample_objects(
    rng: &mut ChaCha8Rng,
    count: usize,
    size: u32,
) -> (Vec<SceneObject>, Vec<Vec<f32>>) {
    let mut cells: Vec<usize> = (0..9).collect();
    let mut colours: Vec<usize> = (0..COLOURS.len()).collect();
    (0..count)
        .map(|_| {
            let cell = cells.swap_remove(rng.random_range(0..cells.len()));
            let colour = colours.swap_remove(rng.random_range(0..colours.len()));
            let shape = SHAPES[rng.random_range(0..SHAPES.len())];
            let large = rng.random_bool(0.5);
            let radius = rng.random_range(if large { LARGE_RADII } else { SMALL_RADII });
            let (row, column) = (cell / 3, cell % 3);
            let centre = jittered_centre(rng, row, column);
            let cover = coverage(shape, centre, radius, size);
            let object = SceneObject {
                shape: shape.to_string(),
                colour: COLOURS[colour].0.to_string(),
                large,
                position: POSITIONS[row][column].to_string(),
                bbox: covered_box(&cover, size),
                centre,
                radius,
            };
            (object, cover)
        })
        .unzip()
}

/// The box (x0, y0, x1, y1), in fractions of the side, of the pixels at least half covered.
fn covered_box(cover: &[f32], size: u32) -> [f32; 4] {
    let (mut x0, mut y0, mut x1, mut y1) = (size, size, 0, 0);
    for (i, _) in cover.iter().enumerate().filter(|(_, &c)| c >= 0.5) {
        let (x, y) = (i as u32 % size, i as u32 / size);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
    }
    [x0, y0, x1, y1].map(|v| v as f32 / size as f32)
}

/// The scenes a config generates, in order.
pub fn scenes(config: &ScenesConfig) -> impl Iterator<Item = LayoutScene> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let (size, max_objects) = (config.size, config.max_objects);
    (0..config.count).map(move |_| LayoutScene::sample(&mut rng, size, max_objects))
}

/// Writes `config.count` scenes, each an image `scene_NNNNNNN.png` and its semantic map
/// `scene_NNNNNNN.map.png`, to `out/{train,validation}`; `progress(done, total)` is called
/// after each. Returns the folder and the (train, validation) counts.
pub fn prepare(
    out: &Path,
    config: &ScenesConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<(PathBuf, usize, usize), DataError> {
    config.validate()?;
    let staging = StagingDir::new(out)?;
    let mut writer = SplitWriter::new(staging.path(), VALIDATION_PERCENT)?;
    for (index, scene) in scenes(config).enumerate() {
        let file_name = format!("scene_{index:07}.png");
        let map_name = format!("scene_{index:07}.map.png");
        let split = if scene.objects.iter().any(SceneObject::held_out) {
            Split::Validation
        } else {
            Split::of(&file_name, VALIDATION_PERCENT)
        };
        let (image, map) = scene.render(config.size);
        let map_path = writer.dir(split).join(&map_name);
        map.save_with_format(&map_path, image::ImageFormat::Png)
            .map_err(|source| DataError::Image {
                path: map_path,
                source,
            })?;
        writer.add_in(split, scene.record(file_name, map_name), &image)?;
        progress(index + 1, config.count);
    }
    let (train, validation) = writer.finish()?;
    Ok((staging.commit()?, train, validation))
}
