import _AppctlShims
#if canImport(Glibc)
import Glibc
#endif

/// An fs-verity hash algorithm, as `FS_IOC_MEASURE_VERITY` reports it.
public struct VerityAlgorithm: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// `FS_VERITY_HASH_ALG_SHA256`
    public static let sha256 = VerityAlgorithm(rawValue: 1)
    /// `FS_VERITY_HASH_ALG_SHA512`
    public static let sha512 = VerityAlgorithm(rawValue: 2)
}

extension Errno {
    /// `ENODATA` — what `FS_IOC_MEASURE_VERITY` answers for a file without fs-verity.
    public static let noData = Errno(rawValue: ENODATA)
    /// `ENOTTY` — the filesystem has no such ioctl (tmpfs, or a kernel without `CONFIG_FS_VERITY`).
    public static let notATerminal = Errno(rawValue: ENOTTY)
    /// `EOPNOTSUPP`
    public static let notSupported = Errno(rawValue: EOPNOTSUPP)
}

/// The filesystems whose fs-verity the kernel implements itself (fs/verity + the filesystem), by `statfs` magic. Anywhere else the ioctl must not be trusted: FUSE passes
/// `FS_IOC_MEASURE_VERITY` to its userspace server (fs/fuse/ioctl.c, since Linux 5.17), which could answer with
/// the verity digest of any allowed file for content of its choosing.
public enum VerityFilesystems {
    /// `EXT4_SUPER_MAGIC` (shared by ext2/ext3, which have no fs-verity: the ioctl answers ENOTTY there),
    /// `F2FS_SUPER_MAGIC`, `BTRFS_SUPER_MAGIC` (linux/magic.h).
    public static let magics: Set<Int> = [0xEF53, 0xF2F5_2010, 0x9123_683E]
}

extension FileDescriptor {
    /// The file's fs-verity digest (`FS_IOC_MEASURE_VERITY`), when fs-verity is enabled on it with
    /// SHA-256; nil when it is not (`ENODATA`), when the filesystem or kernel has no fs-verity
    /// (`ENOTTY`, `EOPNOTSUPP`), or when another algorithm was used.
    ///
    /// The kernel answers from the verity descriptor it loaded when the file was opened, without
    /// reading the data: O(1) whatever the size. The digest is SHA-256 over that descriptor, which
    /// holds the Merkle tree's root hash, the file size, block size and salt; every page read from
    /// the file is checked against the tree, and a verity file can never be opened for writing, so
    /// the digest stands for the content for as long as the inode exists.
    /// See https://docs.kernel.org/filesystems/fsverity.html ("FS_IOC_MEASURE_VERITY").
    ///
    /// Only on ext4, f2fs and btrfs (see `VerityFilesystems`): elsewhere nil, without asking.
    public func verityDigest() throws(Errno) -> SHA256Digest? {
        guard VerityFilesystems.magics.contains(try filesystemMagic()) else { return nil }
        var algorithm: UInt16 = 0, size: UInt16 = 0
        var raw = [UInt8](repeating: 0, count: 64)
        do {
            _ = try retryingOnInterrupt { appctl_measure_verity(rawValue, &algorithm, &size, &raw) }
        } catch where error == .noData || error == .notATerminal || error == .notSupported || error == Errno(rawValue: EINVAL) {
            return nil
        }
        guard VerityAlgorithm(rawValue: algorithm) == .sha256, size == 32 else { return nil }
        return SHA256Digest(bytes: Array(raw.prefix(32)))
    }

    /// `verityDigest()` for callers that fall back to hashing on any failure.
    public var verityDigestIfAny: SHA256Digest? { (try? verityDigest()) ?? nil }
}
