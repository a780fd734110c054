//! The on-disk snapshot of the node cache (`--cache-dir`): its file format,
//! its key and its crash-safe writing and validated reading.
//!
//! Owns the bytes on disk only: a [`Snapshot`] is encoded into one
//! self-describing file per (servers + chroot, root) key, written as a temp
//! file that is fsynced, renamed over the old one and made durable by an
//! fsync of the directory; reading checks magic, version, lengths, a CRC-32
//! and the key stored inside. It must not talk to ZooKeeper, touch the cache
//! or decide when to write (that is `crate::persist`).
//!
//! Format (all integers little-endian):
//!
//! ```text
//! magic    8 bytes  "ZKFSSNAP"
//! version  u32      1
//! length   u64      length of body
//! body     length bytes:
//!   key        str        "servers=<connection string>\nroot=<root>"
//!   taken_ms   u64        when the data was last known current (ms since epoch)
//!   count      u64        number of nodes
//!   node*      path str, stat (11 fields), flags u8 (1 = data, 2 = children),
//!              [data bytes], [children: u32 count, str*]
//! crc32    u32      CRC-32 (IEEE) of body
//! ```
//!
//! `str`/`bytes` are a u32 length followed by that many bytes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::backend::NodeStat;

const MAGIC: &[u8; 8] = b"ZKFSSNAP";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 8;
const FLAG_DATA: u8 = 1;
const FLAG_CHILDREN: u8 = 2;

/// One cached node as persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapNode {
    pub path: String,
    pub stat: NodeStat,
    /// `None` when the cache held only the stat (data evicted).
    pub data: Option<Arc<[u8]>>,
    /// `None` when the node was never listed.
    pub children: Option<Vec<String>>,
}

/// Everything a snapshot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub key: String,
    /// When the data was last known to be current (ms since the epoch).
    pub taken_ms: u64,
    pub nodes: Vec<SnapNode>,
}

/// The key of a mount's snapshot: its (normalised) connection string,
/// chroot included, and its root.
pub fn key(servers: &str, root: &str) -> String {
    format!("servers={servers}\nroot={root}")
}

/// FNV-1a, 64 bits: names the file after the key (collisions are caught by
/// the key stored inside).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The snapshot file for `key` in `dir`.
pub fn file_for(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("zkfs-{:016x}.snapshot", fnv1a(key.as_bytes())))
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, entry) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *entry = c;
    }
    !bytes.iter().fold(!0u32, |c, b| {
        table[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8)
    })
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), String> {
    let len = u32::try_from(bytes.len()).map_err(|_| "field longer than 4 GiB".to_string())?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Encode a snapshot into its file content.
pub fn encode(snapshot: &Snapshot) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    put_bytes(&mut body, snapshot.key.as_bytes())?;
    body.extend_from_slice(&snapshot.taken_ms.to_le_bytes());
    body.extend_from_slice(&(snapshot.nodes.len() as u64).to_le_bytes());
    for node in &snapshot.nodes {
        put_bytes(&mut body, node.path.as_bytes())?;
        let s = &node.stat;
        for v in [s.czxid, s.mzxid, s.pzxid, s.ctime, s.mtime] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        for v in [s.version, s.cversion, s.aversion] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&s.ephemeral_owner.to_le_bytes());
        for v in [s.data_length, s.num_children] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        let flags = if node.data.is_some() { FLAG_DATA } else { 0 }
            | if node.children.is_some() {
                FLAG_CHILDREN
            } else {
                0
            };
        body.push(flags);
        if let Some(data) = &node.data {
            put_bytes(&mut body, data)?;
        }
        if let Some(children) = &node.children {
            let n = u32::try_from(children.len()).map_err(|_| "too many children".to_string())?;
            body.extend_from_slice(&n.to_le_bytes());
            for c in children {
                put_bytes(&mut body, c.as_bytes())?;
            }
        }
    }
    let mut out = Vec::with_capacity(HEADER + body.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_le_bytes());
    Ok(out)
}

/// Reads fields off a byte slice, never past its end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err("truncated field".into());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn i32(&mut self) -> Result<i32, String> {
        self.array().map(i32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, String> {
        self.array().map(i64::from_le_bytes)
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "string is not UTF-8".to_string())
    }
}

/// Decode and validate file content.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    if bytes.len() < HEADER + 4 {
        return Err(format!("{} bytes: shorter than a header", bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err("not a zkfs snapshot (bad magic)".into());
    }
    let mut header = Reader {
        bytes: &bytes[8..HEADER],
    };
    let version = header.u32()?;
    if version != VERSION {
        return Err(format!(
            "snapshot format version {version}, this zkfs reads {VERSION}"
        ));
    }
    let length = header.u64()?;
    let expected = (HEADER as u64)
        .checked_add(length)
        .and_then(|n| n.checked_add(4));
    if expected != Some(bytes.len() as u64) {
        return Err(format!(
            "length field says {length} body bytes, file has {}",
            bytes.len()
        ));
    }
    let body = &bytes[HEADER..bytes.len() - 4];
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[bytes.len() - 4..]);
    if u32::from_le_bytes(crc) != crc32(body) {
        return Err("checksum mismatch".into());
    }
    let mut r = Reader { bytes: body };
    let key = r.string()?;
    let taken_ms = r.u64()?;
    let count = r.u64()?;
    let mut nodes = Vec::new();
    for _ in 0..count {
        let path = r.string()?;
        let (czxid, mzxid, pzxid, ctime, mtime) =
            (r.i64()?, r.i64()?, r.i64()?, r.i64()?, r.i64()?);
        let (version, cversion, aversion) = (r.i32()?, r.i32()?, r.i32()?);
        let ephemeral_owner = r.i64()?;
        let (data_length, num_children) = (r.i32()?, r.i32()?);
        let stat = NodeStat {
            czxid,
            mzxid,
            pzxid,
            ctime,
            mtime,
            version,
            cversion,
            aversion,
            ephemeral_owner,
            data_length,
            num_children,
        };
        let flags = r.array::<1>()?[0];
        if flags & !(FLAG_DATA | FLAG_CHILDREN) != 0 {
            return Err(format!("unknown node flags {flags:#x}"));
        }
        let data = if flags & FLAG_DATA != 0 {
            Some(Arc::from(r.bytes()?))
        } else {
            None
        };
        let children = if flags & FLAG_CHILDREN != 0 {
            let n = r.u32()?;
            let mut names = Vec::new();
            for _ in 0..n {
                names.push(r.string()?);
            }
            Some(names)
        } else {
            None
        };
        nodes.push(SnapNode {
            path,
            stat,
            data,
            children,
        });
    }
    if !r.bytes.is_empty() {
        return Err(format!("{} bytes after the last node", r.bytes.len()));
    }
    Ok(Snapshot {
        key,
        taken_ms,
        nodes,
    })
}

