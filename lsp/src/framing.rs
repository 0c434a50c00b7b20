//! The byte streams between the client and tower-lsp-server. Its reader stops for good at the first message it
//! cannot decode (its framed stream ends at the first error), so one bad message from a client would end the
//! session; and it cannot answer a message whose framing it cannot follow. So everything the client sends passes
//! [`check_client_messages`] first:
//!
//! - framing is followed leniently (CRLF or LF line ends, header names in any case, stray blank lines) and
//!   resynchronised after a broken header block (a `Content-Length` that is missing, not a number, negative,
//!   duplicated or too large; text that is not a header): everything up to the next `Content-Length` header is
//!   dropped, and the client gets one `-32700 Parse error` with a null id;
//! - a body that is not UTF-8 or not JSON (too deeply nested included) is answered with `-32700 Parse error`, and
//!   JSON that is not a JSON-RPC message (a batch array, a wrong version) with `-32600 Invalid Request`, carrying
//!   the request's id when it has a usable one;
//! - well-formed messages go to the server, re-framed with a plain `Content-Length` header.
//!
//! The answers are written between whole messages of the server ([`write_messages`]), never inside one.

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tower_lsp_server::jsonrpc::{Error as RpcError, Id, Request, Response};
use tracing::warn;

/// Larger messages are refused (and skipped).
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// A header block longer than this is not LSP framing.
const MAX_HEADER_BYTES: usize = 8 << 10;
/// How much is read at once.
const READ_CHUNK: usize = 64 << 10;
const CONTENT_LENGTH: &[u8] = b"content-length";

/// A message as tower-lsp-server decodes it (its own `Message` is private): the same untagged enum of the same
/// types, so that a message that deserializes here also deserializes there.
#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)] // only deserialized, to check
enum ClientMessage {
    Response(Response),
    Request(Request),
}

/// Reads client messages from `input` until it ends: passes the well-formed ones to `server` (re-framed) and
/// sends an error response for each bad one to `replies` as a framed message. Never stops on bad input.
pub(crate) async fn check_client_messages<R, W>(input: R, mut server: W, replies: mpsc::UnboundedSender<Vec<u8>>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = FrameReader::new(input);
    loop {
        let reply = match reader.next().await {
            Frame::End => return,
            Frame::Message(body) => match check_body(&body) {
                Ok(()) => {
                    if write_frame(&mut server, &body).await.is_err() {
                        // The server stopped reading: it is shutting down.
                        return;
                    }
                    continue;
                }
                Err(reply) => reply,
            },
            Frame::Broken(reason) => {
                warn!(reason, "a client message has broken framing; skipping to the next Content-Length header");
                Response::from_error(Id::Null, RpcError::parse_error())
            }
        };
        if let Ok(body) = serde_json::to_vec(&reply) {
            let _ = replies.send(frame(&body));
        }
    }
}

/// Copies the server's messages from `server_output` to `frames`, whole, until it ends.
pub(crate) async fn relay_server_messages<R: AsyncRead + Unpin>(
    server_output: R,
    frames: mpsc::UnboundedSender<Vec<u8>>,
) {
    let mut reader = FrameReader::new(server_output);
    loop {
        match reader.next().await {
            Frame::Message(body) => {
                if frames.send(frame(&body)).is_err() {
                    return;
                }
            }
            Frame::Broken(reason) => warn!(reason, "the server wrote broken framing"),
            Frame::End => return,
        }
    }
}

/// Writes framed messages to `output` in the order they come, until every sender is gone. After a write error
/// (the client went away) the rest is drained and dropped, so that no sender blocks.
pub(crate) async fn write_messages<W: AsyncWrite>(mut frames: mpsc::UnboundedReceiver<Vec<u8>>, output: W) {
    tokio::pin!(output);
    let mut writable = true;
    while let Some(frame) = frames.recv().await {
        if writable {
            writable = output.write_all(&frame).await.is_ok() && output.flush().await.is_ok();
        }
    }
}

