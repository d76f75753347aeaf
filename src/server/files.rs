//! The files served over plain HTTP: the web client built into the binary,
//! or a `--static-dir`, whose small files are cached (shared by every
//! response) and whose large ones are streamed in bounded chunks as the
//! socket drains. Nothing here holds a file's bytes per connection beyond
//! one chunk, and no turn of the loop reads more than `READ_PER_TURN` bytes
//! of files, however many clients ask at once.

use super::http::{self, StaticError};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::SystemTime;

/// A file of the built-in web client, gzipped by build.rs: the only copy
/// in the binary (every browser takes gzip; the file as is and a brotli
/// copy were 0.23 MiB of it).
pub struct Asset {
    pub name: &'static str,
    /// A hash of the file: the ETag of its uncompressed copy, unquoted.
    pub etag: &'static str,
    /// The file's length uncompressed.
    pub len: usize,
    pub gzip: &'static [u8],
}

/// The web client, built into the binary so that one file is all a user
/// copies to a Raspberry Pi. Static memory: every response points at it.
const EMBEDDED: &[Asset] = include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// Largest file kept in the cache; larger ones are streamed.
const MAX_CACHED_FILE: u64 = 1 << 20;
/// What a cache entry costs besides its bytes (its name, its bookkeeping),
/// so that many empty files cannot grow the cache without bound.
const ENTRY_OVERHEAD: usize = 256;
/// Bytes of files read from disk per loop turn, all connections together.
const READ_PER_TURN: usize = 1 << 20;
/// Largest piece of a streamed file read at once.
pub const STREAM_CHUNK: usize = 64 * 1024;

/// A file's bytes, as a response carries them.
#[derive(Debug)]
pub enum Content {
    /// Compiled into the binary.
    Static(&'static [u8]),
    /// A file of the built-in client as is (index into the client's
    /// files): inflated from its gzip copy by `StaticFiles::identity`.
    Embedded(usize),
    /// In the cache, shared with every other response of the same file.
    Shared(Rc<[u8]>),
    /// Too large to cache (or no budget left): read as the socket drains.
    Stream(FileStream),
}

/// A file found for a request path.
#[derive(Debug)]
pub struct Found {
    pub content: Content,
    pub len: u64,
    pub content_type: &'static str,
    /// Names this version of the file (its uncompressed bytes), unquoted:
    /// a hash for the built-in client, time and length for `--static-dir`.
    pub tag: String,
    /// The gzip copy (the built-in client's).
    pub gzip: Option<&'static [u8]>,
}

/// The rest of a file still to be sent.
#[derive(Debug)]
pub struct FileStream {
    file: File,
    left: u64,
}

impl FileStream {
    pub fn is_done(&self) -> bool {
        self.left == 0
    }

    /// The length of the next piece, at most `max`.
    pub fn next_len(&self, max: usize) -> usize {
        usize::try_from(self.left).unwrap_or(usize::MAX).min(max)
    }

    /// Reads the next piece, at most `max` bytes. A file that shrank since
    /// its length was announced is an error: the response cannot be
    /// completed, and the connection has to end short.
    pub fn read_chunk(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let n = self.next_len(max);
        let mut buf = vec![0; n];
        self.file.read_exact(&mut buf)?;
        self.left -= n as u64;
        Ok(buf)
    }
}

#[derive(Debug)]
struct Entry {
    modified: Option<SystemTime>,
    bytes: Rc<[u8]>,
    last_used: u64,
}

impl Entry {
    fn cost(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD
    }
}

#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<PathBuf, Entry>,
    used: usize,
    clock: u64,
}

/// Where files come from, and the cache of `--static-dir`.
#[derive(Debug)]
pub struct StaticFiles {
    dir: Option<PathBuf>,
    budget: usize,
    cache: RefCell<Cache>,
    /// File bytes that may still be read from disk in this loop turn.
    turn_left: Cell<usize>,
    /// The built-in client's files inflated, each the first time a client
    /// that takes no gzip asks for it, then shared by every response: at
    /// most the client's size (0.19 MiB), whoever asks.
    inflated: RefCell<Vec<Option<Rc<[u8]>>>>,
}

impl StaticFiles {
    /// `dir`: the `--static-dir`, or `None` for the built-in client;
    /// `budget`: bytes the cache may hold (`--static-cache-size`).
    pub fn new(dir: Option<PathBuf>, budget: usize) -> StaticFiles {
        StaticFiles {
            dir,
            budget,
            cache: RefCell::new(Cache::default()),
            turn_left: Cell::new(READ_PER_TURN),
            inflated: RefCell::new(vec![None; EMBEDDED.len()]),
        }
    }

