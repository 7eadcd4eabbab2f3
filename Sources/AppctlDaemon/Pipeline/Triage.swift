import AppctlCore
import AppctlKernel

/// The decision ladder: what to do with one permission event, decided on the event thread without waiting
/// on anything slow. Every rung either answers (from a cache, the file's fs-verity digest, its size, or who
/// asked), lets a plain data open through, or sends the file to be hashed. Pure apart from `FileFacts` and
/// the caches, so unit tests walk every rung without root or a kernel.
///
/// The rungs, in order (each names the test that pins it in `TriageTests`):
/// 1. the daemon's own process: allowed (it must never wait on itself);
/// 2. a descriptor that cannot be identified: unreadable (denied in enforce mode);
/// 3. the open that completes an exec just decided, for a file only root can write: the same answer, silently
///    (for anyone else's file it is decided like the exec: hashed again);
/// 4. a plain open (not an exec) of data, not an ELF object and not an interpreter's program: allowed
///    unread; cached in the kernel only where that answer holds for every later opener (issue 10, case 5:
///    `dataVerdictHoldsForEveryone`);
/// 4a. any other open (a library, a program the loader maps, a script an interpreter reads) of a file someone
///    other than root can change, unless fs-verity seals it: `mutable`, whatever its digest (a shell reads its
///    script as it goes; the loader's private mappings show later writes): denied in enforce mode;
/// 5. a file only root can write whose digest is cached: decided from the cache; the exec of anyone else's file
///    whose verdict is held under a read lease (`LeaseKeeper`): decided from that verdict;
/// 6. shutting down: allowed (the kernel would allow it once the group closes anyway);
/// 7. an fs-verity file the policy pairs with a content digest: decided by that digest, sealed;
/// 8. enforce mode and no allow entry of that size: denied unread;
/// 9. anything else: hashed (off the event thread).
final class Triage: Sendable {
    enum Result {
        case answer(Answer)
        /// A plain open of data: allowed; `markInKernel` (the file's key) when the kernel may answer later opens of it.
        case inert(markInKernel: FileKey?)
        /// The content must be hashed before anyone can say.
        case needsHash(FileKey)
        /// An interpreter opens a file that is neither ELF nor `#!`: whether it is its program depends on its
        /// command line, whose arguments are attacker-chosen paths (up to 4,096, each through symlink chains or
        /// a filesystem that may not answer). Checked off the event thread (`HashPool`), then `decideProgram`.
        case checkCommandLine(FileKey, InterpreterFamily)
    }

    /// An answer with what the responder needs to log it and to cache it in the kernel.
    struct Answer {
        var verdict: Verdict
        var digest: SHA256Digest?
        var key: FileKey?
        /// The file's fs-verity digest when the verdict came from it (content sealed while the inode lives).
        var verityDigest: SHA256Digest? = nil
        /// The second event of one exec: answered, not counted or logged again.
        var repeatsExec = false
        /// Execution profiles: judged already (a hand-off to a worker comes back judged), handed off to a worker, and
        /// the `#!` script the thread exec'd just before (taken on the event thread).
        var profileJudged = false
        var handedOff = false
        var scriptBefore: FileKey? = nil
    }

    let policy: PolicyState
    let caches: DecisionCaches
    let facts: any FileFacts
    let statistics: Statistics
    let ownPID: Int32
    /// Kernel-side verdicts enabled (`kernel-cache`).
    let kernelCache: Bool
    /// `allow-mutable-code`: rung 4a off (documented risk).
    let allowMutableCode: Bool
    /// `kernel-cache-data-under`: where root-only-writable data that others can read is cached in the kernel too.
    let rootDataPaths: RootDataPaths
    /// Verdicts for files others can write, held under read leases (`leased-verdicts`); nil: none.
    let leases: LeaseKeeper?

    init(policy: PolicyState, caches: DecisionCaches, facts: any FileFacts, statistics: Statistics, ownPID: Int32, kernelCache: Bool,
         allowMutableCode: Bool = false, rootDataPaths: RootDataPaths = RootDataPaths([]), leases: LeaseKeeper? = nil) {
        self.policy = policy; self.caches = caches; self.facts = facts; self.statistics = statistics
        self.ownPID = ownPID; self.kernelCache = kernelCache; self.allowMutableCode = allowMutableCode
        self.rootDataPaths = rootDataPaths; self.leases = leases
    }

