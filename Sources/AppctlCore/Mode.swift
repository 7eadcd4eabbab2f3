/// How the daemon treats what the policy does not know.
public enum Mode: String, Sendable, CaseIterable {
    /// Unknown content is denied (`EPERM`).
    case enforce
    /// Unknown content runs and is recorded as `would-deny`.
    case monitor
    /// Unknown content runs and is recorded for a new inventory fragment.
    case learn

    /// What a mode may be called, for error messages (the config file, `--mode`, the control socket all say the same).
    public static let choices = allCases.map(\.rawValue).joined(separator: ", ")
}
