//! A DEFLATE encoder (RFC 1951) of our own for short messages, sans-IO.
//!
//! Why: wschat compresses every message from a fresh state
//! (`server_no_context_takeover`, RFC 7692 §7.1.1.1), and zlib clears its
//! 128 KiB hash table for each one: about 11 µs, against well under a
//! microsecond for the compression of a chat message itself. This encoder
//! keeps its tables from one message to the next without clearing them (a
//! generation offset in every stored position tells this message's entries
//! from older ones), allocates nothing once warm, and builds its Huffman
//! codes without allocating or sorting more than the symbols used, so a
//! fresh state costs next to nothing. `deflate::compress` uses it up to
//! [`super::deflate::SHORT_MAX`] bytes and zlib above.
//!
//! What it does: LZ77 with hash chains and one step of lazy matching
//! (RFC 1951 §4), then one block of the fixed Huffman codes (§3.2.6) or of
//! codes built for the message (§3.2.7), or stored blocks (§3.2.4),
//! whichever is shortest, and the end a sync flush has (RFC 7692 §7.2.1).
//! The fixed block's size is counted with the tokens; the message's own
//! codes are built (above a few dozen symbols) and weighed against it.

use std::cell::RefCell;

use super::deflate::{SHORT_MAX, stored};

/// §3.2.5: the shortest and longest match.
const MIN_MATCH: usize = 3;
const MAX_MATCH: usize = 258;
/// Chain steps per position: enough for JSON's repeated keys.
const MAX_CHAIN: usize = 32;
/// A match this long is taken without looking further (nor lazily).
const NICE_MATCH: usize = 128;
/// The hash table has at most 2^14 entries (64 KiB) and at least 2^8.
const MAX_HASH_BITS: u32 = 14;
const MIN_HASH_BITS: u32 = 8;
/// The per-thread tables are kept between messages up to this many bytes
/// of input (about 50 KiB of tables at most, until the server's next trim
/// frees them); a longer message (the server sends none here) gets tables
/// of its own, freed when it is done.
const KEEP_MAX: usize = SHORT_MAX;

/// §3.2.5: length codes 257..285, their base lengths and extra bits.
const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
/// §3.2.5: distance codes 0..29, their base distances and extra bits.
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

/// The length code (0..29, i.e. symbol 257 + it) of each match length.
const LEN_CODE: [u8; MAX_MATCH + 1] = {
    let mut t = [0u8; MAX_MATCH + 1];
    let mut code = 0;
    let mut len = MIN_MATCH;
    while len <= MAX_MATCH {
        while code + 1 < 29 && LEN_BASE[code + 1] as usize <= len {
            code += 1;
        }
        t[len] = code as u8;
        len += 1;
    }
    t
};

/// The distance code of a distance (1..=32768), §3.2.5.
fn dist_code(d: usize) -> usize {
    let x = d - 1;
    if x < 4 {
        return x;
    }
    let bits = usize::BITS - 1 - x.leading_zeros();
    (2 * bits as usize) + ((x >> (bits - 1)) & 1)
}

/// `code` of `len` bits with its bits in reverse order: Huffman codes are
/// packed starting with their most significant bit (§3.1.1), our bit writer
/// starts with the least significant.
const fn reverse(code: u16, len: u8) -> u16 {
    if len == 0 {
        return 0;
    }
    // By bytes from a table: x86 has no instruction for it.
    let r = (REV8[(code & 0xff) as usize] as u16) << 8 | REV8[(code >> 8) as usize] as u16;
    r >> (16 - len as u32)
}

/// Each byte with its bits reversed.
const REV8: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i as u8).reverse_bits();
        i += 1;
    }
    t
};

/// §3.2.6: the code lengths of the fixed literal/length alphabet.
const fn fixed_lit_len(sym: usize) -> u8 {
    match sym {
        0..=143 => 8,
        144..=255 => 9,
        256..=279 => 7,
        _ => 8,
    }
}

/// The canonical codes of a set of code lengths (§3.2.2), bit-reversed for
/// the writer. Lengths of 0 get no code. A `const fn` so that the fixed
/// codes are tables in the binary, not work per message.
const fn canonical_const<const N: usize>(lens: &[u8; N]) -> [u16; N] {
    let mut count = [0u16; 16];
    let mut i = 0;
    while i < N {
        count[lens[i] as usize] += 1;
        i += 1;
    }
    count[0] = 0;
    let mut next = [0u16; 16];
    let mut code = 0u16;
    let mut bits = 1;
    while bits < 16 {
        code = (code + count[bits - 1]) << 1;
        next[bits] = code;
        bits += 1;
    }
    let mut codes = [0u16; N];
    i = 0;
    while i < N {
        let l = lens[i];
        if l > 0 {
            codes[i] = reverse(next[l as usize], l);
            next[l as usize] += 1;
        }
        i += 1;
    }
    codes
}

/// [`canonical_const`] for the codes built per message, over the symbols
/// `used` (ascending) alone, the others having no code: a message uses few
/// of the 286 literal/length symbols.
fn canonical_used(lens: &[u8], used: &[u16], codes: &mut [u16]) {
    let mut count = [0u16; 16];
    for &s in used {
        count[usize::from(lens[usize::from(s)] & 15)] += 1;
    }
    count[0] = 0;
    let mut next = [0u16; 16];
    let mut code = 0u16;
    for bits in 1..16 {
        code = (code + count[bits - 1]) << 1;
        next[bits] = code;
    }
    for &s in used {
        let l = usize::from(lens[usize::from(s)] & 15);
        if l > 0 {
            codes[usize::from(s)] = reverse(next[l], l as u8);
            next[l] += 1;
        }
    }
}

