//! JSON text, read in place: one validating pass over a review body that builds nothing, and
//! the cursors the decoder and the policy kinds read the validated text with.
//!
//! Strings, whitespace runs and skipped values are the bulk of a review, so they are scanned
//! several bytes at a time: a string sixteen bytes per step up to its closing quote (SSE2
//! through the `wide` crate, eight bytes per step in SWAR on `u64` words near the text's end),
//! an indentation run eight spaces per step. Values
//! are skipped iteratively with a bit stack for the open containers, so nesting costs no
//! stack and is bounded by the caller's limit. Everything RFC 8259 requires is checked:
//! structure, string escapes, control characters, number and literal syntax (UTF-8 is checked
//! once for the whole body by the caller).
//!
//! Text checked once is not checked again: the policy kinds and CEL read the objects through
//! cursors opened with `open_checked`, which skip values with [`trusted_value_end`]. That
//! looks only at quotes, backslashes and brackets, 64 bytes at a time for arrays and objects
//! (SSE2 through the `wide` crate, no `unsafe`), and tells strings apart without visiting
//! them as simdjson does. On text that is not JSON it answers some index or none, never a
//! panic.

use std::borrow::Cow;
use std::fmt;

use wide::u8x16;

/// Why a text is not valid JSON, and at which byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Error {
    /// The byte offset in the text where reading stopped.
    pub(crate) at: usize,
    /// What was wrong there.
    pub(crate) what: What,
}

/// What a JSON text got wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum What {
    /// The text ended inside a value.
    Eof,
    /// Something else stood where this was expected.
    Expected(&'static str),
    /// A raw control character inside a string.
    ControlCharacter,
    /// A backslash not followed by a valid escape.
    BadEscape,
    /// A number that breaks JSON's number syntax.
    BadNumber,
    /// Nesting deeper than the limit.
    TooDeep(usize),
    /// Text after the end of the top-level value.
    Trailing,
}

impl fmt::Display for What {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            What::Eof => f.write_str("the text ends in the middle of a value"),
            What::Expected(what) => write!(f, "expected {what}"),
            What::ControlCharacter => f.write_str("control character in a string"),
            What::BadEscape => f.write_str("invalid escape in a string"),
            What::BadNumber => f.write_str("invalid number"),
            What::TooDeep(limit) => write!(
                f,
                "recursion limit exceeded (nested deeper than {limit} levels)"
            ),
            What::Trailing => f.write_str("trailing characters after the review"),
        }
    }
}

impl Error {
    pub(crate) fn new(at: usize, what: What) -> Self {
        Self { at, what }
    }

    /// `what at line L column C` of `text`.
    pub(crate) fn describe(&self, text: &[u8]) -> String {
        format!("{} at {}", self.what, position(text, self.at))
    }
}

/// `line L column C` of byte `at` in `text` (columns count bytes, from 1).
pub(crate) fn position(text: &[u8], at: usize) -> String {
    let at = at.min(text.len());
    let before = &text[..at];
    let line = 1 + memchr::memchr_iter(b'\n', before).count();
    let column = 1 + at - memchr::memrchr(b'\n', before).map_or(0, |n| n + 1);
    format!("line {line} column {column}")
}

type Result<T> = std::result::Result<T, Error>;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;
const SPACES: u64 = 0x2020_2020_2020_2020;

/// The eight bytes at `i` as a little-endian word (byte `i` lowest), if there are eight.
#[inline(always)]
fn word(b: &[u8], i: usize) -> Option<u64> {
    let chunk: &[u8; 8] = b.get(i..i.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(*chunk))
}

