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

/// CRC-32 (IEEE, reflected), computed incrementally.
struct Crc32 {
    table: [u32; 256],
    value: u32,
}

impl Crc32 {
    fn new() -> Crc32 {
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
        Crc32 { table, value: !0 }
    }

    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.value =
                self.table[((self.value ^ u32::from(*b)) & 0xff) as usize] ^ (self.value >> 8);
        }
    }

    fn finish(&self) -> u32 {
        !self.value
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = Crc32::new();
    crc.update(bytes);
    crc.finish()
}

/// Where the body's bytes go, in order (see [`emit_body`]).
struct Emit<'a> {
    out: &'a mut dyn FnMut(&[u8]) -> std::io::Result<()>,
}

impl Emit<'_> {
    fn raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        (self.out)(bytes).map_err(|e| e.to_string())
    }

    /// A u32 length, then the bytes.
    fn field(&mut self, bytes: &[u8]) -> Result<(), String> {
        let len = u32::try_from(bytes.len()).map_err(|_| "field longer than 4 GiB".to_string())?;
        self.raw(&len.to_le_bytes())?;
        self.raw(bytes)
    }
}

/// Hand the body's bytes, in order, to `emit` (done twice by [`encode_to`]:
/// once to measure, once to write, so the layout is stated once).
fn emit_body(snapshot: &Snapshot, emit: &mut Emit<'_>) -> Result<(), String> {
    emit.field(snapshot.key.as_bytes())?;
    emit.raw(&snapshot.taken_ms.to_le_bytes())?;
    emit.raw(&(snapshot.nodes.len() as u64).to_le_bytes())?;
    for node in &snapshot.nodes {
        emit.field(node.path.as_bytes())?;
        let s = &node.stat;
        let mut stat = Vec::with_capacity(69);
        for v in [s.czxid, s.mzxid, s.pzxid, s.ctime, s.mtime] {
            stat.extend_from_slice(&v.to_le_bytes());
        }
        for v in [s.version, s.cversion, s.aversion] {
            stat.extend_from_slice(&v.to_le_bytes());
        }
        stat.extend_from_slice(&s.ephemeral_owner.to_le_bytes());
        for v in [s.data_length, s.num_children] {
            stat.extend_from_slice(&v.to_le_bytes());
        }
        let flags = if node.data.is_some() { FLAG_DATA } else { 0 }
            | if node.children.is_some() {
                FLAG_CHILDREN
            } else {
                0
            };
        stat.push(flags);
        emit.raw(&stat)?;
        if let Some(data) = &node.data {
            emit.field(data)?;
        }
        if let Some(children) = &node.children {
            let n = u32::try_from(children.len()).map_err(|_| "too many children".to_string())?;
            emit.raw(&n.to_le_bytes())?;
            for c in children {
                emit.field(c.as_bytes())?;
            }
        }
    }
    Ok(())
}

/// Encode a snapshot into `w`, streaming (no copy of the data is made).
pub fn encode_to(snapshot: &Snapshot, w: &mut impl Write) -> Result<(), String> {
    let mut length: u64 = 0;
    emit_body(
        snapshot,
        &mut Emit {
            out: &mut |b: &[u8]| {
                length += b.len() as u64;
                Ok(())
            },
        },
    )?;
    let io = |e: std::io::Error| e.to_string();
    w.write_all(MAGIC).map_err(io)?;
    w.write_all(&VERSION.to_le_bytes()).map_err(io)?;
    w.write_all(&length.to_le_bytes()).map_err(io)?;
    let mut crc = Crc32::new();
    emit_body(
        snapshot,
        &mut Emit {
            out: &mut |b: &[u8]| {
                crc.update(b);
                w.write_all(b)
            },
        },
    )?;
    w.write_all(&crc.finish().to_le_bytes()).map_err(io)
}