    /// Whether a plain data open of this file may be answered in the kernel from now on: every later opener must
    /// get the same answer, and an interpreter that names an unlisted file on its command line is denied it (issue
    /// 10, case 5). So: files no one but root can open at all (root is outside the threat model), and root-only files
    /// under the paths `kernel-cache-data-under` names, whose content no user chooses (packaged data under /usr,
    /// the loader's cache) — not logs, spools or configuration that users' input reaches.
    func dataVerdictHoldsForEveryone(_ key: FileKey, _ contentClass: ContentClass, descriptor: Int32) -> Bool {
        guard kernelCache && contentClass == .other && key.onlyRootCanWrite else { return false }
        if key.onlyRootCanRead { return true }
        return !rootDataPaths.isEmpty && facts.path(of: descriptor, ifUnder: rootDataPaths) != nil
    }

    func triage(_ request: borrowing PermissionRequest, shuttingDown: Bool = false) -> Result {
        let fd = request.descriptor, pid = request.pid, isExec = request.isExec
        // Events name threads (`FAN_REPORT_TID`): the main thread's id is the process id, the others are registered.
        if pid == ownPID || isOwnThread(pid) {
            statistics.add(.ownProcessEvents)
            return .answer(Answer(verdict: policy.verdict(layer: .ownProcess) { _ in Decision(allow: true, reason: .ownProcess) }))
        }
        guard let key = facts.identity(of: fd) else {
            return .answer(Answer(verdict: policy.verdict(layer: .unreadable) { Decision.unreadable(mode: $0) }))
        }
        var completesExec = false
        if isExec {
            caches.lastExec.withLock { $0.insert(key, for: pid) }
        } else if caches.lastExec.withLock({ $0[pid] == key ? $0.removeValue(forKey: pid) : nil }) != nil {
            completesExec = true
            if let digest = key.onlyRootCanWrite ? caches.digest(of: key) : leases?.verdict(for: key, execBy: nil) {
                return .answer(Answer(verdict: policy.decide(digest), digest: digest, key: key, repeatsExec: true))
            }
        }
        if !isExec && !completesExec {
            switch openKind(pid: pid, key: key, descriptor: fd) {
            case .data(let contentClass):
                statistics.add(.inertOpens)
                return .inert(markInKernel: dataVerdictHoldsForEveryone(key, contentClass, descriptor: fd) ? key : nil)
            case .program:
                break
            case .dependsOnCommandLine(let family):
                return .checkCommandLine(key, family)
            }
        }
        return decideProgram(request, key: key, shuttingDown: shuttingDown, opensAsProgram: !isExec && !completesExec)
    }

