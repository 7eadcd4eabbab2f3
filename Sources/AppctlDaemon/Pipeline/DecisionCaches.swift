import AppctlCore
import AppctlKernel
import Synchronization

/// The identity of a file's content as far as the kernel can tell without reading it: a write
/// (through `write()` or a shared mapping) changes ctime, and a restored mtime does not hide it.
public struct FileKey: Hashable, Sendable {
    public var device: UInt64
    public var inode: UInt64
    public var changeTime: Int64
    public var size: Int64
    /// fs-verity is enabled (statx): the content cannot change while the inode lives.
    public var isVerity = false
    /// Owned by root and writable by nobody else (mode, and so the ACL mask, without group/other
    /// write): only such files may get a kernel-side verdict, which a write through a shared
    /// mapping would not clear.
    public var onlyRootCanWrite = false
    /// On a filesystem whose ownership means nothing (FUSE, network): its server can change the content at any
    /// time, even under a running program.
    public var onUntrustedFilesystem = false
    /// Owned by root and readable by nobody else (no group or other read, so no ACL entry grants it either): the
    /// kernel refuses anyone else's open before fanotify asks, so no one but root can hand it to an interpreter.
    public var onlyRootCanRead = false

    public init(_ id: FileIdentity) {
        device = id.device; inode = id.inode; changeTime = id.changeTimeNanoseconds; size = id.size
        onlyRootCanWrite = id.owner == 0 && id.mode & 0o022 == 0 && id.isRegularFile
        onlyRootCanRead = onlyRootCanWrite && id.mode & 0o044 == 0
        isVerity = id.isVerity
    }

    public init(device: UInt64, inode: UInt64, changeTime: Int64, size: Int64, isVerity: Bool = false, onlyRootCanWrite: Bool,
                onlyRootCanRead: Bool = false) {
        self.device = device; self.inode = inode; self.changeTime = changeTime; self.size = size
        self.isVerity = isVerity; self.onlyRootCanWrite = onlyRootCanWrite; self.onlyRootCanRead = onlyRootCanWrite && onlyRootCanRead
    }
}

/// A map with a hard bound: past `limit` entries it is emptied and refills from the next events. Cheaper than
/// an LRU on the event thread, and every cache here must stay bounded whatever an attacker opens.
public struct BoundedCache<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private var entries: [Key: Value] = [:]
    public let limit: Int

    public init(limit: Int) { self.limit = limit }

    public subscript(key: Key) -> Value? { entries[key] }

    public mutating func insert(_ value: Value, for key: Key) {
        if entries.count >= limit { entries.removeAll(keepingCapacity: true) }
        entries[key] = value
    }

    public mutating func removeValue(forKey key: Key) -> Value? { entries.removeValue(forKey: key) }

    public var count: Int { entries.count }
}

/// The daemon's userspace caches, each behind its own lock (they are read by the event thread and written by
/// hash workers). Digests are cached, never decisions: a reload or mode switch takes effect on the next event.
public final class DecisionCaches: Sendable {
    /// Bounds (about 80 and 64 bytes an entry). Files only root can write also live in the kernel-side cache.
    public static let digestLimit = 65_536
    public static let smallLimit = 16_384
    public static let lastExecLimit = 4_096

    /// File identity → digest, for files only root can write (anyone else's file can change without a new
    /// ctime through a shared mapping, so it is hashed on every event).
    let digests = Mutex(BoundedCache<FileKey, SHA256Digest>(limit: digestLimit))
    /// Digest of the content each file had at its last exec, for recognising interpreters only. Sound for
    /// files anyone can write because a file being executed can be neither opened for writing nor mapped
    /// shared-writable (ETXTBSY): a running process's executable is the content its exec was decided on,
    /// and every exec refreshes the entry.
    let execDigests = Mutex(BoundedCache<FileKey, SHA256Digest>(limit: smallLimit))
    /// File identity → content class, so an open of a root-owned file seen before costs one lookup.
    let contentClasses = Mutex(BoundedCache<FileKey, ContentClass>(limit: smallLimit))
    /// File identity → whether it is an ELF program (`ContentClassifier.isELFProgram`), for files only root can write,
    /// while execution profiles are in force.
    let elfPrograms = Mutex(BoundedCache<FileKey, Bool>(limit: smallLimit))
    /// The kernel follows every exec permission event with an open permission event for the same file
    /// (fsnotify_open_perm). That second event repeats the decision silently instead of counting and logging the
    /// same exec twice. Only for files only root can write: reusing the exec's digest for anyone else's file
    /// would save its second hash (-50 µs median per exec), but measured side by side it raised the p99 of such
    /// execs under a CPU-bound load from 1-2 ms to 4 ms (tools/bench hol); so those files are hashed for both.
    let lastExec = Mutex(BoundedCache<Int32, FileKey>(limit: lastExecLimit))
    /// Thread → the `#!` script it exec'd last, while execution profiles are in force (`ProfileGate`): the
    /// interpreter's exec that follows in the same call names the script, not the interpreter.
    let scriptExecs = Mutex(BoundedCache<Int32, FileKey>(limit: lastExecLimit))

    public init() {}

    func digest(of key: FileKey) -> SHA256Digest? { digests.withLock { $0[key] } }

    /// What `compute` says of the file's bytes, from `cache` when the file is only root's (anyone else's can change
    /// without a new key), else computed every time.
    func classified<Value: Sendable>(_ cache: borrowing Mutex<BoundedCache<FileKey, Value>>, _ key: FileKey, _ compute: () -> Value) -> Value {
        if key.onlyRootCanWrite, let known = cache.withLock({ $0[key] }) { return known }
        let value = compute()
        if key.onlyRootCanWrite { cache.withLock { $0.insert(value, for: key) } }
        return value
    }

    /// Callers check that only root can write the file.
    func remember(_ digest: SHA256Digest, for key: FileKey) { digests.withLock { $0.insert(digest, for: key) } }

    func rememberExec(_ key: FileKey, _ digest: SHA256Digest) { execDigests.withLock { $0.insert(digest, for: key) } }

    /// What an interpreter check may use to recognise a process's executable: its exec digest, else its cached digest.
    func executableDigest(_ key: FileKey) -> SHA256Digest? {
        execDigests.withLock { $0[key] } ?? digest(of: key)
    }
}
