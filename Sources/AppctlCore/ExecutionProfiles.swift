import AppctlKernel

// Execution profiles (format version 6, issue 15): per service or user, which of the programs the policy allows
// that subject may start, and whether an interpreter among them may take its program as inline code. The file
// list answers "may this content run on this host"; a profile answers "may *this service* start it". Pure: the
// daemon reads the subjects of a process from /proc and asks `ProfileTable`.

/// Who starts a program: the service a process belongs to (a systemd unit, from its cgroup v2 path) or the user
/// it runs as.
public enum Subject: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// A unit name ending in `.service` or `.scope` (`nginx.service`, `session-4.scope`).
    case service(String)
    /// A user name, resolved to a uid on the host when the policy is loaded.
    case user(String)

    /// `service=<unit>` or `user=<name>`.
    public init(spec: String) throws(SpecError) {
        if spec.hasPrefix("service=") {
            let unit = String(spec.dropFirst("service=".count))
            guard Self.isValidUnitName(unit) else {
                throw SpecError("service= needs a unit name ending in .service or .scope (letters, digits, : _ . @ - \\), got '\(unit)'")
            }
            self = .service(unit)
        } else if spec.hasPrefix("user=") {
            let name = String(spec.dropFirst("user=".count))
            guard Self.isValidUserName(name) else {
                throw SpecError("user= needs a user name (1 to 32 of a-z 0-9 _ - . starting with a letter or _), got '\(name)'")
            }
            self = .user(name)
        } else {
            throw SpecError("a subject is service=<unit>.service, service=<unit>.scope or user=<name>, got '\(spec)'")
        }
    }

    public var description: String {
        switch self {
        case .service(let unit): "service=\(unit)"
        case .user(let name): "user=\(name)"
        }
    }

    public static func < (a: Subject, b: Subject) -> Bool { a.description.utf8.lexicographicallyPrecedes(b.description.utf8) }

    /// systemd's unit name alphabet (systemd.unit(5): "a-z A-Z 0-9 : - _ . \"), at most 255 bytes, with `@` for
    /// template instances.
    public static func isValidUnitName(_ unit: String) -> Bool {
        guard unit.utf8.count <= 255, unit.hasSuffix(".service") || unit.hasSuffix(".scope") else { return false }
        let stem = unit.hasSuffix(".service") ? unit.dropLast(8) : unit.dropLast(6)
        return !stem.isEmpty && unit.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || ":-_.@\\".utf8.contains(b)
        }
    }

    /// Debian's user names (adduser's NAME_REGEX, relaxed to what useradd accepts): no upper case, no colon.
    public static func isValidUserName(_ name: String) -> Bool {
        guard let first = name.utf8.first, name.utf8.count <= 32, first == UInt8(ascii: "_") || (first >= 0x61 && first <= 0x7a) else { return false }
        return name.utf8.allSatisfy { b in (b >= 0x30 && b <= 0x39) || (b >= 0x61 && b <= 0x7a) || "_-.".utf8.contains(b) }
    }

    /// The service subjects of a cgroup v2 path (the `0::` line of /proc/PID/cgroup): every component ending in
    /// `.service` or `.scope`, outermost first. Every one of them counts, not only the innermost: with delegation a
    /// service's user may create groups below it (`web.service/x.scope`), and a nested group must only narrow
    /// what the enclosing service may start, never leave its profile.
    public static func services(inCgroupPath path: some Collection<UInt8>) -> [String] {
        path.split(separator: UInt8(ascii: "/")).compactMap { component in
            let name = String(decoding: component, as: UTF8.self)
            return isValidUnitName(name) ? name : nil
        }
    }
}

/// A program a profile names: by content, or every program the policy (or an apt overlay) has from a package.
public enum ProfileProgram: Hashable, Sendable, CustomStringConvertible {
    case digest(SHA256Digest)
    /// `package:<name>`: the allow entries whose origin is `dpkg:<name>`, and the files of that package an apt overlay
    /// the policy trusts installed (so a profile written this way survives the package's upgrades).
    case package(String)

    public init(spec: String) throws(SpecError) {
        if spec.hasPrefix("sha256:") {
            let hex = spec.dropFirst(7)
            guard hex.utf8.count == 64, hex.utf8.allSatisfy({ Hex.value($0) != nil }), let digest = SHA256Digest(hex: String(hex)) else {
                throw SpecError("sha256: must be followed by 64 lowercase hex digits, got '\(hex)'")
            }
            self = .digest(digest)
        } else if spec.hasPrefix("package:") {
            let name = String(spec.dropFirst(8))
            guard Self.isValidPackageName(name) else { throw SpecError("package: needs a Debian package name, got '\(name)'") }
            self = .package(name)
        } else {
            throw SpecError("a program is sha256:<64 hex> or package:<name>, got '\(spec)'")
        }
    }

