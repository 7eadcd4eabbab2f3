#if canImport(Glibc)
import Glibc
#endif

// Readers of /proc: what a process is, where a descriptor leads. Each returns what it could read; a process
// may be gone by the time it is asked.

/// The path a descriptor refers to, as `/proc/self/fd/N` shows it (`(deleted)` suffix included).
public func pathOfDescriptor(_ fd: Int32) -> String {
    readLink("/proc/self/fd/\(fd)") ?? "?"
}

public func readLink(_ path: String) -> String? {
    var buffer = [UInt8](repeating: 0, count: 4096)
    let n = buffer.withUnsafeMutableBufferPointer { b in
        b.withMemoryRebound(to: CChar.self) { readlink(path, $0.baseAddress!, 4095) }
    }
    guard n >= 0 else { return nil }
    return String(decoding: buffer[0..<n], as: UTF8.self)
}

/// What /proc says about a process, for event records. Missing fields stay empty (the process may be gone).
public struct ProcessSnapshot: Sendable {
    public var exe = ""
    public var comm = ""
    public var ppid: Int32 = 0
    public var uid: Int64 = -1
    /// The process the thread belongs to (`Tgid`); the permission group reports thread ids.
    public var processID: Int32 = 0

    public init(pid: Int32) {
        processID = pid
        exe = readLink("/proc/\(pid)/exe") ?? ""
        do {
            if let bytes = try? readSmallFile("/proc/\(pid)/status", limit: 1 << 16) {
                for line in bytes.split(separator: UInt8(ascii: "\n")) {
                    let text = String(decoding: line, as: UTF8.self)
                    if text.hasPrefix("Name:") { comm = text.dropFirst(5).trimmingWhitespace() }
                    if text.hasPrefix("PPid:") { ppid = Int32(text.dropFirst(5).trimmingWhitespace()) ?? 0 }
                    if text.hasPrefix("Tgid:") { processID = Int32(text.dropFirst(5).trimmingWhitespace()) ?? pid }
                    if text.hasPrefix("Uid:") { uid = Int64(text.dropFirst(4).split(whereSeparator: { $0 == "\t" || $0 == " " }).first ?? "") ?? -1 }
                }
            }
        }
    }
}

extension Substring {
    func trimmingWhitespace() -> String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}
