/// The control socket's protocol, shared by the daemon (`ControlServer`) and its clients (`appctl status`,
/// `enforce`, `monitor`, `learn-mode`, `reload`): one request line per connection, one reply.
/// Wire form: the request is one line (`status`, `status json`, `mode enforce`, `reload`); the reply starts
/// with `ok …` or `error <reason>`, and a status reply carries the figures after its first line.
public enum ControlRequest: Equatable, Sendable {
    case status(json: Bool)
    case setMode(Mode)
    /// Learn execution profiles in monitor mode too (learn mode always does): `profile-learning on|off`.
    case profileLearning(Bool)
    case reload
    /// Read the overlay directory again (the apt hook, after it wrote a layer): added entries need no flush.
    case reloadOverlays
    /// Open a maintenance window for the mount namespace of `pid` (`appctl maintenance start`).
    case maintenanceStart(seconds: UInt64, pid: Int32, paths: [String], reason: String)
    /// Close the open window (only if it is window `id`, when given).
    case maintenanceEnd(id: UInt64?)
    case maintenanceStatus
    /// Test hook (the daemon's hidden `--debug-selftest`): make a call that confinement forbids.
    case debugForbiddenSyscall(String)

    public var line: String {
        switch self {
        case .status(let json): return json ? "status json" : "status"
        case .setMode(let mode): return "mode \(mode.rawValue)"
        case .profileLearning(let on): return "profile-learning \(on ? "on" : "off")"
        case .reload: return "reload"
        case .reloadOverlays: return "overlay-reload"
        case .maintenanceStart(let seconds, let pid, let paths, let reason):
            return "maintenance-start \(seconds) \(pid) \(paths.isEmpty ? "-" : paths.joined(separator: ":")) \(PathEscaping.escapeToken(Array(reason.utf8)))"
        case .maintenanceEnd(let id): return "maintenance-end" + (id.map { " \($0)" } ?? "")
        case .maintenanceStatus: return "maintenance-status"
        case .debugForbiddenSyscall(let call): return "debug-forbidden-syscall \(call)"
        }
    }

    private static let modes = Mode.allCases.map(\.rawValue).joined(separator: "|")

    /// Parses a request line; the error is the reply to send.
    public init(line: String) throws(ControlReply) {
        let words = line.split(separator: " ").map(String.init)
        switch (words.first, words.count) {
        case ("status", 1): self = .status(json: false)
        case ("status", 2) where words[1] == "json": self = .status(json: true)
        case ("mode", 2):
            guard let mode = Mode(rawValue: words[1]) else { throw ControlReply.error("usage: mode \(Self.modes)") }
            self = .setMode(mode)
        case ("mode", _): throw ControlReply.error("usage: mode \(Self.modes)")
        case ("profile-learning", 2) where words[1] == "on" || words[1] == "off": self = .profileLearning(words[1] == "on")
        case ("profile-learning", _): throw ControlReply.error("usage: profile-learning on|off")
        case ("reload", 1): self = .reload
        case ("overlay-reload", 1): self = .reloadOverlays
        case ("maintenance-start", 5):
            guard let seconds = UInt64(words[1]), let pid = Int32(words[2]), pid > 0,
                  let reason = PathEscaping.unescape(words[4].utf8, token: true) else {
                throw ControlReply.error("usage: maintenance-start <seconds> <pid> <paths|-> <reason>")
            }
            self = .maintenanceStart(seconds: seconds, pid: pid, paths: words[3] == "-" ? [] : words[3].split(separator: ":").map(String.init),
                                     reason: String(decoding: reason, as: UTF8.self))
        case ("maintenance-end", 1): self = .maintenanceEnd(id: nil)
        case ("maintenance-end", 2):
            guard let id = UInt64(words[1]) else { throw ControlReply.error("usage: maintenance-end [<id>]") }
            self = .maintenanceEnd(id: id)
        case ("maintenance-status", 1): self = .maintenanceStatus
        case ("debug-forbidden-syscall", _): self = .debugForbiddenSyscall(words.count > 1 ? words[1] : "execve")
        default: throw ControlReply.error("unknown command '\(line)' (status, mode \(Self.modes), profile-learning on|off, reload, overlay-reload, maintenance-start|end|status)")
        }
    }
}

/// A reply: `ok <head>` or `error <reason>`, and for `status` a body of figures.
public struct ControlReply: Error, Equatable, Sendable {
    public var ok: Bool
    /// The rest of the first line.
    public var head: String
    public var body: String

    public init(ok: Bool, head: String, body: String = "") { self.ok = ok; self.head = head; self.body = body }
    public static func error(_ reason: String) -> ControlReply { ControlReply(ok: false, head: reason) }
    public static func ok(_ head: String, body: String = "") -> ControlReply { ControlReply(ok: true, head: head, body: body) }

    public var wire: String {
        (ok ? "ok " : "error ") + head + "\n" + (body.isEmpty ? "" : body + "\n")
    }

    /// Parses what the daemon sent (the client side).
    public init(wire: String) {
        let first = String(wire.prefix { $0 != "\n" })
        var rest = wire.count > first.count ? String(wire.dropFirst(first.count + 1)) : ""
        if rest.hasSuffix("\n") { rest.removeLast() }
        if first.hasPrefix("ok") {
            self.init(ok: true, head: String(first.dropFirst(2).drop { $0 == " " }), body: rest)
        } else {
            self.init(ok: false, head: first.hasPrefix("error") ? String(first.dropFirst(5).drop { $0 == " " }) : first, body: rest)
        }
    }
}
