import AppctlCore
import AppctlKernel
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What the first bytes of an opened file say about it.
enum ContentClass: Sendable {
    /// An ELF object: whoever opens it may be about to map it as code (the loader, dlopen,
    /// LD_PRELOAD, LD_AUDIT, `ld.so ./x`). Decided like an exec.
    case elf
    /// Starts with `#!`.
    case shebang
    /// Anything else: decided only when an interpreter opens it as its program.
    case other
}

/// The interpreter rule (Policies/INTERPRETERS.md): a process counts as an interpreter when its
/// executable is one of the configured interpreters, recognised by **content** (the digest of what it
/// exec'd, so a renamed copy of dash is still dash) or, when the exec predates the daemon, by path.
/// An interpreter's open is "the program" when the opened file is named on its command line
/// (`sh x.sh`, `python3 -u x.py`, `./x.sh` via its shebang) or starts with `#!`.
struct InterpreterRule: Sendable {
    /// The default interpreters, resolved to real paths at start-up where they exist.
    static let defaultCandidates = [
        "/bin/sh", "/bin/dash", "/bin/bash", "/bin/rbash", "/usr/bin/bash", "/usr/bin/dash", "/usr/bin/zsh", "/usr/bin/ksh",
        "/usr/bin/mksh", "/usr/bin/fish", "/usr/bin/tcsh", "/usr/bin/csh", "/usr/bin/busybox",
        "/usr/bin/python3", "/usr/bin/python2", "/usr/bin/python", "/usr/bin/perl", "/usr/bin/ruby", "/usr/bin/php",
        "/usr/bin/node", "/usr/bin/nodejs", "/usr/bin/tclsh", "/usr/bin/wish", "/usr/bin/lua", "/usr/bin/luajit",
        "/usr/bin/gawk", "/usr/bin/mawk", "/usr/bin/awk", "/usr/bin/Rscript", "/usr/bin/guile", "/usr/bin/expect",
        // The loader run as a program is an interpreter of its command line: `ld.so /usr/bin/python3 x.py`
        // has the loader as its executable, and x.py on its command line.
        "/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1", "/lib/ld-linux.so.2",
    ]

    let paths: Set<String>
    let digests: Set<SHA256Digest>

    /// Resolves the configured paths and hashes the interpreters found (at start-up, before any mark exists).
    init(configured: [String]) {
        var paths = Set<String>()
        var digests = Set<SHA256Digest>()
        let hasher = FileHasher()
        for candidate in configured {
            guard let resolved = realPath(candidate) else { continue }
            paths.insert(resolved)
            if let fd = try? FileDescriptor.open(resolved, [.readOnly, .nonBlocking]) {
                if let result = try? hasher.hash(fd) { digests.insert(result.sha256) }
                fd.close()
            }
        }
        self.paths = paths
        self.digests = digests
    }

    /// Whether `pid` runs an interpreter. Never opens the executable (it may be on a marked filesystem
    /// and this runs on the event thread): `stat` through /proc, then the digest cache, then the path.
    func isInterpreter(pid: Int32, digestOf: (FileKey) -> SHA256Digest?) -> Bool {
        guard let identity = try? fileIdentity("/proc/\(pid)/exe") else { return false }
        if let digest = digestOf(FileKey(identity)) { return digests.contains(digest) }
        guard let exe = readLink("/proc/\(pid)/exe") else { return false }
        return paths.contains(exe)
    }

    /// Whether the opened file (identified by device and inode) is named on the process's command line.
    /// Arguments are resolved in the process's own view: relative ones against /proc/PID/cwd,
    /// absolute ones under /proc/PID/root (containers, chroots).
    func isNamedOnCommandLine(pid: Int32, device: UInt64, inode: UInt64) -> Bool {
        guard let bytes = try? readSmallFile("/proc/\(pid)/cmdline", limit: 1 << 16) else { return false }
        let arguments = bytes.split(separator: 0, omittingEmptySubsequences: true).dropFirst()
        for argument in arguments.prefix(64) {
            guard let first = argument.first, first != UInt8(ascii: "-") else { continue }
            let text = String(decoding: argument, as: UTF8.self)
            let path = first == UInt8(ascii: "/") ? "/proc/\(pid)/root\(text)" : "/proc/\(pid)/cwd/\(text)"
            // stat, not open: no event on a marked filesystem, no waiting on ourselves.
            if let id = try? fileIdentity(path), id.device == device, id.inode == inode { return true }
        }
        return false
    }
}

/// The content class of a file, by its first bytes, read from the event's descriptor.
func contentClass(of fd: Int32) -> ContentClass {
    var head: (UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0)
    let n = withUnsafeMutableBytes(of: &head) { pread(fd, $0.baseAddress, 4, 0) }
    if n == 4, head.0 == 0x7f, head.1 == UInt8(ascii: "E"), head.2 == UInt8(ascii: "L"), head.3 == UInt8(ascii: "F") { return .elf }
    if n >= 2, head.0 == UInt8(ascii: "#"), head.1 == UInt8(ascii: "!") { return .shebang }
    return .other
}
