//! A DEFLATE encoder (RFC 1951) of our own for short messages, sans-IO.
//!
//! Why: wschat compresses every message from a fresh state
//! (`server_no_context_takeover`, RFC 7692 §7.1.1.1), and zlib clears its
//! 128 KiB hash table for each one: about 11 µs, against well under a
//! microsecond for the compression of a chat message itself. This encoder
//! sizes its hash table to the message (256 entries for a 64-byte one), so a
//! fresh state costs next to nothing. `deflate::compress` uses it up to
//! [`super::deflate::SHORT_MAX`] bytes and zlib above.
//!
//! What it does: LZ77 with hash chains and one step of lazy matching
//! (RFC 1951 §4), then one block of the fixed Huffman codes (§3.2.6) or of
//! codes built for the message (§3.2.7), or stored blocks (§3.2.4),
//! whichever is shortest, and the end a sync flush has (RFC 7692 §7.2.1).

use super::deflate::stored;

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
    let mut r = 0u16;
    let mut i = 0;
    while i < len {
        r |= ((code >> i) & 1) << (len - 1 - i);
        i += 1;
    }
    r
}

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
/// the writer. Lengths of 0 get no code.
fn canonical(lens: &[u8], codes: &mut [u16]) {
    let mut count = [0u16; 16];
    for &l in lens {
        count[usize::from(l)] += 1;
    }
    count[0] = 0;
    let mut next = [0u16; 16];
    let mut code = 0u16;
    for bits in 1..16 {
        code = (code + count[bits - 1]) << 1;
        next[bits] = code;
    }
    for (c, &l) in codes.iter_mut().zip(lens) {
        if l > 0 {
            *c = reverse(next[usize::from(l)], l);
            next[usize::from(l)] += 1;
        }
    }
}

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

/// The match finder's state for one message: hash chains of 3-byte
/// prefixes (RFC 1951 §4), positions stored + 1 (0: none).
struct Chains<'a> {
    data: &'a [u8],
    bits: u32,
    head: Vec<u32>,
    prev: Vec<u32>,
    max_dist: usize,
}

impl Chains<'_> {
    fn insert(&mut self, i: usize) {
        let d = self.data;
        if i + MIN_MATCH <= d.len() {
            let k = u32::from(d[i]) | u32::from(d[i + 1]) << 8 | u32::from(d[i + 2]) << 16;
            let h = (k.wrapping_mul(0x9E37_79B1) >> (32 - self.bits)) as usize;
            self.prev[i] = self.head[h];
            self.head[h] = i as u32 + 1;
        }
    }

    /// The longest match for position `i` (inserted already) among `limit`
    /// earlier positions with its hash: (length, distance), or (0, 0).
    fn longest(&self, i: usize, limit: usize) -> (usize, usize) {
        let d = self.data;
        let max_len = MAX_MATCH.min(d.len() - i);
        if max_len < MIN_MATCH {
            return (0, 0);
        }
        let (mut best, mut best_dist) = (MIN_MATCH - 1, 0);
        let mut c = self.prev[i] as usize;
        let mut steps = 0;
        while c != 0 && steps < limit {
            let p = c - 1;
            let dist = i - p;
            // RFC 7692 §7.1.2.1: never further back than the agreed window.
            if dist > self.max_dist {
                break;
            }
            if d[p + best] == d[i + best] {
                let l = d[p..p + max_len]
                    .iter()
                    .zip(&d[i..i + max_len])
                    .take_while(|(a, b)| a == b)
                    .count();
                if l > best {
                    (best, best_dist) = (l, dist);
                    if l >= max_len.min(NICE_MATCH) {
                        break;
                    }
                }
            }
            c = self.prev[p] as usize;
            steps += 1;
        }
        if best_dist == 0 {
            (0, 0)
        } else {
            (best, best_dist)
        }
    }
}

