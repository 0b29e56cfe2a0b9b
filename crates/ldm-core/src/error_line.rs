//! One line for an error and its causes, as every front end prints them.

use std::error::Error;

/// The error and its causes joined by ": ", leaving out a cause whose words are already
/// printed (many errors quote their source in their own message, as `{path}: {source}`, and
/// anyhow's `{:#}` would print such a source twice).
pub fn one_line(error: &(dyn Error + 'static)) -> String {
    let mut line = String::new();
    let mut cause = Some(error);
    while let Some(e) = cause {
        let words = e.to_string();
        if !line.contains(&words) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&words);
        }
        cause = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::one_line;
    use std::fmt;

    #[derive(Debug)]
    struct Wrapped {
        message: String,
        source: std::io::Error,
    }

    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.message)
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    fn not_found() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory")
    }

    #[test]
    fn a_cause_quoted_in_its_error_is_printed_once() {
        let quoted = Wrapped {
            message: format!("map.png: {}", not_found()),
            source: not_found(),
        };
        assert_eq!(one_line(&quoted), "map.png: No such file or directory");
    }

    #[test]
    fn a_cause_not_quoted_follows_its_error() {
        let chained = Wrapped {
            message: "cannot read map.png".into(),
            source: not_found(),
        };
        assert_eq!(
            one_line(&chained),
            "cannot read map.png: No such file or directory"
        );
    }
}