/// Checks a message body the way tower-lsp-server will decode it; returns the error response for a bad one.
fn check_body(body: &[u8]) -> Result<(), Response> {
    let parse_error = || Response::from_error(Id::Null, RpcError::parse_error());
    let Ok(text) = std::str::from_utf8(body) else {
        warn!("a client message is not UTF-8; answering with a parse error");
        return Err(parse_error());
    };
    if serde_json::from_str::<ClientMessage>(text).is_ok() {
        return Ok(());
    }
    // serde_json stops at 128 levels of nesting, so a hostile depth is a parse error, not a stack overflow.
    match serde_json::from_str::<serde_json::Value>(text) {
        Err(error) => {
            warn!(%error, "a client message is not JSON; answering with a parse error");
            Err(parse_error())
        }
        Ok(value) => {
            warn!("a client message is JSON but not a JSON-RPC message (LSP has no batches); answering with an error");
            let id = value.get("id").and_then(|id| serde_json::from_value::<Id>(id.clone()).ok()).unwrap_or(Id::Null);
            Err(Response::from_error(id, RpcError::invalid_request()))
        }
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut framed = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    framed.extend_from_slice(body);
    framed
}

async fn write_frame<W: AsyncWrite + Unpin>(output: &mut W, body: &[u8]) -> std::io::Result<()> {
    output.write_all(&frame(body)).await?;
    output.flush().await
}

enum Frame {
    Message(Vec<u8>),
    /// A header block that cannot be used; the reader has moved on to the next `Content-Length` header (or the
    /// end of the input).
    Broken(&'static str),
    End,
}

/// `Content-Length` framing over a byte stream, with its own buffer so that it can skip to a header it finds
/// anywhere.
struct FrameReader<R> {
    input: R,
    buffer: Vec<u8>,
    /// After a broken header block: skip to the next `Content-Length` at or after this offset before reading on.
    /// (Skipping waits for input, so it happens on the next read: the client gets its error answer first.)
    skip_from: Option<usize>,
}

/// What a header block says.
enum Headers {
    Length(usize),
    /// A line that is no header: garbage, or the tail of a body whose length was wrong. Resynchronise from the
    /// line's start.
    Junk {
        line_start: usize,
    },
    /// Headers that cannot be used; the block and what follows it up to the next header go.
    Unusable(&'static str),
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(input: R) -> Self {
        Self { input, buffer: Vec::new(), skip_from: None }
    }

    /// Reads more into the buffer; false at the end of the input (or an error).
    async fn fill(&mut self) -> bool {
        let start = self.buffer.len();
        self.buffer.resize(start + READ_CHUNK, 0);
        let read = self.input.read(&mut self.buffer[start..]).await;
        let n = read.unwrap_or(0);
        self.buffer.truncate(start + n);
        n > 0
    }

    async fn next(&mut self) -> Frame {
        if let Some(from) = self.skip_from.take() {
            if !self.skip_to_header(from).await {
                return Frame::End;
            }
        }
        loop {
            // Stray line breaks (and spaces) between messages.
            let blank = self.buffer.iter().take_while(|b| b.is_ascii_whitespace()).count();
            self.buffer.drain(..blank);
            if self.buffer.is_empty() {
                if !self.fill().await {
                    return Frame::End;
                }
                continue;
            }
            let Some((block_end, body_start)) = header_block_end(&self.buffer) else {
                if self.buffer.len() > MAX_HEADER_BYTES {
                    return self.resync(1, "a header block without an end");
                }
                if !self.fill().await {
                    // Input ended inside a header block: nothing more will come.
                    self.buffer.clear();
                    return Frame::End;
                }
                continue;
            };
            match parse_headers(&self.buffer[..block_end]) {
                Headers::Length(length) if length > MAX_MESSAGE_BYTES => {
                    return self.resync(body_start, "a message larger than 64 MiB");
                }
                Headers::Length(length) => {
                    while self.buffer.len() < body_start + length {
                        if !self.fill().await {
                            self.buffer.clear();
                            return Frame::End;
                        }
                    }
                    let body = self.buffer[body_start..body_start + length].to_vec();
                    self.buffer.drain(..body_start + length);
                    return Frame::Message(body);
                }
                Headers::Junk { line_start } => return self.resync(line_start + 1, "text that is not a header"),
                Headers::Unusable(reason) => return self.resync(body_start, reason),
            }
        }
    }

    /// Reports a broken header block; the next read first skips to the next header at or after `from`.
    fn resync(&mut self, from: usize, reason: &'static str) -> Frame {
        self.skip_from = Some(from);
        Frame::Broken(reason)
    }

    /// Drops the buffer up to the next `Content-Length` (in any case) found at or after `from`, reading on as
    /// needed; false at the end of the input.
    async fn skip_to_header(&mut self, from: usize) -> bool {
        let mut from = from.min(self.buffer.len());
        loop {
            if let Some(at) = find_content_length(&self.buffer[from..]) {
                self.buffer.drain(..from + at);
                return true;
            }
            // Keep a tail that may be the start of the header name.
            let keep = self.buffer.len().saturating_sub(from).min(CONTENT_LENGTH.len() - 1);
            let cut = self.buffer.len() - keep;
            self.buffer.drain(..cut);
            from = 0;
            if !self.fill().await {
                self.buffer.clear();
                return false;
            }
        }
    }
}

/// The end of the header block at the start of `buffer` (the first empty line) and where the body starts.
fn header_block_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let mut line_start = 0;
    while let Some(offset) = buffer[line_start..].iter().position(|&b| b == b'\n') {
        let newline = line_start + offset;
        let line = &buffer[line_start..newline];
        if line.is_empty() || line == b"\r" {
            return Some((line_start, newline + 1));
        }
        line_start = newline + 1;
    }
    None
}

fn parse_headers(block: &[u8]) -> Headers {
    let mut length = None;
    let mut line_start = 0;
    for line in block.split(|&b| b == b'\n') {
        let start = line_start;
        line_start += line.len() + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Headers::Junk { line_start: start };
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_token_char(b)) {
            return Headers::Junk { line_start: start };
        }
        if name.eq_ignore_ascii_case(CONTENT_LENGTH) {
            if length.is_some() {
                return Headers::Unusable("two Content-Length headers");
            }
            let value = value.trim_ascii();
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Headers::Unusable("a Content-Length that is not a number");
            }
            match std::str::from_utf8(value).ok().and_then(|v| v.parse::<usize>().ok()) {
                Some(n) => length = Some(n),
                None => return Headers::Unusable("a Content-Length that is too large"),
            }
        }
        // Other headers (Content-Type) are dropped: the body is checked to be UTF-8 JSON anyway.
    }
    match length {
        Some(length) => Headers::Length(length),
        None => Headers::Unusable("no Content-Length header"),
    }
}