/// The high bit of each byte of `w` equal to `c`; exact for the lowest such byte (borrows
/// can only mark bytes above a true match).
#[inline(always)]
fn eq_mask(w: u64, c: u8) -> u64 {
    let x = w ^ (ONES * c as u64);
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// The high bit of each byte of `w` below `c` (`c` ≤ 0x80); exact for the lowest such byte.
#[inline(always)]
fn lt_mask(w: u64, c: u8) -> u64 {
    w.wrapping_sub(ONES * c as u64) & !w & HIGHS
}

/// The index of the first byte at or after `i` that is not JSON whitespace.
#[inline(always)]
pub(crate) fn skip_ws(b: &[u8], i: usize) -> usize {
    // Most calls land on a value or a separator at once (the API server writes no spaces).
    match b.get(i) {
        Some(&c) if c > b' ' => i,
        None => i,
        Some(_) => skip_ws_run(b, i),
    }
}

/// [`skip_ws`] over a run of whitespace.
#[inline(never)]
fn skip_ws_run(b: &[u8], mut i: usize) -> usize {
    loop {
        match b.get(i) {
            Some(b' ' | b'\t' | b'\r') => i += 1,
            Some(b'\n') => {
                i += 1;
                // Indentation: eight bytes at a time, up to the first that is not a space.
                while let Some(w) = word(b, i) {
                    let other = w ^ SPACES;
                    if other != 0 {
                        i += (other.trailing_zeros() / 8) as usize;
                        break;
                    }
                    i += 8;
                }
            }
            _ => return i,
        }
    }
}

/// From just after an opening quote: the index just after the closing quote, and whether
/// the string has escapes.
#[inline(always)]
pub(crate) fn string_end(b: &[u8], mut i: usize) -> Result<(usize, bool)> {
    let mut escaped = false;
    loop {
        i = string_stop::<true>(b, i);
        match b.get(i) {
            Some(b'"') => return Ok((i + 1, escaped)),
            Some(b'\\') => {
                escaped = true;
                // The one-letter escapes here; `\u` (and errors) in `escape_end`.
                i = match b.get(i + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i + 2,
                    _ => escape_end(b, i)?,
                };
            }
            Some(&c) if c < 0x20 => return Err(Error::new(i, What::ControlCharacter)),
            Some(_) => i += 1,
            None => return Err(Error::new(i, What::Eof)),
        }
    }
}

/// The index of the first quote, backslash or (with `CONTROL`) control character at or after
/// `i`, or where fewer than eight bytes are left: sixteen bytes per step while sixteen are
/// left (SSE2), then eight (SWAR).
#[inline(always)]
fn string_stop<const CONTROL: bool>(b: &[u8], mut i: usize) -> usize {
    let (quote, backslash, control) = (u8x16::splat(b'"'), u8x16::splat(b'\\'), u8x16::splat(0x1f));
    while let Some(lanes) = b.get(i..i.wrapping_add(16)) {
        let v = u8x16::new(lanes.try_into().unwrap_or([0; 16]));
        // A byte at most 0x1f is its own minimum with 0x1f.
        let mut found = v.simd_eq(quote) | v.simd_eq(backslash);
        if CONTROL {
            found |= v.min(control).simd_eq(v);
        }
        let m = found.to_bitmask();
        if m != 0 {
            return i + m.trailing_zeros() as usize;
        }
        i += 16;
    }
    while let Some(w) = word(b, i) {
        let mut m = eq_mask(w, b'"') | eq_mask(w, b'\\');
        if CONTROL {
            m |= lt_mask(w, 0x20);
        }
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i
}

/// From a backslash at `i`: the index after its escape.
fn escape_end(b: &[u8], i: usize) -> Result<usize> {
    match b.get(i + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 2),
        Some(b'u') => match hex4(b, i + 2)? {
            // A high surrogate must be followed by an escaped low one; a low one alone is
            // no character either.
            0xD800..=0xDBFF => match (b.get(i + 6..i + 8), hex4(b, i + 8)) {
                (Some(br"\u"), Ok(0xDC00..=0xDFFF)) => Ok(i + 12),
                _ => Err(Error::new(i, What::BadEscape)),
            },
            0xDC00..=0xDFFF => Err(Error::new(i, What::BadEscape)),
            _ => Ok(i + 6),
        },
        Some(_) => Err(Error::new(i, What::BadEscape)),
        None => Err(Error::new(i + 1, What::Eof)),
    }
}

/// The four hex digits at `i` as a number.
fn hex4(b: &[u8], i: usize) -> Result<u32> {
    let digits = b.get(i..i + 4).ok_or(Error::new(b.len(), What::Eof))?;
    digits.iter().try_fold(0u32, |n, &d| {
        let v = (d as char)
            .to_digit(16)
            .ok_or(Error::new(i, What::BadEscape))?;
        Ok(n << 4 | v)
    })
}

/// From the first byte of a number: the index after it.
fn number_end(b: &[u8], mut i: usize) -> Result<usize> {
    let digits = |b: &[u8], mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(b, i + 1),
        Some(_) => return Err(Error::new(i, What::BadNumber)),
        None => return Err(Error::new(i, What::Eof)),
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(b, i + 1);
        if end == i + 1 {
            return Err(Error::new(end, What::BadNumber));
        }
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits(b, i);
        if end == i {
            return Err(Error::new(end, What::BadNumber));
        }
        i = end;
    }
    Ok(i)
}

/// From the first byte of a literal: the index after it.
fn literal_end(b: &[u8], i: usize, word: &'static [u8]) -> Result<usize> {
    match b.get(i..i + word.len()) {
        Some(w) if w == word => Ok(i + word.len()),
        Some(_) => Err(Error::new(i, What::Expected("a value"))),
        None => Err(Error::new(b.len(), What::Eof)),
    }
}

/// From an opening quote of a key at `i`: the index of the value after its colon.
#[inline(always)]
fn after_key(b: &[u8], i: usize) -> Result<usize> {
    let (end, _) = string_end(b, i + 1)?;
    let colon = skip_ws(b, end);
    match b.get(colon) {
        Some(b':') => Ok(skip_ws(b, colon + 1)),
        Some(_) => Err(Error::new(colon, What::Expected("`:`"))),
        None => Err(Error::new(colon, What::Eof)),
    }
}

/// The deepest nesting [`skip_value`] can track.
pub(crate) const MAX_DEPTH: usize = 256;

