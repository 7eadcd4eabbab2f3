import _AppctlShims
#if canImport(Glibc)
import Glibc
#endif

/// A fanotify notification group (`fanotify_init(2)`): the daemon's one connection to the kernel's
/// permission checks. Every permission event read from it must be answered, or the process that
/// caused it waits; closing the group makes the kernel allow whatever is pending.
public struct FanotifyGroup: Sendable {
    public let descriptor: FileDescriptor

    /// Wraps a group descriptor that `create` made.
    public init(descriptor: FileDescriptor) { self.descriptor = descriptor }

    /// Events of interest, `mask` bits of `fanotify_mark(2)`.
    public struct Events: OptionSet, Sendable {
        public var rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        /// `FAN_OPEN_EXEC_PERM` — a file is opened to be executed (execve, uselib, the loader's `PROT_EXEC` maps of the program).
        public static let openExecPermission = Events(rawValue: UInt64(FAN_OPEN_EXEC_PERM))
        /// `FAN_OPEN_PERM` — any open.
        public static let openPermission = Events(rawValue: UInt64(FAN_OPEN_PERM))
        /// `FAN_OPEN_EXEC` — a file was opened to be executed, after every permission check passed (a notification).
        public static let openExec = Events(rawValue: UInt64(FAN_OPEN_EXEC))
        /// `FAN_ATTRIB` — metadata changed: owner, mode, ACL and other extended attributes, link count, times
        /// (a notification; needs a `FAN_REPORT_FID` group).
        public static let attributes = Events(rawValue: UInt64(FAN_ATTRIB))
        /// `FAN_CLOSE_WRITE` — a file opened for writing was closed (a notification, not a question).
        public static let closeWrite = Events(rawValue: UInt64(FAN_CLOSE_WRITE))
        /// `FAN_Q_OVERFLOW` — the event queue overflowed. For a group with a bounded queue the kernel then drops new
        /// events, permission events included, and allows what they asked; the content group's queue is unlimited.
        public static let queueOverflow = Events(rawValue: UInt64(FAN_Q_OVERFLOW))
    }

    /// `fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE | FAN_UNLIMITED_MARKS |
    /// FAN_REPORT_TID, O_RDONLY | O_CLOEXEC)`. `FAN_CLASS_CONTENT` is the class for permission decisions based on file content.
    /// Unlimited queue: with the default bound (16,384 events) the kernel drops a new permission event when the
    /// queue is full and **allows** the access (fsnotify_add_event returns the overflow, and the permission
    /// wait is skipped): a stalled daemon would turn into an open door. Unlimited marks: the kernel-side verdict
    /// cache places an inode mark per cached file, and the per-user mark limit (`max_user_marks`) must not stop
    /// new filesystems from being marked. Both need `CAP_SYS_ADMIN`. (`O_LARGEFILE` is forced by the kernel on 64-bit.)
    /// `FAN_REPORT_TID`: events name the thread, not the process, so the open that completes an exec is told apart
    /// from a sibling thread's open of the same file (a review showed a `dlopen` passing for the exec's own open
    /// while the exec's hash ran).
    public static func create() throws(Errno) -> FanotifyGroup {
        let fd = try retryingOnInterrupt {
            fanotify_init(UInt32(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE | FAN_UNLIMITED_MARKS | FAN_REPORT_TID),
                          UInt32(O_RDONLY | O_CLOEXEC))
        }
        return FanotifyGroup(descriptor: FileDescriptor(rawValue: fd))
    }

    /// A notification group that only counts: `fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_FID | FAN_CLOEXEC |
    /// FAN_NONBLOCK)`. With `FAN_REPORT_FID` an event carries a file handle instead of an open descriptor, so
    /// the kernel opens nothing per event, and nobody waits for it. The queue keeps its default bound (16,384
    /// events): a reader that stalls loses counts (`FAN_Q_OVERFLOW`), never kernel memory without limit.
    public static func createCounter() throws(Errno) -> FanotifyGroup {
        let fd = try retryingOnInterrupt {
            fanotify_init(UInt32(FAN_CLASS_NOTIF | FAN_REPORT_FID | FAN_CLOEXEC | FAN_NONBLOCK), UInt32(O_RDONLY))
        }
        return FanotifyGroup(descriptor: FileDescriptor(rawValue: fd))
    }

    /// A notification group whose events carry an open descriptor of the file (`FAN_CLASS_NOTIF | FAN_CLOEXEC |
    /// FAN_NONBLOCK`, read-only descriptors): for `FAN_CLOSE_WRITE`, which the pre-hasher reads. Its queue keeps
    /// the default bound (16,384 events): a reader that lags loses notifications (`FAN_Q_OVERFLOW`), never kernel
    /// memory without limit, and nobody waits for it.
    public static func createNotifier() throws(Errno) -> FanotifyGroup {
        let fd = try retryingOnInterrupt {
            fanotify_init(UInt32(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK), UInt32(O_RDONLY | O_CLOEXEC))
        }
        return FanotifyGroup(descriptor: FileDescriptor(rawValue: fd))
    }

