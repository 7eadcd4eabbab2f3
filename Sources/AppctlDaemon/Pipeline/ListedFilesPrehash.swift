import AppctlCore
import AppctlKernel
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// No first-exec stall for large programs that were on disk before the daemon started (issue 14): after start-up
/// and after each reload, the policy's listed files of at least `minimumSize` are hashed in the background at idle
/// priority, largest first, into the digest cache, so that their first exec is a cache hit. Only files only root
/// can write are cached (as for every digest), and what is cached is the digest of the file as it is now: the
/// policy's own digests are not trusted for anything here (the file read may even be a newer one); they decide
/// nothing until an exec asks. Bounded: at most `maximumFiles` of the largest entries are kept while the policy is
/// read. A reload cancels a pass still running and starts a new one.
final class ListedFilesPrehash: Sendable {
    /// Smaller files hash in about a millisecond at their first exec: not a stall worth a background read.
    static let minimumSize: UInt64 = 1 << 20
    /// The largest this many (well under the digest cache's bound, so the pass cannot evict what execs cached).
    static let maximumFiles = 4096

    let caches: DecisionCaches
    let statistics: Statistics
    let facts: any FileFacts
    private let generation = Atomic<Int>(0)

    init(caches: DecisionCaches, statistics: Statistics, facts: any FileFacts) {
        self.caches = caches; self.statistics = statistics; self.facts = facts
    }

    /// Starts a pass over the policy at `policyPath` (a pass still running stops at its next file).
    func start(policyPath: String) {
        let mine = generation.wrappingAdd(1, ordering: .relaxed).newValue
        startThread(name: "appctl-listed") { [self] in run(policyPath: policyPath, generation: mine) }
    }

    /// Stops a pass still running (at its next file).
    func stop() { generation.wrappingAdd(1, ordering: .relaxed) }

    private func run(policyPath: String, generation mine: Int) {
        setThreadNice(19)
        // The largest `maximumFiles` entries: kept sorted, smallest first, so a larger one replaces it.
        var largest: [(size: UInt64, path: String)] = []
        _ = try? PolicyReader(path: policyPath).read(onAllow: { line in
            guard line.size >= Self.minimumSize else { return }
            if largest.count == Self.maximumFiles {
                guard line.size > largest[0].size else { return }
                largest.removeFirst()
            }
            let entry = (size: line.size, path: PathEscaping.unescapedString(String(decoding: line.pathBytes, as: UTF8.self)))
            let at = largest.firstIndex { $0.size > entry.size } ?? largest.count
            largest.insert(entry, at: at)
        })
        statistics.set(.listedFilesToPrehash, largest.count)
        statistics.set(.listedFilesPrehashed, 0)
        let hasher = FileHasher()
        for entry in largest.reversed() {
            guard generation.load(ordering: .relaxed) == mine else { return }
            defer { statistics.add(.listedFilesPrehashed) }
            // O_NOFOLLOW: the listed path itself, never where a symlink there points. Our own open: the event thread
            // answers it at once (own process).
            guard let fd = try? FileDescriptor.open(entry.path, [.readOnly, .nonBlocking, .noFollow]) else { continue }
            defer { fd.close() }
            // fs-verity files are decided from the kernel's measurement in O(1): nothing to gain by hashing them.
            guard let key = facts.identity(of: fd.rawValue), key.onlyRootCanWrite, !key.isVerity, UInt64(key.size) == entry.size,
                  caches.digest(of: key) == nil,
                  let result = try? hasher.hash(fd, sizeHint: key.size), result.bytesRead == key.size,
                  facts.identity(of: fd.rawValue) == key else { continue }   // unchanged while it was read
            caches.remember(result.sha256, for: key)
            statistics.add(.bytesHashed, Int(result.bytesRead))
        }
    }
}
