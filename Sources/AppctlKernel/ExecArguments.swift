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
}

public struct PendingExecError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// Reads the `execve` the thread `tid` waits in. Throws when it cannot be read whole (not blocked in an exec call,
/// a 32-bit call, unreadable memory, more than `argumentLimit` arguments or `byteLimit` bytes): callers fail closed.
/// Runs off the event thread: the memory read can wait on a page the caller mapped from a slow filesystem.
public func pendingExec(ofThread tid: Int32, argumentLimit: Int = 4096, byteLimit: Int = 2 << 20) throws(PendingExecError) -> PendingExec {
    guard let text = try? readSmallFile("/proc/\(tid)/syscall", limit: 4096) else { throw PendingExecError("cannot read /proc/\(tid)/syscall") }
    let fields = text.split(whereSeparator: { $0 == 32 || $0 == 10 }).map { String(decoding: $0, as: UTF8.self) }
    guard fields.count >= 7, let number = Int(fields[0]) else { throw PendingExecError("thread \(tid) is not blocked in a system call") }
    func register(_ i: Int) -> UInt64? { fields[i].hasPrefix("0x") ? UInt64(fields[i].dropFirst(2), radix: 16) : nil }
    let pathAddress: UInt64?, argvAddress: UInt64?
    var directory: Int32? = nil
    var flags: UInt64 = 0
    switch number {
    case execveNumber:
        pathAddress = register(1); argvAddress = register(2)
    case execveatNumber:
        guard let d = register(1), let f = register(5) else { throw PendingExecError("unreadable execveat registers") }
        let fd = Int32(truncatingIfNeeded: d)
        directory = fd == AT_FDCWD ? nil : fd
        flags = f
        pathAddress = register(2); argvAddress = register(3)
    default:
        // Not an exec call from this thread's 64-bit entry (a compat 32-bit execve reports its own numbering).
        throw PendingExecError("thread \(tid) is in system call \(number), not execve")
    }
    guard let pathAddress, let argvAddress else { throw PendingExecError("unreadable exec registers") }
    let memory: FileDescriptor
    do { memory = try FileDescriptor.open("/proc/\(tid)/mem", [.readOnly]) } catch {
        throw PendingExecError("cannot open /proc/\(tid)/mem: \(error)")
    }
    defer { memory.close() }
    var budget = byteLimit
    let pathname = try readString(memory, at: pathAddress, budget: &budget)
    var arguments: [[UInt8]] = []
    if argvAddress != 0 {
        var slot = argvAddress
        while true {
            guard arguments.count <= argumentLimit else { throw PendingExecError("more than \(argumentLimit) arguments") }
            var pointer: UInt64 = 0
            let n = withUnsafeMutableBytes(of: &pointer) { (try? memory.read(into: $0, at: Int64(bitPattern: slot))) ?? -1 }
            guard n == 8 else { throw PendingExecError("cannot read the argument vector") }
            if pointer == 0 { break }
            arguments.append(try readString(memory, at: pointer, budget: &budget))
            slot &+= 8
        }
    }
    let emptyPath = pathname.isEmpty && flags & atEmptyPath != 0
    return PendingExec(directory: directory, pathname: pathname, emptyPath: emptyPath, arguments: arguments)
}

/// A NUL-terminated string of another process, read in page-sized pieces within `budget` bytes.
private func readString(_ memory: FileDescriptor, at address: UInt64, budget: inout Int) throws(PendingExecError) -> [UInt8] {
    guard address < UInt64(Int64.max) else { throw PendingExecError("bad string address") }
    var result: [UInt8] = []
    var cursor = address
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        // Up to the end of the page: the next page may not be mapped even though the string ends on this one.
        let want = min(4096 - Int(cursor & 4095), max(budget, 1))
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
