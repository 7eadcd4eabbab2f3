import _AppctlShims
#if canImport(Glibc)
import Glibc
#endif

/// Writes a file so that it appears whole or not at all: a temporary file beside the target,
/// `fsync`, then `rename` over it. On any failure (a full disk included) the temporary file is
/// removed and the target is untouched.
public final class AtomicFileWriter {
    public let path: String
    /// Nil when writing straight into a device or FIFO.
    private let temporaryPath: String?
    public let descriptor: FileDescriptor
    private var finished = false

    /// - Parameter overwrite: when false, fails with `EEXIST` if the target exists (checked again at commit).
    public init(path: String, permissions: mode_t = 0o644, overwrite: Bool = true) throws(Errno) {
        let existing = try? linkStatus(path)
        if !overwrite, existing != nil { throw Errno.fileExists }
        if let existing, existing.isDirectory { throw Errno(rawValue: EISDIR) }
        if let existing, (existing.st_mode & S_IFMT) == S_IFCHR || (existing.st_mode & S_IFMT) == S_IFIFO {
            // /dev/stdout, /dev/null, a pipe: write straight into it. Renaming over it would replace
            // the device node with a regular file.
            descriptor = try FileDescriptor.open(path, [.writeOnly])
            self.path = path
            temporaryPath = nil
            self.overwrite = true
            return
        }
        self.path = path
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { String(path[..<$0]) } ?? "."
        let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
        var attempt = 0
        while true {
            let candidate = "\(directory.isEmpty ? "/" : directory)/.\(base).tmp-\(getpid())-\(attempt)"
            do {
                descriptor = try FileDescriptor.open(candidate, [.writeOnly, .create, .exclusive], permissions: permissions)
                temporaryPath = candidate
                break
            } catch let error where error == .fileExists && attempt < 100 {
                attempt += 1
            }
        }
        // The umask must not widen or narrow what the caller asked for (a private key must be 0600).
        _ = fchmod(descriptor.rawValue, permissions)
        self.overwrite = overwrite
    }

    private let overwrite: Bool

    /// Makes the file visible under its final name.
    public func commit() throws(Errno) {
        precondition(!finished)
        finished = true
        guard let temporaryPath else {
            descriptor.close()
            return
        }
        do {
            try descriptor.sync()
            descriptor.close()
            if overwrite {
                _ = try retryingOnInterrupt { rename(temporaryPath, path) }
            } else {
                // link() fails with EEXIST instead of replacing: no race with another writer.
                _ = try retryingOnInterrupt { link(temporaryPath, path) }
                unlink(temporaryPath)
            }
            // The new name is durable only once the directory is synced (a crash right after a rename can
            // otherwise bring the old file back: a reader told "it is written" must find it after a reboot).
            let slash = path.lastIndex(of: "/")
            let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
            if let dir = try? FileDescriptor.open(directory, [.readOnly, .directory]) {
                try? dir.sync()
                dir.close()
            }
        } catch {
            unlink(temporaryPath)
            throw error
        }
    }

    /// Throws the work away; the target is untouched.
    public func abort() {
        guard !finished else { return }
        finished = true
        descriptor.close()
        if let temporaryPath { unlink(temporaryPath) }
    }

    deinit { abort() }
}

extension AtomicFileWriter {
    /// Writes `bytes` as the whole new content of `path`, atomically: the one helper for the write, commit,
    /// abort-on-failure sequence (state files, metrics, keys).
    public static func write(_ bytes: [UInt8], to path: String, permissions: mode_t = 0o644, overwrite: Bool = true) throws(Errno) {
        let file = try AtomicFileWriter(path: path, permissions: permissions, overwrite: overwrite)
        do throws(Errno) {
            try file.descriptor.writeAll(bytes)
            try file.commit()
        } catch {
            file.abort()
            throw error
        }
    }
}

/// Creates the directory that holds `path` (one level, `mode`), when missing; errors are left to the write
/// that follows, which names the path.
public func createParentDirectory(of path: String, mode: mode_t) {
    guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return }
    if mkdir(String(path[..<slash]), mode) == 0 { chmod(String(path[..<slash]), mode) }
}

/// Copies a file, atomically (the target appears whole or not at all), streaming 1 MiB at a time.
public func copyFile(from source: String, to target: String, permissions: mode_t) throws(Errno) {
    let input = try FileDescriptor.open(source, [.readOnly, .nonBlocking])
    defer { input.close() }
    let file = try AtomicFileWriter(path: target, permissions: permissions)
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
    defer { buffer.deallocate() }
    do throws(Errno) {
        while true {
            let n = try input.read(into: buffer)
            if n == 0 { break }
            try file.descriptor.writeAll(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
        try file.commit()
    } catch {
        file.abort()
        throw error
    }
}

/// The names in a directory, without `.` and `..`.
public func listDirectory(_ path: String) throws(Errno) -> [String] {
    guard let dir = opendir(path) else { throw Errno.current }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafePointer(to: &entry.pointee.d_name) {
            String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
        }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}

/// Swaps two paths in one step (`renameat2(RENAME_EXCHANGE)`): a directory of files is replaced by another with no
/// moment at which a reader sees neither, or half of each. Both must exist, on one filesystem.
public func exchangePaths(_ a: String, _ b: String) throws(Errno) {
    _ = try retryingOnInterrupt { appctl_rename_exchange(a, b) }
}

/// `fsync` on a directory: a rename or exchange inside it survives a power cut once this returns.
public func syncDirectory(_ path: String) throws(Errno) {
    let fd = try FileDescriptor.open(path, [.readOnly, .directory])
    defer { fd.close() }
    try fd.sync()
}

/// Removes a directory of plain files (one level: what a sync stages), then the directory itself. Missing is fine;
/// a symlink is removed as a link, never followed (its target's files are not ours to delete).
public func removeFlatDirectory(_ path: String) {
    guard let st = try? linkStatus(path) else { return }
    guard st.isDirectory else { unlink(path); return }
    for name in (try? listDirectory(path)) ?? [] { unlink(path + "/" + name) }
    rmdir(path)
}
