//! Without npm on the PATH, fetching the emoji packages says what to install.
//! (Its own test binary: it changes the process environment.)

use ldm_data::emoji::{self, EMOJIBASE};

#[test]
fn a_missing_npm_is_named_with_the_fix() {
    let empty = tempfile::tempdir().unwrap();
    std::env::set_var("PATH", empty.path());
    let err = emoji::npm_pack(EMOJIBASE, empty.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("npm is needed to fetch 'emojibase-data@17.0.0' but could not be run"),
        "{err}"
    );
    assert!(
        err.ends_with("install Node.js and npm (apt-get install npm)"),
        "{err}"
    );
    let out = empty.path().join("emoji");
    assert!(emoji::prepare(&out, |_, _| {}).is_err());
    assert!(!out.exists());
}
