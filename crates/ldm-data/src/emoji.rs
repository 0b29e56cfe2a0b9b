//! The emoji data set: Noto (Google) and Twemoji images of every emoji at 64x64, composited
//! on white, captioned with their CLDR names ("red apple, twemoji style") and labelled with
//! their Unicode category. Sources are npm packages fetched with `npm pack` at pinned
//! versions; each style is about 3,800 images, 7,572 pairs in all.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use image::RgbImage;
use serde::Deserialize;
use serde_json::json;

use crate::pixels::rgb_on_white;
use crate::{DataError, Record, SplitWriter, StagingDir};

/// An npm package at a pinned version.
#[derive(Debug, Clone, Copy)]
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
}

/// One drawing style of the emoji: its package, the folder of 64x64 PNGs inside it, and
/// the name captions use.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub package: Package,
    pub image_dir: &'static str,
    pub name: &'static str,
}

pub const STYLES: [Style; 2] = [
    Style {
        package: Package {
            name: "emoji-datasource-google",
            version: "16.0.0",
        },
        image_dir: "package/img/google/64/",
        name: "noto",
    },
    Style {
        package: Package {
            name: "emoji-datasource-twitter",
            version: "16.0.0",
        },
        image_dir: "package/img/twitter/64/",
        name: "twemoji",
    },
];
/// CLDR short names ("red apple", "waving hand: light skin tone") and tags.
pub const EMOJIBASE: Package = Package {
    name: "emojibase-data",
    version: "17.0.0",
};
const VALIDATION_PERCENT: u32 = 5;

const ATTRIBUTION: &str = "\
# Emoji data set: licences and attribution

