/// Why a decision came out as it did; written into events and `check` output.
public enum Reason: String, Sendable {
    case known
    case unknown
    case blocklisted
    /// The daemon's own process: always allowed, or the daemon could wait on itself.
    case ownProcess = "own-process"
    /// The file could not be read to hash it.
    case unreadable
    /// Code that someone other than root could still change after the verdict: a script an interpreter reads as
    /// it goes, a library or program the loader maps (MAP_PRIVATE pages not yet copied show later writes).
    case mutable
    /// Allowed only by a supplement whose delegation limits the kinds of its entries, and the file is of another
    /// kind (an ELF program listed as a script).
    case kindNotDelegated = "kind-not-delegated"
    /// The policy allows the program, but the execution profile of the service or user starting it does not list it.
    case notInProfile = "not-in-profile"
    /// An interpreter started with inline code (`-c`, `-e`, standard input) by a subject whose profile allows it only
    /// with a program file.
    case inlineCode = "inline-code"
}

public struct Decision: Equatable, Sendable {
    public var allow: Bool
    public var reason: Reason
    /// Allowed only because of the mode; enforce would have denied it.
    public var wouldDeny: Bool
    /// Learn mode: record this file in the fragment.
    public var record: Bool

    public init(allow: Bool, reason: Reason, wouldDeny: Bool = false, record: Bool = false) {
        self.allow = allow; self.reason = reason; self.wouldDeny = wouldDeny; self.record = record
    }

    /// The whole rule, in one place:
    /// - a blocklisted digest is denied in every mode (a blocklist that learn or monitor mode
    ///   ignored would be a trap for the admin who relies on it);
    /// - a known digest is allowed;
    /// - anything else is denied in enforce, allowed and marked `would-deny` in monitor,
    ///   allowed and recorded in learn. `lookup == nil` means no policy is loaded.
    public static func decide(_ lookup: Lookup?, mode: Mode) -> Decision {
        switch lookup {
        case .blocklisted?:
            return Decision(allow: false, reason: .blocklisted)
        case .known?:
            return Decision(allow: true, reason: .known)
        case .unknown?, nil:
            switch mode {
            case .enforce: return Decision(allow: false, reason: .unknown)
            case .monitor: return Decision(allow: true, reason: .unknown, wouldDeny: true)
            case .learn: return Decision(allow: true, reason: .unknown, record: true)
            }
        }
    }

    /// Code whose content could change while it is used (`Reason.mutable`): whatever its digest says now, the
    /// verdict would not hold. Denied in enforce mode; in monitor and learn modes it runs, reported as would-deny.
    public static func mutable(mode: Mode) -> Decision {
        mode == .enforce ? Decision(allow: false, reason: .mutable) : Decision(allow: true, reason: .mutable, wouldDeny: true)
    }

    /// Content a supplement allows, but not as the kind of file it is (`Reason.kindNotDelegated`): as unknown content.
    public static func kindNotDelegated(mode: Mode) -> Decision {
        var d = decide(.unknown, mode: mode)
        d.reason = .kindNotDelegated
        d.record = false
        return d
    }

    /// An exec an execution profile refuses (`notInProfile`, `inlineCode`): denied in enforce mode, would-deny otherwise.
    public static func profileMiss(_ reason: Reason, mode: Mode) -> Decision {
        mode == .enforce ? Decision(allow: false, reason: reason) : Decision(allow: true, reason: reason, wouldDeny: true)
    }

    /// A file that could not be hashed: fail closed in enforce mode, as for unknown content.
    public static func unreadable(mode: Mode) -> Decision {
        var d = decide(.unknown, mode: mode)
        d.reason = .unreadable
        d.record = false
        return d
    }
}