/// §3.2.6: the fixed literal/length code lengths and codes, and the fixed
/// distance codes (all five bits).
const FIXED_LIT_LENS: [u8; 288] = {
    let mut t = [0u8; 288];
    let mut s = 0;
    while s < 288 {
        t[s] = fixed_lit_len(s);
        s += 1;
    }
    t
};
const FIXED_LIT_CODES: [u16; 288] = canonical_const(&FIXED_LIT_LENS);
const FIXED_DIST_LENS: [u8; 30] = [5; 30];
const FIXED_DIST_CODES: [u16; 30] = canonical_const(&FIXED_DIST_LENS);

/// Bits into bytes, least significant bit first (§3.1.1).
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter<'_> {
    fn put(&mut self, v: u32, len: u32) {
        debug_assert!(len <= 32 && (len == 32 || u64::from(v) < 1 << len));
        self.acc |= u64::from(v) << self.n;
        self.n += len;
        if self.n >= 32 {
            self.out.extend_from_slice(&(self.acc as u32).to_le_bytes());
            self.acc >>= 32;
            self.n -= 32;
        }
    }

    /// Pads to a byte boundary with zero bits.
    fn finish(self) {
        let bytes = self.n.div_ceil(8) as usize;
        self.out.extend_from_slice(&self.acc.to_le_bytes()[..bytes]);
    }
}

/// One LZ77 token: a literal byte (below 256) or `len << 16 | dist`.
type Token = u32;

fn literal(t: Token) -> bool {
    t < 256
}

/// What the encoder keeps from one message to the next, so that a message
/// allocates and clears nothing: the hash chains' heads and links and the
/// token buffer.
struct Scratch {
    /// `1 << bits` heads of the hash chains (grown to the largest `bits`
    /// seen), each a position + `base` + 1; a value not above `base` is
    /// left from an earlier message, i.e. none.
    head: Vec<u32>,
    /// Per position, the previous one with its hash (same encoding).
    prev: Vec<u32>,
    base: u32,
    tokens: Vec<Token>,
    huff: Huff,
}

impl Scratch {
    const fn new() -> Scratch {
        Scratch {
            head: Vec::new(),
            prev: Vec::new(),
            base: 0,
            tokens: Vec::new(),
            huff: Huff::new(),
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch::new()) };
}

/// Frees the per-thread tables (the server does so when it trims the
/// heap, with the zlib pools): an idle server holds none.
pub fn release_scratch() {
    SCRATCH.with_borrow_mut(|s| *s = Scratch::new());
}

/// The 8 bytes of `d` from `i`, little-endian (0 if fewer remain, which
/// the callers rule out).
fn load64(d: &[u8], i: usize) -> u64 {
    d.get(i..i + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// How many bytes from `a` and from `b` are equal, at most `max`
/// (`b + max <= d.len()`, `a < b`), eight at a time.
fn match_len(d: &[u8], a: usize, b: usize, max: usize) -> usize {
    let mut l = 0;
    while l + 8 <= max {
        let x = load64(d, a + l) ^ load64(d, b + l);
        if x != 0 {
            return l + (x.trailing_zeros() / 8) as usize;
        }
        l += 8;
    }
    while l < max && d[a + l] == d[b + l] {
        l += 1;
    }
    l
}

/// The match finder's state for one message: hash chains of 3-byte
/// prefixes (RFC 1951 §4), in the kept [`Scratch`].
struct Chains<'a> {
    data: &'a [u8],
    bits: u32,
    head: &'a mut [u32],
    prev: &'a mut [u32],
    base: u32,
    max_dist: usize,
}

impl Chains<'_> {
    /// Puts position `i` at the head of its hash chain; returns the chain
    /// as it was (the position before it with its hash, encoded as stored).
    #[inline(always)]
    fn insert(&mut self, i: usize) -> u32 {
        let d = self.data;
        if i + MIN_MATCH > d.len() {
            return 0;
        }
        {
            let k = u32::from(d[i]) | u32::from(d[i + 1]) << 8 | u32::from(d[i + 2]) << 16;
            // The mask changes nothing (the head has 2^bits entries) but
            // lets the compiler drop the bounds check.
            let h =
                (k.wrapping_mul(0x9E37_79B1) >> (32 - self.bits)) as usize & (self.head.len() - 1);
            let c = self.head[h];
            self.prev[i] = c;
            self.head[h] = self.base + i as u32 + 1;
            c
        }
    }

    /// The longest match for position `i` among `limit` earlier positions
    /// of its hash chain, from `c` on: (length, distance), or (0, 0).
    #[inline(always)]
    fn longest(&self, i: usize, mut c: u32, limit: usize) -> (usize, usize) {
        let d = self.data;
        let max_len = MAX_MATCH.min(d.len() - i);
        if max_len < MIN_MATCH {
            return (0, 0);
        }
        let (mut best, mut best_dist) = (MIN_MATCH - 1, 0);
        let mut steps = 0;
        // Values not above `base` are an earlier message's: the chain ends.
        while c > self.base && steps < limit {
            let p = (c - self.base - 1) as usize;
            let dist = i - p;
            // RFC 7692 §7.1.2.1: never further back than the agreed window.
            if dist > self.max_dist {
                break;
            }
            if d[p + best] == d[i + best] {
                let l = match_len(d, p, i, max_len);
                if l > best {
                    (best, best_dist) = (l, dist);
                    if l >= max_len.min(NICE_MATCH) {
                        break;
                    }
                }
            }
            c = self.prev[p];
            steps += 1;
        }
        if best_dist == 0 {
            (0, 0)
        } else {
            (best, best_dist)
        }
    }
}

