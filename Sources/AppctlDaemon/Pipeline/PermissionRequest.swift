import AppctlKernel
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Answers permission events and keeps the kernel-side verdict cache: the real one is the fanotify group
/// (`FanotifyGroup`), tests use a recorder. The decision ladder and the responder depend on this, not on the
/// group, so they run without root and without a kernel.
public protocol PermissionResponder: Sendable {
    /// Writes the answer for the event whose descriptor is `eventDescriptor`.
    func respond(to eventDescriptor: Int32, allow: Bool) throws(Errno)
    /// Later events of `events` on the inode behind `eventDescriptor` are answered by the kernel (an ignore mark).
    func ignoreInode(of eventDescriptor: Int32, events: FanotifyGroup.Events) throws(Errno)
    /// Drops every kernel-side verdict.
    func flushInodeMarks() throws(Errno)
}

extension FanotifyGroup: PermissionResponder {
    public func respond(to eventDescriptor: Int32, allow: Bool) throws(Errno) {
        try respond(to: eventDescriptor, allow ? .allow : .deny)
    }
}

/// One permission event, owned: it is answered, and its descriptor closed, exactly once. Non-copyable, so the
/// compiler refuses a second answer or a copy that could outlive the close; every path consumes it through
/// `answer`. A request dropped without an answer (a bug) is denied on the way out rather than left waiting,
/// through the group registered in `lastResortGroup`, and counted.
public struct PermissionRequest: ~Copyable {
    public let event: FanotifyEvent
    /// Monotonic nanoseconds when the event was read: decision latency starts here.
    public let receivedAt: UInt64

    public init(_ event: FanotifyEvent, receivedAt: UInt64) {
        self.event = event
        self.receivedAt = receivedAt
    }

    /// The file's open, read-only descriptor (the kernel opened it for us). Valid until the answer.
    public var descriptor: Int32 { event.fd }
    public var pid: Int32 { event.pid }
    public var isExec: Bool { event.isExec }

    /// Answers, then runs `beforeClose` with the descriptor still open (ignore marks, the path for a record),
    /// then closes it (unless `closeDescriptor` is false: at shutdown, where a hash worker may still be reading
    /// it, the number must not be reused before the process exits). A failed answer is reported to `onError`: the kernel allows the event when the group
    /// closes, and the daemon can do nothing better than say so.
    public consuming func answer(allow: Bool, via responder: some PermissionResponder,
                                 closeDescriptor: Bool = true,
                                 onError: (Errno) -> Void = { _ in },
                                 beforeClose: (Int32) -> Void = { _ in }) {
        let fd = event.fd
        do { try responder.respond(to: fd, allow: allow) } catch { onError(error) }
        beforeClose(fd)
        if closeDescriptor { Glibc.close(fd) }
        discard self
    }

    deinit {
        // Only a bug gets here. Deny (fail closed) rather than leave the process blocked until the daemon exits.
        let group = Self.lastResortGroup.load(ordering: .relaxed)
        if group >= 0 { try? FanotifyGroup(descriptor: FileDescriptor(rawValue: group)).respond(to: event.fd, .deny) }
        Self.droppedUnanswered.wrappingAdd(1, ordering: .relaxed)
        Glibc.close(event.fd)
    }

    /// The group a dropped request is denied through (-1: none, as in tests).
    public static let lastResortGroup = Atomic<Int32>(-1)
    /// How many requests were dropped without an answer; `status` reports it.
    public static let droppedUnanswered = Atomic<Int>(0)
}
