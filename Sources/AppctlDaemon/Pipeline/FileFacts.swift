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
    func rebuildInterpretersIfOverlayChanged(declared: [DeclaredInterpreter], overlayPrograms: [(digest: SHA256Digest, path: String)]) {
        let now = Set(InterpreterRule.interpreterPrograms(overlayPrograms, configured: configuredInterpreters).map { "\($0.digest) \($0.path)" })
        guard lastOverlayInterpreters.withLock({ $0 != now }) else { return }
        rebuildInterpreters(declared: declared, overlayPrograms: overlayPrograms)
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

    func execTakesInlineCode(tid: Int32, key: FileKey, family: InterpreterFamily, scriptBefore: FileKey?) -> Bool {
        guard let exec = try? pendingExec(ofThread: tid) else { return true }
        // Which file the call names, in the caller's own view (its root, its working directory, its descriptor).
        let base: [UInt8]
        if exec.emptyPath {
            guard let directory = exec.directory else { return true }
            base = Array("/proc/\(tid)/fd/\(directory)".utf8)
        } else if exec.pathname.first == UInt8(ascii: "/") {
            base = Array("/proc/\(tid)/root".utf8) + exec.pathname
        } else {
            base = Array((exec.directory.map { "/proc/\(tid)/fd/\($0)/" } ?? "/proc/\(tid)/cwd/").utf8) + exec.pathname
        }
        guard let named = try? fileIdentity(bytes: base) else { return true }
        if named.device == key.device && named.inode == key.inode {
            return family.takesInlineCode(argv0: exec.arguments.first ?? [], arguments: Array(exec.arguments.dropFirst()))
        }
        // The call named the `#!` script exec'd just before: the kernel runs the interpreter with that file as its
        // program (the script's own exec was judged as a program of its own).
        if let scriptBefore, named.device == scriptBefore.device && named.inode == scriptBefore.inode { return false }
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