    public var description: String {
        switch self {
        case .digest(let d): "sha256:\(d.hex)"
        case .package(let name): "package:\(name)"
        }
    }

    /// Debian policy 5.6.1: lower case letters, digits, `+ - .`, at least two characters, starting alphanumeric.
    public static func isValidPackageName(_ name: String) -> Bool {
        guard name.utf8.count >= 2, name.utf8.count <= 128, let first = name.utf8.first,
              (first >= 0x30 && first <= 0x39) || (first >= 0x61 && first <= 0x7a) else { return false }
        return name.utf8.allSatisfy { b in (b >= 0x30 && b <= 0x39) || (b >= 0x61 && b <= 0x7a) || "+-.".utf8.contains(b) }
    }
}

/// One `profile` header line: `profile <subject> <program> inline|no-inline <path>`.
/// `inline`: when the program is an interpreter, the subject may hand it its program as an argument or on standard
/// input (`sh -c`, `python3 -c`, `perl -e`, `bash < x`); `no-inline`: only as a file. The path is where learning saw
/// the program (for review; `-` for a package); trust is never by path.
public struct ProfileRule: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var subject: Subject
    public var program: ProfileProgram
    public var inline: Bool
    public var escapedPath: String

    public init(subject: Subject, program: ProfileProgram, inline: Bool, escapedPath: String = "-") {
        self.subject = subject; self.program = program; self.inline = inline; self.escapedPath = escapedPath
    }

    public init(spec: String) throws(SpecError) {
        let fields = spec.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard fields.count == 4 else {
            throw SpecError("expected '<subject> <program> inline|no-inline <path>', got \(fields.count) fields")
        }
        let subject = try Subject(spec: fields[0])
        let program = try ProfileProgram(spec: fields[1])
        guard fields[2] == "inline" || fields[2] == "no-inline" else { throw SpecError("the third field must be inline or no-inline, got '\(fields[2])'") }
        let path = fields[3]
        guard path == "-" || (PathEscaping.unescape(Array(path.utf8), token: true).map { !$0.isEmpty } ?? false) else {
            throw SpecError("the path must be an escaped token or '-', got '\(path)'")
        }
        self.init(subject: subject, program: program, inline: fields[2] == "inline", escapedPath: path)
    }

    public var description: String { "\(subject) \(program) \(inline ? "inline" : "no-inline") \(escapedPath)" }

    /// Canonical order: by subject, then program; one line per (subject, program).
    public static func < (a: ProfileRule, b: ProfileRule) -> Bool { a.sortKey.utf8.lexicographicallyPrecedes(b.sortKey.utf8) }
    var sortKey: String { "\(subject) \(program)" }
    public func sameKey(_ other: ProfileRule) -> Bool { subject == other.subject && program == other.program }

    /// Rules for several sources merged: one per (subject, program); inline when any source says so (a learned use of
    /// inline code is a use), the first path seen kept.
    public static func merged(_ rules: [ProfileRule]) -> [ProfileRule] {
        var byKey: [String: ProfileRule] = [:]
        for rule in rules {
            if var existing = byKey[rule.sortKey] {
                existing.inline = existing.inline || rule.inline
                byKey[rule.sortKey] = existing
            } else {
                byKey[rule.sortKey] = rule
            }
        }
        return byKey.values.sorted()
    }
}

/// Who a process is, as far as profiles care: the services of its cgroup path (outermost first) and its uids (real
/// and effective: a set-user-ID program started by a profiled user is still governed by that user's profile).
public struct ProcessSubjects: Sendable, Equatable {
    public var services: [String]
    public var uids: [UInt32]
    public init(services: [String], uids: [UInt32]) { self.services = services; self.uids = uids }
}

/// What the profiles say about one exec.
public enum ProfileOutcome: Sendable, Equatable {
    /// No profile applies to this process: the policy alone decides.
    case unprofiled
    /// A profile that applies does not list the program (`subject` names it).
    case notInProfile(subject: String)
    /// Every profile that applies lists it. `inlineForbiddenBy`: a profile that does not let it take inline code
    /// (when the program is an interpreter, its command line decides); nil when every one does.
    case admitted(inlineForbiddenBy: String?)
}

