//! Output formatting the docker CLI's way: tables padded like Go's
//! tabwriter (`minwidth 10, padding 3`), go-units' `HumanDuration` and
//! `HumanSize`, ps's quoted and truncated COMMAND, and the small subset of
//! Go templates `inspect --format` needs (`{{.A.B}}`, `{{json .A}}`,
//! `{{index .A "k"}}`, literal text around them).
//!
//! Pure functions; called by the `cli` commands, calls nothing.

use serde_json::Value;

/// Renders rows as docker's tabwriter does (`tabwriter.NewWriter(out, 10,
/// 1, 3, ' ', 0)`): every column but the last is as wide as its widest
/// cell plus 3, and at least 10; widths count characters, not bytes.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![10usize; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                widths[i] = widths[i].max(cell.chars().count() + 3);
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub use crate::api::human_duration;

/// "5 seconds ago" for a creation time (seconds since the epoch).
pub fn ago(created: i64, now: i64) -> String {
    format!("{} ago", human_duration(now - created))
}

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// go-units' `HumanSize`: decimal units, 4 significant digits
/// (`"%.4g%s"`): "4.26MB", "12.35kB", "100B".
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    format!("{}{}", format_g4(size), UNITS[unit])
}

/// Go's `%.4g` for 0 <= v < 1000 (what `human_size` needs).
fn format_g4(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let exponent = v.abs().log10().floor() as i32;
    let decimals = (3 - exponent).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// docker's `Ellipsis`: at most `max` characters, the last one "…" when cut.
pub fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Go's `strconv.Quote` (for ps's COMMAND).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// ps's COMMAND cell: truncated to 20 characters unless `no_trunc`, then quoted.
pub fn command_cell(command: &str, no_trunc: bool) -> String {
    if no_trunc {
        quote(command)
    } else {
        quote(&ellipsis(command, 20))
    }
}

/// The short id: 12 characters, without a `sha256:` prefix.
pub fn short_id(id: &str) -> String {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    id.chars().take(12).collect()
}

/// Writes JSON the way `docker inspect` does: 4-space indent.
pub fn json_pretty(value: &Value) -> String {
    use serde::Serialize;
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    match value.serialize(&mut ser) {
        Ok(()) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => value.to_string(),
    }
}

/// A parsed list `--format` (`ps`, `stats`): docker's `table` prefix
/// (tabwriter columns and a header row), `json` (one object a line), or a
/// template printed line by line.
#[derive(Debug, Clone, PartialEq)]
pub struct ListFormat {
    template: Template,
    table: bool,
}

impl ListFormat {
    /// `default` is the command's own `table ...` format (no `--format`,
    /// or `--format table`).
    pub fn parse(format: Option<&str>, default: &str) -> Result<ListFormat, String> {
        let format = match format.map(str::trim) {
            None | Some("") | Some("table") => default,
            Some("json") => "{{json .}}",
            Some(f) => f,
        };
        let (table, text) = match format.strip_prefix("table") {
            Some(rest) => (true, rest),
            None => (false, format),
        };
        // docker's preFormat: trim spaces, then `\t` and `\n` typed as two
        // characters are a tab and a newline.
        let text = text
            .trim_matches(' ')
            .replace("\\t", "\t")
            .replace("\\n", "\n");
        Ok(ListFormat {
            template: Template::parse(&text)?,
            table,
        })
    }

    /// The whole output: a table with `header` (the fields' column titles)
    /// or one rendered line per row.
    pub fn render(&self, header: &Value, rows: &[Value]) -> String {
        if !self.table {
            let mut out = String::new();
            for r in rows {
                out.push_str(&self.template.render(r));
                out.push('\n');
            }
            return out;
        }
        let cells = |text: String| text.split('\t').map(str::to_string).collect::<Vec<_>>();
        let mut lines = vec![cells(self.template.render(header))];
        for r in rows {
            lines.push(cells(self.template.render(r)));
        }
        table(&lines)
    }
}

/// A parsed `--format` template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Value(Expr),
    Json(Expr),
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    /// `.A.B` (empty: `.`).
    Path(Vec<String>),
    /// `index .A "k" 0`.
    Index(Vec<String>, Vec<String>),
}

