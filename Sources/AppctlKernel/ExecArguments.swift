#if canImport(Glibc)
import Glibc
#endif

// What a thread that waits in `execve` is about to run it with, and who it is: read from /proc while the kernel holds
// the thread in the exec permission event. At that point the thread's old image is still in place (the permission
// check comes from opening the file, before the new image replaces the old), so its command line in /proc is the
// old program's; the new program's arguments are still in the caller's memory, where `execve`'s own arguments
// point. proc(5): /proc/PID/syscall ("the number of the system call being executed, followed by the values of the
// argument registers ... if the process is blocked"), /proc/PID/mem (ptrace access: the daemon keeps CAP_SYS_PTRACE).

/// System call numbers of this architecture's native entry (asm/unistd_64.h; the Glibc module does not carry them).
#if arch(x86_64)
private let execveNumber = 59, execveatNumber = 322
#elseif arch(arm64)
private let execveNumber = 221, execveatNumber = 281
#endif
/// `AT_EMPTY_PATH` (fcntl.h).
private let atEmptyPath: UInt64 = 0x1000

/// The cgroup v2 path of a thread (the `0::` line of /proc/TID/cgroup), or nil when it cannot be read.
public func cgroupPath(ofThread tid: Int32) -> [UInt8]? {
    guard let bytes = try? readSmallFile("/proc/\(tid)/cgroup", limit: 64 * 1024) else { return nil }
    for line in bytes.split(separator: UInt8(ascii: "\n")) where line.starts(with: "0::".utf8) {
        return Array(line.dropFirst(3))
    }
    return nil
}

/// How many threads the thread's process has (the `Threads:` line of /proc/TID/status); nil when unreadable.
public func threadCount(ofThread tid: Int32) -> Int? {
    guard let bytes = try? readSmallFile("/proc/\(tid)/status", limit: 64 * 1024) else { return nil }
    for line in bytes.split(separator: UInt8(ascii: "\n")) where line.starts(with: "Threads:".utf8) {
        return Int(String(decoding: line.dropFirst(8).filter { $0 != 9 && $0 != 32 }, as: UTF8.self))
    }
    return nil
}

/// The real and effective uid of a thread (the `Uid:` line of /proc/TID/status), or nil when it cannot be read.
public func userIDs(ofThread tid: Int32) -> (real: UInt32, effective: UInt32)? {
    guard let bytes = try? readSmallFile("/proc/\(tid)/status", limit: 64 * 1024) else { return nil }
    for line in bytes.split(separator: UInt8(ascii: "\n")) where line.starts(with: "Uid:".utf8) {
        let fields = line.dropFirst(4).split(whereSeparator: { $0 == 9 || $0 == 32 }).compactMap { UInt32(String(decoding: $0, as: UTF8.self)) }
        guard fields.count >= 2 else { return nil }
        return (fields[0], fields[1])
    }
    return nil
}

/// An `execve`/`execveat` a thread is blocked in: the path it names (relative to `directory`) and the new program's
/// arguments (argv, argv[0] included).
public struct PendingExec: Sendable, Equatable {
    /// `execveat`'s directory descriptor; nil for `execve` or `AT_FDCWD`.
    public var directory: Int32?
    public var pathname: [UInt8]
    /// `execveat` with `AT_EMPTY_PATH` and an empty path: the descriptor itself is the file.
    public var emptyPath: Bool
    public var arguments: [[UInt8]]
    /// The new program's environment (envp).
    public var environment: [[UInt8]]
}