    /// Rungs 4a to 9, for a file that is being run: an exec, the open that completes one, or a program open.
    func decideProgram(_ request: borrowing PermissionRequest, key: FileKey, shuttingDown: Bool = false, opensAsProgram: Bool) -> Result {
        let fd = request.descriptor, isExec = request.isExec
        let changeable = opensAsProgram ? !key.onlyRootCanWrite : key.onUntrustedFilesystem
        if changeable && !key.isVerity && !allowMutableCode {
            // An exec is different: from the kernel's write denial on, nobody on this host can change a running
            // program. Not so on FUSE or a network filesystem, whose server can change what it reads at any time.
            statistics.add(.mutableDenials)
            return .answer(Answer(verdict: policy.verdict(layer: .mutable) { Decision.mutable(mode: $0) }, key: key))
        }
        // Only files that only root can write are cached: a write through a shared mapping to a page that is
        // already dirty changes content without changing ctime, so anyone else's file is hashed every time.
        if key.onlyRootCanWrite, let digest = caches.digest(of: key) {
            let verdict = policy.decide(digest)
            // Unknown while a maintenance window is open: a hash worker decides, after the window's queued notices
            // (this thread must not wait for the window: the window's own file writes need it).
            if verdict.decision.reason == .unknown && policy.windowIsOpen { return .needsHash(key) }
            if isExec { caches.rememberExec(key, digest) }
            statistics.add(.cacheHits)
            return .answer(Answer(verdict: verdict, digest: digest, key: key))
        }
        // Anyone else's program, while a read lease proves nobody can change it (issue 14): its exec needs no hash.
        // Execs only: an open as a program stays `mutable` above (the lease is let go when a writer comes, and a
        // mapping or a script being read would then change under the verdict; a running program cannot).
        if isExec, !key.onlyRootCanWrite, let digest = leases?.verdict(for: key, execBy: request.pid) {
            caches.rememberExec(key, digest)
            statistics.add(.cacheHits)
            statistics.add(.leasedVerdictHits)
            return .answer(Answer(verdict: policy.decide(digest), digest: digest, key: key))
        }
        if shuttingDown {
            return .answer(Answer(verdict: policy.verdict(layer: .shutdown) { _ in Decision(allow: true, reason: .unknown) }, key: key))
        }
        // fs-verity: the kernel measured the file in O(1) and checks every page read against that measurement;
        // a verity file can never be opened for writing, so whoever owns it, its verdict may stay in the kernel.
        // The content digest the signed policy pairs with it still meets the blocklist. The pairing is the
        // policy's, not a measurement, so it does not go into the digest cache, which outlives reloads.
        if key.isVerity, policy.usesVerity, let verity = facts.verityDigest(of: fd),
           let digest = policy.contentDigest(forVerity: verity) {
            statistics.add(.verityDecisions)
            if isExec { caches.rememberExec(key, digest) }
            return .answer(Answer(verdict: policy.decide(digest, layer: .verity), digest: digest, key: key, verityDigest: verity))
        }
        statistics.add(.cacheMisses)
        if policy.mode == .enforce && !policy.mayAllow(size: key.size, onlyRootCanWrite: key.onlyRootCanWrite) {
            // No allowed entry has this size, so no digest could match: deny without reading a byte
            // (an 8 TiB sparse file must not keep the hash workers busy for hours).
            statistics.add(.deniedBySize)
            return .answer(Answer(verdict: policy.verdict(layer: .sizeFilter) { _ in Decision.decide(.unknown, mode: .enforce) }, key: key))
        }
        return .needsHash(key)
    }

    enum OpenKind {
        case data(ContentClass)
        case program
        case dependsOnCommandLine(InterpreterFamily)
    }

    /// Whether a plain open (not an exec) needs a decision: an ELF object (whoever opens it may map it as code),
    /// or a script an interpreter opens as its program (a `#!` file at once; any other file depending on the
    /// interpreter's command line, which is not read here).
    func openKind(pid: Int32, key: FileKey, descriptor: Int32) -> OpenKind {
        let contentClass = caches.classified(caches.contentClasses, key) { facts.contentClass(of: descriptor) }
        switch contentClass {
        case .elf:
            return .program
        case .shebang, .other:
            guard let family = facts.interpreter(of: pid, executableDigest: caches.executableDigest) else { return .data(contentClass) }
            return contentClass == .shebang ? .program : .dependsOnCommandLine(family)
        }
    }
}

/// `kernel-cache-data-under`: root-only-writable data files that others can read get a kernel-side verdict when
/// their path is under one of these (an entry ending in `/` is a directory, any other a file). Root's own content
/// that no user's input reaches: an interpreter handed such a file as its program runs it unasked once anyone has
/// read it, and that gives nobody anything they chose.
public struct RootDataPaths: Sendable {
    public static let defaults = ["/usr/", "/etc/ld.so.cache"]
    let directories: [String]
    let files: Set<String>

    public init(_ entries: [String]) {
        directories = entries.filter { $0.hasSuffix("/") }
        files = Set(entries.filter { !$0.hasSuffix("/") })
    }

    var isEmpty: Bool { directories.isEmpty && files.isEmpty }

    func contains(_ path: String) -> Bool {
        guard path.hasPrefix("/"), !path.hasSuffix(" (deleted)") else { return false }
        return files.contains(path) || directories.contains { path.hasPrefix($0) }
    }
}