/// Skips the value that starts at `i` (no whitespace before it), checking it is valid JSON
/// that nests at most `max_depth` containers deep (the value itself counts when it is one);
/// returns the index just after it.
pub(crate) fn skip_value(b: &[u8], mut i: usize, max_depth: usize) -> Result<usize> {
    let max_depth = max_depth.min(MAX_DEPTH);
    // Bit d set: the container at depth d + 1 is an object.
    let mut objects = [0u64; MAX_DEPTH / 64];
    let mut depth = 0usize;
    // Whether the innermost open container is an object (read from `objects` only on a close).
    let mut in_object = false;
    let is_object_at = |objects: &[u64; MAX_DEPTH / 64], depth: usize| {
        depth > 0 && objects[(depth - 1) / 64] & (1u64 << ((depth - 1) % 64)) != 0
    };
    'value: loop {
        match b.get(i) {
            Some(b'"') => i = string_end(b, i + 1)?.0,
            Some(&open @ (b'{' | b'[')) => {
                if depth == max_depth {
                    return Err(Error::new(i, What::TooDeep(max_depth)));
                }
                let is_object = open == b'{';
                let (slot, bit) = (depth / 64, 1u64 << (depth % 64));
                if is_object {
                    objects[slot] |= bit;
                } else {
                    objects[slot] &= !bit;
                }
                depth += 1;
                in_object = is_object;
                i = skip_ws(b, i + 1);
                match b.get(i) {
                    Some(b'}') if is_object => {
                        i += 1;
                        depth -= 1;
                        in_object = is_object_at(&objects, depth);
                    }
                    Some(b']') if !is_object => {
                        i += 1;
                        depth -= 1;
                        in_object = is_object_at(&objects, depth);
                    }
                    Some(b'"') if is_object => {
                        i = after_key(b, i)?;
                        continue 'value;
                    }
                    Some(_) if is_object => {
                        return Err(Error::new(i, What::Expected("`\"` or `}`")));
                    }
                    Some(_) => continue 'value,
                    None => return Err(Error::new(i, What::Eof)),
                }
            }
            Some(b't') => i = literal_end(b, i, b"true")?,
            Some(b'f') => i = literal_end(b, i, b"false")?,
            Some(b'n') => i = literal_end(b, i, b"null")?,
            Some(b'-' | b'0'..=b'9') => i = number_end(b, i)?,
            Some(_) => return Err(Error::new(i, What::Expected("a value"))),
            None => return Err(Error::new(i, What::Eof)),
        }
        // After a value: the next element, or the end of containers.
        loop {
            if depth == 0 {
                return Ok(i);
            }
            i = skip_ws(b, i);
            match b.get(i) {
                Some(b',') => {
                    i = skip_ws(b, i + 1);
                    if in_object {
                        if b.get(i) != Some(&b'"') {
                            return Err(Error::new(i, What::Expected("`\"`")));
                        }
                        i = after_key(b, i)?;
                    }
                    continue 'value;
                }
                Some(b'}') if in_object => {
                    i += 1;
                    depth -= 1;
                    in_object = is_object_at(&objects, depth);
                }
                Some(b']') if !in_object => {
                    i += 1;
                    depth -= 1;
                    in_object = is_object_at(&objects, depth);
                }
                Some(_) => {
                    let what = if in_object {
                        "`,` or `}`"
                    } else {
                        "`,` or `]`"
                    };
                    return Err(Error::new(i, What::Expected(what)));
                }
                None => return Err(Error::new(i, What::Eof)),
            }
        }
    }
}

/// From just after the opening quote of a string in text already checked: the index just
/// after its closing quote, and whether it has escapes. `None` when the text ends first.
#[inline(always)]
pub(crate) fn trusted_string_end(b: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        i = string_stop::<false>(b, i);
        match *b.get(i)? {
            b'"' => return Some((i + 1, escaped)),
            b'\\' => {
                escaped = true;
                i += 2;
            }
            _ => i += 1,
        }
    }
}

/// Where the 64 bytes at `block` hold quotes, backslashes, `{` or `[`, and `}` or `]`: bit n
/// set for byte n, sixteen bytes per instruction.
#[inline(always)]
fn block_masks(block: &[u8; 64]) -> [u64; 4] {
    let (quote, backslash) = (u8x16::splat(b'"'), u8x16::splat(b'\\'));
    // `[`/`{` and `]`/`}` differ only in the bit 0x20.
    let (fold, open, close) = (u8x16::splat(0x20), u8x16::splat(b'{'), u8x16::splat(b'}'));
    let mut out = [0u64; 4];
    for (n, chunk) in block.chunks_exact(16).enumerate() {
        let lanes: [u8; 16] = chunk.try_into().unwrap_or([0; 16]);
        let v = u8x16::new(lanes);
        let folded = v | fold;
        for (mask, found) in out.iter_mut().zip([
            v.simd_eq(quote),
            v.simd_eq(backslash),
            folded.simd_eq(open),
            folded.simd_eq(close),
        ]) {
            *mask |= u64::from(found.to_bitmask()) << (16 * n);
        }
    }
    out
}

/// Bit n set for each byte escaped by a backslash, given the block's backslashes and whether
/// the previous block ended in an unfinished escape (updated for the next block). A run of
/// backslashes escapes every second byte from its start, and the byte after an odd run.
#[inline(always)]
fn escaped_bytes(backslash: u64, carry: &mut u64) -> u64 {
    const EVEN: u64 = 0x5555_5555_5555_5555;
    let backslash = backslash & !*carry;
    let follows = (backslash << 1) | *carry;
    // Runs starting at odd positions, added to the runs: the sum's bits past each run say
    // whether the run started at an even or an odd position.
    let odd_starts = backslash & !EVEN & !follows;
    let (sum, overflow) = odd_starts.overflowing_add(backslash);
    *carry = u64::from(overflow);
    (EVEN ^ (sum << 1)) & follows
}

