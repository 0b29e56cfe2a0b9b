//! Reading an image folder (`metadata.jsonl` + images) into shuffled, seeded batches.
//!
//! Batch `k` is a pure function of (seed, k): the order of epoch `e` is a permutation drawn
//! from the generator's stream `e`, so a resumed run sees exactly the batches it would have.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::RgbImage;
use ldm_core::confined::{confined, is_plain_relative};
use ldm_core::layout::LayoutVocabulary;
use ldm_core::semantic::ClassMap;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::metadata::read_metadata;
use crate::pixels::{resize_center_crop, resize_center_crop_ids, rgb_on_white};
use crate::scenes::LayoutScene;
use crate::{open_image, DataError, Record, MAX_DATA_SIDE, METADATA_FILE};

/// The rows of a folder's `metadata.jsonl`, checked against the files on disk.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    root: PathBuf,
    /// (line in metadata.jsonl, row)
    rows: Vec<(usize, Record)>,
}

/// The column naming a row's semantic map.
pub const SEMANTIC_MAP: &str = "semantic_map";

impl ImageFolder {
    /// Reads `dir/metadata.jsonl`; every row must name an image that exists in `dir`.
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        let metadata = dir.join(METADATA_FILE);
        if !metadata.is_file() {
            return Err(DataError::MissingMetadata {
                dir: dir.to_path_buf(),
                hint: split_hint(dir),
            });
        }
        // The one confinement rule of every file read from a folder: no link leads out of it.
        confined(dir, METADATA_FILE)?;
        let rows = read_metadata(&metadata)?;
        if rows.is_empty() {
            return Err(DataError::EmptyFolder { path: metadata });
        }
        for (line, record) in &rows {
            let name = record.file_name.as_str();
            if name.trim().is_empty() {
                return Err(DataError::MissingColumn {
                    path: metadata,
                    line: *line,
                    column: "file_name",
                });
            }
            if !is_plain_relative(name) {
                return Err(DataError::UnsafeFileName {
                    path: metadata,
                    line: *line,
                    file_name: name.to_string(),
                });
            }
            if std::fs::symlink_metadata(dir.join(name)).is_err() {
                return Err(DataError::MissingImage {
                    path: metadata,
                    line: *line,
                    file_name: name.to_string(),
                });
            }
            if let Err(e) = confined(dir, name) {
                return Err(DataError::Unconfined {
                    path: metadata,
                    line: *line,
                    reason: e.to_string(),
                });
            }
        }
        Ok(Self {
            root: dir.to_path_buf(),
            rows,
        })
    }

    /// Refuses rows without a caption (text-conditioned training needs one per image).
    pub fn require_text(self) -> Result<Self, DataError> {
        self.require(|r| r.text.as_deref(), "text")?;
        Ok(self)
    }

    /// Replaces every row's caption by its layout (the `objects` column, as `ldm data scenes`
    /// writes it) in `vocabulary`'s words: what a layout model is conditioned on. A row
    /// without a layout the vocabulary can say is refused by its line.
    pub fn layouts_as_text(mut self, vocabulary: &LayoutVocabulary) -> Result<Self, DataError> {
        let metadata = self.root.join(METADATA_FILE);
        for (line, record) in &mut self.rows {
            let text = LayoutScene::from_record(record)
                .and_then(|scene| vocabulary.text(&scene.layout()).map_err(|e| e.to_string()))
                .map_err(|message| DataError::Layout {
                    path: metadata.clone(),
                    line: *line,
                    message,
                })?;
            record.text = Some(text);
        }
        Ok(self)
    }

    /// Refuses rows without a semantic map (the `semantic_map` column naming a file in the
    /// folder, as `ldm data scenes` writes them).
    pub fn require_semantic_maps(self) -> Result<Self, DataError> {
        self.require(
            |r| r.attributes.get(SEMANTIC_MAP).and_then(|v| v.as_str()),
            SEMANTIC_MAP,
        )?;
        let metadata = self.root.join(METADATA_FILE);
        for (line, record) in &self.rows {
            let name = record.column(SEMANTIC_MAP).unwrap_or_default();
            if !is_plain_relative(&name) {
                return Err(DataError::UnsafeFileName {
                    path: metadata,
                    line: *line,
                    file_name: name,
                });
            }
            if let Err(e) = confined(&self.root, &name) {
                return Err(DataError::Unconfined {
                    path: metadata,
                    line: *line,
                    reason: e.to_string(),
                });
            }
        }
        Ok(self)
    }

    /// The semantic map of row `index` (see [`Self::require_semantic_maps`]): class ids,
    /// scaled and cropped to `size` as its image is, by nearest pixel.
    pub fn load_semantic_map(&self, index: usize, size: u32) -> Result<ClassMap, DataError> {
        let (line, record) = &self.rows[index];
        let name = record
            .column(SEMANTIC_MAP)
            .ok_or_else(|| DataError::MissingColumn {
                path: self.root.join(METADATA_FILE),
                line: *line,
                column: SEMANTIC_MAP,
            })?;
        let path = confined(&self.root, &name)?;
        let map = resize_center_crop_ids(open_image(&path, MAX_DATA_SIDE)?.to_luma8(), size);
        Ok(ClassMap {
            width: size as usize,
            height: size as usize,
            ids: map.into_raw(),
        })
    }

    /// Refuses rows without a class label.
    pub fn require_label(self) -> Result<Self, DataError> {
        self.require(|r| r.label.as_deref(), "label")?;
        Ok(self)
    }

    fn require(
        &self,
        column: impl Fn(&Record) -> Option<&str>,
        name: &'static str,
    ) -> Result<(), DataError> {
        match self
            .rows
            .iter()
            .find(|(_, r)| column(r).is_none_or(|v| v.trim().is_empty()))
        {
            Some((line, _)) => Err(DataError::MissingColumn {
                path: self.root.join(METADATA_FILE),
                line: *line,
                column: name,
            }),
            None => Ok(()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.rows.iter().map(|(_, r)| r)
    }

    /// The distinct labels, sorted: class `i` of a class-conditional model is `labels()[i]`.
    pub fn labels(&self) -> Vec<String> {
        let mut labels: Vec<String> = self.records().filter_map(|r| r.label.clone()).collect();
        labels.sort();
        labels.dedup();
        labels
    }

    /// Width and height of image `index`, read from its header.
    pub fn dimensions(&self, index: usize) -> Result<(u32, u32), DataError> {
        let path = self.root.join(&self.rows[index].1.file_name);
        image::image_dimensions(&path).map_err(|source| DataError::Image { path, source })
    }

    /// Decodes image `index` to RGB (transparency on white), shorter side scaled to `size`,
    /// centre-cropped.
    pub fn load(&self, index: usize, size: u32) -> Result<RgbImage, DataError> {
        let path = self.root.join(&self.rows[index].1.file_name);
        let image = open_image(&path, MAX_DATA_SIDE)?;
        Ok(resize_center_crop(rgb_on_white(image), size))
    }

    /// Image `index` as [`Loader`] batches hold it: planar RGB in [-1, 1], 3 x size x size.
    pub fn load_chw(&self, index: usize, size: u32) -> Result<Vec<f32>, DataError> {
        let mut out = Vec::with_capacity(3 * (size * size) as usize);
        push_chw(&mut out, &self.load(index, size)?, false);
        Ok(out)
    }
}

/// Suggests the split folders when the user points at a prepared data set's root.
fn split_hint(dir: &Path) -> String {
    let splits: Vec<_> = ["train", "validation"]
        .into_iter()
        .filter(|s| dir.join(s).join(METADATA_FILE).is_file())
        .collect();
    match splits.first() {
        Some(first) => format!(
            " (it holds {}: pass {})",
            splits.join(" and "),
            dir.join(first).display()
        ),
        None => String::new(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoaderConfig {
    /// Side of the square images a batch holds.
    pub size: u32,
    pub batch_size: usize,
    /// Mirror each image left-right with probability 1/2.
    pub flip: bool,
    /// Reshuffle every epoch; when false, batches follow the file order.
    pub shuffle: bool,
    pub seed: u64,
}

/// A batch of images as f32 NCHW in [-1, 1], with their captions and class ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// N x 3 x size x size, row-major.
    pub images: Vec<f32>,
    pub shape: [usize; 4],
    /// Captions ("" where a row has none).
    pub texts: Vec<String>,
    /// Index into [`ImageFolder::labels`], where a row has a label.
    pub labels: Vec<Option<usize>>,
    /// Row of each image in the folder.
    pub rows: Vec<usize>,
}

/// Seeded batches over an [`ImageFolder`]; every epoch drops its last incomplete batch.
pub struct Loader {
    folder: ImageFolder,
    config: LoaderConfig,
    label_ids: Vec<Option<usize>>,
    /// Decoded, resized images, kept after first use: epochs revisit every image.
    cache: Vec<OnceLock<RgbImage>>,
}

impl Loader {
    pub fn new(folder: ImageFolder, config: LoaderConfig) -> Result<Self, DataError> {
        if config.batch_size == 0 || config.batch_size > folder.len() {
            return Err(DataError::InvalidOption {
                name: "batch size",
                message: format!(
                    "{} (the folder {} holds {} images)",
                    config.batch_size,
                    folder.root().display(),
                    folder.len()
                ),
            });
        }
        if !(1..=4096).contains(&config.size) {
            return Err(DataError::InvalidOption {
                name: "image size",
                message: format!("{} (expected 1 to 4096 pixels)", config.size),
            });
        }
        let labels = folder.labels();
        let label_ids = folder
            .records()
            .map(|r| {
                r.label
                    .as_ref()
                    .map(|l| labels.binary_search(l).expect("label listed"))
            })
            .collect();
        let cache = (0..folder.len()).map(|_| OnceLock::new()).collect();
        Ok(Self {
            folder,
            config,
            label_ids,
            cache,
        })
    }

    pub fn folder(&self) -> &ImageFolder {
        &self.folder
    }

    pub fn batches_per_epoch(&self) -> usize {
        self.folder.len() / self.config.batch_size
    }

    /// The `step`-th batch since the start of training (epochs follow one another).
    pub fn batch(&self, step: u64) -> Result<Batch, DataError> {
        let per_epoch = self.batches_per_epoch() as u64;
        let (epoch, within) = (step / per_epoch, (step % per_epoch) as usize);
        let (order, flips) = self.epoch_plan(epoch);
        let span = within * self.config.batch_size..(within + 1) * self.config.batch_size;
        let size = self.config.size as usize;
        let mut batch = Batch {
            images: Vec::with_capacity(span.len() * 3 * size * size),
            shape: [span.len(), 3, size, size],
            texts: Vec::with_capacity(span.len()),
            labels: Vec::with_capacity(span.len()),
            rows: Vec::with_capacity(span.len()),
        };
        for position in span {
            let row = order[position];
            let image = self.image(row)?;
            push_chw(&mut batch.images, image, flips[position]);
            let record = &self.folder.rows[row].1;
            batch.texts.push(record.text.clone().unwrap_or_default());
            batch.labels.push(self.label_ids[row]);
            batch.rows.push(row);
        }
        Ok(batch)
    }

    /// Row order and flip decisions of one epoch.
    fn epoch_plan(&self, epoch: u64) -> (Vec<usize>, Vec<bool>) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        rng.set_stream(epoch);
        let mut order: Vec<usize> = (0..self.folder.len()).collect();
        if self.config.shuffle {
            order.shuffle(&mut rng);
        }
        let flips = (0..order.len())
            .map(|_| self.config.flip && rng.random_bool(0.5))
            .collect();
        (order, flips)
    }

    fn image(&self, row: usize) -> Result<&RgbImage, DataError> {
        if let Some(image) = self.cache[row].get() {
            return Ok(image);
        }
        let image = self.folder.load(row, self.config.size)?;
        Ok(self.cache[row].get_or_init(|| image))
    }
}

/// Appends an image as planar RGB in [-1, 1] (the networks' input layout), optionally
/// mirrored.
pub fn push_chw(out: &mut Vec<f32>, image: &RgbImage, flip: bool) {
    let (w, h) = image.dimensions();
    for channel in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let sx = if flip { w - 1 - x } else { x };
                let v = image.get_pixel(sx, y).0[channel];
                out.push(v as f32 / 127.5 - 1.0);
            }
        }
    }
}