/// LZ77 over `data` (RFC 1951 §4), no match reaching further back than
/// `max_dist`. Greedy with one step of lazy evaluation, as zlib's levels
/// 4–9 do: a match is taken only if the next position has no longer one.
fn lz77(data: &[u8], max_dist: usize, tokens: &mut Vec<Token>) {
    let n = data.len();
    if n < MIN_MATCH {
        tokens.extend(data.iter().map(|&b| Token::from(b)));
        return;
    }
    let bits = (usize::BITS - (n - 1).leading_zeros()).clamp(MIN_HASH_BITS, MAX_HASH_BITS);
    // Sized to the message, so a fresh table is cheap: the point of this
    // encoder.
    let mut ch = Chains {
        data,
        bits,
        head: vec![0; 1 << bits],
        prev: vec![0; n],
        max_dist,
    };
    // The match found at i - 1 (length 0: none), kept while the one at i is
    // looked at.
    let mut pending: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < n {
        ch.insert(i);
        let cur = match pending {
            Some((l, _)) if l >= NICE_MATCH => (0, 0),
            // A match in hand: fewer candidates for a better one.
            Some((l, _)) if l >= MIN_MATCH => ch.longest(i, MAX_CHAIN / 4),
            _ => ch.longest(i, MAX_CHAIN),
        };
        match pending {
            Some((plen, pdist)) if plen >= MIN_MATCH && cur.0 <= plen => {
                tokens.push((plen as u32) << 16 | pdist as u32);
                // The match started at i - 1; i is in the table already.
                for j in i + 1..i - 1 + plen {
                    ch.insert(j);
                }
                i = i - 1 + plen;
                pending = None;
            }
            _ => {
                if pending.is_some() {
                    tokens.push(Token::from(data[i - 1]));
                }
                pending = Some(cur);
                i += 1;
            }
        }
    }
    // What is pending refers to n - 1, where no match fits: a literal.
    if pending.is_some() {
        tokens.push(Token::from(data[n - 1]));
    }
}

/// Symbol frequencies of the literal/length and distance alphabets.
fn count(tokens: &[Token]) -> ([u32; 286], [u32; 30]) {
    let mut lit = [0u32; 286];
    let mut dist = [0u32; 30];
    for &t in tokens {
        if literal(t) {
            lit[t as usize] += 1;
        } else {
            lit[257 + usize::from(LEN_CODE[(t >> 16) as usize])] += 1;
            dist[dist_code((t & 0xffff) as usize)] += 1;
        }
    }
    lit[256] = 1; // end of block
    (lit, dist)
}

/// Bits the symbols take under code lengths `lit_lens`, `dist_lens`,
/// extra bits included.
fn cost(lit: &[u32; 286], dist: &[u32; 30], lit_lens: &[u8], dist_lens: &[u8]) -> usize {
    let mut bits = 0usize;
    for (s, &f) in lit.iter().enumerate() {
        let extra = if s > 256 { LEN_EXTRA[s - 257] } else { 0 };
        bits += f as usize * usize::from(lit_lens[s] + extra);
    }
    for (s, &f) in dist.iter().enumerate() {
        bits += f as usize * usize::from(dist_lens[s] + DIST_EXTRA[s]);
    }
    bits
}

/// Huffman code lengths for `freq`, none longer than `max_bits` (§3.2.7:
/// 15 for literals/lengths and distances, 7 for the code length codes).
/// Package-merge would be optimal; this builds the plain Huffman tree and,
/// should it be too deep, flattens it by the heuristic zlib's `gen_bitlen`
/// uses, which stays a valid prefix code (the Kraft sum is kept at 1).
fn huffman_lengths(freq: &[u32], max_bits: u8, lens: &mut [u8]) {
    lens.iter_mut().for_each(|l| *l = 0);
    let mut syms: Vec<usize> = (0..freq.len()).filter(|&s| freq[s] > 0).collect();
    match syms.len() {
        // No symbol (a block without distances): two one-bit codes all
        // the same, as zlib sends (some inflaters want at least one code).
        0 => {
            lens[0] = 1;
            lens[1] = 1;
            return;
        }
        // A single symbol still needs a one-bit code (and a second one so
        // the code is complete, which inflaters such as zlib accept).
        1 => {
            lens[syms[0]] = 1;
            lens[if syms[0] == 0 { 1 } else { 0 }] = 1;
            return;
        }
        _ => {}
    }
    // The tree over the used symbols: nodes 0..k leaves, then internal.
    syms.sort_by_key(|&s| (freq[s], s));
    let k = syms.len();
    let mut weight: Vec<u64> = syms.iter().map(|&s| u64::from(freq[s])).collect();
    let mut parent = vec![0usize; 2 * k - 1];
    // Two queues (leaves sorted, internal nodes made in order of weight).
    let (mut leaf, mut node) = (0usize, k);
    let take = |weight: &Vec<u64>, leaf: &mut usize, node: &mut usize, made: usize| {
        if *leaf < k && (*node >= made || weight[*leaf] <= weight[*node]) {
            *leaf += 1;
            *leaf - 1
        } else {
            *node += 1;
            *node - 1
        }
    };
    for made in k..2 * k - 1 {
        let a = take(&weight, &mut leaf, &mut node, made);
        let b = take(&weight, &mut leaf, &mut node, made);
        weight.push(weight[a] + weight[b]);
        parent[a] = made;
        parent[b] = made;
    }
    // Depths, from the root down.
    let mut depth = vec![0usize; 2 * k - 1];
    for i in (0..2 * k - 2).rev() {
        depth[i] = depth[parent[i]] + 1;
    }
    // Leaves deeper than max_bits are cut to it, and the Kraft sum brought
    // back to exactly 1 (zlib's inflater refuses an incomplete code) as
    // miniz does: a leaf at max_bits goes, a shorter one moves down a level
    // beside it, the number of leaves unchanged.
    let max = usize::from(max_bits);
    let mut bl_count = [0u32; 16];
    for &d in &depth[..k] {
        bl_count[d.min(max)] += 1;
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
    // Lengths to symbols: the rarest get the longest codes.
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(depth[i]), weight[i], i));
    let mut it = order.iter();
    for bits in (1..=max).rev() {
        for _ in 0..bl_count[bits] {
            if let Some(&i) = it.next() {
                lens[syms[i]] = bits as u8;
            }
        }
    }
}