/// Each bit from an odd-numbered set bit of `x` up to the next one set (strings' insides,
/// from their opening quote up to their closing one).
#[inline(always)]
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// The index just after the array or object that opens at `b[i]`, in text already checked:
/// 64 bytes at a time, quotes, backslashes and brackets found sixteen bytes per instruction
/// (simdjson's way of telling strings apart without visiting them), and only blocks where the
/// nesting may close looked at bracket by bracket.
fn trusted_container_end(b: &[u8], i: usize) -> Option<usize> {
    let mut depth = 0u64;
    let mut in_string = 0u64;
    let mut carry = 0u64;
    let mut j = i;
    let mut tail: [u8; 64];
    while j < b.len() {
        let block: &[u8; 64] = match b.get(j..j + 64) {
            Some(s) => s.try_into().ok()?,
            None => {
                let rest = &b[j..];
                tail = [b' '; 64];
                tail[..rest.len()].copy_from_slice(rest);
                &tail
            }
        };
        let [quotes, backslashes, opens, closes] = block_masks(block);
        let quotes = if backslashes | carry == 0 {
            quotes
        } else {
            quotes & !escaped_bytes(backslashes, &mut carry)
        };
        let strings = prefix_xor(quotes) ^ in_string;
        in_string = ((strings as i64) >> 63) as u64;
        let (opens, closes) = (opens & !strings, closes & !strings);
        if u64::from(closes.count_ones()) < depth {
            depth = depth + u64::from(opens.count_ones()) - u64::from(closes.count_ones());
        } else {
            let mut brackets = opens | closes;
            while brackets != 0 {
                let at = brackets.trailing_zeros();
                brackets &= brackets - 1;
                if opens & (1 << at) != 0 {
                    depth += 1;
                } else {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return Some(j + at as usize + 1).filter(|&end| end <= b.len());
                    }
                }
            }
        }
        j += 64;
    }
    None
}

/// The index just after the value at `i` (no whitespace before it) in text already checked
/// (by [`skip_value`], when the review was decoded): only quotes and brackets are looked at,
/// so it runs several times faster than checking again. On text that is not JSON it gives
/// some index within the text or `None`, never a panic.
pub(crate) fn trusted_value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => trusted_string_end(b, i + 1).map(|(end, _)| end),
        b'{' | b'[' => trusted_container_end(b, i),
        _ => {
            // A number or a literal: up to the byte that ends it.
            let mut j = i + 1;
            while let Some(c) = b.get(j) {
                if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                j += 1;
            }
            Some(j)
        }
    }
}

/// The text of a string's contents (between its quotes) with escapes resolved; `None` for an
/// escape JSON allows but no string can hold (a lone surrogate).
pub(crate) fn unescape(raw: &str) -> Option<Cow<'_, str>> {
    if memchr::memchr(b'\\', raw.as_bytes()).is_none() {
        return Some(Cow::Borrowed(raw));
    }
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        let Some(off) = memchr::memchr(b'\\', &b[i..]) else {
            out.push_str(&raw[i..]);
            break;
        };
        out.push_str(&raw[i..i + off]);
        i += off;
        let hex = |at: usize| {
            raw.get(at..at + 4)
                .and_then(|h| u32::from_str_radix(h, 16).ok())
        };
        let c = match b.get(i + 1)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let first = hex(i + 2)?;
                i += 6;
                let c = if (0xD800..0xDC00).contains(&first) {
                    // A high surrogate must be followed by an escaped low one.
                    if raw.get(i..i + 2) != Some("\\u") {
                        return None;
                    }
                    let second = hex(i + 2)?;
                    if !(0xDC00..0xE000).contains(&second) {
                        return None;
                    }
                    i += 6;
                    char::from_u32(0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00))?
                } else {
                    char::from_u32(first)?
                };
                out.push(c);
                continue;
            }
            _ => return None,
        };
        out.push(c);
        i += 2;
    }
    Some(Cow::Owned(out))
}

/// A key of an object as it is written (between its quotes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key<'a> {
    raw: &'a str,
    escaped: bool,
}

impl<'a> Key<'a> {
    /// Whether the key, escapes resolved, is `name`.
    #[inline(always)]
    pub(crate) fn is(&self, name: &str) -> bool {
        if self.escaped {
            unescape(self.raw).is_some_and(|k| k == name)
        } else {
            self.raw == name
        }
    }

    /// The key with escapes resolved (`None` for a lone surrogate).
    pub(crate) fn text(&self) -> Option<Cow<'a, str>> {
        if self.escaped {
            unescape(self.raw)
        } else {
            Some(Cow::Borrowed(self.raw))
        }
    }
}

/// The text of the value at `start`: checked, nesting at most `depth` deep, or (`None`) in
/// text already checked, skipped with [`trusted_value_end`].
fn value_at(text: &str, start: usize, depth: Option<usize>) -> Result<&str> {
    let b = text.as_bytes();
    let end = match depth {
        Some(depth) => skip_value(b, start, depth)?,
        None => trusted_value_end(b, start).ok_or(Error::new(b.len(), What::Eof))?,
    };
    // `end` follows an ASCII byte (or is the text's end), so it is a character boundary.
    text.get(start..end)
        .ok_or(Error::new(start, What::Expected("a value")))
}

/// Reads the members of an object one at a time: each [`Members::next_key`] moves past the
/// previous value (skipping it unless the caller read it and said where it ended) and stops
/// at the next value's first byte.
pub(crate) struct Members<'a> {
    text: &'a str,
    /// The next unread byte: the value of the current key, or where the previous one ended.
    pos: usize,
    /// Whether the current key's value is still to be passed.
    pending: bool,
    first: bool,
    /// Nesting allowed in each value skipped; `None` when the text was checked before and
    /// values are skipped with [`trusted_value_end`].
    depth: Option<usize>,
}

impl<'a> Members<'a> {
    /// Opens the object at `at` (its `{`), skipping values up to `depth` deep.
    pub(crate) fn open(text: &'a str, at: usize, depth: usize) -> Result<Self> {
        Self::open_with(text, at, Some(depth))
    }

    /// Opens the object at `at` (its `{`) in text already checked whole, whose values need
    /// no checking again when skipped.
    pub(crate) fn open_checked(text: &'a str, at: usize) -> Result<Self> {
        Self::open_with(text, at, None)
    }