public struct PendingExecError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// Reads the `execve` the thread `tid` waits in. Throws when it cannot be read whole (not blocked in an exec call,
/// a 32-bit call, unreadable memory, more than `argumentLimit` arguments and environment strings or `byteLimit`
/// bytes, or any of it in memory that is not anonymous): callers fail closed.
/// Only anonymous memory (the stack, the heap, private mappings of no file) is read: a page mapped from a file could
/// make the read wait on a filesystem the caller serves (FUSE) for ever. Runs off the event thread all the same.
public func pendingExec(ofThread tid: Int32, argumentLimit: Int = 4096, byteLimit: Int = 256 << 10) throws(PendingExecError) -> PendingExec {
    guard let text = try? readSmallFile("/proc/\(tid)/syscall", limit: 4096) else { throw PendingExecError("cannot read /proc/\(tid)/syscall") }
    let fields = text.split(whereSeparator: { $0 == 32 || $0 == 10 }).map { String(decoding: $0, as: UTF8.self) }
    guard fields.count >= 7, let number = Int(fields[0]) else { throw PendingExecError("thread \(tid) is not blocked in a system call") }
    func register(_ i: Int) -> UInt64? { fields[i].hasPrefix("0x") ? UInt64(fields[i].dropFirst(2), radix: 16) : nil }
    let pathAddress: UInt64?, argvAddress: UInt64?, envpAddress: UInt64?
    var directory: Int32? = nil
    var flags: UInt64 = 0
    switch number {
    case execveNumber:
        pathAddress = register(1); argvAddress = register(2); envpAddress = register(3)
    case execveatNumber:
        guard let d = register(1), let f = register(5) else { throw PendingExecError("unreadable execveat registers") }
        let fd = Int32(truncatingIfNeeded: d)
        directory = fd == AT_FDCWD ? nil : fd
        flags = f
        pathAddress = register(2); argvAddress = register(3); envpAddress = register(4)
    default:
        // Not an exec call from this thread's 64-bit entry (a compat 32-bit execve reports its own numbering).
        throw PendingExecError("thread \(tid) is in system call \(number), not execve")
    }
    guard let pathAddress, let argvAddress, let envpAddress else { throw PendingExecError("unreadable exec registers") }
    let anonymous = try anonymousRanges(ofThread: tid)
    let memory: FileDescriptor
    do { memory = try FileDescriptor.open("/proc/\(tid)/mem", [.readOnly]) } catch {
        throw PendingExecError("cannot open /proc/\(tid)/mem: \(error)")
    }
    defer { memory.close() }
    var budget = byteLimit
    var count = 0
    let pathname = try readString(memory, at: pathAddress, budget: &budget, anonymous: anonymous)
    func readVector(_ address: UInt64) throws(PendingExecError) -> [[UInt8]] {
        var strings: [[UInt8]] = []
        var slot = address
        while address != 0 {
            count += 1
            guard count <= argumentLimit else { throw PendingExecError("more than \(argumentLimit) arguments and environment strings") }
            guard anonymous.contains(slot, 8) else { throw PendingExecError("the argument vector is not in anonymous memory") }
            var pointer: UInt64 = 0
            let n = withUnsafeMutableBytes(of: &pointer) { (try? memory.read(into: $0, at: Int64(bitPattern: slot))) ?? -1 }
            guard n == 8 else { throw PendingExecError("cannot read the argument vector") }
            if pointer == 0 { break }
            strings.append(try readString(memory, at: pointer, budget: &budget, anonymous: anonymous))
            slot &+= 8
        }
        return strings
    }
    let arguments = try readVector(argvAddress)
    let environment = try readVector(envpAddress)
    let emptyPath = pathname.isEmpty && flags & atEmptyPath != 0
    return PendingExec(directory: directory, pathname: pathname, emptyPath: emptyPath, arguments: arguments, environment: environment)
}

/// The thread's mappings of no file (`/proc/TID/maps` lines whose inode is 0): the stack, the heap, anonymous maps.
struct AnonymousRanges {
    var ranges: [(start: UInt64, end: UInt64)] = []
    /// Whether `count` bytes at `address` lie in one such mapping.
    func contains(_ address: UInt64, _ count: Int) -> Bool {
        ranges.contains { address >= $0.start && address &+ UInt64(count) <= $0.end && address &+ UInt64(count) >= address }
    }
}

private func anonymousRanges(ofThread tid: Int32) throws(PendingExecError) -> AnonymousRanges {
    guard let bytes = try? readSmallFile("/proc/\(tid)/maps", limit: 16 << 20) else { throw PendingExecError("cannot read /proc/\(tid)/maps") }
    var result = AnonymousRanges()
    for line in bytes.split(separator: UInt8(ascii: "\n")) {
        // start-end perms offset dev inode [pathname]
        let fields = line.split(separator: UInt8(ascii: " "), maxSplits: 5, omittingEmptySubsequences: true)
        guard fields.count >= 5, fields[4].elementsEqual("0".utf8) else { continue }
        let range = fields[0].split(separator: UInt8(ascii: "-"))
        guard range.count == 2, let start = UInt64(String(decoding: range[0], as: UTF8.self), radix: 16),
              let end = UInt64(String(decoding: range[1], as: UTF8.self), radix: 16) else { continue }
        // [vvar] and [vsyscall] are the kernel's: reading them is harmless, but no argument lives there.
        if fields.count == 6, fields[5].starts(with: "[v".utf8) { continue }
        result.ranges.append((start, end))
    }
    return result
}

