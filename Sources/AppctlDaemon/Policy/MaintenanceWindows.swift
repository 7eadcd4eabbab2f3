import AppctlCore
import AppctlKernel
import AppctlPackages
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Maintenance windows (issue 11): for a bounded time, content that the window's own processes write — and only
/// root can change, under the paths the signed policy's `maintenance` line allows — joins `overlay:maintenance`.
///
/// Attribution is by mount, not by process id: `appctl maintenance start` moves itself into a mount namespace of
/// its own, bind-mounts each allowed path onto itself there (a mount no other process sees), and runs the admin's
/// command inside. The daemon marks those mounts, and only those, for `FAN_CLOSE_WRITE`: a file closed after writing
/// through them was written by the window's processes (or their children, which inherit the namespace), however
/// short-lived they were. A web shell another process drops into /opt during the window goes through the host's
/// own mount, is never reported here, and stays unknown.
public final class MaintenanceWindows: Sendable {
    struct Window: Sendable {
        var id: UInt64
        var opened: Timestamp
        var deadline: Timestamp
        var deadlineMonotonic: Double
        var reason: String
        var paths: [String]
        var pid: Int32
        /// The window process's start time (/proc/PID/stat): when it ends, or its pid is reused, the window closes.
        var pidStart: String
        var added: [OverlayFile] = []
        var refused: [String] = []
    }

    private let group: FanotifyGroup?
    private let wakeup: EventNotifier?
    private let window = Mutex<Window?>(nil)
    /// One drain at a time (the window's thread, or a decision that waits for it).
    private let draining = Mutex<Void>(())
    private let stopping = Atomic<Bool>(false)
    private let policy: PolicyState
    private let store: OverlayStore
    private let reportDirectory: String
    private let log: @Sendable (String) -> Void
    /// Called after entries were added (the daemon swaps the overlays in; no flush: only allows are added).
    private let addedCallback = Mutex<(@Sendable () -> Void)?>(nil)
    private func added() { addedCallback.withLock { $0 }?() }
    func onAdded(_ callback: @escaping @Sendable () -> Void) { addedCallback.withLock { $0 = callback } }

    init(policy: PolicyState, stateDirectory: String, log: @escaping @Sendable (String) -> Void) {
        self.policy = policy
        store = OverlayStore(stateDirectory: stateDirectory)
        reportDirectory = stateDirectory + "/maintenance"
        self.log = log
        group = try? FanotifyGroup.createNotifier()
        wakeup = try? EventNotifier()
    }

    var isOpen: Bool { window.withLock { $0 != nil } }

    func start() {
        guard group != nil else { return }
        startThread(name: "appctl-maintenance") { [self] in run() }
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        wakeup?.signal()
    }

    private func run() {
        guard let group else { return }
        var watched: [(FileDescriptor, Int16)] = [(group.descriptor, Int16(POLLIN))]
        if let wakeup { watched.append((wakeup.descriptor, Int16(POLLIN))) }
        while !stopping.load(ordering: .relaxed) {
            _ = try? pollDescriptors(watched, timeoutMilliseconds: 1000)
            if stopping.load(ordering: .relaxed) { break }
            _ = drain()
            if let w = window.withLock({ $0 }) {
                if monotonicSeconds() >= w.deadlineMonotonic {
                    _ = close(because: "its time ran out", id: w.id)
                } else if Self.startTime(of: w.pid) != w.pidStart {
                    _ = close(because: "its process (pid \(w.pid)) ended", id: w.id)
                }
            }
        }
    }