impl Template {
    /// Parses the subset of Go templates we support; the error is
    /// docker's `template parsing error: ...` line.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            let mut literal = &rest[..start];
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| "template parsing error: unclosed action".to_string())?;
            let mut action = &after[..end];
            rest = &after[end + 2..];
            if let Some(a) = action.strip_prefix('-') {
                action = a;
                literal = literal.trim_end();
            }
            if let Some(a) = action.strip_suffix('-') {
                action = a;
                rest = rest.trim_start();
            }
            if !literal.is_empty() {
                parts.push(Part::Text(literal.to_string()));
            }
            parts.push(parse_action(action.trim())?);
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// Renders the template for one object.
    pub fn render(&self, value: &Value) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Value(e) => match eval(e, value) {
                    Some(v) => out.push_str(&go_value(v)),
                    None => out.push_str("<no value>"),
                },
                Part::Json(e) => match eval(e, value) {
                    Some(v) => out.push_str(&v.to_string()),
                    None => out.push_str("null"),
                },
            }
        }
        out
    }
}

fn words(action: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = action.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut word = String::new();
            loop {
                match chars.next() {
                    None => return Err("template parsing error: unterminated quoted string".into()),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => word.push(c),
                        None => {
                            return Err("template parsing error: unterminated quoted string".into());
                        }
                    },
                    Some(c) => word.push(c),
                }
            }
            out.push(format!("\"{word}"));
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
            out.push(word);
        }
    }
    Ok(out)
}

fn parse_path(word: &str) -> Result<Vec<String>, String> {
    if word == "." {
        return Ok(Vec::new());
    }
    match word.strip_prefix('.') {
        Some(p) if !p.is_empty() && p.split('.').all(|s| !s.is_empty()) => {
            Ok(p.split('.').map(str::to_string).collect())
        }
        _ => Err(format!(
            "template parsing error: function {word:?} not defined"
        )),
    }
}

fn parse_action(action: &str) -> Result<Part, String> {
    let words = words(action)?;
    let Some((first, args)) = words.split_first() else {
        return Err("template parsing error: missing value for command".into());
    };
    let expr = |args: &[String]| -> Result<Expr, String> {
        match args.split_first() {
            Some((f, rest)) if f == "index" => {
                let Some((path, keys)) = rest.split_first() else {
                    return Err("template parsing error: index needs arguments".into());
                };
                let keys = keys
                    .iter()
                    .map(|k| k.strip_prefix('"').unwrap_or(k).to_string())
                    .collect();
                Ok(Expr::Index(parse_path(path)?, keys))
            }
            Some((path, [])) => Ok(Expr::Path(parse_path(path)?)),
            Some((f, _)) => Err(format!(
                "template parsing error: function {f:?} not defined"
            )),
            None => Err("template parsing error: missing argument".into()),
        }
    };
    if first == "json" {
        return Ok(Part::Json(expr(args)?));
    }
    Ok(Part::Value(expr(&words)?))
}

fn eval<'a>(expr: &Expr, root: &'a Value) -> Option<&'a Value> {
    let walk = |path: &[String]| {
        path.iter()
            .try_fold(root, |v, key| v.as_object().and_then(|o| o.get(key)))
    };
    match expr {
        Expr::Path(path) => walk(path),
        Expr::Index(path, keys) => keys.iter().try_fold(walk(path)?, |v, key| match v {
            Value::Object(o) => o.get(key),
            Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        }),
    }
}