/// LZ77 over `data` (RFC 1951 §4) into `s.tokens`, no match reaching
/// further back than `max_dist`. Greedy with one step of lazy evaluation,
/// as zlib's levels 4–9 do: a match is taken only if the next position has
/// no longer one.
fn lz77(data: &[u8], max_dist: usize, s: &mut Scratch) {
    let n = data.len();
    s.tokens.clear();
    if n < MIN_MATCH {
        s.tokens.extend(data.iter().map(|&b| Token::from(b)));
        return;
    }
    let bits = (usize::BITS - (n - 1).leading_zeros()).clamp(MIN_HASH_BITS, MAX_HASH_BITS);
    // No clearing: entries of earlier messages are at or below `base`.
    // Only when the positions would overflow is the table reset.
    if u64::from(s.base) + n as u64 + 1 > u64::from(u32::MAX) {
        s.head.iter_mut().for_each(|h| *h = 0);
        s.base = 0;
    }
    if s.head.len() < 1 << bits {
        s.head.resize(1 << bits, 0);
    }
    if s.prev.len() < n {
        s.prev.resize(n, 0);
    }
    s.tokens.reserve(n);
    let tokens = &mut s.tokens;
    let mut ch = Chains {
        data,
        bits,
        head: &mut s.head[..1 << bits],
        prev: &mut s.prev[..n],
        base: s.base,
        max_dist,
    };
    // Position i - 1 while the one at i is looked at: whether it is still
    // to be emitted, and the match found there (length below MIN_MATCH:
    // none).
    let (mut pending, mut plen, mut pdist) = (false, 0usize, 0usize);
    let mut i = 0;
    while i < n {
        let chain = ch.insert(i);
        let (len, dist) = if chain <= ch.base || plen >= NICE_MATCH {
            (0, 0)
        } else {
            // A match in hand: fewer candidates for a better one.
            let limit = if plen >= MIN_MATCH {
                MAX_CHAIN / 4
            } else {
                MAX_CHAIN
            };
            ch.longest(i, chain, limit)
        };
        if plen >= MIN_MATCH && len <= plen {
            tokens.push((plen as u32) << 16 | pdist as u32);
            // The match started at i - 1; i is in the table already.
            for j in i + 1..i - 1 + plen {
                ch.insert(j);
            }
            i = i - 1 + plen;
            (pending, plen) = (false, 0);
        } else {
            if pending {
                tokens.push(Token::from(data[i - 1]));
            }
            (pending, plen, pdist) = (true, len, dist);
            i += 1;
        }
    }
    // What is pending refers to n - 1, where no match fits: a literal.
    if pending {
        tokens.push(Token::from(data[n - 1]));
    }
    s.base += n as u32;
}

/// Symbol frequencies of the literal/length and distance alphabets, and
/// what the symbols cost: the bits of their fixed codes (§3.2.6) and their
/// extra bits, which are the same under any code.
struct Counts {
    lit: [u32; 286],
    dist: [u32; 30],
    fixed_bits: usize,
    extra_bits: usize,
}

fn count(tokens: &[Token]) -> Counts {
    let mut c = Counts {
        lit: [0; 286],
        dist: [0; 30],
        fixed_bits: 0,
        extra_bits: 0,
    };
    for &t in tokens {
        if literal(t) {
            c.lit[t as usize] += 1;
            c.fixed_bits += usize::from(FIXED_LIT_LENS[t as usize]);
        } else {
            let lc = usize::from(LEN_CODE[(t >> 16) as usize]);
            let dc = dist_code((t & 0xffff) as usize);
            c.lit[257 + lc] += 1;
            c.dist[dc] += 1;
            c.fixed_bits += usize::from(FIXED_LIT_LENS[257 + lc]) + 5;
            c.extra_bits += usize::from(LEN_EXTRA[lc] + DIST_EXTRA[dc]);
        }
    }
    c.lit[256] = 1; // end of block
    c.fixed_bits += usize::from(FIXED_LIT_LENS[256]);
    c
}

/// The work space of [`huffman_lengths`], kept in the [`Scratch`] so that
/// it is not cleared for every code built.
struct Huff {
    keys: [u64; 286],
    a: [u64; 286],
    tmp: [u64; 286],
    /// The symbols of the last code built that have a length, ascending.
    used: [u16; 286],
    nused: usize,
}

impl Huff {
    const fn new() -> Huff {
        Huff {
            keys: [0; 286],
            a: [0; 286],
            tmp: [0; 286],
            used: [0; 286],
            nused: 0,
        }
    }
}

