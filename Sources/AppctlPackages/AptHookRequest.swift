/// What apt writes to a `DPkg::Pre-Install-Pkgs` hook that asked for protocol version 3
/// (`DPkg::Tools::Options::<hook>::Version "3"`, apt.conf(5)): the line `VERSION 3`, apt's whole configuration as
/// `Key=value` lines, a blank line, then one line per package action:
/// `name old-version old-arch old-multiarch direction new-version new-arch new-multiarch action`, where a
/// missing version or architecture is `-`, direction is `<`, `>`, `=` or `**`, and action is the `.deb` to unpack,
/// `**CONFIGURE**` or `**REMOVE**` (seen on this machine: `apt-get install --reinstall hostname`).
public struct AptHookRequest: Sendable {
    public struct Action: Hashable, Sendable {
        public var package: String
        public var oldVersion: String?
        public var newVersion: String?
        public var newArchitecture: String?
        /// The `.deb` apt hands to dpkg; nil for configure and remove actions.
        public var debPath: String?
        public var isRemoval: Bool
    }

    public var configuration: [String: String]
    public var actions: [Action]

    public init(configuration: [String: String], actions: [Action]) { self.configuration = configuration; self.actions = actions }

    /// Parses the whole standard input of the hook.
    public init(parsing text: [UInt8]) throws(AptHookError) {
        let lines = text.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        guard lines.first == "VERSION 3" else {
            throw AptHookError("apt did not speak hook protocol version 3 (first line '\(lines.first ?? "")'); is DPkg::Tools::Options::…::Version \"3\" set?")
        }
        var configuration: [String: String] = [:]
        var index = 1
        while index < lines.count, !lines[index].isEmpty {
            let line = lines[index]
            if let eq = line.firstIndex(of: "=") { configuration[String(line[..<eq])] = String(line[line.index(after: eq)...]) }
            index += 1
        }
        var actions: [Action] = []
        for line in lines.dropFirst(index + 1) where !line.isEmpty {
            let f = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard f.count >= 9 else { throw AptHookError("unexpected package line from apt: '\(line)'") }
            let target = f[8...].joined(separator: " ")
            actions.append(Action(package: f[0], oldVersion: f[1] == "-" ? nil : f[1], newVersion: f[5] == "-" ? nil : f[5],
                                  newArchitecture: f[6] == "-" ? nil : f[6],
                                  debPath: target.hasPrefix("**") ? nil : target, isRemoval: target == "**REMOVE**"))
        }
        self.init(configuration: configuration, actions: actions)
    }

    /// A directory apt's configuration names, resolved as apt does: `Dir::State::lists` is relative to
    /// `Dir::State`, which is relative to `Dir`, unless a value starts with `/`.
    public func directory(_ key: String, default fallback: String) -> String {
        var parts = key.split(separator: ":").filter { !$0.isEmpty }.map(String.init)
        var path = ""
        while !parts.isEmpty {
            let value = configuration[parts.joined(separator: "::")] ?? (parts.count == 1 ? "/" : nil)
            parts.removeLast()
            guard let value, !value.isEmpty else { continue }
            path = path.isEmpty ? value : (value.hasSuffix("/") ? value : value + "/") + path
            if value.hasPrefix("/") { break }
        }
        return path.isEmpty ? fallback : path
    }

    /// The `.deb` files of this transaction, in apt's order.
    public var unpacks: [Action] { actions.filter { $0.debPath != nil } }
}

/// Why the hook refuses or cannot go on; one line.
public struct AptHookError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