Images:
- Noto Emoji, Copyright Google Inc., Apache License 2.0
  (https://github.com/googlefonts/noto-emoji), via the npm package emoji-datasource-google.
- Twemoji, Copyright Twitter, Inc. and other contributors, CC-BY 4.0
  (https://creativecommons.org/licenses/by/4.0/), via the npm package emoji-datasource-twitter.
  The images were composited on a white background; no other change was made.

Metadata:
- emoji-datasource (MIT, Cal Henderson): emoji list, categories.
- emojibase-data (MIT, Miles Johnson): CLDR names and tags used in the captions.
";

/// Fetches the three pinned packages with `npm pack` and prepares the data set in `out`.
pub fn prepare(
    out: &Path,
    progress: impl FnMut(usize, usize),
) -> Result<(PathBuf, usize, usize), DataError> {
    if out.exists() {
        return Err(DataError::OutputExists {
            path: out.to_path_buf(),
        });
    }
    let downloads = tempfile::tempdir().map_err(DataError::io(std::env::temp_dir()))?;
    let styles = STYLES
        .iter()
        .map(|style| Ok((*style, npm_pack(style.package, downloads.path())?)))
        .collect::<Result<Vec<_>, DataError>>()?;
    let emojibase = npm_pack(EMOJIBASE, downloads.path())?;
    prepare_from_archives(out, &styles, &emojibase, progress)
}

/// Runs `npm pack name@version` into `dir` and returns the tarball's path.
pub fn npm_pack(package: Package, dir: &Path) -> Result<PathBuf, DataError> {
    let spec = format!("{}@{}", package.name, package.version);
    let output = Command::new("npm")
        .args(["pack", "--silent", "--pack-destination"])
        .arg(dir)
        .arg(&spec)
        .output()
        .map_err(|source| DataError::NpmMissing {
            package: spec.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(DataError::NpmFailed {
            package: spec,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    let tarball = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    let path = dir.join(&tarball);
    if tarball.is_empty() || !path.is_file() {
        return Err(DataError::NpmFailed {
            package: spec,
            stderr: format!("npm pack printed no tarball name (stdout: {tarball:?})"),
        });
    }
    Ok(path)
}

/// Prepares the data set from package tarballs already on disk: one per style, plus
/// emojibase-data for the names.
pub fn prepare_from_archives(
    out: &Path,
    styles: &[(Style, PathBuf)],
    emojibase: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<(PathBuf, usize, usize), DataError> {
    let names = read_names(emojibase)?;
    let staging = StagingDir::new(out)?;
    let mut writer = SplitWriter::new(staging.path(), VALIDATION_PERCENT)?;
    let sources = styles
        .iter()
        .map(|(style, archive)| Ok((style, archive, read_style(archive, style)?)))
        .collect::<Result<Vec<_>, DataError>>()?;
    let total: usize = sources.iter().map(|(_, _, s)| s.images.len()).sum();
    let mut done = 0;
    for (style, archive, source) in &sources {
        for emoji in &source.emoji {
            let Some(png) = source.images.get(&emoji.image) else {
                continue; // this style has no drawing of it
            };
            let key = normalise_hexcode(&emoji.unified);
            let Some(name) = names.get(&key) else {
                return Err(DataError::Package {
                    archive: emojibase.to_path_buf(),
                    message: format!(
                        "no name for emoji {} listed in {}",
                        emoji.unified,
                        archive.display()
                    ),
                });
            };
            let image = on_white(png).map_err(|e| DataError::Package {
                archive: archive.to_path_buf(),
                message: format!("{}{}: cannot decode ({e})", style.image_dir, emoji.image),
            })?;
            let record = Record {
                file_name: format!("{}_{}", style.name, emoji.image),
                text: Some(format!(
                    "{}, {} style",
                    name.label.replace(": ", ", "),
                    style.name
                )),
                label: Some(emoji.category.clone()),
                attributes: BTreeMap::from([
                    ("style".to_string(), json!(style.name)),
                    ("name".to_string(), json!(name.label)),
                    ("tags".to_string(), json!(name.tags)),
                    ("unified".to_string(), json!(emoji.unified)),
                    ("subcategory".to_string(), json!(emoji.subcategory)),
                ]),
            };
            writer.add(record, &image, &key)?;
            done += 1;
            progress(done, total);
        }
    }
    if done == 0 {
        return Err(DataError::Package {
            archive: styles.first().map(|(_, a)| a.clone()).unwrap_or_default(),
            message: "no emoji image found in the packages".into(),
        });
    }
    let (train, validation) = writer.finish()?;
    std::fs::write(staging.path().join("LICENSE.md"), ATTRIBUTION)
        .map_err(DataError::io(staging.path().join("LICENSE.md")))?;
    Ok((staging.commit()?, train, validation))
}

/// An emoji as emoji-datasource lists it; skin-tone variants flattened into their own rows.
#[derive(Debug, Clone)]
struct Emoji {
    unified: String,
    image: String,
    category: String,
    subcategory: String,
}

#[derive(Deserialize)]
struct DatasourceEmoji {
    unified: String,
    image: String,
    category: String,
    #[serde(default)]
    subcategory: String,
    #[serde(default)]
    skin_variations: BTreeMap<String, DatasourceVariation>,
}

#[derive(Deserialize)]
struct DatasourceVariation {
    unified: String,
    image: String,
}

struct StyleSource {
    emoji: Vec<Emoji>,
    /// PNG bytes by file name.
    images: HashMap<String, Vec<u8>>,
}

fn read_style(archive: &Path, style: &Style) -> Result<StyleSource, DataError> {
    let mut list = None;
    let mut images = HashMap::new();
    for_each_entry(archive, |path, bytes| {
        if path == "package/emoji.json" {
            list = Some(bytes());
        } else if let Some(name) = path.strip_prefix(style.image_dir) {
            if name.ends_with(".png") && !name.contains('/') {
                images.insert(name.to_string(), bytes());
            }
        }
    })?;
    let list = list.ok_or_else(|| DataError::Package {
        archive: archive.to_path_buf(),
        message: format!("no package/emoji.json: is this {}?", style.package.name),
    })?;
    let parsed: Vec<DatasourceEmoji> =
        serde_json::from_slice(&list).map_err(|e| DataError::Package {
            archive: archive.to_path_buf(),
            message: format!("package/emoji.json: {e}"),
        })?;
    let mut emoji = Vec::new();
    for e in parsed {
        let base = Emoji {
            unified: e.unified,
            image: e.image,
            category: e.category,
            subcategory: e.subcategory,
        };
        for v in e.skin_variations.into_values() {
            emoji.push(Emoji {
                unified: v.unified,
                image: v.image,
                ..base.clone()
            });
        }
        emoji.push(base);
    }
    Ok(StyleSource { emoji, images })
}

#[derive(Debug, Clone, Deserialize)]
struct Name {
    label: String,
    hexcode: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    skins: Vec<Name>,
}

/// CLDR names by normalised code point sequence, skin tones included.
fn read_names(archive: &Path) -> Result<HashMap<String, Name>, DataError> {
    let mut data = None;
    for_each_entry(archive, |path, bytes| {
        if path == "package/en/data.json" {
            data = Some(bytes());
        }
    })?;
    let data = data.ok_or_else(|| DataError::Package {
        archive: archive.to_path_buf(),
        message: format!("no package/en/data.json: is this {}?", EMOJIBASE.name),
    })?;
    let list: Vec<Name> = serde_json::from_slice(&data).map_err(|e| DataError::Package {
        archive: archive.to_path_buf(),
        message: format!("package/en/data.json: {e}"),
    })?;
    let mut names = HashMap::new();
    for mut name in list {
        for mut skin in std::mem::take(&mut name.skins) {
            if skin.tags.is_empty() {
                skin.tags = name.tags.clone();
            }
            names.insert(normalise_hexcode(&skin.hexcode), skin);
        }
        names.insert(normalise_hexcode(&name.hexcode), name);
    }
    Ok(names)
}

/// The two packages spell some sequences with and some without the FE0F variation selector.
fn normalise_hexcode(hexcode: &str) -> String {
    hexcode
        .split('-')
        .filter(|p| !p.eq_ignore_ascii_case("FE0F"))
        .map(str::to_ascii_uppercase)
        .collect::<Vec<_>>()
        .join("-")
}

/// Calls `visit(path, read)` for each file of a .tgz; `read()` loads the entry's bytes.
fn for_each_entry(
    archive: &Path,
    mut visit: impl FnMut(&str, &mut dyn FnMut() -> Vec<u8>),
) -> Result<(), DataError> {
    let corrupt = |e: std::io::Error| DataError::Package {
        archive: archive.to_path_buf(),
        message: format!("not a readable .tgz ({e}); delete it and fetch again"),
    };
    let file = std::fs::File::open(archive).map_err(DataError::io(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let path = entry
            .path()
            .map_err(corrupt)?
            .to_string_lossy()
            .into_owned();
        let mut error = None;
        visit(&path, &mut || {
            let mut bytes = Vec::new();
            if let Err(e) = entry.read_to_end(&mut bytes) {
                error = Some(e);
            }
            bytes
        });
        if let Some(e) = error {
            return Err(corrupt(e));
        }
    }
    Ok(())
}

/// Decodes a PNG and composites it on white.
fn on_white(png: &[u8]) -> Result<RgbImage, image::ImageError> {
    Ok(rgb_on_white(image::load_from_memory(png)?))
}
