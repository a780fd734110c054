//! Validated node names: every rule about what a path element may be lives here.

use std::ffi::OsStr;
use std::fmt;

/// One path element that ZooKeeper can store: UTF-8, not empty, not `.` or
/// `..`, no `/`, no NUL or other control characters, none of the characters
/// ZooKeeper refuses in paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeName(String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    NotUtf8,
    Empty,
    Dot,
    Slash,
    Control,
    /// A character ZooKeeper's path check refuses: it looks at UTF-16 code
    /// units and refuses U+D800–U+F8FF (so every character above U+FFFF,
    /// which is a surrogate pair, and private use) and U+FFF0–U+FFFF.
    Refused(char),
    /// Longer than [`NAME_MAX`] bytes (what `statfs` announces).
    TooLong,
}

/// The longest name, in bytes, as `statfs` reports it (`f_namemax`).
pub const NAME_MAX: usize = 255;

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self {
            NameError::NotUtf8 => "name is not UTF-8 (ZooKeeper paths are UTF-8)",
            NameError::Empty => "empty name",
            NameError::Dot => "'.' and '..' are not node names",
            NameError::Slash => "name contains '/'",
            NameError::Control => "name contains a control character",
            NameError::TooLong => "name is longer than 255 bytes",
            NameError::Refused(c) => {
                return write!(
                    f,
                    "name contains U+{:04X}, which ZooKeeper refuses in paths (characters \
                     above U+FFFF such as emoji, U+E000-U+F8FF and U+FFF0-U+FFFF)",
                    u32::from(*c)
                );
            }
        };
        f.write_str(why)
    }
}

impl NodeName {
    pub fn parse(name: &OsStr) -> Result<NodeName, NameError> {
        let s = name.to_str().ok_or(NameError::NotUtf8)?;
        Self::parse_str(s)
    }

    pub fn parse_str(s: &str) -> Result<NodeName, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s == "." || s == ".." {
            return Err(NameError::Dot);
        }
        if s.len() > NAME_MAX {
            return Err(NameError::TooLong);
        }
        if s.contains('/') {
            return Err(NameError::Slash);
        }
        // ZooKeeper rejects U+0000-001F and U+007F-009F (controls), and the
        // UTF-16 code units U+D800-F8FF and U+FFF0-FFFF.
        if s.chars().any(char::is_control) {
            return Err(NameError::Control);
        }
        if let Some(c) = s.chars().find(|&c| {
            c > '\u{ffff}'
                || ('\u{e000}'..='\u{f8ff}').contains(&c)
                || ('\u{fff0}'..='\u{ffff}').contains(&c)
        }) {
            return Err(NameError::Refused(c));
        }
        Ok(NodeName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(NodeName::parse_str("10.0.0.5:8080").is_ok());
        assert!(NodeName::parse_str("app.json").is_ok());
        assert_eq!(NodeName::parse_str(""), Err(NameError::Empty));
        assert_eq!(NodeName::parse_str(".."), Err(NameError::Dot));
        assert_eq!(NodeName::parse_str("a/b"), Err(NameError::Slash));
        assert_eq!(NodeName::parse_str("a\nb"), Err(NameError::Control));
        assert!(NodeName::parse_str(&"n".repeat(255)).is_ok());
        assert_eq!(
            NodeName::parse_str(&"n".repeat(256)),
            Err(NameError::TooLong)
        );
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(
            NodeName::parse(OsStr::from_bytes(b"\xff")),
            Err(NameError::NotUtf8)
        );
    }

    /// ZooKeeper's `PathUtils.validatePath` refuses UTF-16 code units
    /// U+D800–U+F8FF and U+FFF0–U+FFFF: every character above U+FFFF (a
    /// surrogate pair), private use, and the specials. Such a name must be
    /// refused at open, not by the server at close.
    #[test]
    fn characters_zookeeper_refuses() {
        for (name, c) in [
            ("r😀", '😀'),
            ("\u{10000}", '\u{10000}'),
            ("x\u{10ffff}", '\u{10ffff}'),
            ("\u{e000}", '\u{e000}'),
            ("a\u{f8ff}", '\u{f8ff}'),
            ("\u{fff0}", '\u{fff0}'),
            ("\u{ffff}z", '\u{ffff}'),
        ] {
            assert_eq!(
                NodeName::parse_str(name),
                Err(NameError::Refused(c)),
                "{name}"
            );
        }
        for allowed in ["\u{d7ff}", "\u{f900}", "\u{ffef}", "é", "中文", "\u{a0}"] {
            assert!(NodeName::parse_str(allowed).is_ok(), "{allowed:?}");
        }
        assert!(
            NameError::Refused('😀').to_string().contains("U+1F600"),
            "the reason names the character"
        );
    }
}
