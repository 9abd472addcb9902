//! Parsers for the docker-style values the CLI hands to `bundle`: sizes
//! (`-m 64m`), env files (`--env-file`) and `-e` arguments.
//!
//! Pure functions over strings; the only outside input is the environment
//! lookup for pass-through variables, which callers can replace. Called by
//! the CLI and by `bundle`; calls nothing of ours.
//!
//! Hand-written because docker's rules are small and specific (go-units'
//! `RAMInBytes`, docker/cli's env-file reader) and no crate reproduces them.

use super::BundleError;

/// Parses a docker-style memory size: a number (decimals allowed), an
/// optional space, an optional binary unit `b k m g t p` (any case), an
/// optional `i` and an optional `b`: `"512k"`, `"64m"`, `"1g"`, `"1.5GiB"`,
/// `"100"` (bytes). Units are powers of 1024, as in go-units' `RAMInBytes`.
pub fn parse_memory(s: &str) -> Result<i64, BundleError> {
    let bad = |reason: &'static str| BundleError::InvalidSize {
        value: s.to_string(),
        reason,
    };
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, rest) = s.split_at(digits_end);
    if number.is_empty() || !number.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(bad(
            "expected a number, optionally followed by b, k, m, g, t or p",
        ));
    }
    let value: f64 = number.parse().map_err(|_| bad("not a number"))?;
    let rest = rest.strip_prefix(' ').unwrap_or(rest).to_ascii_lowercase();
    let mut chars = rest.chars().peekable();
    let multiplier: f64 = match chars.peek() {
        Some('k') => 1024f64,
        Some('m') => 1024f64.powi(2),
        Some('g') => 1024f64.powi(3),
        Some('t') => 1024f64.powi(4),
        Some('p') => 1024f64.powi(5),
        _ => 1.0,
    };
    if multiplier > 1.0 {
        chars.next();
        if chars.peek() == Some(&'i') {
            chars.next();
        }
    }
    if chars.peek() == Some(&'b') {
        chars.next();
    }
    if chars.next().is_some() {
        return Err(bad("unknown unit, expected b, k, m, g, t or p"));
    }
    let bytes = value * multiplier;
    if !bytes.is_finite() || bytes >= i64::MAX as f64 {
        return Err(bad("too large"));
    }
    Ok(bytes as i64)
}

/// Parses an env file the way `docker run --env-file` does, taking
/// pass-through variables from this process's environment.
pub fn parse_env_file(text: &str) -> Result<Vec<String>, BundleError> {
    parse_env_file_with(text, |key| std::env::var(key).ok())
}

/// Parses an env file: one `KEY=value` a line, the value kept byte for byte
/// (no quotes, no trimming); leading whitespace, blank lines and `#`
/// comments skipped; a UTF-8 BOM dropped; a bare `KEY` takes its value from
/// `lookup` and is dropped when unset. A key with whitespace or an empty
/// key is an error naming the line.
pub fn parse_env_file_with(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, BundleError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &'static str| BundleError::InvalidEnv {
            entry: format!("line {}: {line}", number + 1),
            reason,
        };
        match line.split_once('=') {
            Some((key, value)) => {
                check_env_key(key).map_err(bad)?;
                out.push(format!("{key}={value}"));
            }
            None => {
                let key = line.trim_end();
                check_env_key(key).map_err(bad)?;
                if let Some(value) = lookup(key) {
                    out.push(format!("{key}={value}"));
                }
            }
        }
    }
    Ok(out)
}

/// Resolves one `-e` argument as the docker CLI does: `KEY=value` stays,
/// a bare `KEY` takes this process's value when set and otherwise stays
/// bare, which removes `KEY` from the image's environment.
pub fn resolve_env_arg(
    arg: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, BundleError> {
    let key = arg.split_once('=').map_or(arg, |(k, _)| k);
    check_env_key(key).map_err(|reason| BundleError::InvalidEnv {
        entry: arg.to_string(),
        reason,
    })?;
    if arg.contains('=') {
        return Ok(arg.to_string());
    }
    Ok(match lookup(arg) {
        Some(value) => format!("{arg}={value}"),
        None => arg.to_string(),
    })
}

/// A key must be non-empty, without whitespace, `=` or NUL.
pub(super) fn check_env_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("empty variable name");
    }
    if key.contains(|c: char| c.is_whitespace()) {
        return Err("variable name has white space");
    }
    if key.contains(['=', '\0']) {
        return Err("variable name has '=' or a NUL byte");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_like_docker() {
        assert_eq!(parse_memory("64m").unwrap(), 67_108_864);
        assert_eq!(parse_memory("64M").unwrap(), 67_108_864);
        assert_eq!(parse_memory("64MiB").unwrap(), 67_108_864);
        assert_eq!(parse_memory("64mb").unwrap(), 67_108_864);
        assert_eq!(parse_memory("64 m").unwrap(), 67_108_864);
        assert_eq!(parse_memory("1g").unwrap(), 1_073_741_824);
        assert_eq!(parse_memory("512k").unwrap(), 524_288);
        assert_eq!(parse_memory("1.5g").unwrap(), 1_610_612_736);
        assert_eq!(parse_memory("100").unwrap(), 100);
        assert_eq!(parse_memory("100b").unwrap(), 100);
        assert_eq!(parse_memory("2t").unwrap(), 2 * 1024i64.pow(4));
    }

    #[test]
    fn memory_rejects_garbage() {
        for bad in [
            "",
            "m",
            "-1m",
            "64x",
            "64mm",
            "1..5g",
            "abc",
            ".5g",
            "1e3",
            "99999999999p",
        ] {
            let err = parse_memory(bad).unwrap_err();
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn env_file_like_docker() {
        let text = "\u{feff}# comment\n\nA=1\n  B = spaced value \nC=\nD=x=y\n  # indented comment\nFROM_HOST\nUNSET_VAR\nQ=\"quoted\"\n";
        let lookup = |k: &str| (k == "FROM_HOST").then(|| "hostval".to_string());
        // "B " has a space in the key: docker refuses it.
        let err = parse_env_file_with(text, lookup).unwrap_err();
        assert!(err.to_string().contains("line 4"), "{err}");

        let text = "\u{feff}# comment\n\nA=1\n  B= spaced value \nC=\nD=x=y\n  # c\nFROM_HOST\nUNSET_VAR\nQ=\"quoted\"\n";
        let env = parse_env_file_with(text, lookup).unwrap();
        assert_eq!(
            env,
            vec![
                "A=1",
                "B= spaced value ",
                "C=",
                "D=x=y",
                "FROM_HOST=hostval",
                "Q=\"quoted\""
            ]
        );
    }

    #[test]
    fn env_file_rejects_empty_key() {
        assert!(parse_env_file_with("=value\n", |_| None).is_err());
    }

    #[test]
    fn env_arg_resolution() {
        let lookup = |k: &str| (k == "HOME").then(|| "/root".to_string());
        assert_eq!(resolve_env_arg("A=1", lookup).unwrap(), "A=1");
        assert_eq!(resolve_env_arg("HOME", lookup).unwrap(), "HOME=/root");
        assert_eq!(resolve_env_arg("GONE", lookup).unwrap(), "GONE");
        assert!(resolve_env_arg("=x", lookup).is_err());
        assert!(resolve_env_arg("A B=x", lookup).is_err());
    }
}