    /// A built-in file as is (`Content::Embedded`), inflated from its gzip
    /// copy the first time; `None` should that copy not inflate to its
    /// length (it is the build's own, so never).
    pub fn identity(&self, i: usize) -> Option<Rc<[u8]>> {
        let asset = EMBEDDED.get(i)?;
        let mut inflated = self.inflated.borrow_mut();
        let slot = inflated.get_mut(i)?;
        if let Some(b) = slot {
            return Some(Rc::clone(b));
        }
        let mut out = Vec::with_capacity(asset.len);
        flate2::read::GzDecoder::new(asset.gzip)
            .take(asset.len as u64 + 1)
            .read_to_end(&mut out)
            .ok()?;
        if out.len() != asset.len {
            return None;
        }
        let b: Rc<[u8]> = out.into();
        *slot = Some(Rc::clone(&b));
        Some(b)
    }

    /// A new loop turn: its budget of file reads starts again.
    pub fn new_turn(&self) {
        self.turn_left.set(READ_PER_TURN);
    }

    /// Takes `n` bytes of this turn's read budget, if that many are left.
    pub fn take_read_budget(&self, n: usize) -> bool {
        let left = self.turn_left.get();
        if left < n {
            return false;
        }
        self.turn_left.set(left - n);
        true
    }

    /// Bytes held by the cache, entries' overhead included.
    #[cfg(test)]
    pub fn cached_bytes(&self) -> usize {
        self.cache.borrow().used
    }

    /// Looks a request path up in the built-in client, or under the static
    /// directory.
    pub fn lookup(&self, path: &str) -> Result<Found, StaticError> {
        let name = http::file_name(path)?;
        let content_type = http::content_type(&name);
        let Some(dir) = self.dir.as_deref() else {
            return EMBEDDED
                .iter()
                .position(|a| a.name == name)
                .map(|i| Found {
                    content: Content::Embedded(i),
                    len: EMBEDDED[i].len as u64,
                    content_type,
                    tag: EMBEDDED[i].etag.to_string(),
                    gzip: Some(EMBEDDED[i].gzip),
                })
                .ok_or(StaticError::NotFound);
        };
        let full = resolve(dir, &name)?;
        let file = File::open(&full).map_err(open_failure)?;
        // The length and time of the file opened, not of whatever the path
        // names a moment later.
        let meta = file.metadata().map_err(|_| StaticError::NotFound)?;
        if !meta.is_file() {
            return Err(StaticError::NotFound);
        }
        let len = meta.len();
        let modified = meta.modified().ok();
        let nanos = modified
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let tag = format!("{nanos:x}-{len:x}");
        let content = match self.cached(&full, len, modified, file) {
            Ok(bytes) => Content::Shared(bytes),
            Err(file) => Content::Stream(FileStream { file, left: len }),
        };
        Ok(Found {
            content,
            len,
            content_type,
            tag,
            gzip: None,
        })
    }

    /// The file's bytes from the cache, loaded into it if they fit; the
    /// file back when it is to be streamed instead.
    fn cached(
        &self,
        full: &Path,
        len: u64,
        modified: Option<SystemTime>,
        mut file: File,
    ) -> Result<Rc<[u8]>, File> {
        let mut cache = self.cache.borrow_mut();
        cache.clock += 1;
        let clock = cache.clock;
        if let Some(e) = cache.entries.get_mut(full) {
            if e.modified == modified && e.bytes.len() as u64 == len && modified.is_some() {
                e.last_used = clock;
                return Ok(Rc::clone(&e.bytes));
            }
            // Changed on disk: forget the old copy (responses still
            // sending it keep theirs).
            if let Some(old) = cache.entries.remove(full) {
                cache.used -= old.cost();
            }
        }
        let cost = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_CACHED_FILE
            || modified.is_none()
            || cost + ENTRY_OVERHEAD > self.budget
            || !cache.make_room(cost + ENTRY_OVERHEAD, self.budget)
            || !self.take_read_budget(cost)
        {
            return Err(file);
        }
        let mut bytes = Vec::with_capacity(cost);
        match (&mut file).take(len).read_to_end(&mut bytes) {
            Ok(n) if n as u64 == len => {}
            _ => return Err(file),
        }
        let entry = Entry {
            modified,
            bytes: Rc::from(bytes),
            last_used: clock,
        };
        let shared = Rc::clone(&entry.bytes);
        cache.used += entry.cost();
        cache.entries.insert(full.to_path_buf(), entry);
        Ok(shared)
    }
}

