#if canImport(Glibc)
import Glibc
#endif

/// A raw file descriptor. It does not close itself: owners call `close()` exactly once.
public struct FileDescriptor: RawRepresentable, Hashable, Sendable {
    public var rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// Flags for `open(2)`.
    public struct OpenOptions: OptionSet, Sendable {
        public var rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }
        /// `O_RDONLY`
        public static let readOnly = OpenOptions(rawValue: O_RDONLY)
        /// `O_WRONLY`
        public static let writeOnly = OpenOptions(rawValue: O_WRONLY)
        /// `O_RDWR`
        public static let readWrite = OpenOptions(rawValue: O_RDWR)
        /// `O_CREAT`
        public static let create = OpenOptions(rawValue: O_CREAT)
        /// `O_EXCL`
        public static let exclusive = OpenOptions(rawValue: O_EXCL)
        /// `O_TRUNC`
        public static let truncate = OpenOptions(rawValue: O_TRUNC)
        /// `O_APPEND`
        public static let append = OpenOptions(rawValue: O_APPEND)
        /// `O_CLOEXEC` — always wanted: the daemon never execs, but libraries might fork.
        public static let closeOnExec = OpenOptions(rawValue: O_CLOEXEC)
        /// `O_NOFOLLOW` — refuse a symlink in the last component.
        public static let noFollow = OpenOptions(rawValue: O_NOFOLLOW)
        /// `O_NONBLOCK` — so that opening a FIFO that appeared mid-scan cannot hang.
        public static let nonBlocking = OpenOptions(rawValue: O_NONBLOCK)
        /// `O_NOCTTY`
        public static let noControllingTerminal = OpenOptions(rawValue: O_NOCTTY)
        /// `O_DIRECTORY`
        public static let directory = OpenOptions(rawValue: O_DIRECTORY)
        /// `O_PATH` — a handle on a path that opens nothing (no permission event, no read access needed).
        public static let pathOnly = OpenOptions(rawValue: 0o10000000)
        /// `O_NOATIME` — scans must not rewrite every inode's atime (root or owner only).
        public static let noAccessTime = OpenOptions(rawValue: 0o1000000)
    }

    public static func open(_ path: String, _ options: OpenOptions, permissions: mode_t = 0o644,
                            relativeTo directory: FileDescriptor? = nil) throws(Errno) -> FileDescriptor {
        let base = directory?.rawValue ?? AT_FDCWD
        let fd = try retryingOnInterrupt { openat(base, path, options.union(.closeOnExec).rawValue, permissions) }
        return FileDescriptor(rawValue: fd)
    }

    public static func open(cPath: UnsafePointer<CChar>, _ options: OpenOptions, permissions: mode_t = 0o644,
                            relativeTo directory: FileDescriptor? = nil) throws(Errno) -> FileDescriptor {
        let base = directory?.rawValue ?? AT_FDCWD
        let fd = try retryingOnInterrupt { openat(base, cPath, options.union(.closeOnExec).rawValue, permissions) }
        return FileDescriptor(rawValue: fd)
    }

    /// Closes the descriptor. Not retried on `EINTR`: on Linux the descriptor is gone either way.
    public func close() {
        _ = Glibc.close(rawValue)
    }

    public func status() throws(Errno) -> stat {
        var st = stat()
        _ = try retryingOnInterrupt { fstat(rawValue, &st) }
        return st
    }

    /// Reads up to `buffer.count` bytes at `offset`; 0 means end of file.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(Errno) -> Int {
        try retryingOnInterrupt { pread(rawValue, buffer.baseAddress, buffer.count, off_t(offset)) }
    }

    /// Reads up to `buffer.count` bytes from the current position.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try retryingOnInterrupt { Glibc.read(rawValue, buffer.baseAddress, buffer.count) }
    }

    /// Writes all of `bytes`, looping over short writes.
    public func writeAll(_ bytes: UnsafeRawBufferPointer) throws(Errno) {
        var done = 0
        while done < bytes.count {
            let n = try retryingOnInterrupt { Glibc.write(rawValue, bytes.baseAddress! + done, bytes.count - done) }
            done += n
        }
    }

    /// Up to `count` bytes at `offset`; fewer at the end of the file, none on an error.
    public func readBytes(at offset: Int64, count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let n = bytes.withUnsafeMutableBytes { (try? read(into: $0, at: offset)) ?? 0 }
        bytes.removeLast(count - n)
        return bytes
    }

    public func writeAll(_ bytes: [UInt8]) throws(Errno) {
        var failure: Errno?
        bytes.withUnsafeBytes { raw in
            do throws(Errno) { try writeAll(raw) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// A read lease on the open file (`fcntl(F_SETLEASE, F_RDLCK)`): granted only while nobody holds the file
    /// open for writing (a shared writable mapping counts: it keeps its file open), and from then on every open
    /// for writing or truncate must first break it, which waits until the holder lets go
    /// (`/proc/sys/fs/lease-break-time`). `EAGAIN`: a writer exists. Needs `CAP_LEASE` for others' files.
    /// `F_SETLEASE` (`F_LINUX_SPECIFIC_BASE` + 0, linux/fcntl.h): Glibc defines it only under `_GNU_SOURCE`,
    /// which the Swift module does not see.
    static let setLease: Int32 = 1024

    public func takeReadLease() throws(Errno) {
        _ = try retryingOnInterrupt { fcntl(rawValue, Self.setLease, F_RDLCK) }
    }

    /// `F_GETLEASE` (`F_LINUX_SPECIFIC_BASE` + 1).
    static let getLease: Int32 = 1025

    /// Whether a read lease is held and unbroken: `fcntl(F_GETLEASE)` reports the type the lease is being broken
    /// to while a writer waits (`F_UNLCK`), so only an intact read lease answers `F_RDLCK`.
    public var holdsUnbrokenReadLease: Bool {
        fcntl(rawValue, Self.getLease) == F_RDLCK
    }

    /// Lets go of a lease (`fcntl(F_SETLEASE, F_UNLCK)`); a writer waiting for it goes on.
    public func releaseLease() {
        _ = fcntl(rawValue, Self.setLease, F_UNLCK)
    }

    /// A second descriptor of the same open file (`fcntl(F_DUPFD_CLOEXEC)`): a lease lives as long as any of them.
    public func duplicate() throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try retryingOnInterrupt { fcntl(rawValue, F_DUPFD_CLOEXEC, 3) })
    }

    public func sync() throws(Errno) {
        _ = try retryingOnInterrupt { fsync(rawValue) }
    }

    /// Reads the whole file, refusing anything larger than `limit` bytes (key files, configs).
    public func readAll(limit: Int) throws(Errno) -> [UInt8] {
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            var failure: Errno?
            let n = chunk.withUnsafeMutableBytes { raw -> Int in
                do throws(Errno) { return try read(into: raw) } catch { failure = error; return 0 }
            }
            if let failure { throw failure }
            if n == 0 { return result }
            result.append(contentsOf: chunk[0..<n])
            if result.count > limit { throw Errno(rawValue: EFBIG) }
        }
    }
}

