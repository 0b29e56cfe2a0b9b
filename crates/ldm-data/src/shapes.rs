//! Procedural scenes: one shape of a named colour, size and position on a plain background,
//! with a caption that states all four. Deterministic by seed, and cheap to judge from the
//! pixels, so conditioning accuracy can be measured exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::{DataError, Record, SplitWriter, StagingDir};

pub const SHAPES: [&str; 4] = ["circle", "square", "triangle", "star"];
pub const COLOURS: [(&str, [u8; 3]); 7] = [
    ("red", [220, 40, 40]),
    ("orange", [245, 140, 20]),
    ("yellow", [240, 210, 30]),
    ("green", [40, 170, 60]),
    ("blue", [40, 80, 220]),
    ("purple", [140, 60, 190]),
    ("pink", [240, 120, 190]),
];
pub const BACKGROUNDS: [(&str, [u8; 3]); 3] = [
    ("white", [255, 255, 255]),
    ("gray", [128, 128, 128]),
    ("black", [0, 0, 0]),
];
/// Rows and columns of the 3x3 grid of positions, as fractions of the image side.
pub(crate) const GRID: [f32; 3] = [0.27, 0.5, 0.73];
/// Caption names of the grid cells, by row and column.
pub(crate) const POSITIONS: [[&str; 3]; 3] = [
    ["top left", "top", "top right"],
    ["left", "center", "right"],
    ["bottom left", "bottom", "bottom right"],
];
/// Radii of small and large shapes, as fractions of the image side.
pub(crate) const SMALL_RADII: std::ops::Range<f32> = 0.10..0.14;
pub(crate) const LARGE_RADII: std::ops::Range<f32> = 0.19..0.23;
/// Radii above this are large: halfway between the two ranges.
pub(crate) const LARGE_ABOVE: f32 = 0.165;
pub(crate) const VALIDATION_PERCENT: u32 = 10;
/// Sub-samples per pixel side for anti-aliasing (4x4 per pixel).
const SUPERSAMPLE: u32 = 4;

#[derive(Debug, Clone, Copy)]
pub struct ShapesConfig {
    /// Number of scenes, train and validation together.
    pub count: usize,
    /// Side of the square images, in pixels.
    pub size: u32,
    /// Seed of the scene generator: the same seed writes the same bytes.
    pub seed: u64,
}

impl ShapesConfig {
    pub fn validate(&self) -> Result<(), DataError> {
        if self.count == 0 || self.count > 10_000_000 {
            return Err(DataError::InvalidOption {
                name: "count",
                message: format!("{} (expected 1 to 10000000 scenes)", self.count),
            });
        }
        if !(16..=1024).contains(&self.size) {
            return Err(DataError::InvalidOption {
                name: "size",
                message: format!("{} (expected 16 to 1024 pixels)", self.size),
            });
        }
        Ok(())
    }
}

/// One scene's attributes, all chosen from the seeded generator.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub shape: &'static str,
    pub colour: &'static str,
    pub background: &'static str,
    pub large: bool,
    /// Grid row and column, 0..3 each.
    pub row: usize,
    pub column: usize,
    /// Centre and radius as fractions of the image side.
    pub centre: (f32, f32),
    pub radius: f32,
}

impl Scene {
    fn sample(rng: &mut ChaCha8Rng) -> Scene {
        let shape = SHAPES[rng.random_range(0..SHAPES.len())];
        let colour = COLOURS[rng.random_range(0..COLOURS.len())].0;
        let background = BACKGROUNDS[rng.random_range(0..BACKGROUNDS.len())].0;
        let large = rng.random_bool(0.5);
        let (row, column) = (rng.random_range(0..3), rng.random_range(0..3));
        let radius = rng.random_range(if large { LARGE_RADII } else { SMALL_RADII });
        let centre = jittered_centre(rng, row, column);
        Scene {
            shape,
            colour,
            background,
            large,
            row,
            column,
            centre,
            radius,
        }
    }

