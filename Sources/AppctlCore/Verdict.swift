/// A decision as the daemon carries it from the moment it is made to the answer and the event record: computed
/// once per event, with the policy serial and mode it was made under, and the rule that made it.
public struct Verdict: Equatable, Sendable {
    public var decision: Decision
    /// The serial of the policy in force when it was decided (nil: no policy loaded).
    public var serial: UInt64?
    public var mode: Mode
    public var layer: Layer
    /// For an allow by digest: the trust layer whose entry allowed it (`base`, the signed policy, or
    /// `overlay:apt`); nil for every other verdict.
    public var allowedBy: String?
    /// The candidate policy evaluated next to the one in force would deny this content (shadow evaluation).
    public var candidateWouldDeny = false
    /// Non-zero: the digest is allowed only by supplements whose delegations limit kinds; the file must be one of
    /// these (`FileKind.bit`), which the responder checks from the file's bytes before it answers.
    public var requiredKinds: UInt8 = 0
    /// For a verdict an execution profile decided: the subject whose profile did (`service=web.service`).
    public var subject: String?

    /// Which rule of the ladder decided (`Triage` names each). Written into no file format: for the reader of the
    /// code and of tests, and for status figures.
    public enum Layer: String, Sendable {
        /// The file's SHA-256 against the inventory (hashed now, or from the digest cache).
        case digest
        /// The file's fs-verity digest, paired with a content digest by the signed policy.
        case verity
        /// No allow entry has the file's size: denied unread (enforce mode only).
        case sizeFilter = "size-filter"
        /// The event came from the daemon itself.
        case ownProcess = "own-process"
        /// The file could not be identified or read.
        case unreadable
        /// Code that someone other than root can change while it is used (a script, a library, a mapped program).
        case mutable
        /// An execution profile: the service or user starting the program may not (issue 15).
        case profile
        /// The daemon is stopping: what is still queued is let through (the kernel would allow it once the group closes).
        case shutdown
    }

    public init(_ decision: Decision, serial: UInt64?, mode: Mode, layer: Layer, allowedBy: String? = nil) {
        self.decision = decision; self.serial = serial; self.mode = mode; self.layer = layer; self.allowedBy = allowedBy
    }

    public var allow: Bool { decision.allow }

    /// What the event log calls it; nil for an allow that is not logged.
    public func outcome(logAllows: Bool, learnedNewFile: Bool) -> Outcome? {
        if !decision.allow { return .deny }
        if decision.wouldDeny { return .wouldDeny }
        if decision.record { return learnedNewFile ? .learned : nil }
        if candidateWouldDeny { return .candidateWouldDeny }
        return logAllows && decision.reason != .ownProcess ? .allow : nil
    }
}

/// What an event record says happened.
public enum Outcome: String, Sendable {
    case deny
    case wouldDeny = "would-deny"
    /// Allowed, but the candidate policy evaluated next to the one in force would deny it.
    case candidateWouldDeny = "candidate-would-deny"
    case learned
    case allow

    /// Denies and would-denies are what an admin must see: they also go to stderr, and /proc is read for them
    /// before the answer releases the process.
    public var isNotable: Bool { self != .allow }
}
