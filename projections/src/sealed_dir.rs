//! A tantivy [`Directory`] whose files rest sealed (SM4-GCM under a key derived from the master key), so
//! that the search index — enterprise and container ids, province codes, note texts, anomaly descriptions
//! with their weights, in its term dictionary and its stored fields alike — is not readable from the data
//! dir without the master key.
//!
//! - Files written with `open_write` are sealed in blocks of [`BLOCK_BYTES`]: `CSD1`, an 8-byte random
//!   prefix, then each block's ciphertext and tag. Block `i`'s nonce is the prefix and `i`; its associated
//!   data names the file, `i` and whether it is the last block, so blocks cannot be moved, swapped
//!   between files, or cut off the end unnoticed. A read decrypts only the blocks it covers; each open file
//!   keeps its last [`CACHED_BLOCKS_MAX`] decrypted blocks (at most 64 KiB a file).
//! - `meta.json` and `.managed.json` (`atomic_write`) are sealed whole: `CSA1`, a random nonce, the
//!   ciphertext, the file's name as associated data.
//! - Everything else (locks, deletes, watching `meta.json`, syncing) is the wrapped [`MmapDirectory`]'s.
//!
//! A block that fails its tag is an I/O error naming the file: tantivy then refuses the index, and the
//! projection rebuilds it from the log like any lost index.

use std::fmt;
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use custodian_events::crypto::{Entropy, GCM_NONCE_LEN, Sm4GcmKey};
use tantivy::HasLen;
use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    AntiCallToken, Directory, DirectoryLock, FileHandle, FileSlice, Lock, MmapDirectory,
    OwnedBytes, TerminatingWrite, WatchCallback, WatchHandle, WritePtr,
};

/// Plaintext bytes per sealed block.
pub const BLOCK_BYTES: usize = 16 * 1024;
/// Decrypted blocks an open file keeps.
pub const CACHED_BLOCKS_MAX: usize = 4;

const TAG_BYTES: usize = 16;
const SEALED_BLOCK: usize = BLOCK_BYTES + TAG_BYTES;
const FILE_MAGIC: &[u8; 4] = b"CSD1";
const ATOMIC_MAGIC: &[u8; 4] = b"CSA1";
const PREFIX_BYTES: usize = 8;
const FILE_HEADER: usize = 4 + PREFIX_BYTES;

/// The sealing key and where fresh nonces come from.
#[derive(Clone)]
pub struct SealKey {
    key: Sm4GcmKey,
    entropy: Arc<dyn Entropy>,
}

impl SealKey {
    /// From 16 secret bytes (the node derives them from its master key).
    pub fn new(key: &[u8; 16], entropy: Arc<dyn Entropy>) -> SealKey {
        SealKey {
            key: Sm4GcmKey::new(key),
            entropy,
        }
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(..)")
    }
}

/// The sealed directory over an [`MmapDirectory`].
#[derive(Clone, Debug)]
pub struct SealedDirectory {
    inner: MmapDirectory,
    key: SealKey,
}

impl SealedDirectory {
    pub fn new(inner: MmapDirectory, key: SealKey) -> SealedDirectory {
        SealedDirectory { inner, key }
    }
}

fn block_nonce(prefix: &[u8; PREFIX_BYTES], block: u32) -> [u8; GCM_NONCE_LEN] {
    let mut n = [0u8; GCM_NONCE_LEN];
    n[..PREFIX_BYTES].copy_from_slice(prefix);
    n[PREFIX_BYTES..].copy_from_slice(&block.to_be_bytes());
    n
}

fn block_aad(path: &Path, block: u32, last: bool) -> Vec<u8> {
    let mut aad = b"custodian search block v1\0".to_vec();
    aad.extend_from_slice(path.to_string_lossy().as_bytes());
    aad.push(0);
    aad.extend_from_slice(&block.to_be_bytes());
    aad.push(u8::from(last));
    aad
}