/// A NUL-terminated string of another process, read in page-sized pieces within `budget` bytes, only from anonymous
/// memory.
private func readString(_ memory: FileDescriptor, at address: UInt64, budget: inout Int, anonymous: AnonymousRanges) throws(PendingExecError) -> [UInt8] {
    guard address < UInt64(Int64.max) else { throw PendingExecError("bad string address") }
    var result: [UInt8] = []
    var cursor = address
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        guard anonymous.contains(cursor, 1) else { throw PendingExecError("a string of the new command line is not in anonymous memory") }
        // Up to the end of the page: the next page may not be mapped even though the string ends on this one.
        let want = min(4096 - Int(cursor & 4095), max(budget, 1))
        guard anonymous.contains(cursor, want) else { throw PendingExecError("a string of the new command line is not in anonymous memory") }
        let n = chunk.withUnsafeMutableBytes { (try? memory.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<want]), at: Int64(bitPattern: cursor))) ?? -1 }
        guard n > 0 else { throw PendingExecError("cannot read a string of the new command line") }
        if let end = chunk[0..<n].firstIndex(of: 0) {
            result.append(contentsOf: chunk[0..<end])
            budget -= end + 1
            return result
        }
        result.append(contentsOf: chunk[0..<n])
        budget -= n
        guard budget > 0 else { throw PendingExecError("the new command line is longer than the limit") }
        cursor &+= UInt64(n)
    }
}

/// What `trustedResolution` found.
public enum PathTrust: Sendable, Equatable {
    /// The path names this file, and no one but root could have changed that since the kernel looked it up.
    case trusted(FileIdentity)
    /// It resolves through something another user could swap, or through a filesystem whose files are not content
    /// on a disk (procfs, sysfs, FUSE, …: `/proc/self/cmdline` is whatever the reader put in its own arguments).
    case untrusted
    /// Nothing by that name (or a directory).
    case missing
}

/// Filesystems whose files are content root put on a disk or in memory (statfs(2) magic numbers): ext2/3/4, XFS,
/// Btrfs, tmpfs (and devtmpfs), overlayfs, squashfs, EROFS, F2FS, ZFS, vfat. Everything else (procfs, sysfs,
/// cgroup, debugfs, FUSE, network filesystems, …) counts as untrusted.
private let contentFilesystems: Set<Int> = [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994, 0x794C_7630, 0x7371_7368,
                                            0xE0F5_E1E2, 0xF2F5_2010, 0x2FC1_2FC1, 0x4D44]

/// Resolves `path` the way the thread `tid` sees it (absolute: from its root; relative: from `start`, its working
/// directory or an `execveat` directory, as a /proc path), component by component. It is `.trusted` only when no
/// one but root could have changed what it names since the kernel looked it up:
/// - every directory passed through is root's and writable by nobody else (in a sticky directory, the entry must be
///   root's), and every symlink is root's;
/// - every directory is on a filesystem of content (`contentFilesystems`): procfs never, so `/proc/self/…` (which
///   would be the daemon's own) cannot pass for a script.
/// Directories are held as `O_PATH` descriptors (no permission event, nothing read); at most 40 symlinks, as the kernel.
public func trustedResolution(ofThread tid: Int32, path: [UInt8], start: String) -> PathTrust {
    guard let root = try? FileDescriptor.open("/proc/\(tid)/root", [.pathOnly, .directory, .closeOnExec]) else { return .untrusted }
    defer { root.close() }
    guard let rootStatus = try? root.status() else { return .untrusted }
    let absolute = path.first == UInt8(ascii: "/")
    guard var current = try? (absolute ? root.duplicate() : FileDescriptor.open(start, [.pathOnly, .directory, .closeOnExec])) else { return .untrusted }
    defer { current.close() }
    var pending = path.split(separator: UInt8(ascii: "/")).map(Array.init).reversed() as [[UInt8]]
    var links = 0
    while let name = pending.popLast() {
        if name == Array(".".utf8) { continue }
        guard let here = try? current.status(), let magic = try? current.filesystemMagic() else { return .untrusted }
        guard here.st_mode & S_IFMT == S_IFDIR, here.st_uid == 0, contentFilesystems.contains(magic) else { return .untrusted }
        let sticky = here.st_mode & 0o022 != 0
        if sticky && here.st_mode & UInt32(S_ISVTX) == 0 { return .untrusted }
        if name == Array("..".utf8) {
            // Never above the thread's root.
            if here.st_dev == rootStatus.st_dev && here.st_ino == rootStatus.st_ino { continue }
            guard let parent = try? FileDescriptor.open("..", [.pathOnly, .directory, .closeOnExec], relativeTo: current) else { return .untrusted }
            current.close(); current = parent
            continue
        }
        let st: stat
        do { st = try withCString(name, { (c) throws(Errno) -> stat in try linkStatus(cPath: c, relativeTo: current) }) } catch {
            return error == .noSuchFile ? .missing : .untrusted
        }
        if sticky && st.st_uid != 0 { return .untrusted }
        switch st.st_mode & S_IFMT {
        case S_IFLNK:
            guard st.st_uid == 0 else { return .untrusted }
            links += 1
            guard links <= 40, let target = try? withCString(name, { (c) throws(Errno) -> [UInt8] in try linkTarget(cPath: c, relativeTo: current) }), !target.isEmpty else { return .untrusted }
            if target.first == UInt8(ascii: "/") {
                guard let fresh = try? root.duplicate() else { return .untrusted }
                current.close(); current = fresh
            }
            pending.append(contentsOf: target.split(separator: UInt8(ascii: "/")).map(Array.init).reversed())
        case S_IFDIR where !pending.isEmpty:
            guard let next = try? withCString(name, { (c) throws(Errno) -> FileDescriptor in
                try FileDescriptor.open(cPath: c, [.pathOnly, .directory, .noFollow, .closeOnExec], relativeTo: current) }) else { return .untrusted }
            current.close(); current = next
        case S_IFDIR:
            return .missing
        default:
            return pending.isEmpty ? .trusted(FileIdentity(st)) : .missing
        }
    }
    return .missing
}

