import AppctlCore
import AppctlKernel
import Synchronization

/// What the decision ladder needs to know about an event's file and process, and nothing else. The real one
/// asks the kernel (`fstat`, `pread`, /proc); tests give fixed answers, so the ladder runs without root.
/// None of these may open a file on a marked filesystem: they run on the event thread, and nobody would answer.
protocol FileFacts: Sendable {
    /// `fstat` of the event's descriptor; nil when it fails.
    func identity(of descriptor: Int32) -> FileKey?
    /// The first bytes of the file: ELF, `#!`, or anything else.
    func contentClass(of descriptor: Int32) -> ContentClass
    /// Whether the file is an ELF program (`ContentClassifier.isELFProgram`): its header, program headers and dynamic section.
    func isELFProgram(of descriptor: Int32) -> Bool
    /// The interpreter family of the process's executable, or nil when it is not a configured interpreter.
    /// `executableDigest` gives the digest the daemon last saw the executable with, if any.
    func interpreter(of pid: Int32, executableDigest: (FileKey) -> SHA256Digest?) -> InterpreterFamily?
    /// Whether the interpreter `pid` opens this file as its program (named on its command line, …).
    func opensAsProgram(pid: Int32, family: InterpreterFamily, key: FileKey, descriptor: Int32) -> Bool
    /// The file's fs-verity digest (only asked for files whose identity says verity is on).
    func verityDigest(of descriptor: Int32) -> SHA256Digest?
    /// The path of the file when it lies under one of `paths` and is reachable there, in the daemon's own mount
    /// namespace, as the same file through the same mount; nil otherwise.
    func path(of descriptor: Int32, ifUnder paths: RootDataPaths) -> String?
    /// The interpreter family of a program about to be exec'd (by its digest, or as the very file of a configured
    /// interpreter), or nil when it is not an interpreter.
    func interpreterFamily(ofProgram digest: SHA256Digest, key: FileKey) -> InterpreterFamily?
    /// Who the thread is for execution profiles: the services of its cgroup and its uids (each read only when asked
    /// for); nil when /proc cannot say.
    func subjects(of tid: Int32, services: Bool, users: Bool) -> ProcessSubjects?
    /// Whether the exec the thread waits in hands the interpreter (the file `key`) inline code. `scriptBefore`: the
    /// `#!` script the thread exec'd just before in the same call, if any. Fails closed (true) when it cannot tell.
    /// Reads the waiting thread's memory: hash workers only.
    func execTakesInlineCode(tid: Int32, key: FileKey, family: InterpreterFamily, scriptBefore: FileKey?) -> Bool
    /// For a process running the loader itself: whether the program it loads (of `family`) gets inline code, from its
    /// command line as the kernel copied it. Fails closed. Hash workers only.
    func loaderRunTakesInlineCode(pid: Int32, family: InterpreterFamily) -> Bool
    /// Whether the process runs without a program interpreter (`AT_BASE` 0): the loader run as a program, or a static
    /// program. Unreadable counts as yes (fail closed). Reads /proc only: the event thread may ask.
    func runsWithoutInterpreter(pid: Int32) -> Bool
    /// Whether the process's executable is a dynamic loader (`ContentClassifier.isLoaderLike`), not a static program.
    /// Opens /proc/PID/exe: hash workers only.
    func runsLoaderItself(pid: Int32) -> Bool
    /// For a process that runs without an interpreter and opens the ELF file `key`: whether that file is the program
    /// its command line names (`ld.so [options] PROGRAM`); nil when that cannot be told.
    func isLoaderProgram(pid: Int32, key: FileKey) -> Bool?
}

/// The real facts: the event's descriptor and /proc.
final class KernelFileFacts: FileFacts {
    /// Rebuilt on every reload, so an upgraded interpreter is recognised by its new content.
    private let interpreters: Mutex<InterpreterRule>
    private let configuredInterpreters: [String]
    private let untrustedOwnership: UntrustedOwnership

    /// Whether the rule was built: it is built once the policy is known (it may declare interpreters), or at the
    /// latest before the first mark (`Daemon.run`). Building it hashes every configured interpreter (node alone is
    /// 100 MB), so not twice at start-up.
    private let built = Atomic<Bool>(false)

    init(configuredInterpreters: [String], untrustedOwnership: UntrustedOwnership) {
        self.configuredInterpreters = configuredInterpreters
        self.untrustedOwnership = untrustedOwnership
        interpreters = Mutex(InterpreterRule(configured: []))
    }

    /// The overlay programs that are interpreters, as of the last rebuild.
    private let lastOverlayInterpreters = Mutex<Set<String>>([])

    /// After an overlay reload: rebuilds the rule (hashing every configured interpreter, ~150 ms with node) only
    /// when the overlays' interpreters changed.
    /// Returns whether it rebuilt.
    @discardableResult
    func rebuildInterpretersIfOverlayChanged(declared: [DeclaredInterpreter], overlayPrograms: [(digest: SHA256Digest, path: String)]) -> Bool {
        let now = Set(InterpreterRule.interpreterPrograms(overlayPrograms, configured: configuredInterpreters).map { "\($0.digest) \($0.path)" })
        guard lastOverlayInterpreters.withLock({ $0 != now }) else { return false }
        rebuildInterpreters(declared: declared, overlayPrograms: overlayPrograms)
        return true
    }