fn atomic_aad(path: &Path) -> Vec<u8> {
    let mut aad = b"custodian search file v1\0".to_vec();
    aad.extend_from_slice(path.to_string_lossy().as_bytes());
    aad
}

fn damaged(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "sealed search index file {} {what}: a wrong master key, or damage (the index is rebuilt from the log when its directory is removed)",
            path.display()
        ),
    )
}

/// Seals as it is written: a full block is sealed once more bytes follow it (it is not the last).
struct SealingWriter {
    path: PathBuf,
    key: SealKey,
    prefix: [u8; PREFIX_BYTES],
    block: u32,
    buf: Vec<u8>,
    out: Option<WritePtr>,
}

impl SealingWriter {
    fn seal_block(&mut self, len: usize, last: bool) -> io::Result<()> {
        let sealed = self.key.key.seal(
            &block_nonce(&self.prefix, self.block),
            &block_aad(&self.path, self.block, last),
            &self.buf[..len],
        );
        self.buf.drain(..len);
        self.block += 1;
        self.out
            .as_mut()
            .ok_or_else(|| io::Error::other("written after terminate"))?
            .write_all(&sealed)
    }
}

impl Write for SealingWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        while self.buf.len() > BLOCK_BYTES {
            self.seal_block(BLOCK_BYTES, false)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Only whole blocks can be sealed; the rest waits for more bytes or the end.
        Ok(())
    }
}

impl TerminatingWrite for SealingWriter {
    fn terminate_ref(&mut self, _: AntiCallToken) -> io::Result<()> {
        let len = self.buf.len();
        self.seal_block(len, true)?;
        match self.out.take() {
            Some(out) => out.terminate(),
            None => Ok(()),
        }
    }
}

/// An open sealed file.
struct SealedFile {
    path: PathBuf,
    key: SealKey,
    prefix: [u8; PREFIX_BYTES],
    sealed: FileSlice,
    blocks: usize,
    len: usize,
    cache: Mutex<Vec<(usize, Arc<[u8]>)>>,
}

impl fmt::Debug for SealedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedFile")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl SealedFile {
    fn open(path: &Path, key: SealKey, sealed: FileSlice) -> io::Result<SealedFile> {
        let total = sealed.len();
        if total < FILE_HEADER + TAG_BYTES {
            return Err(damaged(path, "is too short"));
        }
        let header = sealed.slice(0..FILE_HEADER).read_bytes()?;
        if &header.as_slice()[..4] != FILE_MAGIC {
            return Err(damaged(path, "is not sealed"));
        }
        let prefix: [u8; PREFIX_BYTES] = header.as_slice()[4..].try_into().expect("8 bytes");
        let body = total - FILE_HEADER;
        let blocks = body.div_ceil(SEALED_BLOCK);
        let last = body - (blocks - 1) * SEALED_BLOCK;
        if last < TAG_BYTES {
            return Err(damaged(path, "ends inside a block's tag"));
        }
        Ok(SealedFile {
            path: path.to_owned(),
            key,
            prefix,
            sealed,
            blocks,
            len: (blocks - 1) * BLOCK_BYTES + last - TAG_BYTES,
            cache: Mutex::new(Vec::new()),
        })
    }

    fn block(&self, i: usize) -> io::Result<Arc<[u8]>> {
        if let Some((_, b)) = self
            .cache
            .lock()
            .expect("cache lock")
            .iter()
            .find(|(n, _)| *n == i)
        {
            return Ok(b.clone());
        }
        let start = FILE_HEADER + i * SEALED_BLOCK;
        let end = (start + SEALED_BLOCK).min(self.sealed.len());
        let sealed = self.sealed.slice(start..end).read_bytes()?;
        let last = i + 1 == self.blocks;
        let plain = self
            .key
            .key
            .open(
                &block_nonce(&self.prefix, i as u32),
                &block_aad(&self.path, i as u32, last),
                sealed.as_slice(),
            )
            .map_err(|_| damaged(&self.path, &format!("block {i} fails its check")))?;
        let plain: Arc<[u8]> = plain.into();
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= CACHED_BLOCKS_MAX {
            cache.remove(0);
        }
        cache.push((i, plain.clone()));
        Ok(plain)
    }
}