    fn open_with(text: &'a str, at: usize, depth: Option<usize>) -> Result<Self> {
        match text.as_bytes().get(at) {
            Some(b'{') => Ok(Self {
                text,
                pos: at + 1,
                pending: false,
                first: true,
                depth,
            }),
            Some(_) => Err(Error::new(at, What::Expected("`{`"))),
            None => Err(Error::new(at, What::Eof)),
        }
    }

    /// The next key, or `None` after the closing brace (then [`Members::end`] is after it).
    #[inline]
    pub(crate) fn next_key(&mut self) -> Result<Option<Key<'a>>> {
        let b = self.text.as_bytes();
        if self.pending {
            self.skip()?;
        }
        let mut i = skip_ws(b, self.pos);
        if self.first {
            self.first = false;
            if b.get(i) == Some(&b'}') {
                self.pos = i + 1;
                return Ok(None);
            }
        } else {
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    self.pos = i + 1;
                    return Ok(None);
                }
                Some(_) => return Err(Error::new(i, What::Expected("`,` or `}`"))),
                None => return Err(Error::new(i, What::Eof)),
            }
        }
        match b.get(i) {
            Some(b'"') => {}
            Some(_) => return Err(Error::new(i, What::Expected("`\"`"))),
            None => return Err(Error::new(i, What::Eof)),
        }
        let (end, escaped) = string_end(b, i + 1)?;
        let colon = skip_ws(b, end);
        match b.get(colon) {
            Some(b':') => {}
            Some(_) => return Err(Error::new(colon, What::Expected("`:`"))),
            None => return Err(Error::new(colon, What::Eof)),
        }
        self.pos = skip_ws(b, colon + 1);
        self.pending = true;
        Ok(Some(Key {
            raw: &self.text[i + 1..end - 1],
            escaped,
        }))
    }

    /// Where the current key's value starts.
    pub(crate) fn value_start(&self) -> usize {
        self.pos
    }

    /// The first byte of the current key's value.
    pub(crate) fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    /// Skips the current key's value (checked), returning its text.
    #[inline(always)]
    pub(crate) fn skip(&mut self) -> Result<&'a str> {
        let start = self.pos;
        let value = value_at(self.text, start, self.depth)?;
        self.pos = start + value.len();
        self.pending = false;
        Ok(value)
    }

    /// Says the caller read the current key's value itself and it ended at `end`.
    pub(crate) fn read_to(&mut self, end: usize) {
        self.pos = end;
        self.pending = false;
    }

    /// Just after the closing brace, once [`Members::next_key`] has returned `None`.
    pub(crate) fn end(&self) -> usize {
        self.pos
    }
}

/// The elements of an array one at a time, as text (each checked, nesting at most `depth`).
pub(crate) struct Items<'a> {
    text: &'a str,
    /// The next unread byte: the current element, or where the previous one ended.
    pos: usize,
    /// Whether the current element (from [`Items::next_start`]) is still to be passed.
    pending: bool,
    first: bool,
    done: bool,
    /// As in [`Members`]: `None` for text already checked.
    depth: Option<usize>,
}

impl<'a> Items<'a> {
    /// Opens the array at `at` (its `[`).
    pub(crate) fn open(text: &'a str, at: usize, depth: usize) -> Result<Self> {
        Self::open_with(text, at, Some(depth))
    }

    /// Opens the array at `at` (its `[`) in text already checked whole.
    pub(crate) fn open_checked(text: &'a str, at: usize) -> Result<Self> {
        Self::open_with(text, at, None)
    }

    fn open_with(text: &'a str, at: usize, depth: Option<usize>) -> Result<Self> {
        match text.as_bytes().get(at) {
            Some(b'[') => Ok(Self {
                text,
                pos: at + 1,
                pending: false,
                first: true,
                done: false,
                depth,
            }),
            Some(_) => Err(Error::new(at, What::Expected("`[`"))),
            None => Err(Error::new(at, What::Eof)),
        }
    }

    /// The next element's text, or `None` after the closing bracket.
    pub(crate) fn next_item(&mut self) -> Result<Option<(usize, &'a str)>> {
        if self.next_start()?.is_none() {
            return Ok(None);
        }
        self.pass().map(Some)
    }

    /// Passes the current element (from [`Items::next_start`]), returning where it starts
    /// and its text.
    pub(crate) fn pass(&mut self) -> Result<(usize, &'a str)> {
        let start = self.pos;
        let item = value_at(self.text, start, self.depth)?;
        self.read_to(start + item.len());
        Ok((start, item))
    }

    /// Where the next element starts, or `None` after the closing bracket; the element is
    /// not passed: the caller reads it and says where it ended with [`Items::read_to`], or the
    /// next call skips it.
    pub(crate) fn next_start(&mut self) -> Result<Option<usize>> {
        if self.done {
            return Ok(None);
        }
        if self.pending {
            self.pass()?;
        }
        let b = self.text.as_bytes();
        let mut i = skip_ws(b, self.pos);
        if self.first {
            self.first = false;
            if b.get(i) == Some(&b']') {
                self.pos = i + 1;
                self.done = true;
                return Ok(None);
            }
        } else {
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b']') => {
                    self.pos = i + 1;
                    self.done = true;
                    return Ok(None);
                }
                Some(_) => return Err(Error::new(i, What::Expected("`,` or `]`"))),
                None => return Err(Error::new(i, What::Eof)),
            }
        }
        self.pos = i;
        self.pending = true;
        Ok(Some(i))
    }

    /// Says the caller read the current element itself and it ended at `end`.
    pub(crate) fn read_to(&mut self, end: usize) {
        self.pos = end;
        self.pending = false;
    }

    /// Just after the closing bracket, once [`Items::next_item`] has returned `None`.
    pub(crate) fn end(&self) -> usize {
        self.pos
    }
}