    /// Builds the rule if nothing built it yet (no policy at start-up).
    func buildInterpretersIfNeeded() {
        if !built.load(ordering: .relaxed) { rebuildInterpreters(declared: []) }
    }

    /// Re-reads the configured interpreters and takes the policy's declared ones (off the event thread: it opens
    /// and hashes files).
    func rebuildInterpreters(declared: [DeclaredInterpreter], overlayPrograms: [(digest: SHA256Digest, path: String)] = []) {
        let overlayInterpreters = InterpreterRule.interpreterPrograms(overlayPrograms, configured: configuredInterpreters)
        lastOverlayInterpreters.withLock { $0 = Set(overlayInterpreters.map { "\($0.digest) \($0.path)" }) }
        let rebuilt = InterpreterRule(configured: configuredInterpreters, declared: declared, overlayPrograms: overlayInterpreters)
        interpreters.withLock { $0 = rebuilt }
        built.store(true, ordering: .relaxed)
    }

    func identity(of descriptor: Int32) -> FileKey? {
        guard var key = (try? FileDescriptor(rawValue: descriptor).identity()).map(FileKey.init) else { return nil }
        // Root's ownership on FUSE or a network filesystem proves nothing about who can change the content.
        if untrustedOwnership.contains(key.device) {
            key.onlyRootCanWrite = false
            key.onlyRootCanRead = false
            key.onUntrustedFilesystem = true
        }
        return key
    }