/// Sorts `keys` (frequency << 9 | symbol, gathered in symbol order) by
/// frequency, ties by symbol: by insertion for a few keys, else a stable
/// radix sort on the frequency's bytes, which keeps the symbol order.
fn sort_keys(keys: &mut [u64], tmp: &mut [u64]) {
    if keys.len() <= 32 {
        for i in 1..keys.len() {
            let k = keys[i];
            let mut j = i;
            while j > 0 && keys[j - 1] > k {
                keys[j] = keys[j - 1];
                j -= 1;
            }
            keys[j] = k;
        }
        return;
    }
    let max = keys.iter().fold(0, |m, &k| m.max(k >> 9));
    let tmp = &mut tmp[..keys.len()];
    let mut shift = 9;
    while max >> (shift - 9) != 0 {
        // Buckets up to the largest digit only: a chat message's symbols
        // occur a few dozen times at most.
        let top = ((max >> (shift - 9)).min(255) + 1) as usize;
        let mut start = [0u16; 257];
        for &k in keys.iter() {
            start[((k >> shift) & 0xff) as usize + 1] += 1;
        }
        for b in 1..top {
            start[b] += start[b - 1];
        }
        for &k in keys.iter() {
            let b = ((k >> shift) & 0xff) as usize;
            tmp[usize::from(start[b])] = k;
            start[b] += 1;
        }
        keys.copy_from_slice(tmp);
        shift += 8;
    }
}

/// Huffman code lengths for `freq`, none longer than `max_bits` (§3.2.7:
/// 15 for literals/lengths and distances, 7 for the code length codes);
/// returns the bits the symbols take under them (extra bits aside).
/// Package-merge would be optimal; this builds the plain Huffman tree
/// in place over the used symbols sorted by frequency (Moffat and
/// Katajainen's method: no allocation, no tree) and, should it be too
/// deep, flattens it by the heuristic zlib's `gen_bitlen` uses, which stays
/// a valid prefix code (the Kraft sum is kept at 1).
fn huffman_lengths(freq: &[u32], max_bits: u8, lens: &mut [u8], work: &mut Huff) -> usize {
    lens.iter_mut().for_each(|l| *l = 0);
    // The used symbols as frequency << 9 | symbol, so that sorting them
    // orders by frequency, then symbol (at most 286 symbols: 9 bits).
    let Huff {
        keys,
        a,
        tmp,
        used,
        nused,
    } = work;
    let mut k = 0;
    let freq = &freq[..freq.len().min(keys.len())];
    let mut gather = |s: usize, f: u32| {
        if f > 0 && k < keys.len() {
            keys[k] = u64::from(f) << 9 | s as u64;
            used[k] = s as u16;
            k += 1;
        }
    };
    // Eight at a time: most of a chat message's byte values never occur.
    let chunks = freq.chunks_exact(8);
    let rest = chunks.remainder();
    for (c, chunk) in chunks.enumerate() {
        if chunk.iter().fold(0, |o, &f| o | f) != 0 {
            for (j, &f) in chunk.iter().enumerate() {
                gather(c * 8 + j, f);
            }
        }
    }
    for (j, &f) in rest.iter().enumerate() {
        gather(freq.len() - rest.len() + j, f);
    }
    *nused = k;
    let sym = |key: u64| (key & 0x1ff) as usize;
    match k {
        // No symbol (a block without distances): two one-bit codes all
        // the same, as zlib sends (some inflaters want at least one code).
        0 => {
            lens[0] = 1;
            lens[1] = 1;
            (used[0], used[1], *nused) = (0, 1, 2);
            return 0;
        }
        // A single symbol still needs a one-bit code (and a second one so
        // the code is complete, which inflaters such as zlib accept).
        1 => {
            let s = sym(keys[0]);
            let other = if s == 0 { 1 } else { 0 };
            lens[s] = 1;
            lens[other] = 1;
            (used[0], used[1], *nused) = (s.min(other) as u16, s.max(other) as u16, 2);
            return freq[s] as usize;
        }
        _ => {}
    }
    let keys = &mut keys[..k];
    sort_keys(keys, tmp);
    // Moffat & Katajainen, "In-place calculation of minimum-redundancy
    // codes" (1995): a[] holds the weights, ascending; three passes turn
    // it into the leaves' depths (a[0] the deepest). Ties go to the leaf,
    // as in zlib.
    let a = &mut a[..k];
    for (w, &key) in a.iter_mut().zip(keys.iter()) {
        *w = key >> 9;
    }
    // Pass 1, left to right: pair the two lightest of leaves and made
    // nodes; a[next] becomes a node's weight, then its parent's index.
    a[0] += a[1];
    let (mut root, mut leaf) = (0usize, 2usize);
    for next in 1..k - 1 {
        if leaf >= k || a[root] < a[leaf] {
            a[next] = a[root];
            a[root] = next as u64;
            root += 1;
        } else {
            a[next] = a[leaf];
            leaf += 1;
        }
        if leaf >= k || (root < next && a[root] < a[leaf]) {
            a[next] += a[root];
            a[root] = next as u64;
            root += 1;
        } else {
            a[next] += a[leaf];
            leaf += 1;
        }
    }
    // Pass 2, right to left: the internal nodes' depths.
    a[k - 2] = 0;
    for next in (0..k.saturating_sub(2)).rev() {
        a[next] = a[a[next] as usize] + 1;
    }
    // Pass 3: the leaves' depths, from the internal nodes' count per level.
    let (mut avail, mut used, mut depth) = (1i64, 0i64, 0u64);
    let mut root = k as i64 - 2;
    let mut next = k as i64 - 1;
    while avail > 0 {
        while root >= 0 && a[root as usize] == depth {
            used += 1;
            root -= 1;
        }
        while avail > used {
            a[next as usize] = depth;
            next -= 1;
            avail -= 1;
        }
        avail = 2 * used;
        depth += 1;
        used = 0;
    }
    // Leaves deeper than max_bits are cut to it, and the Kraft sum brought
    // back to exactly 1 (zlib's inflater refuses an incomplete code) as
    // miniz does: a leaf at max_bits goes, a shorter one moves down a level
    // beside it, the number of leaves unchanged.
    let max = usize::from(max_bits);
    if a[0] as usize > max {
        let mut bl_count = [0u32; 16];
        for &d in a.iter() {
            bl_count[(d as usize).min(max)] += 1;
        }
        let mut total: u64 = (1..=max).map(|b| u64::from(bl_count[b]) << (max - b)).sum();
        while total > 1 << max {
            bl_count[max] -= 1;
            if let Some(b) = (1..max).rev().find(|&b| bl_count[b] > 0) {
                bl_count[b] -= 1;
                bl_count[b + 1] += 2;
            }
            total -= 1;
        }
        // The rarest get the longest codes.
        let mut i = 0;
        for bits in (1..=max).rev() {
            for _ in 0..bl_count[bits] {
                if i < k {
                    a[i] = bits as u64;
                    i += 1;
                }
            }
        }
    }
    let mut bits = 0;
    for (&key, &d) in keys.iter().zip(a.iter()) {
        lens[sym(key)] = d as u8;
        bits += (key >> 9) as usize * d as usize;
    }
    bits
}