    pub fn position(&self) -> &'static str {
        POSITIONS[self.row][self.column]
    }

    pub fn caption(&self) -> String {
        let size = if self.large { "large" } else { "small" };
        let place = if self.position() == "center" {
            "in the center".to_string()
        } else {
            format!("at the {}", self.position())
        };
        format!(
            "a {size} {} {} {place} on a {} background",
            self.colour, self.shape, self.background
        )
    }

    /// Draws the scene with 4x4 supersampled coverage.
    pub fn render(&self, size: u32) -> RgbImage {
        let fg = rgb_of(&COLOURS, self.colour);
        let bg = rgb_of(&BACKGROUNDS, self.background);
        let coverage = coverage(self.shape, self.centre, self.radius, size);
        RgbImage::from_fn(size, size, |px, py| {
            let c = coverage[(py * size + px) as usize];
            Rgb(std::array::from_fn(|i| {
                (bg[i] as f32 * (1.0 - c) + fg[i] as f32 * c).round() as u8
            }))
        })
    }

    fn record(&self, file_name: String) -> Record {
        let attributes: BTreeMap<String, serde_json::Value> = [
            ("shape", json!(self.shape)),
            ("colour", json!(self.colour)),
            ("size", json!(if self.large { "large" } else { "small" })),
            ("position", json!(self.position())),
            ("background", json!(self.background)),
            ("centre_x", json!(self.centre.0)),
            ("centre_y", json!(self.centre.1)),
            ("radius", json!(self.radius)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Record {
            file_name,
            text: Some(self.caption()),
            label: Some(format!("{} {}", self.colour, self.shape)),
            attributes,
        }
    }
}

/// The fraction of each pixel (row-major, `size` x `size`) that a shape of `radius` at
/// `centre` (fractions of the side) covers, from 4x4 sub-samples per pixel.
pub(crate) fn coverage(shape: &str, centre: (f32, f32), radius: f32, size: u32) -> Vec<f32> {
    let side = size as f32;
    let samples = (SUPERSAMPLE * SUPERSAMPLE) as f32;
    let outline = Outline::of(shape);
    let mut out = Vec::with_capacity((size * size) as usize);
    for py in 0..size {
        for px in 0..size {
            let mut inside = 0;
            for sy in 0..SUPERSAMPLE {
                for sx in 0..SUPERSAMPLE {
                    let x = (px as f32 + (sx as f32 + 0.5) / SUPERSAMPLE as f32) / side;
                    let y = (py as f32 + (sy as f32 + 0.5) / SUPERSAMPLE as f32) / side;
                    // Shape-local coordinates in radii, y pointing up.
                    let u = (x - centre.0) / radius;
                    let v = (centre.1 - y) / radius;
                    inside += outline.contains(u, v) as u32;
                }
            }
            out.push(inside as f32 / samples);
        }
    }
    out
}

/// The centre of a shape in grid cell (row, column), moved by up to 3 % of the side.
pub(crate) fn jittered_centre(rng: &mut ChaCha8Rng, row: usize, column: usize) -> (f32, f32) {
    let jitter = |rng: &mut ChaCha8Rng| rng.random_range(-0.03..0.03);
    (GRID[column] + jitter(rng), GRID[row] + jitter(rng))
}

pub(crate) fn rgb_of(table: &[(&str, [u8; 3])], name: &str) -> [u8; 3] {
    table
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, rgb)| *rgb)
        .expect("scene names come from the tables")
}

/// A shape in local coordinates where the unit is the radius.
pub(crate) enum Outline {
    Circle,
    /// Half side.
    Square(f32),
    Polygon(Vec<(f32, f32)>),
}

impl Outline {
    pub(crate) fn of(shape: &str) -> Outline {
        match shape {
            "circle" => Outline::Circle,
            // Side 1.7 radii: about the circle's area, so size reads the same across shapes.
            "square" => Outline::Square(0.85),
            "triangle" => Outline::Polygon(regular_star(3, 1.0, None)),
            "star" => Outline::Polygon(regular_star(5, 1.0, Some(0.45))),
            _ => unreachable!("shape names come from SHAPES"),
        }
    }

    pub(crate) fn contains(&self, u: f32, v: f32) -> bool {
        match self {
            Outline::Circle => u * u + v * v <= 1.0,
            Outline::Square(half) => u.abs() <= *half && v.abs() <= *half,
            Outline::Polygon(vertices) => inside_polygon(vertices, u, v),
        }
    }
}

/// Vertices of a regular polygon (inner = None) or star (inner radius) pointing up.
fn regular_star(points: usize, outer: f32, inner: Option<f32>) -> Vec<(f32, f32)> {
    let step = std::f32::consts::PI / points as f32;
    let n = if inner.is_some() { 2 * points } else { points };
    (0..n)
        .map(|i| {
            let (angle, r) = match inner {
                Some(inner) => (
                    std::f32::consts::FRAC_PI_2 + step * i as f32,
                    if i % 2 == 0 { outer } else { inner },
                ),
                None => (std::f32::consts::FRAC_PI_2 + 2.0 * step * i as f32, outer),
            };
            (r * angle.cos(), r * angle.sin())
        })
        .collect()
}

/// Even-odd rule: count crossings of a ray towards +u.
fn inside_polygon(vertices: &[(f32, f32)], u: f32, v: f32) -> bool {
    let mut inside = false;
    for i in 0..vertices.len() {
        let (a, b) = (vertices[i], vertices[(i + 1) % vertices.len()]);
        if (a.1 > v) != (b.1 > v) && u < a.0 + (v - a.1) / (b.1 - a.1) * (b.0 - a.0) {
            inside = !inside;
        }
    }
    inside
}

/// The scenes a config generates, in order.
pub fn scenes(config: &ShapesConfig) -> impl Iterator<Item = Scene> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    (0..config.count).map(move |_| Scene::sample(&mut rng))
}

/// Writes `config.count` scenes to `out/{train,validation}`; `progress(done, total)` is
/// called after each scene. Returns the (train, validation) counts.
pub fn prepare(
    out: &Path,
    config: &ShapesConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<(PathBuf, usize, usize), DataError> {
    config.validate()?;
    let staging = StagingDir::new(out)?;
    let mut writer = SplitWriter::new(staging.path(), VALIDATION_PERCENT)?;
    for (index, scene) in scenes(config).enumerate() {
        let file_name = format!("shape_{index:07}.png");
        writer.add(
            scene.record(file_name.clone()),
            &scene.render(config.size),
            &file_name,
        )?;
        progress(index + 1, config.count);
    }
    let (train, validation) = writer.finish()?;
    Ok((staging.commit()?, train, validation))
}
