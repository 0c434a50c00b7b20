//! Bounded capture of a program's output: the beginning and the end are kept, because the end of stderr holds the
//! exception that explains a failure, and the beginning what the program printed first.

use std::collections::VecDeque;

pub(super) struct Capture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    head_cap: usize,
    tail_cap: usize,
    total: u64,
}

impl Capture {
    pub(super) fn new(cap: usize) -> Self {
        let head_cap = cap / 2;
        Self { head: Vec::new(), tail: VecDeque::new(), head_cap, tail_cap: cap - head_cap, total: 0 }
    }

    pub(super) fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = self.head_cap - self.head.len();
        if room > 0 {
            let n = room.min(bytes.len());
            self.head.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        if bytes.len() >= self.tail_cap {
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - self.tail_cap..]);
            return;
        }
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.tail_cap);
        self.tail.drain(..overflow);
        self.tail.extend(bytes);
    }

    pub(super) fn into_string(self) -> String {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let mut bytes = self.head;
        if self.total > kept {
            bytes.extend_from_slice(format!("\n[… {} bytes omitted …]\n", self.total - kept).as_bytes());
        }
        bytes.extend(self.tail);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::Capture;

    #[test]
    fn short_output_is_kept_whole() {
        let mut capture = Capture::new(16);
        capture.push(b"hello ");
        capture.push(b"world");
        assert_eq!(capture.into_string(), "hello world");
    }

    #[test]
    fn long_output_keeps_both_ends() {
        let mut capture = Capture::new(8);
        capture.push(b"abcdef");
        capture.push(b"ghijkl");
        capture.push(b"mn");
        assert_eq!(capture.into_string(), "abcd\n[… 6 bytes omitted …]\nklmn");
        let mut capture = Capture::new(8);
        capture.push(b"0123456789abcdefghij");
        assert_eq!(capture.into_string(), "0123\n[… 12 bytes omitted …]\nghij");
    }
}
