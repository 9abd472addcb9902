//! The CLI's own terminal and input for interactive streams (`run -it`,
//! `attach`, `exec -it`): raw mode with a guard that restores
//! the terminal however the command ends, the window size, and stdin read
//! on a thread of its own (so a blocked read never holds up the exit).
//!
//! Called by `cli::attach`; calls nix and `stdio` (window sizes).

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::termios::{self, SetArg, Termios};
use tokio::sync::mpsc;

/// The terminal in raw mode until dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode; `None` when stdin is no terminal.
    pub fn enable() -> std::io::Result<Option<RawMode>> {
        let stdin = std::io::stdin();
        if !is_terminal(stdin.as_raw_fd()) {
            return Ok(None);
        }
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

pub fn is_terminal(fd: i32) -> bool {
    // SAFETY: isatty only looks the fd up.
    unsafe { nix::libc::isatty(fd) == 1 }
}

/// The size (rows, cols) of the terminal on stdout, else on stdin.
pub fn size() -> Option<(u16, u16)> {
    [1, 0]
        .into_iter()
        .filter_map(crate::stdio::get_winsize)
        .find(|(r, c)| *r > 0 && *c > 0)
}

/// Reads stdin on its own thread; the channel ends at EOF (or an error).
pub fn stdin_chunks() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    });
    rx
}
