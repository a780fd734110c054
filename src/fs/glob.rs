//! `--ephemeral GLOB` and `--attrs GLOB=...` patterns: relative to the mount
//! root, `/`-separated; `*` and `?` match within one path element, `**`
//! matches any number of whole elements (none included). A pattern matches a
//! node path, file or directory alike: for `--ephemeral` the directory a file
//! is created in, for `--attrs` the node itself.

#[derive(Clone, Debug)]
pub struct DirGlob {
    elements: Vec<String>,
}

impl DirGlob {
    pub fn parse(pattern: &str) -> Result<DirGlob, String> {
        DirGlob::parse_for(pattern, "--ephemeral")
    }

    /// [`DirGlob::parse`] for `option` (named in error messages).
    pub fn parse_for(pattern: &str, option: &str) -> Result<DirGlob, String> {
        let trimmed = pattern.trim_matches('/');
        if trimmed.is_empty() {
            return Err(format!("empty {option} pattern '{pattern}'"));
        }
        let elements: Vec<String> = trimmed.split('/').map(String::from).collect();
        if elements
            .iter()
            .any(|e| e.is_empty() || e == "." || e == "..")
        {
            return Err(format!("invalid {option} pattern '{pattern}'"));
        }
        Ok(DirGlob { elements })
    }

    /// Whether a node (a directory, for `--ephemeral`), given as its path
    /// relative to the mount root (elements), matches.
    pub fn matches(&self, dir: &[&str]) -> bool {
        match_elements(&self.elements, dir)
    }
}

fn match_elements(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| match_elements(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((name, tail)) => {
                match_element(first.as_bytes(), name.as_bytes()) && match_elements(rest, tail)
            }
            None => false,
        },
    }
}

fn match_element(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.split_first(), name.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => {
            match_element(rest, name) || (!name.is_empty() && match_element(pattern, &name[1..]))
        }
        (Some((b'?', rest)), Some((_, tail))) => match_element(rest, tail),
        (Some((p, rest)), Some((n, tail))) => p == n && match_element(rest, tail),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, dir: &str) -> bool {
        let elements: Vec<&str> = dir.split('/').filter(|e| !e.is_empty()).collect();
        DirGlob::parse(pattern).expect("pattern").matches(&elements)
    }

    #[test]
    fn globs() {
        assert!(m("services/*/servers", "services/web/servers"));
        assert!(!m("services/*/servers", "services/web/x/servers"));
        assert!(!m("services/*/servers", "services/web"));
        assert!(m("**/servers", "a/b/servers"));
        assert!(m("**/servers", "servers"));
        assert!(m("services/**", "services/a/b"));
        assert!(m("svc-*/live", "svc-web/live"));
        assert!(!m("svc-*/live", "web/live"));
        assert!(m("a?c", "abc"));
        assert!(DirGlob::parse("").is_err());
        assert!(DirGlob::parse("a/../b").is_err());
    }
}
