//! Validated node names: every rule about what a path element may be lives here.

use std::ffi::OsStr;
use std::fmt;

/// One path element that ZooKeeper can store: UTF-8, not empty, not `.` or
/// `..`, no `/`, no NUL or other control characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeName(String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    NotUtf8,
    Empty,
    Dot,
    Slash,
    Control,
    /// Longer than [`NAME_MAX`] bytes (what `statfs` announces).
    TooLong,
}

/// The longest name, in bytes, as `statfs` reports it (`f_namemax`).
pub const NAME_MAX: usize = 255;

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameError::NotUtf8 => "name is not UTF-8 (ZooKeeper paths are UTF-8)",
            NameError::Empty => "empty name",
            NameError::Dot => "'.' and '..' are not node names",
            NameError::Slash => "name contains '/'",
            NameError::Control => "name contains a control character",
            NameError::TooLong => "name is longer than 255 bytes",
        })
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
        // ZooKeeper rejects U+0000-001F, U+007F-009F and a few others.
        if s.chars().any(|c| {
            c.is_control()
                || ('\u{e000}'..='\u{f8ff}').contains(&c)
                || ('\u{fff0}'..='\u{ffff}').contains(&c)
        }) {
            return Err(NameError::Control);
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
}
