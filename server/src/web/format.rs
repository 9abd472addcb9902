//! How numbers and times read on the web pages: sizes in decimal units
//! ("12.3 MB", as docker prints them) and times relative to now ("3 hours
//! ago") with the exact UTC time beside them for the `title` attribute.
//!
//! A leaf: pure functions, no I/O.

/// A size in bytes, human-readable with decimal units: `512 B`, `1.5 kB`,
/// `12.3 MB`, `4.01 GB` (three significant digits above 1 kB).
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 999.95 {
            break;
        }
        value /= 1000.0;
        unit = u;
    }
    if value < 9.995 {
        format!("{value:.2} {unit}")
    } else if value < 99.95 {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.0} {unit}")
    }
}

/// The exact time of a unix-milliseconds instant, in UTC:
/// `2026-11-28 07:30:05 UTC`.
pub fn exact_utc(unix_ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(unix_ms) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => "unknown time".to_owned(),
    }
}

/// RFC 3339 in UTC for a `<time datetime>` attribute (the script reads it).
pub fn rfc3339(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// `then` relative to `now` (both unix milliseconds): "just now",
/// "5 minutes ago", "1 day ago", "in 2 hours" (a clock ahead of ours).
pub fn relative(then_ms: i64, now_ms: i64) -> String {
    let diff = (now_ms - then_ms) / 1000;
    let future = diff < 0;
    let secs = diff.unsigned_abs();
    if secs < 45 {
        return "just now".to_owned();
    }
    let (n, unit) = match secs {
        s if s < 90 => (1, "minute"),
        s if s < 45 * 60 => (s.div_ceil(60).clamp(2, 44), "minute"),
        s if s < 90 * 60 => (1, "hour"),
        s if s < 22 * 3600 => ((s + 1800) / 3600, "hour"),
        s if s < 36 * 3600 => (1, "day"),
        s if s < 26 * 86400 => ((s + 43200) / 86400, "day"),
        s if s < 46 * 86400 => (1, "month"),
        s if s < 320 * 86400 => ((s + 15 * 86400) / (30 * 86400), "month"),
        s if s < 548 * 86400 => (1, "year"),
        s => ((s + 182 * 86400) / (365 * 86400), "year"),
    };
    let plural = if n == 1 { "" } else { "s" };
    if future {
        format!("in {n} {unit}{plural}")
    } else {
        format!("{n} {unit}{plural} ago")
    }
}

/// The current time in unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A time given as text (an image config's `created`, RFC 3339) in unix
/// milliseconds, if it parses.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The short form of a digest for tables: `sha256:0123456789ab`.
pub fn short_digest(digest: &str) -> &str {
    match digest.split_once(':') {
        Some((alg, hex)) if hex.len() > 12 => &digest[..alg.len() + 1 + 12],
        _ => digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(999), "999 B");
        assert_eq!(size(1000), "1.00 kB");
        assert_eq!(size(1536), "1.54 kB");
        assert_eq!(size(12_345_678), "12.3 MB");
        assert_eq!(size(999_999), "1.00 MB");
        assert_eq!(size(123_456_789_012), "123 GB");
        assert_eq!(size(u64::MAX), "18.4 EB");
    }

    #[test]
    fn relative_times() {
        let now = 1_800_000_000_000;
        assert_eq!(relative(now, now), "just now");
        assert_eq!(relative(now - 60_000, now), "1 minute ago");
        assert_eq!(relative(now - 5 * 60_000, now), "5 minutes ago");
        assert_eq!(relative(now - 3 * 3_600_000, now), "3 hours ago");
        assert_eq!(relative(now - 86_400_000, now), "1 day ago");
        assert_eq!(relative(now - 10 * 86_400_000, now), "10 days ago");
        assert_eq!(relative(now - 400 * 86_400_000, now), "1 year ago");
        assert_eq!(relative(now + 2 * 3_600_000, now), "in 2 hours");
    }

    #[test]
    fn exact_times_and_digests() {
        assert_eq!(exact_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_rfc3339("yesterday"), None);
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(short_digest(&d), "sha256:abababababab");
        assert_eq!(short_digest("odd"), "odd");
    }
}
