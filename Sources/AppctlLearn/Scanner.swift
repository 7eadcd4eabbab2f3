import AppctlCore
import AppctlKernel
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What `appctl learn` scans and how.
public struct LearnOptions: Sendable {
    /// Where executable content lives on a Debian server. Writable scratch places
    /// (`/tmp`, `/var/tmp`, `/dev/shm`, `/run`) are left out on purpose: what sits there is
    /// not part of the machine's software and must stay unknown.
    public static let defaultRoots = [
        "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",   // the last six only where not usr-merged symlinks
        "/opt", "/etc", "/srv", "/var/lib", "/var/opt", "/var/www", "/root", "/home",
    ]

    public var roots: [String]
    public var excludes: [String]
    public var dpkg: DpkgDatabase?
    public var includeModified: Bool
    public var threads: Int
    /// Path (as on this machine) → SHA-256 and package, from `.deb`s verified through the archive's signed chain
    /// (`learn --apt-cache`). Such a file is checked against that digest instead of dpkg's MD5 record.
    public var archiveDigests: [String: ArchiveDigest] = [:]
    /// Called between listing and hashing with the files found; tests use it to make files
    /// vanish or change at exactly that moment.
    public var afterListing: (@Sendable ([String]) -> Void)?

    public init(roots: [String], excludes: [String] = [], dpkg: DpkgDatabase? = nil, includeModified: Bool = false,
                threads: Int = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))) {
        self.roots = roots; self.excludes = excludes; self.dpkg = dpkg; self.includeModified = includeModified; self.threads = threads
    }
}

/// A packaged file's digest as its verified `.deb` holds it.
public struct ArchiveDigest: Sendable, Hashable {
    public var digest: SHA256Digest
    public var package: String
    public init(digest: SHA256Digest, package: String) { self.digest = digest; self.package = package }
}

/// A file the scan saw but did not put into the inventory, and why.
public struct Exclusion: Sendable, Hashable {
    public enum Reason: Sendable, Hashable, CustomStringConvertible {
        /// Owned by a package, but its content no longer matches the package's recorded MD5.
        case modifiedFromPackage(String)
        case unreadable(Errno)
        /// Size, mtime or ctime changed while it was hashed: the digest may be of neither version.
        case changedDuringScan
        case unreadableDirectory(Errno)

        public var description: String {
            switch self {
            case .modifiedFromPackage(let p): return "content differs from package \(p)"
            case .unreadable(let e): return "unreadable: \(e)"
            case .changedDuringScan: return "changed during the scan"
            case .unreadableDirectory(let e): return "directory unreadable: \(e)"
            }
        }

        public var category: String {
            switch self {
            case .modifiedFromPackage: return "modified-from-package"
            case .unreadable: return "unreadable"
            case .changedDuringScan: return "changed-during-scan"
            case .unreadableDirectory: return "unreadable-directory"
            }
        }
    }

    public var path: String
    public var reason: Reason

    public init(path: String, reason: Reason) { self.path = path; self.reason = reason }
}

public struct ScanProgress: Sendable {
    public var walking: Bool
    public var filesFound: Int
    public var filesExamined: Int
    public var bytesHashed: Int64
}

public struct LearnReport: Sendable {
    public var entries: [AllowEntry] = []
    public var exclusions: [Exclusion] = []
    /// Regular files looked at (executable or not).
    public var filesExamined = 0
    /// FIFOs, sockets, devices and symlinks met and not opened.
    public var specialFilesSkipped = 0
    /// Files that disappeared between the directory listing and the open.
    public var vanished = 0
    public var bytesHashed: Int64 = 0
    public var seconds = 0.0
    /// Mount points of pseudo filesystems (proc, sysfs, ...) that were not entered.
    public var pseudoMountsSkipped: [String] = []
    public var rootsScanned: [String] = []
}