/// §3.2.7: the order in which the code length code lengths are sent.
const CL_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// The code lengths of both alphabets, run-length coded (§3.2.7: 16 repeats
/// the previous length 3–6 times, 17 zeros 3–10 times, 18 zeros 11–138
/// times), as (symbol, extra bits value) into `out`; returns how many.
fn rle(lens: &[u8], out: &mut [(u8, u8); 316]) -> usize {
    let mut k = 0;
    let mut push = |x: (u8, u8)| {
        if k < out.len() {
            out[k] = x;
            k += 1;
        }
    };
    let mut i = 0;
    while i < lens.len() {
        let l = lens[i];
        let run = lens[i..].iter().take_while(|&&x| x == l).count();
        if l == 0 && run >= 11 {
            let r = run.min(138);
            push((18, (r - 11) as u8));
            i += r;
        } else if l == 0 && run >= 3 {
            push((17, (run - 3) as u8));
            i += run;
        } else if l != 0 && run >= 4 {
            push((l, 0));
            let mut left = run - 1;
            while left >= 3 {
                let r = left.min(6);
                push((16, (r - 3) as u8));
                left -= r;
            }
            i += run - left;
        } else {
            push((l, 0));
            i += 1;
        }
    }
    k
}

const CL_EXTRA: [u32; 19] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 3, 7];

/// A dynamic block's code: lengths of both alphabets and the header that
/// sends them (§3.2.7), and the bits of header and symbols (extra bits
/// aside).
struct Dynamic {
    lit_lens: [u8; 286],
    dist_lens: [u8; 30],
    lit_codes: [u16; 286],
    dist_codes: [u16; 30],
    hlit: usize,
    hdist: usize,
    cl_lens: [u8; 19],
    hclen: usize,
    cl_codes: [u16; 19],
    cl: [(u8, u8); 316],
    cl_len: usize,
    bits: usize,
}

fn dynamic(c: &Counts, work: &mut Huff) -> Dynamic {
    let mut lit_lens = [0u8; 286];
    let mut dist_lens = [0u8; 30];
    let (mut lit_codes, mut dist_codes) = ([0u16; 286], [0u16; 30]);
    let mut sym_bits = huffman_lengths(&c.lit, 15, &mut lit_lens, work);
    canonical_used(&lit_lens, &work.used[..work.nused], &mut lit_codes);
    sym_bits += huffman_lengths(&c.dist, 15, &mut dist_lens, work);
    canonical_used(&dist_lens, &work.used[..work.nused], &mut dist_codes);
    // §3.2.7: HLIT 257..286 codes, HDIST 1..32 (one distance code of zero
    // bits says "no distances").
    let hlit = 257.max(286 - lit_lens.iter().rev().take_while(|&&l| l == 0).count());
    let hdist = 1.max(30 - dist_lens.iter().rev().take_while(|&&l| l == 0).count());
    let mut all = [0u8; 316];
    all[..hlit].copy_from_slice(&lit_lens[..hlit]);
    all[hlit..hlit + hdist].copy_from_slice(&dist_lens[..hdist]);
    let mut cl = [(0u8, 0u8); 316];
    let cl_len = rle(&all[..hlit + hdist], &mut cl);
    let mut cl_freq = [0u32; 19];
    for &(s, _) in &cl[..cl_len] {
        cl_freq[usize::from(s)] += 1;
    }
    let mut cl_lens = [0u8; 19];
    let cl_bits = huffman_lengths(&cl_freq, 7, &mut cl_lens, work);
    let mut cl_codes = [0u16; 19];
    canonical_used(&cl_lens, &work.used[..work.nused], &mut cl_codes);
    let hclen = 4.max(
        19 - CL_ORDER
            .iter()
            .rev()
            .take_while(|&&s| cl_lens[s] == 0)
            .count(),
    );
    let cl_extra: usize = cl[..cl_len]
        .iter()
        .map(|&(s, _)| CL_EXTRA[usize::from(s)] as usize)
        .sum();
    Dynamic {
        lit_lens,
        dist_lens,
        lit_codes,
        dist_codes,
        hlit,
        hdist,
        cl_lens,
        hclen,
        cl_codes,
        cl,
        cl_len,
        bits: 5 + 5 + 4 + 3 * hclen + cl_bits + cl_extra + sym_bits,
    }
}

