import AppctlCore
import AppctlKernel
import Synchronization

/// Learn mode: files that ran and that the inventory lacks, written as an unsigned inventory fragment; and, per
/// service and user, the programs each started and whether it gave an interpreter inline code (`profile` lines of
/// the same fragment, issue 15).
///
/// Learning runs for days: each (subject, program) is kept once (a dictionary lookup per exec once seen), at most
/// `profileLimit` of them (past that new ones are counted as dropped, never grow memory), and the fragment is only
/// rewritten when something new was learned.
final class LearnRecorder: Sendable {
    private struct ProfileKey: Hashable { var subject: Subject; var digest: SHA256Digest }
    private struct State {
        var entries: [String: AllowEntry] = [:]
        var digests = Set<SHA256Digest>()
        var profiles: [ProfileKey: (inline: Bool, escapedPath: String)] = [:]
        var dirty = false
    }
    private let state = Mutex(State())
    let hostname: String
    let statistics: Statistics?
    /// (subject, program) pairs kept at most: ~200 bytes each, so ~13 MB at the bound.
    static let profileLimit = 65_536
    /// uid → user name, from /etc/passwd, and when it was read: re-read for a uid it does not name, at most once a
    /// minute (a uid no user has, a container's, must not cost a read of the file per exec).
    private let userNames = Mutex<(byUID: [UInt32: String], readAt: UInt64?)>(([:], nil))
    static let passwdRereadNanoseconds: UInt64 = 60_000_000_000

    init(hostname: String, statistics: Statistics? = nil) { self.hostname = hostname; self.statistics = statistics }

    var isDirty: Bool { state.withLock { $0.dirty } }
    var count: Int { state.withLock { $0.entries.count } }
    var profileEntryCount: Int { state.withLock { $0.profiles.count } }

    /// Records that a process in `services` (every unit of its cgroup path) running as `users` started `digest`, with
    /// or without inline code. Called for every exec while learning: a known pair costs one lookup under the lock.
    func recordProfile(services: [String], users: [UInt32], digest: SHA256Digest, inline: Bool, fd: Int32) {
        var subjects = services.map { Subject.service($0) }
        for uid in users { if let name = userName(uid) { subjects.append(.user(name)) } }
        let missing = state.withLock { s in
            subjects.filter { subject in
                guard let seen = s.profiles[ProfileKey(subject: subject, digest: digest)] else { return true }
                return inline && !seen.inline
            }
        }
        guard !missing.isEmpty else { return }
        let escaped = PathEscaping.escapeToken(Array(pathOfDescriptor(fd).utf8)), path = escaped.isEmpty ? "-" : escaped
        state.withLock { s in
            for subject in missing {
                let key = ProfileKey(subject: subject, digest: digest)
                if let seen = s.profiles[key] {
                    s.profiles[key] = (seen.inline || inline, seen.escapedPath)
                } else if s.profiles.count >= Self.profileLimit {
                    statistics?.add(.profileEntriesDropped)
                    continue
                } else {
                    s.profiles[key] = (inline, path)
                }
                s.dirty = true
            }
            statistics?.set(.profileEntriesLearned, s.profiles.count)
        }
    }

    private func userName(_ uid: UInt32) -> String? {
        let now = monotonicNanoseconds()
        let (known, fresh) = userNames.withLock { u in (u.byUID[uid], u.readAt.map { now &- $0 < Self.passwdRereadNanoseconds } ?? false) }
        if let known { return known }
        if fresh { return nil }
        let names = passwdUIDs(String(decoding: (try? readSmallFile("/etc/passwd", limit: 16 << 20)) ?? [], as: UTF8.self))
        var byUID: [UInt32: String] = [:]
        for (name, id) in names where byUID[id] == nil && Subject.isValidUserName(name) { byUID[id] = name }
        userNames.withLock { $0 = (byUID, now) }
        return byUID[uid]
    }

    /// The learned profiles as `profile` lines.
    var profileRules: [ProfileRule] {
        state.withLock { s in
            s.profiles.map { key, value in
                ProfileRule(subject: key.subject, program: .digest(key.digest), inline: value.inline, escapedPath: value.escapedPath)
            }
        }.sorted()
    }

    /// Records a file; false when this content was recorded already.
    func record(digest: SHA256Digest, size: Int64, fd: Int32) -> Bool {
        if state.withLock({ $0.digests.contains(digest) }) { return false }
        let path = pathOfDescriptor(fd)
        let descriptor = FileDescriptor(rawValue: fd)
        let head = descriptor.readBytes(at: 0, count: ContentClassifier.headerLength)
        let kind = ContentClassifier.classify(head: head, executableBit: true, readAt: descriptor.readBytes) ?? .otherExec
        // No fs-verity digest here: `digest` was taken before this call, and the file's owner could have
        // rewritten it and enabled fs-verity since, pairing harmless content with a verity digest of their
        // choosing. `appctl learn` measures before hashing; run it over files with fs-verity.
        let entry = AllowEntry(digest: digest, size: UInt64(max(0, size)), kind: kind, origin: .local, path: Array(path.utf8))
        return state.withLock { s in
            guard s.digests.insert(digest).inserted else { return false }
            s.entries[entry.escapedPath] = entry   // the newest content seen at a path wins
            s.dirty = true
            return true
        }
    }

    func write(to path: String) throws(PolicyError) {
        let entries = state.withLock { s -> [AllowEntry] in
            s.dirty = false
            return Array(s.entries.values)
        }
        var header = PolicyHeader(issued: .now, description: "learned at run time on \(hostname) by appctl daemon (learn mode); review, then sign")
        header.profiles = profileRules
        try PolicyWriter.write(path: path, header: header, allows: entries, denies: [], signingKey: nil, permissions: 0o600)
    }
}
