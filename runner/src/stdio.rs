//! A container's interactive stdio: the pieces the shim (which holds the
//! pty master or the stdin pipe), the runtimes (which make the pty) and
//! the daemon (which proxies a client to the shim) share.
//!
//! - The **attach socket** `attach.sock` in the container directory,
//!   served by the shim of a container made with `-i` or `-t`. The shim
//!   writes the container's output as [`crate::api`] frames (kind 1
//!   stdout, 2 stderr; a tty's output is all stdout) to every connected
//!   client and closes them when the output ends; a client writes
//!   [`Msg`]s: stdin bytes, "close stdin", "resize the terminal".
//! - The **console socket** (runc's `--console-socket` protocol): the
//!   runtime connects to it and sends the pty master it made inside the
//!   container with `SCM_RIGHTS`.
//! - Paths in a container directory can be longer than a unix socket
//!   address allows (108 bytes), so [`bind_in`]/[`connect_in`] reach them
//!   through `/proc/self/fd/N/NAME` of an open directory.
//! - docker's detach keys (`ctrl-p,ctrl-q`) and a matcher for them.
//!
//! A leaf module: calls nix and std only.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// The shim's attach socket, in the container directory.
pub const ATTACH_SOCKET: &str = "attach.sock";
/// The console socket the shim listens on while the runtime makes the pty.
pub const CONSOLE_SOCKET: &str = "console.sock";
/// A client message's header: `[kind, 0, 0, 0, len u32 big-endian]`.
pub const MSG_HEADER: usize = 8;
/// Stdin chunks are at most this long.
pub const MAX_MSG: usize = 64 * 1024;

/// What a client of the attach socket sends the shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Bytes for the container's stdin (or the terminal's input).
    Stdin(Vec<u8>),
    /// Close the container's stdin (EOF of `run -i`'s input).
    CloseStdin,
    /// The terminal's size.
    Resize { rows: u16, cols: u16 },
}

impl Msg {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, Vec<u8>) = match self {
            Msg::Stdin(b) => (0, b.clone()),
            Msg::CloseStdin => (1, Vec::new()),
            Msg::Resize { rows, cols } => {
                let mut p = rows.to_be_bytes().to_vec();
                p.extend_from_slice(&cols.to_be_bytes());
                (2, p)
            }
        };
        let mut out = Vec::with_capacity(MSG_HEADER + payload.len());
        out.push(kind);
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// The message at the front of `buf` and the bytes it took; `Ok(None)`
    /// when more are needed; `Err` on a bad header.
    pub fn decode(buf: &[u8]) -> Result<Option<(Msg, usize)>, String> {
        if buf.len() < MSG_HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
        if len > MAX_MSG {
            return Err(format!("message of {len} bytes is over the limit"));
        }
        if buf.len() < MSG_HEADER + len {
            return Ok(None);
        }
        let payload = &buf[MSG_HEADER..MSG_HEADER + len];
        let msg = match buf[0] {
            0 => Msg::Stdin(payload.to_vec()),
            1 => Msg::CloseStdin,
            2 if len == 4 => Msg::Resize {
                rows: u16::from_be_bytes([payload[0], payload[1]]),
                cols: u16::from_be_bytes([payload[2], payload[3]]),
            },
            k => return Err(format!("bad message kind {k} ({len} bytes)")),
        };
        Ok(Some((msg, MSG_HEADER + len)))
    }
}

/// `dir/name` as a path short enough for a socket address, valid while
/// `dirfd` is open.
fn short_path(dirfd: &OwnedFd, name: &str) -> String {
    format!("/proc/self/fd/{}/{name}", dirfd.as_raw_fd())
}

fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_CLOEXEC)
        .open(dir)?;
    Ok(f.into())
}

/// Listens on `dir/name` (a stale socket file there is replaced).
pub fn bind_in(dir: &Path, name: &str) -> io::Result<UnixListener> {
    let fd = open_dir(dir)?;
    let path = short_path(&fd, name);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    UnixListener::bind(&path)
}

/// Connects to the socket `dir/name`.
pub fn connect_in(dir: &Path, name: &str) -> io::Result<UnixStream> {
    let fd = open_dir(dir)?;
    UnixStream::connect(short_path(&fd, name))
}

/// Sends `fd` over `sock` with `SCM_RIGHTS` and `name` as the payload (the
/// pty's name, as runc does).
pub fn send_fd(sock: RawFd, fd: RawFd, name: &str) -> io::Result<()> {
    let fds = [fd];
    let iov = [IoSlice::new(name.as_bytes())];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(sock, &iov, &cmsg, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives one fd sent with [`send_fd`] (or by runc), and the name sent with it.
pub fn recv_fd(sock: &UnixStream) -> io::Result<(OwnedFd, String)> {
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut got: Option<OwnedFd> = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed this fd in our table; we
                // are its only owner.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if got.is_none() {
                    got = Some(owned);
                }
            }
        }
    }
    let n = msg.bytes;
    let name = String::from_utf8_lossy(&buf[..n.min(buf.len())]).into_owned();
    got.map(|fd| (fd, name))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no file descriptor received"))
}