/// RFC 9110 token characters, which header names are made of.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn find_content_length(haystack: &[u8]) -> Option<usize> {
    haystack.windows(CONTENT_LENGTH.len()).position(|window| window.eq_ignore_ascii_case(CONTENT_LENGTH))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the check over `input`; returns what reaches the server and the replies, each as text.
    async fn check(input: &[u8]) -> (String, Vec<String>) {
        let mut server = Vec::new();
        let (replies, mut received) = mpsc::unbounded_channel();
        check_client_messages(input, &mut server, replies).await;
        let mut answers = Vec::new();
        while let Ok(reply) = received.try_recv() {
            answers.push(String::from_utf8_lossy(&reply).into_owned());
        }
        (String::from_utf8_lossy(&server).into_owned(), answers)
    }

    const PING: &str = r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#;

    fn framed(body: &str) -> String {
        format!("Content-Length: {}\r\n\r\n{body}", body.len())
    }

    #[tokio::test]
    async fn valid_messages_pass_and_invalid_json_is_answered() {
        let input = format!("{}{}", framed("{oops"), framed(PING));
        let (server, replies) = check(input.as_bytes()).await;
        assert_eq!(server, framed(PING));
        assert_eq!(replies.len(), 1);
        assert!(replies[0].contains("-32700") && replies[0].contains(r#""id":null"#), "{}", replies[0]);
    }

    #[tokio::test]
    async fn broken_headers_resynchronise_on_the_next_message() {
        for bad in [
            "Content-Length: abc\r\n\r\n{}",
            "Content-Length: -5\r\n\r\n{}",
            "Content-Type: application/json\r\n\r\n{}",
            "Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
            "Content-Length: 99999999999999999999999\r\n\r\n{}",
            "garbage without a header",
        ] {
            let input = format!("{bad}{}", framed(PING));
            let (server, replies) = check(input.as_bytes()).await;
            assert_eq!(server, framed(PING), "after {bad:?}");
            assert_eq!(replies.len(), 1, "after {bad:?}: {replies:?}");
            assert!(replies[0].contains("-32700"), "{}", replies[0]);
        }
    }

    #[tokio::test]
    async fn lf_only_and_lowercase_headers_are_accepted() {
        let input = format!("\n\ncontent-length: {}\n\n{PING}", PING.len());
        let (server, replies) = check(input.as_bytes()).await;
        assert_eq!(server, framed(PING));
        assert!(replies.is_empty());
    }

    #[tokio::test]
    async fn batches_utf8_and_depth_get_their_errors() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (format!("[{PING}]").into_bytes(), "-32600"),
            (br#"{"jsonrpc":"2.0","id":3,"method":"x","method":"y"}"#.to_vec(), r#""id":3"#),
            (b"{\"jsonrpc\":\"2.0\",\"method\":\"\xff\xfe\"}".to_vec(), "-32700"),
            (deep.into_bytes(), "-32700"),
        ];
        for (body, expected) in cases {
            let mut input = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
            input.extend_from_slice(&body);
            input.extend_from_slice(framed(PING).as_bytes());
            let (server, replies) = check(&input).await;
            assert_eq!(server, framed(PING));
            assert_eq!(replies.len(), 1);
            assert!(replies[0].contains(expected), "{} lacks {expected}", replies[0]);
        }
    }

    #[tokio::test]
    async fn a_short_body_costs_at_most_the_next_message() {
        // The length claims more than the body: the next message's header is swallowed into this body, which is
        // not JSON; reading resumes at the message after.
        let input = format!("Content-Length: 10\r\n\r\n{{}}{}{}", framed(PING), framed(PING));
        let (server, replies) = check(input.as_bytes()).await;
        assert!(server.ends_with(&framed(PING)), "{server}");
        assert!(!replies.is_empty());
    }

    #[tokio::test]
    async fn a_truncated_message_ends_the_stream() {
        let (server, replies) = check(b"Content-Length: 10\r\n\r\n{}").await;
        assert_eq!(server, "");
        assert!(replies.is_empty());
    }
}