/// `AT_BASE` of a process's auxiliary vector (/proc/PID/auxv): where the kernel mapped its program interpreter, 0 when
/// it has none, i.e. when the kernel ran the loader itself (`ld.so PROGRAM`) or a statically linked program. Nil when
/// unreadable.
public func interpreterBase(ofProcess pid: Int32) -> UInt64? {
    guard let bytes = try? readSmallFile("/proc/\(pid)/auxv", limit: 64 * 1024), bytes.count % 16 == 0 else { return nil }
    // 64-bit entries only: a 32-bit process's vector (pairs of 32-bit words) must not be misread, so AT_PAGESZ must
    // read as 4096 (or another power of two) for AT_BASE to count.
    var at = 0, base: UInt64?, pageSizeSeen = false
    while at + 16 <= bytes.count {
        var type: UInt64 = 0, value: UInt64 = 0
        for i in 0..<8 { type |= UInt64(bytes[at + i]) << (8 * i); value |= UInt64(bytes[at + 8 + i]) << (8 * i) }
        if type == 0 { break }                                                  // AT_NULL
        if type == 6 { pageSizeSeen = value >= 4096 && value & (value - 1) == 0 }   // AT_PAGESZ
        if type == 7 { base = value }                                           // AT_BASE
        at += 16
    }
    return pageSizeSeen ? base : nil
}

/// Whether the thread is in this process's user namespace. In one of its own, a caller can change its mounts at will,
/// so no path it resolves is "only root could change it" (callers fail closed).
public func sharesOurUserNamespace(thread tid: Int32) -> Bool {
    guard let theirs = try? fileStatus("/proc/\(tid)/ns/user"), let ours = try? fileStatus("/proc/self/ns/user") else { return false }
    return theirs.st_dev == ours.st_dev && theirs.st_ino == ours.st_ino
}

private func linkStatus(cPath: UnsafePointer<CChar>, relativeTo directory: FileDescriptor) throws(Errno) -> stat {
    var st = stat()
    _ = try retryingOnInterrupt { fstatat(directory.rawValue, cPath, &st, AT_SYMLINK_NOFOLLOW) }
    return st
}

private func linkTarget(cPath: UnsafePointer<CChar>, relativeTo directory: FileDescriptor) throws(Errno) -> [UInt8] {
    var buffer = [UInt8](repeating: 0, count: 4096)
    let n = buffer.withUnsafeMutableBytes { b in
        Result { () throws(Errno) -> Int in
            try retryingOnInterrupt { readlinkat(directory.rawValue, cPath, b.baseAddress!.assumingMemoryBound(to: CChar.self), b.count) }
        }
    }
    return Array(buffer[0..<(try n.get())])
}
