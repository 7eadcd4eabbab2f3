import AppctlCore
import AppctlKernel
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

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

    /// Each recognition key → the family of the configured interpreter it belongs to (by that file's name).
    let paths: [String: InterpreterFamily]
    let digests: [SHA256Digest: InterpreterFamily]
    /// (device, inode) of each configured interpreter: a hard link under another name is the same file.
    let files: [[UInt64]: InterpreterFamily]

    /// Resolves the configured paths and hashes the interpreters found, and adds those the signed policy declares
    /// (by their digest, and at their path; their family by language: python has its grammar, the others count
    /// every argument). Built at start-up before any mark exists, and on every reload off the event thread.
    /// `overlayPrograms`: programs a local overlay allows (a package apt just installed or upgraded). One whose
    /// name is a configured interpreter's, version digits aside (`lua5.4` for `lua`, `python3.11` for `python3`,
    /// `bash` for `/bin/bash`), is one by its digest: its copies are recognised from the moment it is allowed, not
    /// from the next reload after dpkg wrote it.
    init(configured: [String], declared: [DeclaredInterpreter] = [], overlayPrograms: [(digest: SHA256Digest, path: String)] = []) {
        var paths: [String: InterpreterFamily] = [:]
        var digests: [SHA256Digest: InterpreterFamily] = [:]
        var files: [[UInt64]: InterpreterFamily] = [:]
        let hasher = FileHasher()
        func merge(_ a: InterpreterFamily, _ b: InterpreterFamily) -> InterpreterFamily { a == b ? a : .other }
        for candidate in configured {
            guard let resolved = realPath(candidate) else { continue }
            let family = InterpreterFamily(executableName: String(resolved.split(separator: "/").last ?? ""))
            paths[resolved] = merge(paths[resolved] ?? family, family)
            if let id = try? fileIdentity(resolved) { files[[id.device, id.inode]] = merge(files[[id.device, id.inode]] ?? family, family) }
            if let fd = try? FileDescriptor.open(resolved, [.readOnly, .nonBlocking]) {
                // The same content under two names of different families (busybox as sh and awk): every argument counts.
                if let result = try? hasher.hash(fd) { digests[result.sha256] = merge(digests[result.sha256] ?? family, family) }
                fd.close()
            }
        }
        for program in Self.interpreterPrograms(overlayPrograms, configured: configured) {
            let name = String(program.path.split(separator: "/").last ?? "")
            let family = InterpreterFamily(executableName: name)
            digests[program.digest] = merge(digests[program.digest] ?? family, family)
        }
        for interpreter in declared {
            let family: InterpreterFamily = interpreter.kind == .python ? .python : .other
            digests[interpreter.digest] = merge(digests[interpreter.digest] ?? family, family)
            guard let resolved = realPath(interpreter.path) else { continue }
            paths[resolved] = merge(paths[resolved] ?? family, family)
            if let id = try? fileIdentity(resolved) { files[[id.device, id.inode]] = merge(files[[id.device, id.inode]] ?? family, family) }
        }
        self.paths = paths
        self.digests = digests
        self.files = files
    }

    /// The overlay programs whose name is a configured interpreter's, version digits aside.
    static func interpreterPrograms(_ programs: [(digest: SHA256Digest, path: String)], configured: [String]) -> [(digest: SHA256Digest, path: String)] {
        let stems = Set(configured.map { stem(of: String($0.split(separator: "/").last ?? "")) })
        return programs.filter { stems.contains(stem(of: String($0.path.split(separator: "/").last ?? ""))) }
    }

    /// A program name without the version it carries: `python3.11` → `python`, `lua5.4` → `lua`, `guile-3.0` →
    /// `guile`, `ld-linux-x86-64.so.2` → `ld-linux-x86-64.so`.
    static func stem(of name: String) -> String {
        var s = Substring(name)
        while let last = s.last, last.isNumber || last == "." || last == "-" || last == "_" { s.removeLast() }
        return s.isEmpty ? name : String(s)
    }

    /// The family of a program about to run, by its content or as the very file of a configured interpreter.
    func family(ofProgram digest: SHA256Digest, device: UInt64, inode: UInt64) -> InterpreterFamily? {
        digests[digest] ?? files[[device, inode]]
    }

    /// Whether `pid` runs an interpreter. Never opens the executable (it may be on a marked filesystem
    /// and this runs on the event thread): `stat` through /proc, then the digest cache, then the path.
    /// Returns the interpreter's family (by the configured file it matched, never by its own name), or nil.
    func interpreterFamily(pid: Int32, digestOf: (FileKey) -> SHA256Digest?) -> InterpreterFamily? {
        guard let identity = try? fileIdentity("/proc/\(pid)/exe") else { return nil }
        // Any one of: the content it exec'd, the very file (hard links included), the path.
        if let digest = digestOf(FileKey(identity)), let family = digests[digest] { return family }
        if let family = files[[identity.device, identity.inode]] { return family }
        guard let exe = readLink("/proc/\(pid)/exe") else { return nil }
        // By path alone the file may be another binary at that path (another mount namespace): no grammar.
        return paths[exe] != nil ? .other : nil
    }

    /// Whether an interpreter's open of the file (device, inode) is the opening of its program: the file is
    /// named by one of its command-line arguments — every argument, options included (`bash -- -x.sh`), as
    /// raw bytes. Arguments are resolved in the process's own view: relative ones through /proc/PID/cwd,
    /// absolute ones under /proc/PID/root, with `stat` only (never an open: no event, no waiting on
    /// ourselves). Fails closed: when the command line cannot be read whole, or has more arguments than
    /// are checked, the open counts as the program's.
    /// For shells and Python, only the arguments their option grammar makes the program (or an rc file) count
    /// (`InterpreterFamily`); for others, and for command lines that grammar does not cover, every argument.
    /// Also counted: a file with the name of a candidate (bash looks a bare script name up in PATH when the
    /// current directory has none; a rename between the interpreter's open and our `stat` would defeat the
    /// identity match), the start-up files the environment names (`BASH_ENV`, `ENV`, `PYTHONSTARTUP`), and
    /// for `python3 dir` the `__main__.py` it runs. Each of these can only add denials.
    func opensAsProgram(pid: Int32, family: InterpreterFamily, device: UInt64, inode: UInt64, openedPath: String) -> Bool {
        let openedName = openedPath.split(separator: "/").last.map(String.init) ?? ""
        // ARG_MAX is 2 MiB by default; a longer command line than that cannot exist.
        guard let bytes = try? readSmallFile("/proc/\(pid)/cmdline", limit: 4 << 20) else { return true }
        // Empty arguments are kept: they hold places in the grammar (`sh -o '' x.sh`).
        let all = bytes.split(separator: 0, omittingEmptySubsequences: false).dropFirst().map(Array.init)
        let arguments = bytes.last == 0 ? Array(all.dropLast()) : all
        if arguments.count > Self.maximumArguments { return true }
        var candidates = family.programArgumentIndices(arguments).map { $0.map { arguments[$0] } } ?? arguments
        // `.other` (an interpreter of no known grammar, or one program two sources call different languages) gets
        // every check of the others: a merge of families must never weaken what either would have checked.
        if let environment = try? readSmallFile("/proc/\(pid)/environ", limit: 4 << 20) {
            let names = family == .shell ? ["BASH_ENV=", "ENV="] : family == .python ? ["PYTHONSTARTUP="] : ["BASH_ENV=", "ENV=", "PYTHONSTARTUP="]
            for variable in environment.split(separator: 0) {
                for name in names where variable.starts(with: name.utf8) { candidates.append(Array(variable.dropFirst(name.utf8.count))) }
            }
        }
        let cwd = Array("/proc/\(pid)/cwd/".utf8), root = Array("/proc/\(pid)/root".utf8)
        // Runs on a hash worker, not the event thread; still bounded: past the budget the open counts as the
        // program's (fail closed), so a command line of symlink chains cannot keep a worker for long.
        let deadline = monotonicNanoseconds() + Self.budgetNanoseconds
        for argument in candidates where !argument.isEmpty {
            if monotonicNanoseconds() > deadline { return true }
            if let name = argument.split(separator: UInt8(ascii: "/")).last, String(decoding: name, as: UTF8.self) == openedName { return true }
            let path = argument.first == UInt8(ascii: "/") ? root + argument : cwd + argument
            guard let id = try? fileIdentity(bytes: path) else { continue }
            if id.device == device, id.inode == inode { return true }
            // `python3 dir` runs dir/__main__.py (not `-m module`: no candidate then, and the standard library's
            // packages keep working).
            if family != .shell, openedName == "__main__.py", id.mode & S_IFMT == S_IFDIR { return true }
        }
        return false
    }

    static let maximumArguments = 4096
    /// Time one command-line check may take (250 ms) before it fails closed.
    static let budgetNanoseconds: UInt64 = 250_000_000
}
