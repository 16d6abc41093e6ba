//! Splitting NDJSON input into numbered lines, so each worker can parse its own share.

/// One non-blank line of an NDJSON input with its 1-based line number.
#[derive(Clone, Copy, Debug)]
pub struct Line<'a> {
    pub number: u64,
    pub bytes: &'a [u8],
}

/// The non-blank lines of `input`, numbered from `first_number`. A trailing `\r` is dropped.
pub fn split_lines(input: &[u8], first_number: u64) -> impl Iterator<Item = Line<'_>> {
    let mut number = first_number;
    input.split(|&byte| byte == b'\n').filter_map(move |raw| {
        let line_number = number;
        number += 1;
        let bytes = raw.strip_suffix(b"\r").unwrap_or(raw);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(Line { number: line_number, bytes })
        }
    })
}