extension stat {
    public var isRegularFile: Bool { (st_mode & S_IFMT) == S_IFREG }
    public var isDirectory: Bool { (st_mode & S_IFMT) == S_IFDIR }
    public var isSymlink: Bool { (st_mode & S_IFMT) == S_IFLNK }
    /// Any of the three execute bits.
    public var isExecutableByMode: Bool { (st_mode & 0o111) != 0 }
    public var ctimeNanoseconds: Int64 { Int64(st_ctim.tv_sec) * 1_000_000_000 + Int64(st_ctim.tv_nsec) }
    public var mtimeNanoseconds: Int64 { Int64(st_mtim.tv_sec) * 1_000_000_000 + Int64(st_mtim.tv_nsec) }
}

/// Reads a whole small file (keys, configs, /proc entries), refusing anything over `limit` bytes and
/// never blocking on a FIFO put in its place.
/// A small file of `key value` lines (one command leaves them for another: sync and drift for `status`); empty when
/// it cannot be read.
public func readKeyValueFile(_ path: String, limit: Int = 64 * 1024) -> [String: String] {
    guard let bytes = try? readSmallFile(path, limit: limit) else { return [:] }
    var fields: [String: String] = [:]
    for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
        guard let space = line.firstIndex(of: " ") else { continue }
        fields[String(line[..<space])] = String(line[line.index(after: space)...])
    }
    return fields
}

