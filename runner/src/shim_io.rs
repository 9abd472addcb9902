//! The shim's side of interactive containers (`-i`, `-t`): it serves the
//! attach socket (see `stdio`), copies the container's output to every
//! attached client, and passes what clients send to the container's stdin
//! pipe or its pty master (and resizes the pty).
//!
//! Threads only: the shim is a small synchronous process. Called by
//! `shim`; calls `stdio` and `api` (frame encoding).

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::{FrameKind, encode_frame};
use crate::logs::Stream;
use crate::stdio::Msg;

/// A client that does not take the output within this long is dropped, so
/// one stuck client cannot stall the container.
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The attached clients; output goes to each.
#[derive(Clone, Default)]
pub struct Clients(Arc<Mutex<Vec<UnixStream>>>);

impl Clients {
    pub fn add(&self, stream: UnixStream) {
        let _ = stream.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stream);
    }

    /// Sends output to every client as one frame; clients that fail go.
    pub fn broadcast(&self, stream: Stream, bytes: &[u8]) {
        let kind = match stream {
            Stream::Stdout => FrameKind::Stdout,
            Stream::Stderr => FrameKind::Stderr,
        };
        let frame = encode_frame(kind, bytes);
        let mut list = self.0.lock().unwrap_or_else(|p| p.into_inner());
        list.retain_mut(|c| c.write_all(&frame).is_ok());
    }

    /// The output ended: every client sees the end of the stream.
    pub fn close_all(&self) {
        let mut list = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for c in list.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Where clients' input goes.
#[derive(Default)]
pub struct Input {
    /// The write end of the container's stdin pipe (`-i` without `-t`);
    /// `None` once closed.
    pub stdin: Mutex<Option<std::fs::File>>,
    /// The pty master (`-t`).
    pub tty: Option<std::fs::File>,
}

impl Input {
    fn handle(&self, msg: Msg) {
        match msg {
            Msg::Stdin(bytes) => {
                if let Some(mut tty) = self.tty.as_ref() {
                    let _ = tty.write_all(&bytes);
                } else {
                    let mut stdin = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(pipe) = stdin.as_mut()
                        && pipe.write_all(&bytes).is_err()
                    {
                        *stdin = None;
                    }
                }
            }
            Msg::CloseStdin => {
                self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
            }
            Msg::Resize { rows, cols } => {
                if let Some(tty) = &self.tty
                    && let Err(e) = crate::stdio::set_winsize(tty.as_raw_fd(), rows, cols)
                {
                    eprintln!("wharf-runner shim: resize: {e}");
                }
            }
        }
    }
}

/// Reads one client's messages until it goes away.
fn read_client(mut stream: UnixStream, input: Arc<Input>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 32 * 1024];
    loop {
        loop {
            match Msg::decode(&buf) {
                Ok(Some((msg, used))) => {
                    buf.drain(..used);
                    input.handle(msg);
                }
                Ok(None) => break,
                Err(e) => {
                    eprintln!("wharf-runner shim: attach client: {e}");
                    return;
                }
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Registers a client for output and starts reading its input.
pub fn serve_client(stream: UnixStream, clients: &Clients, input: &Arc<Input>) {
    match stream.try_clone() {
        Ok(reader) => {
            clients.add(stream);
            let input = Arc::clone(input);
            std::thread::spawn(move || read_client(reader, input));
        }
        Err(e) => eprintln!("wharf-runner shim: attach client: {e}"),
    }
}

/// Accepts clients for the rest of the shim's life.
pub fn serve(listener: UnixListener, clients: Clients, input: Arc<Input>) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            match stream {
                Ok(s) => serve_client(s, &clients, &input),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("wharf-runner shim: attach socket: {e}");
                    return;
                }
            }
        }
    });
}

/// Accepts one connection within `timeout`, calling `gone` between tries:
/// when it says the other side can no longer connect, gives up early.
pub fn accept_within(
    listener: &UnixListener,
    timeout: Duration,
    gone: &mut dyn FnMut() -> bool,
) -> io::Result<Option<UnixStream>> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let result = loop {
        match listener.accept() {
            Ok((s, _)) => break Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
        if Instant::now() >= deadline {
            break Ok(None);
        }
        if gone() {
            // One last look: it may have connected just before going.
            match listener.accept() {
                Ok((s, _)) => break Ok(Some(s)),
                Err(_) => break Ok(None),
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    listener.set_nonblocking(false)?;
    if let Ok(Some(s)) = &result {
        s.set_nonblocking(false)?;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::decode_frame;

    #[test]
    fn clients_get_frames_and_input_reaches_the_pipe() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let clients = Clients::default();
        let (r, w) = nix::unistd::pipe().unwrap();
        let input = Arc::new(Input {
            stdin: Mutex::new(Some(std::fs::File::from(w))),
            tty: None,
        });
        serve_client(a, &clients, &input);
        clients.broadcast(Stream::Stderr, b"oops");
        let mut got = [0u8; 12];
        b.read_exact(&mut got).unwrap();
        let (kind, payload, _) = decode_frame(&got).unwrap().unwrap();
        assert_eq!((kind, payload), (FrameKind::Stderr, &b"oops"[..]));
        b.write_all(&Msg::Stdin(b"hello".to_vec()).encode())
            .unwrap();
        b.write_all(&Msg::CloseStdin.encode()).unwrap();
        let mut text = String::new();
        std::fs::File::from(r).read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello");
        clients.close_all();
        assert_eq!(b.read(&mut got).unwrap(), 0);
    }
}