    /// Opens a window for the mount namespace of `pid` (the `appctl maintenance start` process).
    func open(seconds: UInt64, pid: Int32, paths requested: [String], reason: String) -> Result<String, PolicyRefusal> {
        guard let group else { return .failure(PolicyRefusal("no fanotify group for maintenance windows (fanotify_init failed at start)")) }
        guard let rule = policy.snapshot.policy?.maintenance else {
            return .failure(PolicyRefusal("the signed policy in force allows no maintenance window (no 'maintenance' line)"))
        }
        guard seconds > 0, seconds <= rule.maximumSeconds else {
            return .failure(PolicyRefusal("a window of \(seconds) s is longer than the policy's maximum of \(rule.maximumSeconds) s"))
        }
        let paths = requested.isEmpty ? rule.paths : requested
        guard !paths.isEmpty else { return .failure(PolicyRefusal("the policy's maintenance line names no path to trust")) }
        for path in paths where !isNormalisedAbsolute(path) || !rule.covers(path) {
            return .failure(PolicyRefusal("\(path) is not under the policy's maintenance paths (\(rule.paths.joined(separator: " ")))"))
        }
        return window.withLock { current -> Result<String, PolicyRefusal> in
            if let current { return .failure(PolicyRefusal("window \(current.id) is open already (appctl maintenance end)")) }
            // Each path must be a mount of the window's own: the same directory seen through a mount the daemon
            // does not have (else every process's writes there would count).
            var pinned: [FileDescriptor] = []
            defer { for fd in pinned { fd.close() } }
            guard let pidStart = Self.startTime(of: pid) else { return .failure(PolicyRefusal("no process \(pid)")) }
            for path in paths {
                do {
                    let theirs = try FileDescriptor.open("/proc/\(pid)/root" + path, [.pathOnly, .directory, .noFollow])
                    pinned.append(theirs)
                    let ours = try FileDescriptor.open(path, [.pathOnly, .directory, .noFollow])
                    defer { ours.close() }
                    let a = try theirs.identity(cachedOnly: true), b = try ours.identity(cachedOnly: true)
                    guard a.device == b.device, a.inode == b.inode else {
                        return .failure(PolicyRefusal("\(path) in process \(pid)'s view is another directory than the host's"))
                    }
                    // Its own mount, rooted exactly at the path (a bind mount of it), not the same directory inside some
                    // other namespace's copy of a larger mount.
                    guard a.mountID != 0, a.mountID != b.mountID, a.isMountRoot else {
                        return .failure(PolicyRefusal("\(path) is not a mount of the window's own in process \(pid) (open windows with appctl maintenance start)"))
                    }
                } catch {
                    return .failure(PolicyRefusal("\(path) in process \(pid): \(error)"))
                }
            }
            do {
                for fd in pinned { try group.markMount(pinned: fd, events: [.closeWrite]) }
            } catch {
                try? group.flushMountMarks()
                return .failure(PolicyRefusal("cannot watch the window's mounts: \(error)"))
            }
            let now = Timestamp.now
            let id = UInt64(now.secondsSinceEpoch) * 1000 + UInt64.random(in: 0..<1000)
            current = Window(id: id, opened: now, deadline: Timestamp(secondsSinceEpoch: now.secondsSinceEpoch + Int64(seconds)),
                             deadlineMonotonic: monotonicSeconds() + Double(seconds), reason: reason, paths: paths, pid: pid, pidStart: pidStart)
            log("appctl: maintenance window \(id) opened for \(seconds) s by pid \(pid) (\(PathEscaping.escapeText(Array(reason.utf8)))): trusting what its processes write, only root can change, under \(paths.joined(separator: " "))")
            return .success("window \(id) open until \(current!.deadline); paths \(paths.joined(separator: " "))")
        }
    }