impl HasLen for SealedFile {
    fn len(&self) -> usize {
        self.len
    }
}

impl FileHandle for SealedFile {
    fn read_bytes(&self, range: Range<usize>) -> io::Result<OwnedBytes> {
        if range.start >= range.end {
            return Ok(OwnedBytes::empty());
        }
        if range.end > self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: read past its end", self.path.display()),
            ));
        }
        let (first, last) = (range.start / BLOCK_BYTES, (range.end - 1) / BLOCK_BYTES);
        if first == last {
            let block = self.block(first)?;
            let at = first * BLOCK_BYTES;
            return Ok(OwnedBytes::new(block).slice(range.start - at..range.end - at));
        }
        let mut out = Vec::with_capacity(range.len());
        for i in first..=last {
            let block = self.block(i)?;
            let at = i * BLOCK_BYTES;
            let from = range.start.max(at) - at;
            let to = range.end.min(at + block.len()) - at;
            out.extend_from_slice(&block[from..to]);
        }
        Ok(OwnedBytes::new(out))
    }
}

impl Directory for SealedDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        let sealed = self.inner.open_read(path)?;
        let file = SealedFile::open(path, self.key.clone(), sealed)
            .map_err(|e| OpenReadError::wrap_io_error(e, path.to_owned()))?;
        Ok(Arc::new(file))
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        self.inner.delete(path)
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        self.inner.exists(path)
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        let mut out = self.inner.open_write(path)?;
        let mut prefix = [0u8; PREFIX_BYTES];
        self.key.entropy.fill(&mut prefix);
        out.write_all(FILE_MAGIC)
            .and_then(|()| out.write_all(&prefix))
            .map_err(|e| OpenWriteError::wrap_io_error(e, path.to_owned()))?;
        Ok(io::BufWriter::new(Box::new(SealingWriter {
            path: path.to_owned(),
            key: self.key.clone(),
            prefix,
            block: 0,
            buf: Vec::with_capacity(BLOCK_BYTES + 1),
            out: Some(out),
        })))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        let sealed = self.inner.atomic_read(path)?;
        let bad = |what: &str| OpenReadError::wrap_io_error(damaged(path, what), path.to_owned());
        if sealed.len() < 4 + GCM_NONCE_LEN || &sealed[..4] != ATOMIC_MAGIC {
            return Err(bad("is not sealed"));
        }
        let nonce: [u8; GCM_NONCE_LEN] = sealed[4..4 + GCM_NONCE_LEN].try_into().expect("12 bytes");
        self.key
            .key
            .open(&nonce, &atomic_aad(path), &sealed[4 + GCM_NONCE_LEN..])
            .map_err(|_| bad("fails its check"))
    }

    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut nonce = [0u8; GCM_NONCE_LEN];
        self.key.entropy.fill(&mut nonce);
        let mut sealed = ATOMIC_MAGIC.to_vec();
        sealed.extend_from_slice(&nonce);
        sealed.extend(self.key.key.seal(&nonce, &atomic_aad(path), data));
        self.inner.atomic_write(path, &sealed)
    }

    fn sync_directory(&self) -> io::Result<()> {
        self.inner.sync_directory()
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        self.inner.acquire_lock(lock)
    }

    fn watch(&self, watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.inner.watch(watch_callback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custodian_events::crypto::OsEntropy;

    fn dir(path: &Path, secret: u8) -> SealedDirectory {
        SealedDirectory::new(
            MmapDirectory::open(path).unwrap(),
            SealKey::new(&[secret; 16], Arc::new(OsEntropy)),
        )
    }

    fn write(d: &SealedDirectory, name: &str, data: &[u8], chunk: usize) {
        let mut w = d.open_write(Path::new(name)).unwrap();
        for c in data.chunks(chunk.max(1)) {
            w.write_all(c).unwrap();
        }
        w.terminate().unwrap();
    }

    #[test]
    fn files_of_every_length_read_back_in_any_range_and_rest_sealed() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path(), 7);
        for len in [
            0,
            1,
            BLOCK_BYTES - 1,
            BLOCK_BYTES,
            BLOCK_BYTES + 1,
            3 * BLOCK_BYTES + 17,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let name = format!("f{len}.idx");
            write(&d, &name, &data, 1000);
            let f = d.open_read(Path::new(&name)).unwrap();
            assert_eq!(f.len(), len);
            assert_eq!(f.read_bytes().unwrap().as_slice(), &data[..]);
            for (a, b) in [
                (0, len.min(1)),
                (len / 3, len / 2),
                (len.saturating_sub(2), len),
            ] {
                assert_eq!(f.slice(a..b).read_bytes().unwrap().as_slice(), &data[a..b]);
            }
            let raw = std::fs::read(tmp.path().join(&name)).unwrap();
            if len >= 16 {
                let plain: std::collections::HashSet<&[u8]> = data.windows(16).collect();
                assert!(
                    !raw.windows(16).any(|w| plain.contains(w)),
                    "{name} holds plaintext"
                );
            }
        }
        d.atomic_write(Path::new("meta.json"), b"{\"enterprise\":\"E-SECRET\"}")
            .unwrap();
        assert_eq!(
            d.atomic_read(Path::new("meta.json")).unwrap(),
            b"{\"enterprise\":\"E-SECRET\"}"
        );
        let raw = std::fs::read(tmp.path().join("meta.json")).unwrap();
        assert!(!raw.windows(8).any(|w| w == b"E-SECRET"));
    }

    #[test]
    fn a_changed_byte_a_cut_file_or_another_key_fails_to_open() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path(), 7);
        let data = vec![5u8; 2 * BLOCK_BYTES + 10];
        write(&d, "a.idx", &data, 4096);
        let path = tmp.path().join("a.idx");
        let good = std::fs::read(&path).unwrap();
        // Another key.
        let stranger = dir(tmp.path(), 8);
        assert!(
            stranger
                .open_read(Path::new("a.idx"))
                .unwrap()
                .read_bytes()
                .is_err()
        );
        // One byte changed in the middle block.
        let mut bad = good.clone();
        bad[FILE_HEADER + SEALED_BLOCK + 5] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let f = dir(tmp.path(), 7).open_read(Path::new("a.idx")).unwrap();
        assert!(f.slice(BLOCK_BYTES..BLOCK_BYTES + 1).read_bytes().is_err());
        assert!(
            f.slice(0..1).read_bytes().is_ok(),
            "other blocks still open"
        );
        // The last block cut off: the one before is not the last, so it does not pass as the end.
        std::fs::write(&path, &good[..FILE_HEADER + 2 * SEALED_BLOCK]).unwrap();
        let f = dir(tmp.path(), 7).open_read(Path::new("a.idx")).unwrap();
        assert!(f.read_bytes().is_err());
        // A block moved to another file does not open there.
        write(&d, "b.idx", &data, 4096);
        let b = std::fs::read(tmp.path().join("b.idx")).unwrap();
        let mut swapped = good.clone();
        swapped[FILE_HEADER..FILE_HEADER + SEALED_BLOCK]
            .copy_from_slice(&b[FILE_HEADER..FILE_HEADER + SEALED_BLOCK]);
        std::fs::write(&path, &swapped).unwrap();
        let f = dir(tmp.path(), 7).open_read(Path::new("a.idx")).unwrap();
        assert!(f.slice(0..1).read_bytes().is_err());
    }
}