/// The symbols of one Huffman block, then its end-of-block code.
fn put_tokens(
    w: &mut BitWriter<'_>,
    tokens: &[Token],
    lit_codes: &[u16],
    lit_lens: &[u8],
    dist_codes: &[u16],
    dist_lens: &[u8],
) {
    for &t in tokens {
        if literal(t) {
            let s = t as usize;
            w.put(u32::from(lit_codes[s]), u32::from(lit_lens[s]));
        } else {
            let (len, d) = ((t >> 16) as usize, (t & 0xffff) as usize);
            let lc = usize::from(LEN_CODE[len]);
            // Each code with its extra bits in one write (at most 15 + 5
            // and 15 + 13 bits).
            let (cl, xl) = (u32::from(lit_lens[257 + lc]), u32::from(LEN_EXTRA[lc]));
            let x = (len - usize::from(LEN_BASE[lc])) as u32;
            w.put(u32::from(lit_codes[257 + lc]) | x << cl, cl + xl);
            let dc = dist_code(d);
            let (cl, xl) = (u32::from(dist_lens[dc]), u32::from(DIST_EXTRA[dc]));
            let x = (d - usize::from(DIST_BASE[dc])) as u32;
            w.put(u32::from(dist_codes[dc]) | x << cl, cl + xl);
        }
    }
    w.put(u32::from(lit_codes[256]), u32::from(lit_lens[256]));
}

/// Which block type `compress` writes (for the tests and the size tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    Stored,
    Fixed,
    Dynamic,
}

/// Compresses one whole message as RFC 7692 §7.2.1 says: DEFLATE data
/// ending as a sync flush does (an empty stored block), with that block's
/// last four octets, `00 00 ff ff`, left out. No match reaches further back
/// than `2^window_bits` bytes (RFC 7692 §7.1.2.1). Appends to `out`; returns the block
/// type chosen. The output is never longer than the stored form:
/// `payload.len() + 5 * ceil(payload.len() / 65535) + 1` bytes.
pub fn compress(payload: &[u8], window_bits: u8, out: &mut Vec<u8>) -> Block {
    if payload.len() > KEEP_MAX {
        return compress_with(payload, window_bits, out, &mut Scratch::new());
    }
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => compress_with(payload, window_bits, out, &mut s),
        // Not reachable (nothing here calls back into compress), but a
        // fresh table is as correct as the kept one.
        Err(_) => compress_with(payload, window_bits, out, &mut Scratch::new()),
    })
}