    /// Takes in every close-write notice queued now. Returns whether anything was added.
    @discardableResult
    func drain() -> Bool {
        guard let group, isOpen else { return false }
        return draining.withLock { _ -> Bool in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 8)
            defer { buffer.deallocate() }
            var files: [OverlayFile] = [], refused: [String] = []
            while let events = try? group.readEvents(into: buffer), !events.isEmpty {
                for event in events {
                    if event.fd < 0 { refused.append("notices lost (queue overflow): files written then are not trusted"); continue }
                    defer { Glibc.close(event.fd) }
                    switch Self.examine(event.fd) {
                    case .trusted(let file): files.append(file)
                    case .refused(let why): refused.append(why)
                    case .ignored: break
                    }
                }
            }
            guard !files.isEmpty || !refused.isEmpty else { return false }
            let open = window.withLock { w -> Bool in
                guard w != nil else { return false }
                w!.added += files
                w!.refused += refused.filter { !w!.refused.contains($0) }
                return true
            }
            guard open, !files.isEmpty else { return false }
            persist()
            added()
            return true
        }
    }

    enum Examined { case trusted(OverlayFile), refused(String), ignored }

    /// A file written through the window's mounts: executable content only root can change is trusted. Examined
    /// under a read lease, which the kernel grants only while nobody has the file open for writing (or mapped
    /// shared-writable): a writer who kept a descriptor from before a chown or chmod cannot change the content
    /// between these checks and the hash, and a writer who comes during the hash breaks the lease.
    static func examine(_ fd: Int32) -> Examined {
        let file = FileDescriptor(rawValue: fd)
        let path = pathOfDescriptor(fd)
        guard let first = try? file.status(), first.isRegularFile else { return .ignored }
        do { try file.takeReadLease() } catch {
            return .refused("\(path): still open for writing by some process (\(error)); not trusted")
        }
        defer { file.releaseLease() }
        guard let st = try? file.status() else { return .ignored }
        let head = file.readBytes(at: 0, count: ContentClassifier.headerLength)
        guard let kind = ContentClassifier.classify(head: head, executableBit: st.isExecutableByMode, readAt: { file.readBytes(at: $0, count: $1) }) else {
            return .ignored   // data: nothing to trust
        }
        guard st.st_uid == 0, st.st_mode & 0o022 == 0 else {
            var who: [String] = []
            if st.st_uid != 0 { who.append("its owner uid \(st.st_uid)") }
            if st.st_mode & 0o020 != 0 { who.append("group \(st.st_gid)") }
            if st.st_mode & 0o002 != 0 { who.append("everyone") }
            return .refused("\(path): not only root can change it (\(who.joined(separator: ", ")); mode \(String(st.st_mode & 0o7777, radix: 8)))")
        }
        guard let result = try? FileHasher().hash(file), result.bytesRead == Int64(st.st_size),
              file.holdsUnbrokenReadLease, let after = try? file.status(), after.ctimeNanoseconds == st.ctimeNanoseconds else {
            return .refused("\(path): changed while it was read; not trusted")
        }
        return .trusted(OverlayFile(digest: result.sha256, size: UInt64(st.st_size), kind: kind, escapedPath: PathEscaping.escapeToken(Array(path.utf8))))
    }

    /// Writes the open window into the maintenance overlay (rewritten whole, atomically, under the store's lock).
    private func persist() {
        guard let w = window.withLock({ $0 }) else { return }
        // While open, its deadline stands for its closing time (trust lasts until then plus the policy's keep).
        let record = OverlayWindow(id: w.id, opened: w.opened, closed: w.deadline, reason: w.reason, files: Array(Set(w.added)))
        do {
            _ = try store.withLock(wait: true) { () throws(OverlayError) in
                var overlay = try store.read(layer: "maintenance")
                overlay.windows.removeAll { $0.id == w.id }
                overlay.windows.append(record)
                try store.write(overlay)
            }
        } catch {
            log("appctl: maintenance window \(w.id): cannot write the overlay: \(error)")
        }
    }

    /// Closes the open window: its last notices are taken in, its mounts are no longer watched, its record gets
    /// its real closing time, and a report is written to `<state>/maintenance/<id>.txt`. Returns the report.
    func close(because why: String, id: UInt64? = nil) -> Result<String, PolicyRefusal> {
        guard let group, let open = window.withLock({ $0?.id }) else { return .failure(PolicyRefusal("no maintenance window is open")) }
        if let id, id != open { return .failure(PolicyRefusal("window \(id) is not open (window \(open) is)")) }
        // Marks first, then the last notices: nothing written after this point belongs to this window (or leaks
        // into the next one).
        try? group.flushMountMarks()
        drain()
        guard var w = window.withLock({ w -> Window? in defer { w = nil }; return w }) else {
            return .failure(PolicyRefusal("no maintenance window is open"))
        }
        let closed = Timestamp.now
        w.deadline = min(w.deadline, closed)
        do {
            _ = try store.withLock(wait: true) { () throws(OverlayError) in
                var overlay = try store.read(layer: "maintenance")
                overlay.windows.removeAll { $0.id == w.id }
                if !w.added.isEmpty {
                    overlay.windows.append(OverlayWindow(id: w.id, opened: w.opened, closed: w.deadline, reason: w.reason, files: Array(Set(w.added))))
                }
                try store.write(overlay)
            }
        } catch {
            log("appctl: maintenance window \(w.id): cannot write the overlay: \(error)")
        }
        added()
        let unique = Array(Set(w.added)).sorted { $0.escapedPath < $1.escapedPath }
        // A notice refused while the file was still being written is moot once a later one was trusted.
        let trustedPaths = Set(unique.map { PathEscaping.unescapedString($0.escapedPath) })
        w.refused.removeAll { line in trustedPaths.contains { line.hasPrefix($0 + ": still open for writing") } }
        var report = "maintenance window \(w.id) closed (\(why)): opened \(w.opened), closed \(closed), reason: \(PathEscaping.escapeText(Array(w.reason.utf8)))\n"
        report += "trusted \(unique.count) files in overlay:maintenance (until adopted by a signed policy or expired):\n"
        for f in unique { report += "  + \(f.digest) \(f.kind.rawValue) \(f.escapedPath)\n" }
        report += "not trusted: \(w.refused.count)\n"
        for line in w.refused { report += "  - \(PathEscaping.escapeText(Array(line.utf8)))\n" }
        mkdir(reportDirectory, 0o700)
        try? AtomicFileWriter.write(Array(report.utf8), to: reportDirectory + "/\(w.id).txt", permissions: 0o600)
        log("appctl: maintenance window \(w.id) closed (\(why)): \(unique.count) files trusted, \(w.refused.count) not")
        return .success(report)
    }

    var windowPID: Int32? { window.withLock { $0?.pid } }

    /// Field 22 of /proc/PID/stat (start time in clock ticks): with the pid, names one process for good. Nil when
    /// there is no such process, or it has exited (a zombie).
    static func startTime(of pid: Int32) -> String? {
        guard let bytes = try? readSmallFile("/proc/\(pid)/stat", limit: 4096) else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        guard let paren = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: paren)...].split(separator: " ")
        // A zombie has exited: its window is over even before its parent collects it.
        guard fields.count > 19, fields[0] != "Z", fields[0] != "X" else { return nil }
        return String(fields[19])
    }

    /// `maintenance-status`: the open window, or none.
    var statusLine: String {
        window.withLock { w in
            guard let w else { return "no maintenance window is open" }
            return "window \(w.id) open until \(w.deadline) (pid \(w.pid), paths \(w.paths.joined(separator: " "))): \(Set(w.added).count) files trusted so far, \(w.refused.count) not; reason: \(PathEscaping.escapeText(Array(w.reason.utf8)))"
        }
    }
}
