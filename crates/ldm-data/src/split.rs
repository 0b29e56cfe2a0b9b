//! The train/validation split shared by every preparer, and the writer that fills both halves.

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::metadata::write_metadata;
use crate::{DataError, Record, METADATA_FILE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
}

impl Split {
    /// Decided by a checksum of a stable key (the file name), so the split does not move
    /// when items are added, removed or reordered.
    pub fn of(key: &str, validation_percent: u32) -> Split {
        if crc32fast::hash(key.as_bytes()) % 100 < validation_percent {
            Split::Validation
        } else {
            Split::Train
        }
    }

    pub fn dir_name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
        }
    }
}

/// Writes images and rows into `<root>/train` and `<root>/validation`.
pub struct SplitWriter {
    root: PathBuf,
    validation_percent: u32,
    train: Vec<Record>,
    validation: Vec<Record>,
}

impl SplitWriter {
    pub fn new(root: &Path, validation_percent: u32) -> Result<Self, DataError> {
        for split in [Split::Train, Split::Validation] {
            let dir = root.join(split.dir_name());
            std::fs::create_dir_all(&dir).map_err(DataError::io(&dir))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            validation_percent,
            train: Vec::new(),
            validation: Vec::new(),
        })
    }

    /// Saves `image` as `record.file_name` (a PNG) in the split that `split_key` falls in
    /// (items sharing a key, such as two styles of one emoji, share a split).
    pub fn add(
        &mut self,
        record: Record,
        image: &RgbImage,
        split_key: &str,
    ) -> Result<(), DataError> {
        self.add_in(Split::of(split_key, self.validation_percent), record, image)
    }

    /// The folder of one split, for files that go beside its images.
    pub fn dir(&self, split: Split) -> PathBuf {
        self.root.join(split.dir_name())
    }

    /// Saves `image` as `record.file_name` (a PNG) in `split`.
    pub fn add_in(
        &mut self,
        split: Split,
        record: Record,
        image: &RgbImage,
    ) -> Result<(), DataError> {
        let path = self.dir(split).join(&record.file_name);
        image
            .save_with_format(&path, image::ImageFormat::Png)
            .map_err(|source| DataError::Image { path, source })?;
        match split {
            Split::Train => self.train.push(record),
            Split::Validation => self.validation.push(record),
        }
        Ok(())
    }

    /// Writes both `metadata.jsonl` files; returns (train, validation) row counts.
    pub fn finish(self) -> Result<(usize, usize), DataError> {
        for (split, records) in [
            (Split::Train, &self.train),
            (Split::Validation, &self.validation),
        ] {
            write_metadata(
                &self.root.join(split.dir_name()).join(METADATA_FILE),
                records,
            )?;
        }
        Ok((self.train.len(), self.validation.len()))
    }
}