/// Encode a snapshot into its file content (the tests' view of it).
#[cfg(test)]
pub fn encode(snapshot: &Snapshot) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    encode_to(snapshot, &mut out)?;
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
        let mut writer = std::io::BufWriter::new(&mut file);
        encode_to(snapshot, &mut writer)
            .map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
        writer.flush().map_err(|e| io("cannot write", &temp, e))?;
        drop(writer);
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
    fn layout_and_checksum_match_the_documented_format() {
        // CRC-32 (IEEE) check value of the standard.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        let empty = Snapshot {
            key: "k".into(),
            taken_ms: 0x0102,
            nodes: vec![],
        };
        let bytes = encode(&empty).expect("encode");
        let mut expected: Vec<u8> = b"ZKFSSNAP".to_vec();
        expected.extend([1, 0, 0, 0]); // version
        expected.extend([21, 0, 0, 0, 0, 0, 0, 0]); // body length: 4 + 1 + 8 + 8
        expected.extend([1, 0, 0, 0, b'k']); // key
        expected.extend([2, 1, 0, 0, 0, 0, 0, 0]); // taken_ms
        expected.extend([0; 8]); // node count
        assert_eq!(&bytes[..bytes.len() - 4], expected.as_slice());
        assert_eq!(bytes.len(), expected.len() + 4);
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

    /// A snapshot exported from one store and restored into a fresh one
    /// (through the file format) serves the old state while the server is
    /// unreachable and reports what changed at the first resync.
    #[tokio::test]
    async fn restored_snapshot_serves_while_disconnected_and_resyncs() {
        use crate::zk::fake::FakeZk;
        use crate::zk::{Change, Store};
        let zk = Arc::new(FakeZk::new());
        for (p, d) in [("/a", &b"1"[..]), ("/d", b""), ("/d/x", b"x")] {
            zk.create(p, d, 0).expect("create");
        }
        let store = Store::new(zk.clone(), 1 << 20);
        assert_eq!(&*store.data("/a").await.expect("a").0, b"1");
        assert_eq!(store.children("/d").await.expect("ls"), ["x"]);
        assert_eq!(&*store.data("/d/x").await.expect("x").0, b"x");
        let (_, nodes) = store.export_snapshot();
        let snap = Snapshot {
            key: key("fake", "/"),
            taken_ms: 1,
            nodes,
        };
        let snap = decode(&encode(&snap).expect("encode")).expect("decode");

        zk.set("/a", b"2").expect("set");
        zk.create("/d/y", b"y", 0).expect("create y");
        zk.delete("/d/x").expect("delete x");
        zk.set_connected(false);
        let fresh = Store::new(zk.clone(), 1 << 20);
        fresh.restore_snapshot(snap.nodes);
        let requests = zk.requests();
        assert_eq!(&*fresh.data("/a").await.expect("a restored").0, b"1");
        assert_eq!(fresh.children("/d").await.expect("ls restored"), ["x"]);
        assert_eq!(&*fresh.data("/d/x").await.expect("x restored").0, b"x");
        assert_eq!(zk.requests(), requests, "served without asking the server");

        zk.set_connected(true);
        let changes = fresh.resync().await;
        for expected in [
            Change::Data("/a".into()),
            Change::Deleted("/d/x".into()),
            Change::Created("/d/y".into()),
        ] {
            assert!(changes.contains(&expected), "{expected:?} in {changes:?}");
        }
        assert_eq!(&*fresh.data("/a").await.expect("a live").0, b"2");
        assert_eq!(fresh.children("/d").await.expect("ls live"), ["y"]);
    }

    /// An empty directory whose list was never read (its stat said it has
    /// no children, which the mount takes as the list): restored and with
    /// the server unreachable, it lists as empty, as it was, instead of
    /// failing because no list was kept.
    #[tokio::test]
    async fn a_restored_empty_directory_lists_while_disconnected() {
        use crate::zk::Store;
        use crate::zk::fake::FakeZk;
        let zk = Arc::new(FakeZk::new());
        zk.create("/e", b"", 0).expect("create");
        let store = Store::new(zk.clone(), 1 << 20);
        assert_eq!(store.node("/e").await.expect("e").stat.num_children, 0);
        let (_, nodes) = store.export_snapshot();
        zk.set_connected(false);
        let fresh = Store::new(zk.clone(), 1 << 20);
        fresh.restore_snapshot(nodes);
        assert_eq!(
            fresh.children("/e").await.expect("ls restored"),
            Vec::<String>::new()
        );
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