public func readSmallFile(_ path: String, limit: Int) throws(Errno) -> [UInt8] {
    let fd = try FileDescriptor.open(path, [.readOnly, .nonBlocking])
    defer { fd.close() }
    return try fd.readAll(limit: limit)
}

/// `lstat` through the wrapper: information about a path without following a final symlink.
public func linkStatus(_ path: String, relativeTo directory: FileDescriptor? = nil) throws(Errno) -> stat {
    var st = stat()
    let base = directory?.rawValue ?? AT_FDCWD
    _ = try retryingOnInterrupt { fstatat(base, path, &st, AT_SYMLINK_NOFOLLOW) }
    return st
}

import _AppctlShims

extension FileDescriptor {
    /// The filesystem's magic number (`f_type` of `fstatfs(2)`), e.g. `PROC_SUPER_MAGIC`.
    public func filesystemMagic() throws(Errno) -> Int {
        var fs = statfs()
        _ = try retryingOnInterrupt { fstatfs(rawValue, &fs) }
        return Int(fs.f_type)
    }
}

/// `stat` through the wrapper: follows symlinks (and /proc magic links) without opening anything.
public func fileStatus(_ path: String) throws(Errno) -> stat {
    var st = stat()
    _ = try retryingOnInterrupt { stat(path, &st) }
    return st
}

/// `realpath(3)`: absolute, without symlinks, `.` or `..`; nil when the path does not resolve.
public func realPath(_ path: String) -> String? {
    guard let resolved = realpath(path, nil) else { return nil }
    defer { free(resolved) }
    return String(cString: resolved)
}

/// What `stat` says about a file that decisions depend on.
public struct FileIdentity: Hashable, Sendable {
    public var device: UInt64
    public var inode: UInt64
    public var changeTimeNanoseconds: Int64
    public var size: Int64
    public var owner: UInt32
    public var mode: UInt32
    /// fs-verity is enabled on the file (`STATX_ATTR_VERITY`); known only from `FileDescriptor.identity()`.
    public var isVerity = false
    /// The mount the descriptor was opened through (`STATX_MNT_ID`, as mountinfo's first field); 0 when unknown.
    public var mountID: UInt64 = 0
    /// The path is the root of a mount (`STATX_ATTR_MOUNT_ROOT`); known only from `FileDescriptor.identity()`.
    public var isMountRoot = false

    public init(_ st: stat) {
        device = UInt64(st.st_dev); inode = UInt64(st.st_ino); changeTimeNanoseconds = st.ctimeNanoseconds
        size = Int64(st.st_size); owner = st.st_uid; mode = st.st_mode
    }

    init(_ st: appctl_file_status) {
        device = st.device; inode = st.inode; changeTimeNanoseconds = st.change_time_ns
        size = st.size; owner = st.owner; mode = st.mode
        isVerity = st.attributes & APPCTL_STATX_ATTR_VERITY != 0
        mountID = st.mount_id
        isMountRoot = st.attributes & APPCTL_STATX_ATTR_MOUNT_ROOT != 0
    }

    public var isRegularFile: Bool { mode & S_IFMT == S_IFREG }

    /// "major:minor", as /proc/self/mountinfo writes device numbers (Linux dev_t encoding).
    public var deviceName: String {
        let major = ((device >> 8) & 0xfff) | ((device >> 32) & ~UInt64(0xfff))
        let minor = (device & 0xff) | ((device >> 12) & ~UInt64(0xff))
        return "\(major):\(minor)"
    }
}