fn compress_with(payload: &[u8], window_bits: u8, out: &mut Vec<u8>, s: &mut Scratch) -> Block {
    let n = payload.len();
    let stored_bytes = n + 5 * n.div_ceil(usize::from(u16::MAX)) + 1;
    lz77(payload, 1 << window_bits.clamp(8, 15), s);
    let tokens = &s.tokens;
    let c = count(tokens);
    let work = &mut s.huff;

    // Block header (3 bits), the symbols, then the empty stored block's
    // header (3 bits) and its padding.
    let bytes = |bits: usize| (3 + bits + c.extra_bits + 3).div_ceil(8);
    // Below a few dozen symbols a code table of the message's own never
    // pays for its header (§3.2.7); above, it is built and weighed. (An
    // estimate to skip building it, from the entropy and the code lengths
    // to send, cost more than it saved on chat messages.)
    let dy = (tokens.len() > 48).then(|| dynamic(&c, work));
    let dynamic_bits = dy.as_ref().map_or(usize::MAX, |d| d.bits);
    let block = if bytes(c.fixed_bits.min(dynamic_bits)) >= stored_bytes {
        Block::Stored
    } else if dynamic_bits < c.fixed_bits {
        Block::Dynamic
    } else {
        Block::Fixed
    };

    out.reserve(stored_bytes.min(bytes(c.fixed_bits.min(dynamic_bits))) + 8);
    let mut w = BitWriter { out, acc: 0, n: 0 };
    match (block, dy) {
        (Block::Stored, _) | (Block::Dynamic, None) => {
            stored(payload, w.out);
            return Block::Stored;
        }
        (Block::Fixed, _) => {
            // §3.2.3: BFINAL 0 (a sync flush ends no stream), BTYPE 01.
            w.put(0b010, 3);
            put_tokens(
                &mut w,
                tokens,
                &FIXED_LIT_CODES,
                &FIXED_LIT_LENS,
                &FIXED_DIST_CODES,
                &FIXED_DIST_LENS,
            );
        }
        (Block::Dynamic, Some(d)) => {
            // §3.2.3: BFINAL 0, BTYPE 10; §3.2.7: HLIT, HDIST, HCLEN, the
            // code length code lengths, then both alphabets' lengths.
            w.put(0b100, 3);
            w.put((d.hlit - 257) as u32, 5);
            w.put((d.hdist - 1) as u32, 5);
            w.put((d.hclen - 4) as u32, 4);
            for &s in &CL_ORDER[..d.hclen] {
                w.put(u32::from(d.cl_lens[s]), 3);
            }
            for &(s, extra) in &d.cl[..d.cl_len] {
                let s = usize::from(s);
                w.put(u32::from(d.cl_codes[s]), u32::from(d.cl_lens[s]));
                w.put(u32::from(extra), CL_EXTRA[s]);
            }
            put_tokens(
                &mut w,
                tokens,
                &d.lit_codes,
                &d.lit_lens,
                &d.dist_codes,
                &d.dist_lens,
            );
        }
    }
    // RFC 7692 §7.2.1: what a sync flush ends with, an empty stored block
    // (RFC 1951 §3.2.4: BFINAL 0, BTYPE 00, padding to the byte), whose
    // LEN and NLEN, the four octets 00 00 ff ff, are removed.
    w.put(0, 3);
    w.finish();
    block
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::deflate::{TAIL, inflate_message};

    fn round_trip(p: &[u8], bits: u8) -> (Vec<u8>, Block) {
        let mut z = Vec::new();
        let b = compress(p, bits, &mut z);
        assert!(
            !z.ends_with(&TAIL) || p.is_empty(),
            "tail removed (RFC 7692 §7.2.1)"
        );
        assert_eq!(inflate_message(&z, 1 << 24).unwrap(), p, "{b:?} {bits}");
        let bound = p.len() + 5 * p.len().div_ceil(65535) + 1;
        assert!(z.len() <= bound, "{} > {bound}", z.len());
        (z, b)
    }

    fn noise(len: usize, mut x: u32) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn fixed_codes_are_those_of_rfc_1951() {
        // §3.2.6: literal 0 is 00110000, 144 is 110010000, 256 is 0000000,
        // 280 is 11000000 (written here bit-reversed).
        let lens = FIXED_LIT_LENS;
        let codes = FIXED_LIT_CODES;
        let mut built = [0u16; 288];
        let all: Vec<u16> = (0..288).collect();
        canonical_used(&lens, &all, &mut built);
        assert_eq!(built, codes, "the same at compile time as at run time");
        assert_eq!((codes[0], lens[0]), (reverse(0b0011_0000, 8), 8));
        assert_eq!((codes[143], lens[143]), (reverse(0b1011_1111, 8), 8));
        assert_eq!((codes[144], lens[144]), (reverse(0b1_1001_0000, 9), 9));
        assert_eq!((codes[256], lens[256]), (0, 7));
        assert_eq!((codes[280], lens[280]), (reverse(0b1100_0000, 8), 8));
        // §3.2.5: the length and distance codes.
        assert_eq!(LEN_CODE[3], 0);
        assert_eq!(LEN_CODE[10], 7);
        assert_eq!(LEN_CODE[11], 8);
        assert_eq!(LEN_CODE[12], 8);
        assert_eq!(LEN_CODE[257], 27);
        assert_eq!(LEN_CODE[258], 28);
        for d in 1..=32768 {
            let c = dist_code(d);
            assert!(usize::from(DIST_BASE[c]) <= d);
            assert!(d - usize::from(DIST_BASE[c]) < 1 << DIST_EXTRA[c], "{d}");
        }
    }

    #[test]
    fn a_short_chat_message_is_one_huffman_block() {
        let p = br#"{"type":"message","room":"general","id":1,"from":"alice","text":"hi all","ts":1763780000000,"ref":"c1"}"#;
        let (z, b) = round_trip(p, 15);
        // BFINAL 0 (§3.2.3), then BTYPE 01 or 10.
        let btype = match b {
            Block::Fixed => 0b010,
            Block::Dynamic => 0b100,
            Block::Stored => panic!("stored"),
        };
        assert_eq!(z[0] & 0b111, btype);
        assert!(z.len() < p.len() * 9 / 10, "{}", z.len());
        // The same bytes every time: no state is kept between messages.
        let (z2, _) = round_trip(p, 15);
        assert_eq!(z, z2);
    }

    #[test]
    fn the_empty_message_and_tiny_ones() {
        let (z, b) = round_trip(b"", 15);
        assert_eq!((z.as_slice(), b), (&[0u8][..], Block::Stored));
        for p in [&b"a"[..], b"ab", b"abc", b"aaaa", b"\x00\xff"] {
            round_trip(p, 15);
        }
    }

    #[test]
    fn noise_goes_stored_and_repetition_compresses() {
        for len in [100, 1000, 65535, 65536, 70000] {
            let (_, b) = round_trip(&noise(len, 7), 15);
            assert_eq!(b, Block::Stored, "{len}");
        }
        let (z, _) = round_trip(&vec![b'x'; 100_000], 15);
        assert!(z.len() < 1000, "{}", z.len());
        // Every match length, 3 to 258, and some across the window.
        for len in 3..=260 {
            let mut p = noise(300, len as u32);
            p.extend_from_within(..len);
            round_trip(&p, 15);
        }
    }

    #[test]
    fn no_match_reaches_past_the_window() {
        // Noise repeated 1000 bytes later: a 15-bit window finds it, a 9-bit
        // one (512 bytes, RFC 7692 §7.1.2.1) must not.
        let block = noise(1000, 99);
        let twice = [&block[..], &block[..]].concat();
        let (wide, _) = round_trip(&twice, 15);
        let (narrow, b) = round_trip(&twice, 9);
        assert!(wide.len() < 1100, "{}", wide.len());
        assert_eq!(b, Block::Stored);
        assert!(narrow.len() > 2000);
        // 400 bytes apart: within 512, found.
        let close = [&block[..400], &block[..400]].concat();
        let (z, _) = round_trip(&close, 9);
        assert!(z.len() < 450, "{}", z.len());
        let mut s = Scratch::new();
        lz77(&twice, 512, &mut s);
        assert!(s.tokens.iter().all(|&t| literal(t) || (t & 0xffff) <= 512));
    }

    #[test]
    fn dynamic_codes_where_they_pay() {
        // Long English-like text with a skewed alphabet: a code of its own
        // beats the fixed one.
        let text: Vec<u8> = (0..4000)
            .map(|i: u32| b"etaoin shrdlu"[(i.wrapping_mul(2_654_435_761) >> 28) as usize % 13])
            .collect();
        let (z, b) = round_trip(&text, 15);
        assert_eq!(b, Block::Dynamic);
        assert!(z.len() < 2000, "{}", z.len());
        // A skew deep enough to need the length limit of 15 bits (§3.2.7):
        // Fibonacci frequencies give a tree 20 deep.
        let mut p = Vec::new();
        let (mut a, mut c) = (1usize, 1usize);
        for s in 0..22u8 {
            p.extend(std::iter::repeat_n(s * 11, a));
            (a, c) = (c, a + c);
        }
        let mut x = 5u32;
        for i in (1..p.len()).rev() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            p.swap(i, x as usize % (i + 1));
        }
        round_trip(&p, 15);
        let mut freq = [0u32; 286];
        for (i, f) in freq.iter_mut().enumerate().take(25) {
            *f = [
                1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181,
                6765, 10946, 17711, 28657, 46368, 75025,
            ][i];
        }
        let mut lens = [0u8; 286];
        huffman_lengths(&freq, 15, &mut lens, &mut Huff::new());
        assert!(lens.iter().all(|&l| l <= 15));
        let kraft: u64 = lens
            .iter()
            .filter(|&&l| l > 0)
            .map(|&l| 1u64 << (15 - l))
            .sum();
        assert_eq!(kraft, 1 << 15, "a complete code");
    }
    #[test]
    fn tables_kept_between_messages_give_what_fresh_ones_do() {
        // The kept hash table still holds the earlier message's positions
        // (not cleared, RFC 7692 §7.2.1 still wants each message from an
        // empty window): the same bytes as with fresh tables, and no match
        // into the earlier message.
        let a = [&noise(2000, 3)[..], &noise(2000, 3)[..]].concat();
        let b = [&a[..1500], &a[..1500]].concat();
        let mut kept = Scratch::new();
        for p in [&a[..], &b[..], &a[..100], b"", &a[..3], &b[..]] {
            let (mut z1, mut z2) = (Vec::new(), Vec::new());
            compress_with(p, 15, &mut z1, &mut kept);
            compress_with(p, 15, &mut z2, &mut Scratch::new());
            assert_eq!(z1, z2, "{} bytes", p.len());
            assert_eq!(inflate_message(&z1, 1 << 24).unwrap(), p);
        }
        // Through the thread's tables, and after they are freed.
        let (z, _) = round_trip(&b, 15);
        release_scratch();
        assert_eq!(round_trip(&b, 15).0, z);
    }

    #[test]
    fn positions_wrapping_reset_the_table() {
        let p = [&noise(500, 11)[..], &noise(500, 11)[..]].concat();
        let mut s = Scratch::new();
        let mut want = Vec::new();
        compress_with(&p, 15, &mut want, &mut Scratch::new());
        for _ in 0..3 {
            // Room for this message's positions: kept, counted on.
            s.base = u32::MAX - 1500;
            let mut z = Vec::new();
            compress_with(&p, 15, &mut z, &mut s);
            assert_eq!(z, want);
            assert_eq!(s.base, u32::MAX - 500);
            // No room: the table is cleared and counting starts again.
            let mut z = Vec::new();
            compress_with(&p, 15, &mut z, &mut s);
            assert_eq!(z, want);
            assert_eq!(s.base, 1000, "reset, then counted from 0");
        }
    }

    #[test]
    fn codes_built_without_a_general_sort_are_the_reference_ones() {
        // sort_keys (insertion below 33 keys, radix above) against the
        // library sort, and canonical_used against canonical_const, over
        // alphabets of every size and frequencies past one radix digit.
        let mut x = 1u32;
        for k in [2usize, 5, 32, 33, 100, 286] {
            for scale in [1u32, 300, 70_000] {
                let mut freq = [0u32; 286];
                for f in freq.iter_mut().take(k) {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    *f = 1 + x % scale;
                }
                let mut keys: Vec<u64> = (0..286)
                    .filter(|&s| freq[s] > 0)
                    .map(|s| u64::from(freq[s]) << 9 | s as u64)
                    .collect();
                let mut want = keys.clone();
                want.sort_unstable();
                sort_keys(&mut keys, &mut [0; 286]);
                assert_eq!(keys, want, "{k} {scale}");

                let mut work = Huff::new();
                let mut lens = [0u8; 286];
                let bits = huffman_lengths(&freq, 15, &mut lens, &mut work);
                let direct: usize = (0..286)
                    .map(|s| freq[s] as usize * usize::from(lens[s]))
                    .sum();
                assert_eq!(bits, direct);
                let mut b = [0u16; 286];
                canonical_used(&lens, &work.used[..work.nused], &mut b);
                assert_eq!(canonical_const(&lens), b, "{k} {scale}");
            }
        }
    }
}