/// Filesystem magic numbers of pseudo filesystems never worth scanning (from linux/magic.h).
let pseudoFilesystemMagics: Set<Int> = [
    0x9fa0,      // PROC_SUPER_MAGIC
    0x62656572,  // SYSFS_MAGIC
    0x1cd1,      // DEVPTS_SUPER_MAGIC
    0x27e0eb,    // CGROUP_SUPER_MAGIC
    0x63677270,  // CGROUP2_SUPER_MAGIC
    0x64626720,  // DEBUGFS_MAGIC
    0x74726163,  // TRACEFS_MAGIC
    0x73636673,  // SECURITYFS_MAGIC
    0xcafe4a11,  // BPF_FS_MAGIC
    0x6165676c,  // PSTOREFS_MAGIC
    0x62656570,  // CONFIGFS_MAGIC
    0x65735543,  // FUSECTL_SUPER_MAGIC
    0x19800202,  // MQUEUE_MAGIC
    0x958458f6,  // HUGETLBFS_MAGIC
    0x0187,      // AUTOFS_SUPER_MAGIC
    0x42494e4d,  // BINFMTFS_MAGIC
    0xde5e81e4,  // EFIVARFS_MAGIC
    0xf97cff8c,  // SELINUX_MAGIC
    0x6e736673,  // NSFS_MAGIC
]

/// Builds an inventory from what is on disk: walks the roots on one thread, then classifies and
/// hashes on every core. Never follows a symlink, never opens a FIFO/device/socket, never
/// enters a pseudo filesystem, and reports rather than stops on files it cannot read.
public final class Scanner: Sendable {
    public let options: LearnOptions

    public init(options: LearnOptions) { self.options = options }

    private final class Counters: Sendable {
        let next = Atomic<Int>(0)
        let examined = Atomic<Int>(0)
        let bytes = Atomic<Int64>(0)
    }

    private struct WorkerResult {
        var entries: [AllowEntry] = []
        var exclusions: [Exclusion] = []
        var special = 0
        var vanished = 0
    }

    public func run(progress: ((ScanProgress) -> Void)? = nil) -> LearnReport {
        let start = monotonicSeconds()
        var report = LearnReport()
        var candidates: [[UInt8]] = []
        walk(into: &candidates, report: &report, progress: progress)
        options.afterListing?(candidates.map { String(decoding: $0, as: UTF8.self) })

        let counters = Counters()
        let results = Mutex<[WorkerResult]>([])
        let finished = DispatchSemaphore(value: 0)
        let work = candidates
        let threads = max(1, options.threads)
        DispatchQueue.global().async { [self] in
            DispatchQueue.concurrentPerform(iterations: threads) { _ in
                var local = WorkerResult()
                let hasher = FileHasher()
                while true {
                    let i = counters.next.wrappingAdd(1, ordering: .relaxed).oldValue
                    if i >= work.count { break }
                    examine(work[i], hasher: hasher, into: &local, counters: counters)
                    counters.examined.wrappingAdd(1, ordering: .relaxed)
                }
                results.withLock { $0.append(local) }
            }
            finished.signal()
        }
        while finished.wait(timeout: .now() + .milliseconds(200)) == .timedOut {
            progress?(ScanProgress(walking: false, filesFound: work.count,
                                   filesExamined: counters.examined.load(ordering: .relaxed),
                                   bytesHashed: counters.bytes.load(ordering: .relaxed)))
        }
        for r in results.withLock({ $0 }) {
            report.entries += r.entries
            report.exclusions += r.exclusions
            report.specialFilesSkipped += r.special
            report.vanished += r.vanished
        }
        report.entries.sort(by: AllowEntry.canonicallyOrdered)
        report.exclusions.sort { $0.path < $1.path }
        report.filesExamined = work.count - report.vanished
        report.bytesHashed = counters.bytes.load(ordering: .relaxed)
        report.seconds = monotonicSeconds() - start
        return report
    }

    // MARK: - Walking