extension FileDescriptor {
    /// `statx` of the descriptor: what `fstat` says, plus the fs-verity attribute and the mount id, in one call.
    /// `cachedOnly` asks a network or FUSE filesystem nothing (`AT_STATX_DONT_SYNC`): for the mount id, which
    /// the VFS knows; never for decisions, whose ctime must be current.
    public func identity(cachedOnly: Bool = false) throws(Errno) -> FileIdentity {
        var st = appctl_file_status()
        _ = try retryingOnInterrupt { appctl_fd_status(rawValue, cachedOnly ? 1 : 0, &st) }
        return FileIdentity(st)
    }
}

extension FileDescriptor {
    /// Makes this descriptor number refer to what `other` refers to (`dup3(other, self, O_CLOEXEC)`): the file it
    /// referred to loses this reference, as with `close`, but the number stays taken.
    public func replace(with other: FileDescriptor) {
        _ = appctl_replace_descriptor(other.rawValue, rawValue)
    }

    /// An `O_PATH` descriptor of the directory at `path` (no symlink as its last component), looked up from the dentry
    /// cache alone: `wouldBlock` (EAGAIN) when the lookup would have to ask a filesystem, `noSuchCall` before
    /// Linux 5.12 (`openat2` with `RESOLVE_CACHED`).
    public static func openDirectoryPathCached(_ path: String) throws(Errno) -> FileDescriptor {
        let fd = path.withCString { appctl_open_directory_path_cached($0) }
        if fd < 0 { throw Errno.current }
        return FileDescriptor(rawValue: fd)
    }
}

/// The identity (mount id included) of the file at `path`, from the dentry cache alone and through no symlink at all:
/// never waits on a filesystem (`wouldBlock` when the cache cannot answer).
public func fileIdentityCachedNoSymlinks(_ path: String) throws(Errno) -> FileIdentity {
    var st = appctl_file_status()
    let rc = path.withCString { appctl_path_status_cached($0, &st) }
    if rc != 0 { throw Errno.current }
    return FileIdentity(st)
}

/// The identity of the file at `path`, following symlinks and /proc magic links, without opening it.
public func fileIdentity(_ path: String) throws(Errno) -> FileIdentity { FileIdentity(try fileStatus(path)) }

/// The same for a path given as raw bytes (file names on Linux need not be UTF-8).
public func fileIdentity(bytes path: [UInt8]) throws(Errno) -> FileIdentity {
    var st = stat()
    let rc = withCString(path) { stat($0, &st) }
    if rc != 0 { throw Errno.current }
    return FileIdentity(st)
}

/// Calls `body` with `bytes` as a NUL-terminated C string (paths as raw bytes).
public func withCString<R, E: Error>(_ bytes: [UInt8], _ body: (UnsafePointer<CChar>) throws(E) -> R) throws(E) -> R {
    var terminated = bytes
    terminated.append(0)
    var result: Result<R, E>!
    terminated.withUnsafeBufferPointer { buf in
        buf.withMemoryRebound(to: CChar.self) { c in
            do throws(E) { result = .success(try body(c.baseAddress!)) } catch { result = .failure(error) }
        }
    }
    return try result.get()
}

/// Raises the soft limit on open descriptors to the hard limit: every event waiting for a hash holds one.
public func raiseDescriptorLimit() {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
    limit.rlim_cur = limit.rlim_max
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}

extension FileDescriptor {
    /// `flock(LOCK_EX)`, or `LOCK_EX | LOCK_NB` when `wait` is false (then `EWOULDBLOCK` says someone holds it).
    /// Released when the descriptor closes.
    public func lockExclusively(wait: Bool) throws(Errno) {
        _ = try retryingOnInterrupt { flock(rawValue, LOCK_EX | (wait ? 0 : LOCK_NB)) }
    }

    /// Whether some process holds a POSIX record lock on the file (`F_GETLK`): how dpkg marks its database as
    /// in use (`/var/lib/dpkg/lock`), which a reader must not mistake for a finished transaction.
    public func isRecordLockedByAnother() -> Bool {
        var probe = flock()
        probe.l_type = Int16(F_WRLCK)
        probe.l_whence = Int16(SEEK_SET)
        guard fcntl(rawValue, F_GETLK, &probe) == 0 else { return true }
        return probe.l_type != Int16(F_UNLCK)
    }
}