/// The profiles of the policy in force, compiled for the event path: each subject's programs by digest. Built when a
/// policy or an overlay is applied (off the event thread).
public struct ProfileTable: Sendable {
    struct Profile: Sendable {
        var name: String
        /// Digest → may take inline code.
        var programs: [SHA256Digest: Bool] = [:]
    }
    var services: [String: Profile] = [:]
    var users: [UInt32: Profile] = [:]
    /// User subjects that name no user of this host: their profiles apply to nobody (until a reload finds them).
    public private(set) var unresolvedUsers: [String] = []
    /// Digests every profile lists (and whether every one lets them take inline code): only their execs may be
    /// answered the same for every process, and so in the kernel.
    private var everyProfile: [SHA256Digest: Bool] = [:]

    public init() {}

    /// - Parameters:
    ///   - packageDigests: the digests of each package's programs (allow entries of origin `dpkg:<name>` and the files
    ///     of the apt overlay's packages of that name).
    ///   - uid: a user name → its uid on this host (nil: no such user).
    public init(rules: [ProfileRule], packageDigests: (String) -> [SHA256Digest], uid: (String) -> UInt32?) {
        var unresolved: Set<String> = []
        for rule in rules {
            let digests: [SHA256Digest]
            switch rule.program {
            case .digest(let d): digests = [d]
            case .package(let name): digests = packageDigests(name)
            }
            func add(_ p: inout Profile) { for d in digests { p.programs[d] = (p.programs[d] ?? false) || rule.inline } }
            switch rule.subject {
            case .service(let unit):
                add(&services[unit, default: Profile(name: rule.subject.description)])
            case .user(let name):
                guard let id = uid(name) else { unresolved.insert(name); continue }
                add(&users[id, default: Profile(name: rule.subject.description)])
            }
        }
        unresolvedUsers = unresolved.sorted()
        let all = Array(services.values) + Array(users.values)
        if let first = all.first {
            for (digest, inline) in first.programs {
                var everyInline = inline
                var inAll = true
                for other in all.dropFirst() {
                    guard let i = other.programs[digest] else { inAll = false; break }
                    everyInline = everyInline && i
                }
                if inAll { everyProfile[digest] = everyInline }
            }
        }
    }

    public var isEmpty: Bool { services.isEmpty && users.isEmpty }
    public var subjectCount: Int { services.count + users.count }
    /// Whether any profile is for a user (else a process's uids need not be read).
    public var hasUserProfiles: Bool { !users.isEmpty }
    public var hasServiceProfiles: Bool { !services.isEmpty }

    /// Whether the exec of this content gets the same answer from every profile (listed by all of them, and as an
    /// interpreter free to take inline code in all of them when it is one), so the kernel may answer it.
    public func sameForEveryProcess(_ digest: SHA256Digest, isInterpreter: Bool) -> Bool {
        guard !isEmpty else { return true }
        guard let inline = everyProfile[digest] else { return false }
        return inline || !isInterpreter
    }

    /// Whether some profile could apply to a process with these services and uids (its subjects need reading at all).
    public func check(_ digest: SHA256Digest, subjects: ProcessSubjects) -> ProfileOutcome {
        var applicable: [Profile] = []
        for unit in subjects.services { if let p = services[unit] { applicable.append(p) } }
        for uid in subjects.uids { if let p = users[uid] { applicable.append(p) } }
        guard !applicable.isEmpty else { return .unprofiled }
        var forbidden: String?
        for profile in applicable {
            guard let inline = profile.programs[digest] else { return .notInProfile(subject: profile.name) }
            if !inline && forbidden == nil { forbidden = profile.name }
        }
        return .admitted(inlineForbiddenBy: forbidden)
    }
}

/// `/etc/passwd` → user name → uid, read as a file (never through NSS: a directory service may not answer, and this
/// runs when a policy is applied). Users only a directory service knows need `user=` profiles resolved there
/// first; they are reported as unresolved.
public func passwdUIDs(_ text: String) -> [String: UInt32] {
    var result: [String: UInt32] = [:]
    for line in text.split(separator: "\n") {
        let f = line.split(separator: ":", omittingEmptySubsequences: false)
        guard f.count >= 3, let uid = UInt32(f[2]), result[String(f[0])] == nil else { continue }
        result[String(f[0])] = uid
    }
    return result
}
