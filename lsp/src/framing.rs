//! A guard in front of tower-lsp-server's reader: it stops reading for good at the first message that is not JSON
//! (its framed stream ends at the first decoding error), so one bad message from a client would end the session.
//! [`forward_valid_messages`] passes well-formed messages through and drops the others, with a log line.

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tracing::warn;

/// Larger messages mean the stream is out of step (or hostile); reading stops there.
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Longer header lines are not LSP headers.
const MAX_HEADER_LINE_BYTES: usize = 8 << 10;

/// Copies LSP messages (`Content-Length` framing) from `input` to `output` until `input` ends, dropping messages
/// whose body is not JSON and header blocks without a `Content-Length`. Returns when `input` or `output` closes, or
/// when the framing cannot be followed any more.
pub async fn forward_valid_messages<R, W>(input: R, mut output: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut input = BufReader::new(input);
    loop {
        let length = match read_headers(&mut input).await {
            Headers::Length(length) if length <= MAX_MESSAGE_BYTES => length,
            Headers::Length(length) => {
                warn!(length, "a client message is too large; closing the connection");
                return;
            }
            Headers::Missing => {
                warn!("a client message has no Content-Length header; skipping it");
                continue;
            }
            Headers::End => return,
        };
        let mut body = vec![0; length];
        if input.read_exact(&mut body).await.is_err() {
            return;
        }
        if let Err(error) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
            warn!(%error, "a client message is not JSON; skipping it");
            continue;
        }
        let header = format!("Content-Length: {length}\r\n\r\n");
        if output.write_all(header.as_bytes()).await.is_err() || output.write_all(&body).await.is_err() {
            return;
        }
        if output.flush().await.is_err() {
            return;
        }
    }
}

enum Headers {
    Length(usize),
    Missing,
    /// The input ended (or broke).
    End,
}

async fn read_headers<R: AsyncRead + Unpin>(input: &mut BufReader<R>) -> Headers {
    let mut length = None;
    let mut any = false;
    loop {
        let mut line = Vec::new();
        match (&mut *input).take(MAX_HEADER_LINE_BYTES as u64).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return Headers::End,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&line);
        let line = line.trim();
        if line.is_empty() {
            if !any {
                // Stray line breaks between messages.
                continue;
            }
            return length.map_or(Headers::Missing, Headers::Length);
        }
        any = true;
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn forward(input: &str) -> String {
        let mut output = Vec::new();
        forward_valid_messages(input.as_bytes(), &mut output).await;
        String::from_utf8_lossy(&output).into_owned()
    }

    #[tokio::test]
    async fn valid_messages_pass_and_invalid_ones_are_dropped() {
        let input = "Content-Length: 2\r\n\r\n{}Content-Length: 5\r\n\r\n{oops\r\nX-Junk: 1\r\n\r\nContent-Length: 4\r\n\r\n[1 ]";
        assert_eq!(forward(input).await, "Content-Length: 2\r\n\r\n{}Content-Length: 4\r\n\r\n[1 ]");
    }

    #[tokio::test]
    async fn a_truncated_message_ends_the_stream() {
        assert_eq!(forward("Content-Length: 10\r\n\r\n{}").await, "");
    }
}
