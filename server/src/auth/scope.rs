//! Actions, token scopes (`repository:team/app:pull,push`) and the
//! repository patterns grants are written with (`team/*`).
//!
//! Pure functions; a leaf of the auth layer.

use std::fmt;

use crate::names::RepoName;

/// A set of the actions a registry knows: pull, push, delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const PULL: Actions = Actions(1);
    pub const PUSH: Actions = Actions(2);
    pub const DELETE: Actions = Actions(4);
    pub const ALL: Actions = Actions(7);
    const NAMES: [(Actions, &'static str); 3] = [
        (Actions::PULL, "pull"),
        (Actions::PUSH, "push"),
        (Actions::DELETE, "delete"),
    ];

    pub fn union(self, o: Actions) -> Actions {
        Actions(self.0 | o.0)
    }

    pub fn intersect(self, o: Actions) -> Actions {
        Actions(self.0 & o.0)
    }

    pub fn contains(self, o: Actions) -> bool {
        self.0 & o.0 == o.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(a, _)| self.contains(*a))
            .map(|(_, n)| *n)
            .collect()
    }

    /// Parses `pull,push`; `*` means every action. Unknown actions are an
    /// error when `strict`, and ignored otherwise (token requests may ask
    /// for actions this registry does not know, and simply don't get them).
    pub fn parse(list: &str, strict: bool) -> Option<Actions> {
        let mut acc = Actions::NONE;
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match Self::NAMES.iter().find(|(_, n)| *n == word) {
                Some((a, _)) => acc = acc.union(*a),
                None if word == "*" => acc = Actions::ALL,
                None if strict => return None,
                None => {}
            }
        }
        Some(acc)
    }
}

impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

/// What a scope names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Repository(RepoName),
    /// `registry:catalog:*`, the listing of repositories.
    Catalog,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub resource: Resource,
    pub actions: Actions,
}

/// Parses one scope of a token request: `repository:NAME:ACTIONS`
/// (`repository(plugin):...` accepted) or `registry:catalog:*`.
pub fn parse_scope(s: &str) -> Option<Scope> {
    let (kind, rest) = s.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let kind = kind.split('(').next().unwrap_or(kind);
    match kind {
        "repository" => Some(Scope {
            resource: Resource::Repository(RepoName::parse(name)?),
            actions: Actions::parse(actions, false)?,
        }),
        "registry" if name == "catalog" => Some(Scope {
            resource: Resource::Catalog,
            actions: Actions::ALL,
        }),
        _ => None,
    }
}

/// A repository pattern: a name in which `*` stands for any run of
/// characters, slashes included (`team/*`, `*`, `tools/linter`).
pub fn valid_pattern(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= crate::names::MAX_NAME_LEN
        && p.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'_' | b'-' | b'/' | b'*')
        })
}

pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    // Iterative glob with one backtrack point: linear in practice and
    // never recursive, whatever the pattern.
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions() {
        assert_eq!(
            Actions::parse("pull,push", true),
            Some(Actions::PULL.union(Actions::PUSH))
        );
        assert_eq!(Actions::parse("*", true), Some(Actions::ALL));
        assert_eq!(Actions::parse("pull,fly", true), None);
        assert_eq!(Actions::parse("pull,fly", false), Some(Actions::PULL));
        assert_eq!(Actions::ALL.to_string(), "pull,push,delete");
    }

    #[test]
    fn scopes() {
        let s = parse_scope("repository:team/app:pull,push").unwrap();
        assert_eq!(
            s.resource,
            Resource::Repository(RepoName::parse("team/app").unwrap())
        );
        assert_eq!(s.actions, Actions::PULL.union(Actions::PUSH));
        assert_eq!(
            parse_scope("registry:catalog:*").unwrap().resource,
            Resource::Catalog
        );
        assert!(parse_scope("repository(plugin):a:pull").is_some());
        for bad in [
            "",
            "repository",
            "repository:A:pull",
            "repository:a",
            "user:a:pull",
            "repository:../x:pull",
        ] {
            assert!(parse_scope(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("team/*", "team/app"));
        assert!(pattern_matches("team/*", "team/a/b"));
        assert!(!pattern_matches("team/*", "teams/app"));
        assert!(pattern_matches("*", "anything/at/all"));
        assert!(pattern_matches("tools/linter", "tools/linter"));
        assert!(!pattern_matches("tools/linter", "tools/linter2"));
        assert!(pattern_matches("*/base", "x/y/base"));
        assert!(valid_pattern("team/*"));
        assert!(!valid_pattern("Team/*"));
        assert!(!valid_pattern(""));
    }
}