impl Cache {
    /// Evicts the least recently used entries that no response is sending
    /// until `need` more bytes fit; false if they cannot be made to fit.
    /// An entry still being sent stays: its bytes are in memory anyway, and
    /// dropping it from the count would let the cache hold more than its
    /// budget.
    fn make_room(&mut self, need: usize, budget: usize) -> bool {
        while self.used + need > budget {
            let victim = self
                .entries
                .iter()
                .filter(|(_, e)| Rc::strong_count(&e.bytes) == 1)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(p, _)| p.clone());
            let Some(p) = victim else { return false };
            if let Some(e) = self.entries.remove(&p) {
                self.used -= e.cost();
            }
        }
        true
    }
}

/// The file `name` (already checked by [`http::file_name`]) under `dir`,
/// with symlinks resolved: the result must still lie inside the directory
/// and, below it, name no dot-file (a link to `.env` is as secret as `.env`).
fn resolve(dir: &Path, name: &str) -> Result<PathBuf, StaticError> {
    let root = dir.canonicalize().map_err(|_| StaticError::NotFound)?;
    let full = root
        .join(name)
        .canonicalize()
        .map_err(|_| StaticError::NotFound)?;
    let rel = full
        .strip_prefix(&root)
        .map_err(|_| StaticError::Forbidden)?;
    let rel = rel.to_str().ok_or(StaticError::NotFound)?;
    http::check_dot_components(rel)?;
    Ok(full)
}

fn open_failure(e: io::Error) -> StaticError {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => StaticError::Busy,
        _ => StaticError::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_files_are_found() {
        let files = StaticFiles::new(None, 0);
        assert!(files.lookup("/").is_ok());
        assert!(files.lookup("/app.js").is_ok());
        assert!(files.lookup("/nope").is_err());
        let Ok(Found {
            content: Content::Embedded(i),
            len,
            ..
        }) = files.lookup("/index.html")
        else {
            panic!("index.html is not the built-in one");
        };
        let a = files.identity(i).expect("inflates");
        assert_eq!(&a[..], include_bytes!("../../static/index.html"));
        assert_eq!(a.len() as u64, len);
        let b = files.identity(i).expect("inflates");
        assert!(Rc::ptr_eq(&a, &b), "inflated once, then shared");
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wschat-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn small_files_are_shared_large_ones_streamed() {
        let d = dir("share");
        std::fs::write(d.join("a.txt"), vec![b'a'; 1000]).unwrap();
        std::fs::write(d.join("big.bin"), vec![7u8; (MAX_CACHED_FILE + 1) as usize]).unwrap();
        let files = StaticFiles::new(Some(d.clone()), 1 << 20);
        let (
            Ok(Found {
                content: Content::Shared(x),
                ..
            }),
            Ok(Found {
                content: Content::Shared(y),
                ..
            }),
        ) = (files.lookup("/a.txt"), files.lookup("/a.txt"))
        else {
            panic!("a.txt not cached");
        };
        assert!(Rc::ptr_eq(&x, &y), "one copy for every response");
        assert_eq!(files.cached_bytes(), 1000 + ENTRY_OVERHEAD);
        let Ok(Found {
            content: Content::Stream(mut s),
            len,
            ..
        }) = files.lookup("/big.bin")
        else {
            panic!("big.bin not streamed");
        };
        let mut total = 0;
        while !s.is_done() {
            let c = s.read_chunk(STREAM_CHUNK).unwrap();
            assert!(c.len() <= STREAM_CHUNK);
            total += c.len() as u64;
        }
        assert_eq!(total, len);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_cache_keeps_to_its_budget() {
        let d = dir("budget");
        for i in 0..4 {
            std::fs::write(d.join(format!("{i}.txt")), vec![b'x'; 3000]).unwrap();
        }
        let files = StaticFiles::new(Some(d.clone()), 2 * (3000 + ENTRY_OVERHEAD));
        // Two held by responses in progress: nothing can be evicted for a third.
        let a = files.lookup("/0.txt").unwrap();
        let b = files.lookup("/1.txt").unwrap();
        assert!(matches!(
            files.lookup("/2.txt").unwrap().content,
            Content::Stream(_)
        ));
        assert!(files.cached_bytes() <= 2 * (3000 + ENTRY_OVERHEAD));
        // Once they are sent, the least recently used one makes room.
        drop((a, b));
        assert!(matches!(
            files.lookup("/2.txt").unwrap().content,
            Content::Shared(_)
        ));
        assert!(files.cached_bytes() <= 2 * (3000 + ENTRY_OVERHEAD));
        let _ = std::fs::remove_dir_all(&d);
    }
}
