//! Named limits shared by servers and clients.

/// Longest file name, as POSIX NAME_MAX.
pub const NAME_BYTES_MAX: usize = 255;
/// Longest symlink target, as POSIX PATH_MAX.
pub const SYMLINK_BYTES_MAX: usize = 4096;
/// Longest xattr name and value, as Linux XATTR_NAME_MAX / XATTR_SIZE_MAX.
pub const XATTR_NAME_BYTES_MAX: usize = 255;
pub const XATTR_VALUE_BYTES_MAX: usize = 65536;
/// Largest frame accepted on any connection. A snapshot piece is the largest
/// message; it is cut well below this.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
pub const SNAPSHOT_PIECE_BYTES_MAX: usize = 4 * 1024 * 1024;
const _: () = assert!(SNAPSHOT_PIECE_BYTES_MAX * 2 <= FRAME_BYTES_MAX);
/// Most entries returned by one readdir call.
pub const READDIR_ENTRIES_MAX: u32 = 1024;
/// Most entries of one `ReadDirPlus` page (each costs an inode read).
pub const READDIRPLUS_ENTRIES_MAX: u32 = 128;
/// Requests one connection may have in flight before the server stops reading it.
pub const INFLIGHT_REQUESTS_PER_CONNECTION_MAX: usize = 256;
/// Most connections one daemon serves at once (fewer if its open-file limit
/// is lower: `service::connections_max`). Past it, new connections are
/// closed at once rather than left to exhaust descriptors the daemon needs
/// for its own files.
pub const CONNECTIONS_MAX: usize = 16_384;
/// Descriptors a daemon keeps for itself (RocksDB, fragment files, peers)
/// out of its open-file limit (a quarter of a limit under 4 Ki).
pub const DESCRIPTORS_RESERVED: usize = 1_024;
/// Most bytes of request frames one daemon holds at once, across all its
/// connections: frames being received and requests being served.
pub const REQUEST_BYTES_IN_FLIGHT_MAX: usize = 512 * 1024 * 1024;
const _: () = assert!(REQUEST_BYTES_IN_FLIGHT_MAX >= 4 * FRAME_BYTES_MAX);
/// A new connection must begin its first frame within this; a connection
/// that never speaks is closed (clients replace pooled connections left
/// unused for half of it).
pub const FIRST_FRAME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Once a frame's first byte has arrived, the rest must arrive within this.
pub const FRAME_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Most open files one keepalive reports (past it, a mount's other open
/// files are not kept alive after an unlink).
pub const KEEPALIVE_OPEN_MAX: usize = 262_144;
/// A chunk is a fixed 64 MiB range of a file; a block is at most 4 MiB.
pub const CHUNK_BYTES: u64 = 64 * 1024 * 1024;
pub const BLOCK_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Largest slice committed inline in a Raft entry, and the most inline
/// bytes one chunk may hold visible (the rest goes to blocks).
pub const INLINE_SLICE_BYTES_MAX: usize = 64 * 1024;
pub const INLINE_CHUNK_BYTES_MAX: usize = 1024 * 1024;
/// Files up to this size get their first chunk's map with `ReadOp::Open`.
pub const OPEN_CHUNK_BYTES_MAX: u64 = 1024 * 1024;
/// Widest redundancy policy (fragments per block).
pub const POLICY_FRAGMENTS_MAX: u8 = 32;
/// Largest file size the namespace accepts (2^63 - 1, as off_t).
pub const FILE_BYTES_MAX: u64 = i64::MAX as u64;
/// A cluster configuration record's key and value (`WriteOp::PutConfig`).
pub const CONFIG_KEY_BYTES_MAX: usize = 512;
pub const CONFIG_VALUE_BYTES_MAX: usize = 256 * 1024;
/// Records one `ReadOp::ListConfig` answers (the rest by paging).
pub const CONFIG_LIST_MAX: usize = 256;
/// A writer fence holder's name (`WriteOp::TakeFence`).
pub const FENCE_HOLDER_BYTES_MAX: usize = 256;