/// §3.2.7: the order in which the code length code lengths are sent.
const CL_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// The code lengths of both alphabets, run-length coded (§3.2.7: 16 repeats
/// the previous length 3–6 times, 17 zeros 3–10 times, 18 zeros 11–138
/// times), as (symbol, extra bits value).
fn rle(lens: &[u8], out: &mut Vec<(u8, u8)>) {
    let mut i = 0;
    while i < lens.len() {
        let l = lens[i];
        let run = lens[i..].iter().take_while(|&&x| x == l).count();
        if l == 0 && run >= 11 {
            let r = run.min(138);
            out.push((18, (r - 11) as u8));
            i += r;
        } else if l == 0 && run >= 3 {
            out.push((17, (run - 3) as u8));
            i += run;
        } else if l != 0 && run >= 4 {
            out.push((l, 0));
            let mut left = run - 1;
            while left >= 3 {
                let r = left.min(6);
                out.push((16, (r - 3) as u8));
                left -= r;
            }
            i += run - left;
        } else {
            out.push((l, 0));
            i += 1;
        }
    }
}

const CL_EXTRA: [u32; 19] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 3, 7];

/// A dynamic block's code: lengths of both alphabets and the header that
/// sends them (§3.2.7).
struct Dynamic {
    lit_lens: [u8; 286],
    dist_lens: [u8; 30],
    hlit: usize,
    hdist: usize,
    cl_lens: [u8; 19],
    hclen: usize,
    cl: Vec<(u8, u8)>,
    header_bits: usize,
}