    private func walk(into candidates: inout [[UInt8]], report: inout LearnReport, progress: ((ScanProgress) -> Void)?) {
        var visitedDirectories = Set<DeviceInode>()
        let excludes = Set(options.excludes.map { normalized($0) })
        var lastProgress = monotonicSeconds()
        for root in options.roots {
            // A root that is itself a symlink (usr-merged /bin → usr/bin) is covered by its target.
            guard let st = try? linkStatus(root), st.isDirectory else { continue }
            let rootPath = normalized(root)
            if excludes.contains(rootPath) { continue }
            report.rootsScanned.append(rootPath)
            var stack: [[UInt8]] = [Array(rootPath.utf8)]
            var rootDevice: UInt64? = nil
            while let directory = stack.popLast() {
                scanDirectory(directory, rootDevice: &rootDevice, visited: &visitedDirectories, excludes: excludes,
                              stack: &stack, candidates: &candidates, report: &report)
                if let progress, monotonicSeconds() - lastProgress > 0.2 {
                    lastProgress = monotonicSeconds()
                    progress(ScanProgress(walking: true, filesFound: candidates.count, filesExamined: 0, bytesHashed: 0))
                }
            }
        }
    }

    private func scanDirectory(_ path: [UInt8], rootDevice: inout UInt64?, visited: inout Set<DeviceInode>,
                               excludes: Set<String>, stack: inout [[UInt8]], candidates: inout [[UInt8]],
                               report: inout LearnReport) {
        let display = String(decoding: path, as: UTF8.self)
        let fd: FileDescriptor
        do throws(Errno) {
            fd = try withCString(path) { p throws(Errno) in
                try FileDescriptor.open(cPath: p, [.readOnly, .directory, .noFollow, .nonBlocking])
            }
        } catch {
            if error != .noSuchFile && error != .tooManySymlinks {
                report.exclusions.append(Exclusion(path: display, reason: .unreadableDirectory(error)))
            }
            return
        }
        guard let st = try? fd.status() else { fd.close(); return }
        let id = DeviceInode(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
        // A bind mount can make a directory its own descendant: enter each directory once.
        guard visited.insert(id).inserted else { fd.close(); return }
        if rootDevice == nil { rootDevice = UInt64(st.st_dev) }
        if UInt64(st.st_dev) != rootDevice {
            if let magic = try? fd.filesystemMagic(), pseudoFilesystemMagics.contains(magic) {
                report.pseudoMountsSkipped.append(display)
                fd.close()
                return
            }
        }
        guard let dir = fdopendir(fd.rawValue) else { fd.close(); return }
        defer { closedir(dir) }   // closes fd too
        while let entry = readdir(dir) {
            var nameBytes = withUnsafePointer(to: &entry.pointee.d_name) { p in
                Array(UnsafeRawBufferPointer(start: p, count: Int(strlen(UnsafeRawPointer(p).assumingMemoryBound(to: CChar.self)))))
            }
            if nameBytes == [46] || nameBytes == [46, 46] { continue }
            var child = path
            if child.last != UInt8(ascii: "/") { child.append(UInt8(ascii: "/")) }
            child.append(contentsOf: nameBytes)
            nameBytes.removeAll()
            var type = Int32(entry.pointee.d_type)
            if type == Int32(DT_UNKNOWN) {
                var cst = stat()
                let rc = withCString(child) { fstatat(AT_FDCWD, $0, &cst, AT_SYMLINK_NOFOLLOW) }
                if rc != 0 { continue }
                type = cst.isDirectory ? Int32(DT_DIR) : cst.isRegularFile ? Int32(DT_REG) : Int32(DT_FIFO)
            }
            switch type {
            case Int32(DT_DIR):
                if !excludes.contains(String(decoding: child, as: UTF8.self)) { stack.append(child) }
            case Int32(DT_REG):
                candidates.append(child)
            default:
                report.specialFilesSkipped += 1
            }
        }
    }

    // MARK: - Examining one file

    private func examine(_ path: [UInt8], hasher: FileHasher, into result: inout WorkerResult, counters: Counters) {
        let display = String(decoding: path, as: UTF8.self)
        let fd: FileDescriptor
        do throws(Errno) {
            fd = try withCString(path) { p throws(Errno) in
                // O_NONBLOCK: if the file was replaced by a FIFO since the listing, the open returns
                // at once instead of waiting for a writer; O_NOFOLLOW: a symlink put in its place is refused.
                do throws(Errno) {
                    return try FileDescriptor.open(cPath: p, [.readOnly, .noFollow, .nonBlocking, .noControllingTerminal, .noAccessTime])
                } catch where error == .notPermitted {
                    return try FileDescriptor.open(cPath: p, [.readOnly, .noFollow, .nonBlocking, .noControllingTerminal])
                }
            }
        } catch {
            switch error {
            case .noSuchFile: result.vanished += 1
            case .tooManySymlinks: result.special += 1
            default: result.exclusions.append(Exclusion(path: display, reason: .unreadable(error)))
            }
            return
        }
        defer { fd.close() }
        do throws(Errno) {
            let before = try fd.status()
            guard before.isRegularFile else { result.special += 1; return }
            let head = try hasher.head(fd, count: ContentClassifier.headerLength)
            let kind = ContentClassifier.classify(head: head, executableBit: before.isExecutableByMode, readAt: fd.readBytes)
            guard let kind else { return }
            let records = options.dpkg?.lookup(display)
            // fs-verity is measured before hashing: once enabled it stays, and the content with it, so the hash
            // below is of the very content the verity digest stands for. Measured after, a file's owner could
            // rewrite it and enable fs-verity in between, pairing harmless content with a digest of their choosing.
            let verity = fd.verityDigestIfAny
            // Interpreters are recognised by what they are (their dynamic symbols), not by name: a Python built into
            // /usr/local or pyenv is one. Read before the hash; the checks after it catch a change in between.
            let interpreter = kind == .elfExec ? InterpreterDetector.detect(fileSize: UInt64(before.st_size), readAt: fd.readBytes) : nil
            let hashed = try hasher.hash(fd, withMD5: records != nil, sizeHint: Int64(before.st_size))
            counters.bytes.wrappingAdd(hashed.bytesRead, ordering: .relaxed)
            let after = try fd.status()
            guard after.st_size == before.st_size, hashed.bytesRead == Int64(before.st_size),
                  after.mtimeNanoseconds == before.mtimeNanoseconds, after.ctimeNanoseconds == before.ctimeNanoseconds else {
                result.exclusions.append(Exclusion(path: display, reason: .changedDuringScan))
                return
            }
            var origin = Origin.local
            if let archived = options.archiveDigests[display] {
                // The archive's own digest (signed chain), not the MD5 list dpkg keeps.
                if archived.digest == hashed.sha256 {
                    origin = .dpkg(package: archived.package)
                } else {
                    result.exclusions.append(Exclusion(path: display, reason: .modifiedFromPackage(archived.package)))
                    guard options.includeModified else { return }
                }
            } else if let records {
                if let match = records.first(where: { $0.md5 == hashed.md5 }) {
                    origin = .dpkg(package: match.package)
                } else {
                    result.exclusions.append(Exclusion(path: display, reason: .modifiedFromPackage(records[0].package)))
                    // With --include-modified the admin vouches for the file; it is no longer the package's.
                    guard options.includeModified else { return }
                }
            }
            // With fs-verity enabled, hosts can decide from the kernel's O(1) measurement instead of hashing.
            result.entries.append(AllowEntry(digest: hashed.sha256, size: UInt64(hashed.bytesRead), kind: kind,
                                             origin: origin, path: path, verity: verity, interpreter: interpreter))
        } catch {
            result.exclusions.append(Exclusion(path: display, reason: .unreadable(error)))
        }
    }

    /// Absolute and free of symlinks, so that `--exclude` matches however either was spelled.
    private func normalized(_ path: String) -> String {
        var p = realPath(path) ?? path
        while p.count > 1 && p.hasSuffix("/") { p.removeLast() }
        return p
    }
}

struct DeviceInode: Hashable {
    var device: UInt64
    var inode: UInt64
}