/// A value the way Go's `fmt` prints what `json.Unmarshal` gives:
/// strings raw, `map[k:v]`, `[a b]`, `<nil>`.
fn go_value(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) => format!("[{}]", a.iter().map(go_value).collect::<Vec<_>>().join(" ")),
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let items: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{k}:{}", go_value(&o[k])))
                .collect();
            format!("map[{}]", items.join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_like_go_units() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(1), "1 second");
        assert_eq!(human_duration(5), "5 seconds");
        assert_eq!(human_duration(60), "About a minute");
        assert_eq!(human_duration(119), "About a minute");
        assert_eq!(human_duration(120), "2 minutes");
        assert_eq!(human_duration(3599), "59 minutes");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(2 * 3600), "2 hours");
        assert_eq!(human_duration(47 * 3600), "47 hours");
        assert_eq!(human_duration(3 * 86400), "3 days");
        assert_eq!(human_duration(15 * 86400), "2 weeks");
        assert_eq!(human_duration(90 * 86400), "3 months");
        assert_eq!(human_duration(800 * 86400), "2 years");
        assert_eq!(ago(1000, 1075), "About a minute ago");
        assert_eq!(ago(1000, 1005), "5 seconds ago");
    }

    #[test]
    fn sizes_like_go_units() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(100), "100B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(4_260_000), "4.26MB");
        assert_eq!(human_size(4_261_234), "4.261MB");
        assert_eq!(human_size(12_300_000), "12.3MB");
        assert_eq!(human_size(123_456_789), "123.5MB");
        assert_eq!(human_size(2_000_000_000), "2GB");
    }

    #[test]
    fn command_is_truncated_and_quoted_like_ps() {
        assert_eq!(command_cell("sh", false), "\"sh\"");
        assert_eq!(
            command_cell("sh -c 'while true; do sleep 1; done'", false),
            "\"sh -c 'while true; …\""
        );
        assert_eq!(ellipsis("12345678901234567890", 20), "12345678901234567890");
        assert_eq!(ellipsis("123456789012345678901", 20).chars().count(), 20);
        assert_eq!(command_cell("echo \"hi\"", true), "\"echo \\\"hi\\\"\"");
    }

    #[test]
    fn table_pads_like_tabwriter() {
        let rows = vec![
            vec![
                "CONTAINER ID".into(),
                "IMAGE".into(),
                "PORTS".into(),
                "NAMES".into(),
            ],
            vec![
                "0123456789ab".into(),
                "busybox".into(),
                "".into(),
                "x".into(),
            ],
        ];
        assert_eq!(
            table(&rows),
            "CONTAINER ID   IMAGE     PORTS     NAMES\n0123456789ab   busybox             x\n"
        );
        // Width counts characters: "…" is one.
        let rows = vec![
            vec!["A".into(), "B".into()],
            vec!["\"sh -c 'while true; …\"".into(), "n".into()],
        ];
        assert_eq!(
            table(&rows),
            "A                        B\n\"sh -c 'while true; …\"   n\n"
        );
    }

    #[test]
    fn inspect_json_has_four_space_indent() {
        assert_eq!(
            json_pretty(&json!([{"Id": "x"}])),
            "[\n    {\n        \"Id\": \"x\"\n    }\n]"
        );
    }

    #[test]
    fn templates() {
        let v = json!({
            "Id": "abc",
            "State": {"Status": "exited", "ExitCode": 3, "Running": false},
            "Config": {"Env": ["A=1", "B=2"], "Labels": {"k": "v"}, "Cmd": null},
        });
        let r = |t: &str| Template::parse(t).unwrap().render(&v);
        assert_eq!(r("{{.Id}}"), "abc");
        assert_eq!(r("{{.State.Status}}"), "exited");
        assert_eq!(
            r("code={{.State.ExitCode}} running={{.State.Running}}!"),
            "code=3 running=false!"
        );
        assert_eq!(r("{{json .Config.Env}}"), r#"["A=1","B=2"]"#);
        assert_eq!(
            r("{{ json .State }}"),
            r#"{"ExitCode":3,"Running":false,"Status":"exited"}"#
        );
        assert_eq!(r("{{.Config.Env}}"), "[A=1 B=2]");
        assert_eq!(r("{{.Config.Labels}}"), "map[k:v]");
        assert_eq!(r("{{index .Config.Labels \"k\"}}"), "v");
        assert_eq!(r("{{index .Config.Env 1}}"), "B=2");
        assert_eq!(r("{{.Config.Cmd}}"), "<nil>");
        assert_eq!(r("{{.Nope.Deeper}}"), "<no value>");
        assert_eq!(r("x {{- .Id -}} y"), "xabcy");
        assert!(Template::parse("{{.Id").is_err());
        assert!(Template::parse("{{foo .Id}}").is_err());
    }
}