    func contentClass(of descriptor: Int32) -> ContentClass {
        // Four bytes on the stack: this runs for every open of a file that is not cached.
        var head: (UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0)
        return withUnsafeMutableBytes(of: &head) { buffer in
            let n = (try? FileDescriptor(rawValue: descriptor).read(into: buffer, at: 0)) ?? 0
            return ContentClassifier.sniff(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
    }

    func isELFProgram(of descriptor: Int32) -> Bool {
        let file = FileDescriptor(rawValue: descriptor)
        return ContentClassifier.isELFProgram(head: file.readBytes(at: 0, count: ContentClassifier.headerLength), readAt: file.readBytes)
    }

    func interpreter(of pid: Int32, executableDigest: (FileKey) -> SHA256Digest?) -> InterpreterFamily? {
        let rule = interpreters.withLock { $0 }
        return rule.interpreterFamily(pid: pid, digestOf: executableDigest)
    }

    func opensAsProgram(pid: Int32, family: InterpreterFamily, key: FileKey, descriptor: Int32) -> Bool {
        let rule = interpreters.withLock { $0 }
        return rule.opensAsProgram(pid: pid, family: family, device: key.device, inode: key.inode,
                                   openedPath: pathOfDescriptor(descriptor))
    }

    func verityDigest(of descriptor: Int32) -> SHA256Digest? {
        FileDescriptor(rawValue: descriptor).verityDigestIfAny
    }

    func interpreterFamily(ofProgram digest: SHA256Digest, key: FileKey) -> InterpreterFamily? {
        interpreters.withLock { $0.family(ofProgram: digest, device: key.device, inode: key.inode) }
    }

    func subjects(of tid: Int32, services: Bool, users: Bool) -> ProcessSubjects? {
        var result = ProcessSubjects(services: [], uids: [])
        if services {
            guard let path = cgroupPath(ofThread: tid) else { return nil }
            result.services = Subject.services(inCgroupPath: path)
        }
        if users {
            guard let ids = userIDs(ofThread: tid) else { return nil }
            result.uids = ids.real == ids.effective ? [ids.real] : [ids.real, ids.effective]
        }
        return result
    }

    func loaderRunTakesInlineCode(pid: Int32, family: InterpreterFamily) -> Bool {
        guard sharesOurUserNamespace(thread: pid), let bytes = try? readSmallFile("/proc/\(pid)/cmdline", limit: 4 << 20),
              let environment = try? readSmallFile("/proc/\(pid)/environ", limit: 4 << 20) else { return true }
        let all = bytes.split(separator: 0, omittingEmptySubsequences: false).map(Array.init)
        let arguments = Array((bytes.last == 0 ? all.dropLast() : all[...]).dropFirst())
        // `--argv0` renames the program (busybox picks its applet by that name): not judged, counted as inline.
        guard let index = InterpreterFamily.loaderProgramIndex(arguments), !arguments[..<index].contains(Array("--argv0".utf8)) else { return true }
        return commandLineTakesInlineCode(tid: pid, family: family, argv0: arguments[index], arguments: Array(arguments[(index + 1)...]),
                                          environment: environment.split(separator: 0).map(Array.init))
    }

    func runsLoaderItself(pid: Int32) -> Bool {
        guard let exe = try? FileDescriptor.open("/proc/\(pid)/exe", [.readOnly, .nonBlocking, .closeOnExec]) else { return true }
        defer { exe.close() }
        return ContentClassifier.isLoaderLike(head: exe.readBytes(at: 0, count: ContentClassifier.headerLength), readAt: exe.readBytes)
    }

    func runsWithoutInterpreter(pid: Int32) -> Bool {
        interpreterBase(ofProcess: pid).map { $0 == 0 } ?? true
    }

    func isLoaderProgram(pid: Int32, key: FileKey) -> Bool? {
        guard let bytes = try? readSmallFile("/proc/\(pid)/cmdline", limit: 4 << 20) else { return nil }
        let all = bytes.split(separator: 0, omittingEmptySubsequences: false).map(Array.init)
        let arguments = Array((bytes.last == 0 ? all.dropLast() : all[...]).dropFirst())
        guard let index = InterpreterFamily.loaderProgramIndex(arguments),
              case .trusted(let named) = trustedResolution(ofThread: pid, path: arguments[index], start: "/proc/\(pid)/cwd") else { return nil }
        return named.device == key.device && named.inode == key.inode
    }

    /// The rule of `takesInlineCode` and the checks that need the caller's view: code in the environment, and what the
    /// arguments name. A shell's or Python's script operand must be a regular file reached through nothing another user
    /// could swap, on a filesystem of content (a pipe, a FIFO, `/dev/stdin`, `/proc/self/cmdline` are code the caller
    /// writes); for other interpreters, whose script operand is not known, every argument that names something must
    /// be such a file or a directory (at most 64 are looked at; more count as inline).
    private func commandLineTakesInlineCode(tid: Int32, family: InterpreterFamily, argv0: [UInt8], arguments: [[UInt8]], environment: [[UInt8]]) -> Bool {
        if family.takesInlineCode(argv0: argv0, arguments: arguments) { return true }
        if InterpreterFamily.environmentCarriesCode(environment) { return true }
        let cwd = "/proc/\(tid)/cwd"
        if let index = family.scriptOperand(arguments) {
            guard case .trusted(let script) = trustedResolution(ofThread: tid, path: arguments[index], start: cwd), script.isRegularFile else { return true }
            return false
        }
        guard family == .other || family == .awk || family == .loader else { return false }
        let named = arguments.filter { !$0.isEmpty && $0.first != UInt8(ascii: "-") }
        if named.count > 64 { return true }
        for argument in named {
            switch trustedResolution(ofThread: tid, path: argument, start: cwd) {
            case .missing: continue
            case .untrusted: return true
            case .trusted(let file): if !file.isRegularFile { return true }
            }
        }
        return false
    }

    func execTakesInlineCode(tid: Int32, key: FileKey, family: InterpreterFamily, scriptBefore: FileKey?) -> Bool {
        // Another thread sharing the caller's memory could change the arguments after they are read and before the
        // kernel copies them (the permission event comes first): a multi-threaded caller counts as inline code.
        // In a user namespace of its own the caller controls its mounts: no path it names is root's alone.
        guard threadCount(ofThread: tid) == 1, sharesOurUserNamespace(thread: tid), let exec = try? pendingExec(ofThread: tid) else { return true }
        // Which file the call names, in the caller's own view, through nothing anyone but root could swap meanwhile.
        let named: FileIdentity?
        if exec.emptyPath {
            guard let directory = exec.directory else { return true }
            named = try? fileIdentity("/proc/\(tid)/fd/\(directory)")
        } else if case .trusted(let file) = trustedResolution(ofThread: tid, path: exec.pathname,
                                                               start: exec.directory.map { "/proc/\(tid)/fd/\($0)" } ?? "/proc/\(tid)/cwd") {
            named = file
        } else {
            named = nil
        }
        guard let named else { return true }
        if named.device == key.device && named.inode == key.inode {
            return commandLineTakesInlineCode(tid: tid, family: family, argv0: exec.arguments.first ?? [], arguments: Array(exec.arguments.dropFirst()),
                                              environment: exec.environment)
        }
        // The call named the `#!` script this thread exec'd (allowed) just before: the kernel runs the interpreter with
        // that file as its program (the script's own exec was judged as a program of its own). Its environment counts.
        if let scriptBefore, named.device == scriptBefore.device && named.inode == scriptBefore.inode {
            return InterpreterFamily.environmentCarriesCode(exec.environment)
        }
        return true
    }



    /// readlink of /proc/self/fd gives the path in the *opener's* view (a bind mount in another mount namespace
    /// prints as the path it was mounted over, a review showed), so it counts only when that path, looked up in
    /// the daemon's own namespace, is this very file through this very mount. Looked up only once it is under one
    /// of `paths`, from the dentry cache alone and through no symlink (this is the event thread: a symlink under a
    /// listed path could lead to a FUSE mount whose server never answers, a second review showed); a path the cache
    /// cannot answer is simply not cached in the kernel this time.
    func path(of descriptor: Int32, ifUnder paths: RootDataPaths) -> String? {
        let path = pathOfDescriptor(descriptor)
        guard paths.contains(path),
              let opened = try? FileDescriptor(rawValue: descriptor).identity(cachedOnly: true),
              let here = try? fileIdentityCachedNoSymlinks(path),
              here.device == opened.device, here.inode == opened.inode, here.mountID == opened.mountID else { return nil }
        return path
    }
}
