//! Container logs in docker's `json-file` format: one JSON object per line,
//! `{"log": "...\n", "stream": "stdout"|"stderr", "time": RFC 3339 with ns}`.
//!
//! A leaf module: the monitor (`shim`) writes with [`LogWriter`], the daemon
//! reads with [`read_entries`] for `logs`, `--tail` and `-t`.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// docker splits long lines at 16 KiB; so do we, so one entry stays bounded.
pub const MAX_ENTRY_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub log: String,
    pub stream: Stream,
    pub time: String,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Splits a stream's bytes into lines and appends each as an entry.
pub struct LogWriter {
    file: File,
    pending: [Vec<u8>; 2],
}

impl LogWriter {
    pub fn create(path: &Path) -> io::Result<LogWriter> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(LogWriter {
            file,
            pending: [Vec::new(), Vec::new()],
        })
    }

    fn slot(stream: Stream) -> usize {
        match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }

    /// Adds bytes read from a stream; complete lines are written at once.
    pub fn push(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        let slot = Self::slot(stream);
        self.pending[slot].extend_from_slice(bytes);
        loop {
            let buf = &self.pending[slot];
            let cut = match buf.iter().position(|&b| b == b'\n') {
                Some(i) if i < MAX_ENTRY_BYTES => i + 1,
                _ if buf.len() >= MAX_ENTRY_BYTES => MAX_ENTRY_BYTES,
                _ => return Ok(()),
            };
            let line: Vec<u8> = self.pending[slot].drain(..cut).collect();
            self.write_entry(stream, &line)?;
        }
    }

    /// Writes what is left of each stream (a last line without newline).
    pub fn flush_all(&mut self) -> io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut self.pending[Self::slot(stream)]);
            if !rest.is_empty() {
                self.write_entry(stream, &rest)?;
            }
        }
        self.file.flush()
    }

    fn write_entry(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        let entry = Entry {
            log: String::from_utf8_lossy(bytes).into_owned(),
            stream,
            time: now_rfc3339(),
        };
        let mut line = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)
    }
}

/// Reads every entry of a log file; with `tail`, only the last `tail`.
/// Lines that do not parse (a torn last write after a crash) are skipped.
pub fn read_entries(path: &Path, tail: Option<usize>) -> io::Result<Vec<Entry>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut entries = std::collections::VecDeque::new();
    for line in BufReader::new(file).lines() {
        if let Ok(e) = serde_json::from_str::<Entry>(&line?) {
            entries.push_back(e);
            if tail.is_some_and(|t| entries.len() > t) {
                entries.pop_front();
            }
        }
    }
    Ok(entries.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_per_stream_and_tail_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        let mut w = LogWriter::create(&path).unwrap();
        w.push(Stream::Stdout, b"one\ntw").unwrap();
        w.push(Stream::Stderr, b"err\n").unwrap();
        w.push(Stream::Stdout, b"o\nlast").unwrap();
        w.flush_all().unwrap();
        let all = read_entries(&path, None).unwrap();
        let texts: Vec<_> = all.iter().map(|e| (e.stream, e.log.as_str())).collect();
        assert_eq!(
            texts,
            vec![
                (Stream::Stdout, "one\n"),
                (Stream::Stderr, "err\n"),
                (Stream::Stdout, "two\n"),
                (Stream::Stdout, "last"),
            ]
        );
        assert!(all[0].time.ends_with('Z'));
        let tail = read_entries(&path, Some(2)).unwrap();
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[1].log, "last");
    }

    #[test]
    fn long_lines_are_split() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        let mut w = LogWriter::create(&path).unwrap();
        w.push(Stream::Stdout, &vec![b'x'; MAX_ENTRY_BYTES + 10])
            .unwrap();
        w.flush_all().unwrap();
        let all = read_entries(&path, None).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].log.len(), MAX_ENTRY_BYTES);
    }
}
