//! Training data for ldm.
//!
//! Every data set is an *image folder*: images next to a `metadata.jsonl` whose rows name
//! the image (`file_name`) and carry a caption (`text`), an optional class (`label`) and
//! any other attributes. The emoji, shapes and scenes preparers write that layout, split into
//! `train/` and `validation/`; [`ImageFolder`] and [`Loader`] read any folder that follows it.

mod atomic;
pub mod decode;
pub mod emoji;
mod encode;
mod error;
pub mod judge;
mod loader;
mod metadata;
mod pixels;
pub mod scene_judge;
pub mod scenes;
pub mod shapes;
mod split;

pub use atomic::{make_public_dir, write_atomic, StagingDir};
pub use decode::{decode_image, open_image, MAX_DATA_SIDE};
pub use encode::{png_bytes, write_png};
pub use error::DataError;
pub use loader::{push_chw, Batch, ImageFolder, Loader, LoaderConfig, SEMANTIC_MAP};
pub use metadata::{parse_metadata, Record, METADATA_FILE};
pub use split::{Split, SplitWriter};