fn dynamic(lit: &[u32; 286], dist: &[u32; 30]) -> Dynamic {
    let mut lit_lens = [0u8; 286];
    let mut dist_lens = [0u8; 30];
    huffman_lengths(lit, 15, &mut lit_lens);
    huffman_lengths(dist, 15, &mut dist_lens);
    // §3.2.7: HLIT 257..286 codes, HDIST 1..32 (one distance code of zero
    // bits says "no distances").
    let hlit = 257.max(286 - lit_lens.iter().rev().take_while(|&&l| l == 0).count());
    let hdist = 1.max(30 - dist_lens.iter().rev().take_while(|&&l| l == 0).count());
    let mut all = Vec::with_capacity(hlit + hdist);
    all.extend_from_slice(&lit_lens[..hlit]);
    all.extend_from_slice(&dist_lens[..hdist]);
    let mut cl = Vec::new();
    rle(&all, &mut cl);
    let mut cl_freq = [0u32; 19];
    for &(s, _) in &cl {
        cl_freq[usize::from(s)] += 1;
    }
    let mut cl_lens = [0u8; 19];
    huffman_lengths(&cl_freq, 7, &mut cl_lens);
    let hclen = 4.max(
        19 - CL_ORDER
            .iter()
            .rev()
            .take_while(|&&s| cl_lens[s] == 0)
            .count(),
    );
    let header_bits = 5
        + 5
        + 4
        + 3 * hclen
        + cl.iter()
            .map(|&(s, _)| usize::from(cl_lens[usize::from(s)]) + CL_EXTRA[usize::from(s)] as usize)
            .sum::<usize>();
    Dynamic {
        lit_lens,
        dist_lens,
        hlit,
        hdist,
        cl_lens,
        hclen,
        cl,
        header_bits,
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
            w.put(
                u32::from(lit_codes[257 + lc]),
                u32::from(lit_lens[257 + lc]),
            );
            w.put(
                (len - usize::from(LEN_BASE[lc])) as u32,
                u32::from(LEN_EXTRA[lc]),
            );
            let dc = dist_code(d);
            w.put(u32::from(dist_codes[dc]), u32::from(dist_lens[dc]));
            w.put(
                (d - usize::from(DIST_BASE[dc])) as u32,
                u32::from(DIST_EXTRA[dc]),
            );
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
    let n = payload.len();
    let stored_bytes = n + 5 * n.div_ceil(usize::from(u16::MAX)) + 1;
    let mut tokens = Vec::with_capacity(n);
    lz77(payload, 1 << window_bits.clamp(8, 15), &mut tokens);
    let (lit, dist) = count(&tokens);

    let mut fixed_lens = [0u8; 288];
    for (s, l) in fixed_lit_len_table().iter().zip(fixed_lens.iter_mut()) {
        *l = *s;
    }
    let fixed_dist_lens = [5u8; 30];
    let fixed_bits = cost(&lit, &dist, &fixed_lens, &fixed_dist_lens);
    // Below a few hundred symbols a code table rarely pays for itself.
    let dy = (tokens.len() > 48).then(|| dynamic(&lit, &dist));
    let dynamic_bits = dy.as_ref().map_or(usize::MAX, |d| {
        d.header_bits + cost(&lit, &dist, &d.lit_lens, &d.dist_lens)
    });
    // Block header (3 bits), the symbols, then the empty stored block's
    // header (3 bits) and its padding.
    let bytes = |bits: usize| (3 + bits + 3).div_ceil(8);
    let block = if bytes(fixed_bits.min(dynamic_bits)) >= stored_bytes {
        Block::Stored
    } else if dynamic_bits < fixed_bits {
        Block::Dynamic
    } else {
        Block::Fixed
    };

    out.reserve(stored_bytes.min(bytes(fixed_bits.min(dynamic_bits))));
    let mut w = BitWriter { out, acc: 0, n: 0 };
    match (block, dy) {
        (Block::Stored, _) | (Block::Dynamic, None) => {
            stored(payload, w.out);
            return Block::Stored;
        }
        (Block::Fixed, _) => {
            // §3.2.3: BFINAL 0 (a sync flush ends no stream), BTYPE 01.
            w.put(0b010, 3);
            let mut lit_codes = [0u16; 288];
            canonical(&fixed_lens, &mut lit_codes);
            let mut dist_codes = [0u16; 30];
            canonical(&fixed_dist_lens, &mut dist_codes);
            put_tokens(
                &mut w,
                &tokens,
                &lit_codes,
                &fixed_lens,
                &dist_codes,
                &fixed_dist_lens,
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
            let mut cl_codes = [0u16; 19];
            canonical(&d.cl_lens, &mut cl_codes);
            for &(s, extra) in &d.cl {
                let s = usize::from(s);
                w.put(u32::from(cl_codes[s]), u32::from(d.cl_lens[s]));
                w.put(u32::from(extra), CL_EXTRA[s]);
            }
            let mut lit_codes = [0u16; 286];
            canonical(&d.lit_lens, &mut lit_codes);
            let mut dist_codes = [0u16; 30];
            canonical(&d.dist_lens, &mut dist_codes);
            put_tokens(
                &mut w,
                &tokens,
                &lit_codes,
                &d.lit_lens,
                &dist_codes,
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

fn fixed_lit_len_table() -> [u8; 288] {
    let mut t = [0u8; 288];
    for (s, l) in t.iter_mut().enumerate() {
        *l = fixed_lit_len(s);
    }
    t
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
        let lens = fixed_lit_len_table();
        let mut codes = [0u16; 288];
        canonical(&lens, &mut codes);
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
        let mut toks = Vec::new();
        lz77(&twice, 512, &mut toks);
        assert!(toks.iter().all(|&t| literal(t) || (t & 0xffff) <= 512));
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
        huffman_lengths(&freq, 15, &mut lens);
        assert!(lens.iter().all(|&l| l <= 15));
        let kraft: u64 = lens
            .iter()
            .filter(|&&l| l > 0)
            .map(|&l| 1u64 << (15 - l))
            .sum();
        assert_eq!(kraft, 1 << 15, "a complete code");
    }
}
