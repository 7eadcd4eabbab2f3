import AppctlCore
import AppctlKernel
import Synchronization

/// Learn mode: files that ran and that the inventory lacks, written as an unsigned inventory fragment.
final class LearnRecorder: Sendable {
    private struct State {
        var entries: [String: AllowEntry] = [:]
        var digests = Set<SHA256Digest>()
        var dirty = false
    }
    private let state = Mutex(State())
    let hostname: String

    init(hostname: String) { self.hostname = hostname }

    var isDirty: Bool { state.withLock { $0.dirty } }
    var count: Int { state.withLock { $0.entries.count } }

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
        let header = PolicyHeader(issued: .now, description: "learned at run time on \(hostname) by appctl daemon (learn mode); review, then sign")
        try PolicyWriter.write(path: path, header: header, allows: entries, denies: [], signingKey: nil, permissions: 0o600)
    }
}
