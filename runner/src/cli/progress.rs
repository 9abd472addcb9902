//! Pull progress, shown as docker shows it: on a terminal one indicatif
//! bar per layer; otherwise plain lines (`<id>: Pulling fs layer`,
//! `<id>: Pull complete`, `Digest: ...`, `Status: ...`) without the
//! byte-by-byte "Downloading" events.
//!
//! Called by the `cli` pull and run commands with each [`PullEvent`];
//! calls indicatif.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::api::PullEvent;

/// Where the progress goes: `pull` writes to stdout, `run` to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    Stderr,
}

impl Sink {
    fn is_terminal(self) -> bool {
        match self {
            Sink::Stdout => std::io::stdout().is_terminal(),
            Sink::Stderr => std::io::stderr().is_terminal(),
        }
    }

    /// Writes one line, ignoring a closed pipe.
    pub fn line(self, text: &str) {
        let _ = match self {
            Sink::Stdout => writeln!(std::io::stdout().lock(), "{text}"),
            Sink::Stderr => writeln!(std::io::stderr().lock(), "{text}"),
        };
    }
}

enum Mode {
    Plain,
    Bars {
        multi: MultiProgress,
        bars: HashMap<String, ProgressBar>,
    },
}

/// Renders a pull's events.
pub struct Progress {
    sink: Sink,
    mode: Mode,
}

/// True for the events plain output leaves out (docker prints only
/// status changes when not on a terminal).
pub fn is_progress_only(event: &PullEvent) -> bool {
    matches!(event.status.as_str(), "Downloading" | "Extracting") || event.current.is_some()
}

/// One plain line for an event, `None` for the ones left out.
pub fn plain_line(event: &PullEvent) -> Option<String> {
    if is_progress_only(event) || event.status.is_empty() {
        return None;
    }
    Some(match &event.id {
        Some(id) => format!("{id}: {}", event.status),
        None => event.status.clone(),
    })
}

impl Progress {
    /// Bars when `sink` is a terminal, plain lines otherwise.
    pub fn new(sink: Sink) -> Progress {
        let mode = if sink.is_terminal() {
            let target = match sink {
                Sink::Stdout => ProgressDrawTarget::stdout(),
                Sink::Stderr => ProgressDrawTarget::stderr(),
            };
            Mode::Bars {
                multi: MultiProgress::with_draw_target(target),
                bars: HashMap::new(),
            }
        } else {
            Mode::Plain
        };
        Progress { sink, mode }
    }

    /// Shows one event.
    pub fn event(&mut self, event: &PullEvent) {
        match &mut self.mode {
            Mode::Plain => {
                if let Some(line) = plain_line(event) {
                    self.sink.line(&line);
                }
            }
            Mode::Bars { multi, bars } => {
                // Lines without a layer, and "latest: Pulling from ..."
                // (docker's tag-as-id line), are plain text above the bars.
                let id = match &event.id {
                    Some(id) if !event.status.starts_with("Pulling from") => id,
                    _ => {
                        let Some(line) = plain_line(event) else {
                            return;
                        };
                        if line.starts_with("Digest: ") || line.starts_with("Status: ") {
                            // The end of the pull: below the (now final) bars, as docker.
                            for bar in bars.values() {
                                if !bar.is_finished() {
                                    bar.abandon();
                                }
                            }
                            self.sink.line(&line);
                        } else {
                            let _ = multi.println(line);
                        }
                        return;
                    }
                };
                let bar = bars.entry(id.clone()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(0));
                    bar.set_style(text_style());
                    bar.set_prefix(id.clone());
                    bar
                });
                match (event.current, event.total) {
                    (Some(current), Some(total)) if total > 0 => {
                        if bar.length() != Some(total) {
                            bar.set_length(total);
                            bar.set_style(bar_style());
                        }
                        bar.set_position(current);
                    }
                    _ => {
                        if bar.length().unwrap_or(0) > 0 && event.status != "Downloading" {
                            bar.set_style(text_style());
                        }
                    }
                }
                bar.set_message(event.status.clone());
                if matches!(event.status.as_str(), "Pull complete" | "Already exists") {
                    bar.set_style(text_style());
                    bar.finish();
                }
            }
        }
    }

    /// Ends the bars (leaving their last state on screen).
    pub fn finish(&mut self) {
        if let Mode::Bars { bars, .. } = &mut self.mode {
            for bar in bars.values() {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
    }
}

fn text_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix}: {msg}").unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix}: {msg:12} [{bar:40}] {decimal_bytes}/{decimal_total_bytes}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_skip_byte_progress() {
        let ev = |id: Option<&str>, status: &str, current: Option<u64>| PullEvent {
            id: id.map(str::to_string),
            status: status.into(),
            current,
            total: Some(10),
            error: None,
        };
        assert_eq!(
            plain_line(&ev(Some("0123456789ab"), "Pulling fs layer", None)).as_deref(),
            Some("0123456789ab: Pulling fs layer")
        );
        assert_eq!(
            plain_line(&ev(Some("0123456789ab"), "Downloading", Some(5))),
            None
        );
        assert_eq!(
            plain_line(&ev(None, "Digest: sha256:aa", None)).as_deref(),
            Some("Digest: sha256:aa")
        );
    }
}