/// Write `snapshot` to its file in `dir` (created 0700 when missing),
/// crash-safe: temp file (0600) written and fsynced, renamed over the old
/// file, directory fsynced. A crash leaves the old or the new file, never
/// a mix (a leftover temp file is replaced by the next write).
pub fn write(dir: &Path, snapshot: &Snapshot) -> Result<PathBuf, String> {
    let bytes = encode(snapshot)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create cache dir {}: {e}", dir.display()))?;
    let target = file_for(dir, &snapshot.key);
    let temp = target.with_extension("snapshot.tmp");
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| io("cannot create", &temp, e))?;
        file.write_all(&bytes)
            .map_err(|e| io("cannot write", &temp, e))?;
        file.sync_all().map_err(|e| io("cannot fsync", &temp, e))?;
    }
    fs::rename(&temp, &target).map_err(|e| io("cannot rename", &temp, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot fsync", dir, e))?;
    Ok(target)
}

/// The snapshot for `key` in `dir`: `Ok(None)` when there is none, `Err`
/// (with the reason) when the file is unreadable, corrupt or of another key.
pub fn read(dir: &Path, key: &str) -> Result<Option<Snapshot>, String> {
    let path = file_for(dir, key);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let snapshot = decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if snapshot.key != key {
        return Err(format!(
            "{} belongs to another mount ({:?}, this one is {:?})",
            path.display(),
            snapshot.key,
            key
        ));
    }
    Ok(Some(snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> Snapshot {
        let stat = NodeStat {
            czxid: 1,
            mzxid: -2,
            pzxid: 3,
            ctime: 1_700_000_000_000,
            mtime: 5,
            version: 6,
            cversion: 7,
            aversion: 8,
            ephemeral_owner: 0x1234_5678_9abc,
            data_length: 3,
            num_children: 2,
        };
        Snapshot {
            key: key("127.0.0.1:2181/app", "/"),
            taken_ms: 1_733_000_000_123,
            nodes: vec![
                SnapNode {
                    path: "/".into(),
                    stat,
                    data: None,
                    children: Some(vec!["a".into(), "b ü".into()]),
                },
                SnapNode {
                    path: "/a".into(),
                    stat: NodeStat {
                        num_children: 0,
                        ..stat
                    },
                    data: Some(Arc::from(&b"v\x001"[..])),
                    children: None,
                },
                SnapNode {
                    path: "/b ü".into(),
                    stat,
                    data: Some(Arc::from(&b""[..])),
                    children: Some(vec![]),
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let bytes = encode(&s).expect("encode");
        assert_eq!(&bytes[..8], b"ZKFSSNAP");
        assert_eq!(decode(&bytes).expect("decode"), s);
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_detected() {
        let bytes = encode(&sample()).expect("encode");
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flipped byte {i} accepted");
        }
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "truncated to {n} accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn wrong_magic_and_version_are_named() {
        let mut bytes = encode(&sample()).expect("encode");
        bytes[0] = b'X';
        assert!(decode(&bytes).unwrap_err().contains("magic"));
        let mut bytes = encode(&sample()).expect("encode");
        bytes[8] = 2;
        assert!(decode(&bytes).unwrap_err().contains("version 2"));
    }

    #[test]
    fn written_file_and_dir_modes_and_key_check() {
        let base = std::env::temp_dir().join(format!("zkfs-snap-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let dir = base.join("cache");
        let s = sample();
        let file = write(&dir, &s).expect("write");
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&file), 0o600);
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temp file left: {names:?}");
        assert_eq!(read(&dir, &s.key).expect("read"), Some(s.clone()));
        // Another key: its own (absent) file.
        let other = key("127.0.0.1:2182", "/");
        assert_eq!(read(&dir, &other).expect("read other"), None);
        // A file of another key under this key's name is refused.
        fs::copy(&file, file_for(&dir, &other)).expect("copy");
        assert!(
            read(&dir, &other)
                .expect_err("key mismatch")
                .contains("another mount")
        );
        // Corrupt on disk: an error, not a snapshot.
        let mut bytes = fs::read(&file).expect("read bytes");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        fs::write(&file, &bytes).expect("corrupt");
        assert!(read(&dir, &s.key).is_err());
        let _ = fs::remove_dir_all(&base);
    }
}