    /// A notification group that watches the metadata of the inodes whose verdict the kernel holds:
    /// `fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_FID | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_MARKS)`.
    /// Its queue keeps the default bound: an overflow notice means "something changed" just as well.
    public static func createAttributeWatch() throws(Errno) -> FanotifyGroup {
        let fd = try retryingOnInterrupt {
            fanotify_init(UInt32(FAN_CLASS_NOTIF | FAN_REPORT_FID | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_MARKS), UInt32(O_RDONLY))
        }
        return FanotifyGroup(descriptor: FileDescriptor(rawValue: fd))
    }

    /// An inode mark: `events` on the inode behind `descriptor` are reported to this group, until the inode is
    /// evicted (`FAN_MARK_EVICTABLE`: the mark does not pin it) or the group's inode marks are flushed.
    /// `fanotify_mark(FAN_MARK_ADD | FAN_MARK_EVICTABLE, events, descriptor, NULL)`.
    public func watchInode(of descriptor: Int32, events: Events) throws(Errno) {
        _ = try retryingOnInterrupt {
            fanotify_mark(self.descriptor.rawValue, UInt32(FAN_MARK_ADD | FAN_MARK_EVICTABLE), events.rawValue, descriptor, nil)
        }
    }

    /// Reads every waiting event of a counting group: how many carry `events`, and whether the queue
    /// overflowed since the last read. Events of a `FAN_REPORT_FID` group have no descriptor to close.
    public func drainCount(of events: Events) -> (count: Int, overflowed: Bool) {
        var count = 0
        var overflowed = false
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 8)
        defer { buffer.deallocate() }
        while true {
            guard let n = try? descriptor.read(into: buffer), n > 0 else { return (count, overflowed) }
            FanotifyEvent.walk(UnsafeRawBufferPointer(rebasing: buffer[0..<n])) { event in
                if event.mask & events.rawValue != 0 { count += 1 }
                if event.mask & Events.queueOverflow.rawValue != 0 { overflowed = true }
            }
        }
    }

    /// Marks the whole filesystem (superblock) that `path` is on, in every mount namespace:
    /// `fanotify_mark(FAN_MARK_ADD | FAN_MARK_FILESYSTEM, events, AT_FDCWD, path)`.
    public func markFilesystem(of path: String, events: Events) throws(Errno) {
        _ = try retryingOnInterrupt {
            fanotify_mark(descriptor.rawValue, UInt32(FAN_MARK_ADD | FAN_MARK_FILESYSTEM), events.rawValue, AT_FDCWD, path)
        }
    }

    /// Marks the filesystem mounted at `mountPoint` only if the path still leads to that mount (mountinfo's
    /// mount id, compared with `statx(STATX_MNT_ID)`; the superblock `device` where the kernel does not report
    /// mount ids): the path is pinned with an `O_PATH|O_NOFOLLOW` descriptor (no open event, no symlink in the
    /// last component), checked, and marked through `/proc/self/fd/N`, so a rename or a new mount between
    /// reading mountinfo and marking cannot redirect the mark elsewhere. Returns false when it no longer does.
    /// (Not the device number alone: on btrfs, `st_dev` is the subvolume's own anonymous device, never the
    /// superblock's that mountinfo shows, and such a check refused every btrfs mount.)
    public func markVerifiedFilesystem(mountPoint: String, mountID: UInt64, device: String, events: Events) throws(Errno) -> Bool {
        let fd = try FileDescriptor.open(mountPoint, [.pathOnly, .noFollow, .directory])
        defer { fd.close() }
        return try markVerifiedFilesystem(pinned: fd, mountID: mountID, device: device, events: events)
    }

    /// The same through a descriptor the caller pinned (`O_PATH`, no symlink as its last component).
    public func markVerifiedFilesystem(pinned fd: FileDescriptor, mountID: UInt64, device: String, events: Events) throws(Errno) -> Bool {
        // Without asking the filesystem: a FUSE server that never answers a GETATTR must not stall the marking
        // of every filesystem after it.
        let identity = try fd.identity(cachedOnly: true)
        guard identity.mountID != 0 ? identity.mountID == mountID : identity.deviceName == device else { return false }
        try markFilesystem(of: "/proc/self/fd/\(fd.rawValue)", events: events)
        return true
    }

    /// Marks one mount — the mount `fd` (an `O_PATH` descriptor) was opened through, in whatever mount namespace
    /// that is — so that `events` through that mount, and no other, are reported:
    /// `fanotify_mark(FAN_MARK_ADD | FAN_MARK_MOUNT, events, AT_FDCWD, "/proc/self/fd/N")`.
    public func markMount(pinned fd: FileDescriptor, events: Events) throws(Errno) {
        _ = try retryingOnInterrupt {
            fanotify_mark(descriptor.rawValue, UInt32(FAN_MARK_ADD | FAN_MARK_MOUNT), events.rawValue, AT_FDCWD, "/proc/self/fd/\(fd.rawValue)")
        }
    }

    /// Removes every mount mark of the group: `fanotify_mark(FAN_MARK_FLUSH | FAN_MARK_MOUNT)`.
    public func flushMountMarks() throws(Errno) {
        _ = try retryingOnInterrupt { fanotify_mark(descriptor.rawValue, UInt32(FAN_MARK_FLUSH | FAN_MARK_MOUNT), 0, AT_FDCWD, nil) }
    }

    /// Kernel-side verdict cache: later `events` on the inode behind `eventDescriptor` are not sent to
    /// the group any more, until the inode is modified through write()/truncate (the kernel clears the
    /// ignore mask on modify events) or evicted from memory (`FAN_MARK_EVICTABLE`: the mark does not pin
    /// it). Not cleared by a write through a shared mapping: callers use it only for files no
    /// untrusted user can write.
    /// `fanotify_mark(FAN_MARK_ADD | FAN_MARK_IGNORE | FAN_MARK_EVICTABLE, events, fd, NULL)`.
    public func ignoreInode(of eventDescriptor: Int32, events: Events) throws(Errno) {
        _ = try retryingOnInterrupt {
            fanotify_mark(descriptor.rawValue, UInt32(FAN_MARK_ADD | FAN_MARK_IGNORE | FAN_MARK_EVICTABLE), events.rawValue,
                          eventDescriptor, nil)
        }
    }

    /// Removes every inode mark of the group — all the ignore marks — and keeps the filesystem marks:
    /// `fanotify_mark(FAN_MARK_FLUSH)` without `FAN_MARK_FILESYSTEM`/`FAN_MARK_MOUNT` flushes inode marks only.
    public func flushInodeMarks() throws(Errno) {
        _ = try retryingOnInterrupt { fanotify_mark(descriptor.rawValue, UInt32(FAN_MARK_FLUSH), 0, AT_FDCWD, nil) }
    }

    /// The answer to a permission event (`FAN_ALLOW` / `FAN_DENY`).
    public enum Verdict: UInt32, Sendable {
        /// `FAN_ALLOW`
        case allow = 0x01
        /// `FAN_DENY` — the caller's open/execve fails with `EPERM`.
        case deny = 0x02
    }

    /// Writes a `struct fanotify_response`. Safe from any thread: each write is one whole response.
    public func respond(to eventDescriptor: Int32, _ verdict: Verdict) throws(Errno) {
        var response = fanotify_response(fd: eventDescriptor, response: verdict.rawValue)
        _ = try retryingOnInterrupt { write(descriptor.rawValue, &response, MemoryLayout<fanotify_response>.size) }
    }

    /// Reads as many events as fit. Returns an empty array when none are waiting (non-blocking group).
    public func readEvents(into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> [FanotifyEvent] {
        let n: Int
        do throws(Errno) {
            n = try descriptor.read(into: buffer)
        } catch where error == .wouldBlock {
            return []
        }
        return FanotifyEvent.parse(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
    }

    public func close() { descriptor.close() }
}

/// One event from the group. `fd` is an open, read-only descriptor of the file the event is about;
/// the receiver closes it after answering.
public struct FanotifyEvent: Sendable, Equatable {
    public init(mask: UInt64, fd: Int32, pid: Int32) { self.mask = mask; self.fd = fd; self.pid = pid }
    public var mask: UInt64
    public var fd: Int32
    public var pid: Int32

    public var isCloseWrite: Bool { mask & UInt64(FAN_CLOSE_WRITE) != 0 }

    public var isPermissionEvent: Bool {
        mask & (UInt64(FAN_OPEN_EXEC_PERM) | UInt64(FAN_OPEN_PERM) | UInt64(FAN_ACCESS_PERM)) != 0
    }

    /// Whether the event is a question about an exec (`FAN_OPEN_EXEC_PERM`).
    public var isExec: Bool { mask & FanotifyGroup.Events.openExecPermission.rawValue != 0 }

    /// The events in a buffer read from a group.
    static func parse(_ bytes: UnsafeRawBufferPointer) -> [FanotifyEvent] {
        var events: [FanotifyEvent] = []
        walk(bytes) { events.append($0) }
        return events
    }

    /// The one walker of `struct fanotify_event_metadata` records: steps by `event_len` (what the FAN_EVENT_OK /
    /// FAN_EVENT_NEXT macros do; they do not import into Swift), and stops at a record that is short, runs past
    /// the buffer or has another metadata version. Records of `FAN_REPORT_FID` groups carry info records after
    /// the metadata; `event_len` covers them, and their `fd` is `FAN_NOFD`.
    public static func walk(_ bytes: UnsafeRawBufferPointer, _ body: (FanotifyEvent) -> Void) {
        var offset = 0
        let headerSize = MemoryLayout<fanotify_event_metadata>.size   // 24
        while offset + headerSize <= bytes.count {
            let length = Int(bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
            let version = bytes.loadUnaligned(fromByteOffset: offset + 4, as: UInt8.self)
            guard length >= headerSize, offset + length <= bytes.count, version == UInt8(FANOTIFY_METADATA_VERSION) else { return }
            body(FanotifyEvent(
                mask: bytes.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self),
                fd: bytes.loadUnaligned(fromByteOffset: offset + 16, as: Int32.self),
                pid: bytes.loadUnaligned(fromByteOffset: offset + 20, as: Int32.self)))
            offset += length
        }
    }
}