/// Sets a terminal's window size.
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = nix::libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid.
    let rc = unsafe { nix::libc::ioctl(fd, nix::libc::TIOCSWINSZ, &ws) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A terminal's window size (rows, cols), `None` when `fd` is no terminal.
pub fn get_winsize(fd: RawFd) -> Option<(u16, u16)> {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize to the pointer, which is valid.
    let rc = unsafe { nix::libc::ioctl(fd, nix::libc::TIOCGWINSZ, &mut ws) };
    (rc == 0).then_some((ws.ws_row, ws.ws_col))
}

/// Sets `process.consoleSize` (the size the runtime gives the pty before
/// the command runs).
pub fn set_console_size(spec: &mut oci_spec::runtime::Spec, rows: u16, cols: u16) {
    if rows == 0 || cols == 0 {
        return;
    }
    if let Some(process) = spec.process_mut()
        && let Ok(size) = oci_spec::runtime::BoxBuilder::default()
            .height(u64::from(rows))
            .width(u64::from(cols))
            .build()
    {
        process.set_console_size(Some(size));
    }
}

/// docker's default detach keys.
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-p,ctrl-q";

/// Parses docker's `--detach-keys` (`ctrl-p,ctrl-q`, `a,ctrl-@`, ...): a
/// comma-separated list of single characters or `ctrl-X` (X in `a-z`,
/// `@`, `[`, `\`, `]`, `^`, `_`). An empty string disables detaching.
pub fn parse_detach_keys(spec: &str) -> Result<Vec<u8>, String> {
    if spec.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for key in spec.split(',') {
        let bad = || format!("Invalid detach keys ({spec}) provided");
        let b = if let Some(c) = key.strip_prefix("ctrl-") {
            let [c] = c.as_bytes() else { return Err(bad()) };
            match c.to_ascii_lowercase() {
                c @ b'a'..=b'z' => c - b'a' + 1,
                b'@' => 0,
                c @ (b'[' | b'\\' | b']' | b'^' | b'_') => c - b'@',
                _ => return Err(bad()),
            }
        } else {
            let [c] = key.as_bytes() else {
                return Err(bad());
            };
            *c
        };
        out.push(b);
    }
    Ok(out)
}

/// Finds the detach sequence in a stream of input. Bytes that may begin
/// the sequence are held back until it is clear they do not.
#[derive(Debug, Clone)]
pub struct DetachMatcher {
    keys: Vec<u8>,
    held: usize,
}

impl DetachMatcher {
    pub fn new(keys: Vec<u8>) -> DetachMatcher {
        DetachMatcher { keys, held: 0 }
    }

    /// The held bytes, at the end of the input: they were no detach.
    pub fn flush(&mut self) -> Vec<u8> {
        let held = self.keys[..self.held].to_vec();
        self.held = 0;
        held
    }

    /// Feeds input; returns the bytes to pass on, and whether the whole
    /// sequence was typed (then the bytes after it are dropped).
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        if self.keys.is_empty() {
            return (input.to_vec(), false);
        }
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if b == self.keys[self.held] {
                self.held += 1;
                if self.held == self.keys.len() {
                    self.held = 0;
                    return (out, true);
                }
            } else {
                out.extend_from_slice(&self.keys[..self.held]);
                self.held = 0;
                if b == self.keys[0] {
                    self.held = 1;
                    if self.keys.len() == 1 {
                        self.held = 0;
                        return (out, true);
                    }
                } else {
                    out.push(b);
                }
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let mut buf = Msg::Stdin(b"hi\n".to_vec()).encode();
        buf.extend(
            Msg::Resize {
                rows: 40,
                cols: 120,
            }
            .encode(),
        );
        buf.extend(Msg::CloseStdin.encode());
        let (m, n) = Msg::decode(&buf).unwrap().unwrap();
        assert_eq!(m, Msg::Stdin(b"hi\n".to_vec()));
        let (m, n2) = Msg::decode(&buf[n..]).unwrap().unwrap();
        assert_eq!(
            m,
            Msg::Resize {
                rows: 40,
                cols: 120
            }
        );
        let (m, _) = Msg::decode(&buf[n + n2..]).unwrap().unwrap();
        assert_eq!(m, Msg::CloseStdin);
        assert_eq!(Msg::decode(&buf[..3]).unwrap(), None);
        assert!(Msg::decode(&[7, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(Msg::decode(&[0, 0, 0, 0, 0xff, 0, 0, 0]).is_err());
    }

    #[test]
    fn detach_keys_parse_like_docker() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q").unwrap(), vec![16, 17]);
        assert_eq!(
            parse_detach_keys("a,ctrl-@,ctrl-_").unwrap(),
            vec![b'a', 0, 31]
        );
        assert_eq!(parse_detach_keys("").unwrap(), Vec::<u8>::new());
        assert!(parse_detach_keys("ctrl-pp").is_err());
        assert!(parse_detach_keys("ab").is_err());
    }

    #[test]
    fn the_matcher_holds_back_a_prefix_and_detects_the_sequence() {
        let mut m = DetachMatcher::new(vec![16, 17]);
        assert_eq!(m.feed(b"ab\x10"), (b"ab".to_vec(), false));
        assert_eq!(m.feed(b"x"), (b"\x10x".to_vec(), false));
        assert_eq!(m.feed(b"\x10\x10"), (b"\x10".to_vec(), false));
        assert_eq!(m.feed(b"\x11rest"), (Vec::new(), true));
        let mut none = DetachMatcher::new(Vec::new());
        assert_eq!(none.feed(b"\x10\x11"), (b"\x10\x11".to_vec(), false));
    }

    #[test]
    fn fds_pass_over_a_socket_in_a_long_directory() {
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join("d".repeat(120));
        std::fs::create_dir(&long).unwrap();
        let listener = bind_in(&long, CONSOLE_SOCKET).unwrap();
        let client = connect_in(&long, CONSOLE_SOCKET).unwrap();
        let (server, _) = listener.accept().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        send_fd(client.as_raw_fd(), file.as_raw_fd(), "/dev/pts/0").unwrap();
        let (fd, name) = recv_fd(&server).unwrap();
        assert_eq!(name, "/dev/pts/0");
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(target, Path::new("/dev/null"));
    }
}