/// A string value at `at` (its opening quote): its contents as written, whether it has escapes,
/// and the index after it.
pub(crate) fn string_at(text: &str, at: usize) -> Result<(&str, bool, usize)> {
    let b = text.as_bytes();
    match b.get(at) {
        Some(b'"') => {
            let (end, escaped) = string_end(b, at + 1)?;
            Ok((&text[at + 1..end - 1], escaped, end))
        }
        Some(_) => Err(Error::new(at, What::Expected("a string"))),
        None => Err(Error::new(at, What::Eof)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn check(text: &str) -> std::result::Result<(), What> {
        let b = text.as_bytes();
        let start = skip_ws(b, 0);
        let end = skip_value(b, start, 128).map_err(|e| e.what)?;
        if skip_ws(b, end) != b.len() {
            return Err(What::Trailing);
        }
        Ok(())
    }

    /// A number below `n` from a linear congruential sequence.
    fn next(seed: &mut u64, n: u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) % n
    }

    /// A random JSON string, dense with escaped quotes, backslash runs, brackets and braces.
    fn random_string(seed: &mut u64, out: &mut String) {
        const PIECES: [&str; 12] = [
            "a", "\\\"", "\\\\", "\\\\\\\"", "{", "}", "[", "]", "\\u00e9", "é", " ", "\\n",
        ];
        out.push('"');
        for _ in 0..next(seed, 40) {
            out.push_str(PIECES[next(seed, PIECES.len() as u64) as usize]);
        }
        out.push('"');
    }

    /// A random JSON value from `seed`: nesting, whitespace, and strings dense with what the
    /// trusted skip must see through (escaped quotes, runs of backslashes, brackets, braces).
    fn random_json(seed: &mut u64, depth: usize, out: &mut String) {
        let ws = |n: u64| [" ", "", "\n    ", ""][n as usize];
        match if depth == 0 {
            next(seed, 3)
        } else {
            next(seed, 6)
        } {
            0 => random_string(seed, out),
            1 => out.push_str(
                ["-12.5e3", "0", "true", "false", "null", "123456789"][next(seed, 6) as usize],
            ),
            2 => out.push_str(["{}", "[]", "[ ]", "{ }"][next(seed, 4) as usize]),
            kind => {
                let object = kind % 2 == 0;
                out.push(if object { '{' } else { '[' });
                for n in 0..1 + next(seed, 6) {
                    if n > 0 {
                        out.push(',');
                    }
                    out.push_str(ws(next(seed, 4)));
                    if object {
                        random_string(seed, out);
                        out.push(':');
                    }
                    random_json(seed, depth - 1, out);
                    out.push_str(ws(next(seed, 4)));
                }
                out.push(if object { '}' } else { ']' });
            }
        }
    }

    /// On JSON text, the trusted skip ends every value where the checking one does, whatever
    /// falls on the 64-byte block boundaries.
    #[test]
    fn trusted_skip_ends_values_where_the_checked_skip_does() {
        let mut seed = 7u64;
        let mut compared = 0;
        for _ in 0..3000 {
            let mut text = String::new();
            random_json(&mut seed, 4, &mut text);
            if serde_json::from_str::<serde_json::Value>(&text).is_err() {
                continue;
            }
            // The value at several offsets, after a prefix, so blocks cut it everywhere.
            for pad in [0, 1, 7, 31, 63, 64, 65] {
                let padded = format!("{}{text} ,", " ".repeat(pad));
                let b = padded.as_bytes();
                assert_eq!(
                    trusted_value_end(b, pad),
                    Some(skip_value(b, pad, MAX_DEPTH).expect("valid")),
                    "{padded}"
                );
                compared += 1;
            }
        }
        assert!(compared > 10_000, "only {compared} values compared");
        // Backslash runs of every length ending at every offset around a block boundary.
        for run in 0..6 {
            for pad in 50..80 {
                let text = format!("[\"{}{}\"]", "x".repeat(pad), "\\\\".repeat(run));
                let b = text.as_bytes();
                assert_eq!(trusted_value_end(b, 0), Some(text.len()), "{text}");
                let text = format!("[\"{}{}\\\"]\"]", "x".repeat(pad), "\\\\".repeat(run));
                let b = text.as_bytes();
                assert_eq!(trusted_value_end(b, 0), Some(text.len()), "{text}");
            }
        }
    }

    /// On text that is not JSON the trusted skip answers something within the text or
    /// nothing, and never panics.
    #[test]
    fn trusted_skip_of_broken_text_stays_in_bounds() {
        let review = include_str!("../../examples/reviews/create-3-replicas.json");
        let b = review.as_bytes();
        for cut in 0..b.len() {
            for start in [0, cut / 2] {
                if let Some(end) = trusted_value_end(&b[..cut], start) {
                    assert!(end <= cut);
                }
            }
        }
        for at in (0..b.len()).step_by(7) {
            for c in [b'"', b'\\', b'{', b']', b'x'] {
                let mut m = b.to_vec();
                m[at] = c;
                if let Some(end) = trusted_value_end(&m, 0) {
                    assert!(end <= m.len());
                }
            }
        }
    }

    /// Every value reached through the trusted cursors of a real review is exactly the text
    /// of that value: it parses to what serde_json finds at the same place.
    #[test]
    fn trusted_cursors_find_what_serde_json_finds() {
        fn walk(text: &str, expected: &serde_json::Value, walked: &mut usize) {
            *walked += 1;
            let b = text.as_bytes();
            match expected {
                serde_json::Value::Object(map) => {
                    let mut m = Members::open_checked(text, 0).expect("object");
                    let mut n = 0;
                    while let Some(k) = m.next_key().expect("key") {
                        let key = k.text().expect("key text");
                        let value = m.skip().expect("value");
                        walk(value, &map[key.as_ref()], walked);
                        n += 1;
                    }
                    assert_eq!(n, map.len());
                    assert_eq!(m.end(), b.len());
                }
                serde_json::Value::Array(items) => {
                    let mut it = Items::open_checked(text, 0).expect("array");
                    let mut n = 0;
                    while let Some((_, item)) = it.next_item().expect("item") {
                        walk(item, &items[n], walked);
                        n += 1;
                    }
                    assert_eq!(n, items.len());
                }
                scalar => {
                    assert_eq!(
                        &serde_json::from_str::<serde_json::Value>(text).expect("scalar"),
                        scalar
                    );
                }
            }
        }
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/reviews");
        let mut walked = 0;
        for entry in std::fs::read_dir(dir).expect("examples/reviews") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("review");
            let expected: serde_json::Value = serde_json::from_str(&text).expect("json");
            let start = skip_ws(text.as_bytes(), 0);
            let end = trusted_value_end(text.as_bytes(), start).expect("end");
            walk(&text[start..end], &expected, &mut walked);
        }
        assert!(walked > 500, "only {walked} values walked");
    }

    /// The scanner accepts exactly what serde_json accepts.
    #[rstest]
    #[case("0")]
    #[case("-0")]
    #[case("-12.5e+3")]
    #[case("1E9")]
    #[case("01")]
    #[case("1.")]
    #[case(".5")]
    #[case("-")]
    #[case("+1")]
    #[case("1e")]
    #[case("1e+")]
    #[case("0x10")]
    #[case("true")]
    #[case("tru")]
    #[case("nul")]
    #[case("falsey")]
    #[case("\"\"")]
    #[case("\"abc\\\"def\"")]
    #[case("\"a\\u00e9b\"")]
    #[case("\"a\\u00g9b\"")]
    #[case("\"a\\xb\"")]
    #[case("\"tab\there\"")]
    #[case("\"new\nline\"")]
    #[case("\"unterminated")]
    #[case("\"\\ud800\\udc00\"")]
    #[case("\"ends in backslash\\")]
    #[case("\"0123456789abcdef0123456789\\\"abcdefgh\"")]
    #[case("{}")]
    #[case("[]")]
    #[case("{ }")]
    #[case("[ ]")]
    #[case("{\"a\":1}")]
    #[case("{\"a\" : 1 , \"b\" : [ 1 , 2 ] }")]
    #[case("{\"a\":1,}")]
    #[case("[1,]")]
    #[case("[,1]")]
    #[case("{,}")]
    #[case("{\"a\"}")]
    #[case("{\"a\":}")]
    #[case("{1:2}")]
    #[case("[1 2]")]
    #[case("{\"a\":1 \"b\":2}")]
    #[case("[}")]
    #[case("{]")]
    #[case("[[[]]]")]
    #[case("[[[]]")]
    #[case("[[[]]]]")]
    #[case("{\"a\":{\"b\":{\"c\":[{},{\"d\":null}]}}}")]
    #[case("\n  {\n    \"a\": [\n        1,\n        \"x\"\n    ]\n}\n")]
    #[case("{\"k\":\"v\"} x")]
    #[case("")]
    #[case("   ")]
    fn accepts_what_serde_json_accepts(#[case] text: &str) {
        let ours = check(text).is_ok();
        let theirs = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
        assert_eq!(ours, theirs, "{text:?}: ours {:?}", check(text));
    }

    /// serde_json lets an escaped lone surrogate through when it skips a string; no string can
    /// hold one, so the scanner refuses it (the API server never writes one).
    #[rstest]
    #[case(r#""\ud800""#)]
    #[case(r#""\udc00""#)]
    #[case(r#""\ud800\u0041""#)]
    #[case(r#""\ud800x""#)]
    fn lone_surrogates_are_refused(#[case] text: &str) {
        assert_eq!(check(text), Err(What::BadEscape));
    }

    /// Every byte of a real review (compact, as the API server sends it, with escapes in its
    /// last-applied annotation) replaced in turn by each character that matters to the
    /// grammar, or removed: the scanner and serde_json agree on every one.
    #[test]
    fn mutated_reviews_are_accepted_exactly_when_serde_json_accepts_them() {
        let pretty = include_str!("../../examples/reviews/create-3-replicas.json");
        let value: serde_json::Value = serde_json::from_str(pretty).expect("an example review");
        let body = serde_json::to_vec(&value).expect("compact");
        let agree = |text: &[u8]| {
            let ours = std::str::from_utf8(text).is_ok_and(|t| check(t).is_ok());
            let theirs = serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok();
            assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(text));
            ours
        };
        assert!(agree(&body));
        let mut accepted = 0;
        for i in 0..body.len() {
            for &c in b"\\\"u{}[],:0-e. \n\x01" {
                let mut m = body.clone();
                m[i] = c;
                accepted += usize::from(agree(&m));
            }
            let mut m = body.clone();
            m.remove(i);
            accepted += usize::from(agree(&m));
        }
        // Mutations inside strings keep the body JSON; the comparison saw both outcomes.
        assert!(accepted > body.len(), "{accepted}");
    }

    #[test]
    fn control_characters_anywhere_in_a_long_string_are_refused() {
        // Every offset of the sixteen- and eight-byte steps and of the byte-wise tail, every
        // control character, and the bytes just past them (0x20, DEL, a two-byte character)
        // that are no control characters.
        let others = ["\u{20}", "\u{7f}", "é"];
        for len in [40, 47] {
            for at in 0..len {
                for c in (0..0x20u8).map(|c| char::from(c).to_string()) {
                    let mut s = "x".repeat(len);
                    s.replace_range(at..at + 1, &c);
                    let text = format!("\"{s}\"");
                    assert_eq!(check(&text), Err(What::ControlCharacter), "{text:?}");
                }
                for c in others {
                    let mut s = "x".repeat(len);
                    s.replace_range(at..at + 1, c);
                    let text = format!("\"{s}\"");
                    assert_eq!(check(&text), Ok(()), "{text:?}");
                    let b = text.as_bytes();
                    assert_eq!(trusted_string_end(b, 1), Some((b.len(), false)), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn quotes_and_escapes_at_every_offset_of_a_word_are_found() {
        for at in 0..40 {
            let text = format!("[\"{}\\\"{}\",1]", "a".repeat(at), "b".repeat(40 - at));
            let b = text.as_bytes();
            assert_eq!(skip_value(b, 0, 8), Ok(b.len()), "{text}");
            let (end, escaped) = string_end(b, 2).unwrap();
            assert!(escaped);
            assert_eq!(&text[end..], ",1]", "{text}");
            assert_eq!(trusted_string_end(b, 2), Some((end, true)), "{text}");
            assert_eq!(trusted_value_end(b, 0), Some(b.len()), "{text}");
        }
    }

    #[test]
    fn depth_is_limited_and_counted_from_the_value_itself() {
        let nest = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(skip_value(nest(3).as_bytes(), 0, 3), Ok(7));
        assert_eq!(
            skip_value(nest(4).as_bytes(), 0, 3).unwrap_err().what,
            What::TooDeep(3)
        );
        // Objects and arrays mixed past 64 levels keep their kinds apart.
        let mut text = String::new();
        for d in 0..200 {
            text.push_str(if d % 3 == 0 { "{\"k\":" } else { "[" });
        }
        text.push('0');
        for d in (0..200).rev() {
            text.push(if d % 3 == 0 { '}' } else { ']' });
        }
        assert_eq!(skip_value(text.as_bytes(), 0, 200), Ok(text.len()));
        assert!(skip_value(text.as_bytes(), 0, 199).is_err());
        let wrong = text.replacen("]}", "}}", 1);
        assert!(skip_value(wrong.as_bytes(), 0, 200).is_err());
    }

    #[rstest]
    #[case("plain", Some("plain"))]
    #[case(r"a\u0041\n\t\/\\\u00e9", Some("aA\n\t/\\é"))]
    #[case(r"\ud83d\ude00", Some("😀"))]
    #[case(r"\ud83d", None)]
    #[case(r"\ud83dx", None)]
    #[case(r"\ude00", None)]
    #[case(r"\ud83d\u0041", None)]
    fn unescapes_like_serde_json(#[case] raw: &str, #[case] expected: Option<&str>) {
        assert_eq!(unescape(raw).as_deref(), expected);
        let theirs = serde_json::from_str::<String>(&format!("\"{raw}\"")).ok();
        assert_eq!(theirs.as_deref(), expected);
    }

    #[test]
    fn members_and_items_walk_in_order() {
        let text = r#"{ "a" : [1, {"b": 2}] , "c\u0064" : "x", "e": {} }"#;
        let mut m = Members::open(text, 0, 8).unwrap();
        let mut seen = Vec::new();
        while let Some(k) = m.next_key().unwrap() {
            let key = k.text().unwrap().into_owned();
            if key == "a" {
                let mut items = Items::open(text, m.value_start(), 8).unwrap();
                let mut n = 0;
                while items.next_item().unwrap().is_some() {
                    n += 1;
                }
                m.read_to(items.end());
                seen.push(format!("{key}:{n}"));
            } else {
                seen.push(format!("{key}={}", m.skip().unwrap()));
            }
        }
        assert_eq!(seen, ["a:2", "cd=\"x\"", "e={}"]);
        assert_eq!(m.end(), text.len());
    }

    #[test]
    fn elements_left_unread_are_skipped() {
        let text = r#"[1, {"a": [2, "]"]} , "x", []]"#;
        for depth in [Some(8), None] {
            let open = |t| match depth {
                Some(d) => Items::open(t, 0, d),
                None => Items::open_checked(t, 0),
            };
            let mut items = open(text).unwrap();
            let mut whole = Vec::new();
            while let Some((at, item)) = items.next_item().unwrap() {
                whole.push((at, item));
            }
            // Every element's start, read to its end by the caller or left to the cursor.
            for read_every in [false, true] {
                let mut items = open(text).unwrap();
                let mut starts = Vec::new();
                while let Some(at) = items.next_start().unwrap() {
                    starts.push(at);
                    if read_every {
                        let item = whole[starts.len() - 1].1;
                        items.read_to(at + item.len());
                    }
                }
                let expected: Vec<usize> = whole.iter().map(|(at, _)| *at).collect();
                assert_eq!(starts, expected);
                assert_eq!(items.end(), text.len());
            }
        }
    }

    #[test]
    fn errors_say_where() {
        let text = "{\n  \"a\": tru\n}";
        let err = skip_value(text.as_bytes(), 0, 8).unwrap_err();
        assert_eq!(
            err.describe(text.as_bytes()),
            "expected a value at line 2 column 8"
        );
    }
}
