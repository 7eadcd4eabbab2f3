import AppctlKernel
#if canImport(Glibc)
import Glibc
#endif

/// A local trust layer on top of the signed policy (`Policies/FORMAT.md`, "Overlays"): content this host
/// derived itself from a source the signed policy names. The file is written by root tools only (the apt hook),
/// root-owned and mode 0600; the daemon re-checks every record against the policy in force when it loads it,
/// so an overlay can never grant more than the policy's `apt-source` lines allow.
public struct Overlay: Equatable, Sendable {
    /// Which layer: `apt` (files of verified packages) or `maintenance` (files written in maintenance windows).
    /// Events and status name it `overlay:<layer>`.
    public var layer: String
    public var packages: [OverlayPackage]
    public var windows: [OverlayWindow] = []

    public init(layer: String, packages: [OverlayPackage], windows: [OverlayWindow] = []) {
        self.layer = layer; self.packages = packages; self.windows = windows
    }

    public static let magic = "appctl-overlay 1"
}

/// One package version whose files were verified through the archive's signed chain.
public struct OverlayPackage: Hashable, Sendable {
    public var name: String
    public var version: String
    public var architecture: String
    /// SHA-256 of the `.deb` that was verified and whose members were hashed.
    public var debDigest: SHA256Digest
    /// The primary fingerprint of the OpenPGP key whose signature on `InRelease` was good.
    public var signer: String
    /// The Release file's `Origin`, `Suite` and `Codename` (`-` when absent).
    public var origin: String
    public var suite: String
    public var codename: String
    /// Every executable file the package installs, and its maintainer scripts (path `DEBIAN/<name>`).
    public var files: [OverlayFile]

    public init(name: String, version: String, architecture: String, debDigest: SHA256Digest, signer: String, origin: String,
                suite: String, codename: String, files: [OverlayFile]) {
        self.name = name; self.version = version; self.architecture = architecture; self.debDigest = debDigest
        self.signer = signer; self.origin = origin; self.suite = suite; self.codename = codename; self.files = files
    }

    /// `name=version:arch`, what reports call it.
    public var label: String { "\(name)=\(version):\(architecture)" }

    /// Whether a rule of the signed policy lets this host trust the package (mode `auto`, signer, origin, suite).
    public func isTrusted(by rules: [AptSourceRule]) -> AptSourceRule? {
        let rule = AptSourceRule.governing(rules, signers: [signer], origin: origin == "-" ? nil : origin,
                                           suite: suite == "-" ? nil : suite, codename: codename == "-" ? nil : codename)
        return rule?.mode == .auto ? rule : nil
    }
}

/// One maintenance window's content: files its own processes wrote, only root could write, under the paths the
/// policy's `maintenance` line allows. Trusted until `closed` + the rule's `keep`.
public struct OverlayWindow: Hashable, Sendable {
    public var id: UInt64
    public var opened: Timestamp
    /// When it closed (or will at the latest, while open).
    public var closed: Timestamp
    public var reason: String
    public var files: [OverlayFile]

    public init(id: UInt64, opened: Timestamp, closed: Timestamp, reason: String, files: [OverlayFile]) {
        self.id = id; self.opened = opened; self.closed = closed; self.reason = reason; self.files = files
    }

    /// Whether the policy's maintenance line trusts this window's file now.
    public func trusts(_ file: OverlayFile, rule: MaintenanceRule?, now: Timestamp) -> Bool {
        guard let rule else { return false }
        let keep = Int64(rule.keepSeconds ?? MaintenanceRule.defaultKeepSeconds)
        return now.secondsSinceEpoch < closed.secondsSinceEpoch + keep && rule.covers(PathEscaping.unescapedString(file.escapedPath))
    }
}

public struct OverlayFile: Hashable, Sendable {
    public var digest: SHA256Digest
    public var size: UInt64
    public var kind: FileKind
    /// Escaped as a token (`PathEscaping.escapeToken`).
    public var escapedPath: String

    public init(digest: SHA256Digest, size: UInt64, kind: FileKind, escapedPath: String) {
        self.digest = digest; self.size = size; self.kind = kind; self.escapedPath = escapedPath
    }
}

/// Why an overlay file was not used; one line naming the file and, where there is one, the line.
public struct OverlayError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

extension Overlay {
    /// The file's text: packages sorted by name, architecture and version, files by path then digest.
    public func serialized() -> [UInt8] {
        var out = "\(Overlay.magic)\nlayer \(layer)\n"
        for p in packages.sorted(by: { ($0.name, $0.architecture, $0.version) < ($1.name, $1.architecture, $1.version) }) {
            out += "package \(Self.token(p.name)) \(Self.token(p.version)) \(Self.token(p.architecture)) \(p.debDigest) \(p.signer) \(Self.token(p.origin)) \(Self.token(p.suite)) \(Self.token(p.codename)) \(p.files.count)\n"
            for f in p.files.sorted(by: { ($0.escapedPath, $0.digest.hex) < ($1.escapedPath, $1.digest.hex) }) {
                out += "file \(f.digest) \(f.size) \(f.kind.rawValue) \(f.escapedPath)\n"
            }
        }
        for w in windows.sorted(by: { $0.id < $1.id }) {
            out += "window \(w.id) \(w.opened) \(w.closed) \(Self.token(w.reason)) \(w.files.count)\n"
            for f in w.files.sorted(by: { ($0.escapedPath, $0.digest.hex) < ($1.escapedPath, $1.digest.hex) }) {
                out += "file \(f.digest) \(f.size) \(f.kind.rawValue) \(f.escapedPath)\n"
            }
        }
        return Array(out.utf8)
    }

    static func token(_ text: String) -> String { text.isEmpty ? "-" : PathEscaping.escapeToken(Array(text.utf8)) }

    /// Parses an overlay file's bytes; `name` is for messages.
    public static func parse(_ bytes: [UInt8], name: String) throws(OverlayError) -> Overlay {
        var lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        guard bytes.last == UInt8(ascii: "\n") else { throw OverlayError("\(name): truncated (no newline at the end)") }
        lines.removeLast()
        guard lines.count >= 2, String(decoding: lines[0], as: UTF8.self) == magic else {
            throw OverlayError("\(name):1: not an appctl overlay (the first line must be '\(magic)')")
        }
        let layerLine = String(decoding: lines[1], as: UTF8.self)
        guard layerLine.hasPrefix("layer "), layerLine.count > 6 else { throw OverlayError("\(name):2: expected 'layer <name>'") }
        var overlay = Overlay(layer: String(layerLine.dropFirst(6)), packages: [])
        var remaining = 0
        var inWindow = false
        for (index, raw) in lines.enumerated().dropFirst(2) {
            let lineNumber = index + 1
            let fields = raw.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            func fail(_ why: String) -> OverlayError { OverlayError("\(name):\(lineNumber): \(why)") }
            switch fields.first {
            case "package"?:
                guard remaining == 0 else { throw fail("package line before the previous package's files are complete") }
                guard fields.count == 10, let deb = SHA256Digest(hex: fields[4]), let count = Int(fields[9]),
                      fields[5].utf8.count == 40, fields[5].utf8.allSatisfy({ Hex.value($0, allowingUppercase: true) != nil }) else {
                    throw fail("malformed package line")
                }
                let text = fields[1...8].map { PathEscaping.unescape($0.utf8, token: true).map { String(decoding: $0, as: UTF8.self) } }
                guard text.allSatisfy({ $0 != nil }) else { throw fail("malformed escape in a package line") }
                overlay.packages.append(OverlayPackage(name: text[0]!, version: text[1]!, architecture: text[2]!, debDigest: deb,
                                                       signer: fields[5], origin: text[5]!, suite: text[6]!, codename: text[7]!, files: []))
                remaining = count
                inWindow = false
            case "window"?:
                guard remaining == 0 else { throw fail("window line before the previous record's files are complete") }
                guard fields.count == 6, let id = UInt64(fields[1]), let opened = Timestamp(canonical: Array(fields[2].utf8)),
                      let closed = Timestamp(canonical: Array(fields[3].utf8)), let count = Int(fields[5]),
                      let reason = PathEscaping.unescape(fields[4].utf8, token: true) else {
                    throw fail("malformed window line (expected 'window <id> <opened> <closed> <reason> <file-count>')")
                }
                overlay.windows.append(OverlayWindow(id: id, opened: opened, closed: closed, reason: String(decoding: reason, as: UTF8.self), files: []))
                remaining = count
                inWindow = true
            case "file"?:
                guard remaining > 0, inWindow ? !overlay.windows.isEmpty : !overlay.packages.isEmpty else { throw fail("file line outside a record's announced count") }
                guard fields.count == 5, let digest = SHA256Digest(hex: fields[1]), let size = UInt64(fields[2]),
                      let kind = FileKind(rawValue: fields[3]), PathEscaping.unescape(fields[4].utf8, token: true) != nil else {
                    throw fail("malformed file line (expected 'file <sha256> <size> <kind> <path>')")
                }
                let file = OverlayFile(digest: digest, size: size, kind: kind, escapedPath: fields[4])
                if inWindow { overlay.windows[overlay.windows.count - 1].files.append(file) } else {
                    overlay.packages[overlay.packages.count - 1].files.append(file)
                }
                remaining -= 1
            default:
                throw fail("unknown line")
            }
        }
        guard remaining == 0 else { throw OverlayError("\(name): truncated (a package's files are missing)") }
        return overlay
    }

    /// Reads an overlay the daemon may rely on: a regular file owned by root, writable by nobody else and
    /// readable by nobody else, in a directory only root can change. Anything else is refused, not trusted.
    public static func load(path: String, directory: String) throws(OverlayError) -> Overlay {
        do {
            let dir = try linkStatus(directory)
            guard dir.isDirectory, dir.st_uid == 0, dir.st_mode & 0o022 == 0 else {
                throw OverlayError("\(directory): must be a directory owned by root and writable only by root")
            }
            let fd = try FileDescriptor.open(path, [.readOnly, .noFollow, .nonBlocking])
            defer { fd.close() }
            let st = try fd.status()
            guard st.isRegularFile, st.st_uid == 0, st.st_mode & 0o077 == 0 else {
                throw OverlayError("\(path): must be a regular file owned by root with mode 0600")
            }
            return try parse(try fd.readAll(limit: 512 << 20), name: path)
        } catch let error as OverlayError {
            throw error
        } catch let error as Errno {
            throw OverlayError("\(path): cannot read: \(error)")
        } catch {
            throw OverlayError("\(path): \(error)")
        }
    }
}

/// The overlays' allow entries that the policy in force lets this host trust, as the daemon looks them up.
/// Rebuilt whenever an overlay or the policy changes: a policy that drops an `apt-source` line drops the trust.
public struct OverlayTable: Sendable {
    /// Digest → the layer that allows it (`overlay:apt`).
    private var layers: [SHA256Digest: String] = [:]
    public private(set) var sizes = Set<UInt64>()
    /// Trusted programs (digest, installed path), for the daemon's interpreter rule: an interpreter a package
    /// brings or upgrades must be recognised as one from the moment it is allowed.
    public private(set) var programs: [(digest: SHA256Digest, path: String)] = []
    /// Packages whose records the policy's rules trust, and those it does not (named for `status`).
    public private(set) var trustedPackages = 0
    public private(set) var untrustedPackages: [String] = []
    /// Digests trusted because a maintenance window wrote them.
    public private(set) var windowDigests = 0
    /// When the first window's entries expire (the table must be rebuilt then).
    public private(set) var earliestExpiry: Timestamp?

    public init() {}

    public init(_ overlays: [Overlay], rules: [AptSourceRule], maintenance: MaintenanceRule? = nil, now: Timestamp = .now) {
        for overlay in overlays {
            let layer = "overlay:\(overlay.layer)"
            for window in overlay.windows {
                for file in window.files where window.trusts(file, rule: maintenance, now: now) {
                    layers[file.digest] = layer
                    sizes.insert(file.size)
                    windowDigests += 1
                    if file.kind == .elfExec { programs.append((file.digest, PathEscaping.unescapedString(file.escapedPath))) }
                }
                let expiry = window.closed.secondsSinceEpoch + Int64(maintenance?.keepSeconds ?? MaintenanceRule.defaultKeepSeconds)
                if expiry > now.secondsSinceEpoch, earliestExpiry.map({ expiry < $0.secondsSinceEpoch }) ?? true {
                    earliestExpiry = Timestamp(secondsSinceEpoch: expiry)
                }
            }
            for package in overlay.packages {
                guard package.isTrusted(by: rules) != nil else { untrustedPackages.append(package.label); continue }
                trustedPackages += 1
                for file in package.files {
                    layers[file.digest] = layer
                    sizes.insert(file.size)
                    if file.kind == .elfExec { programs.append((file.digest, PathEscaping.unescapedString(file.escapedPath))) }
                }
            }
        }
    }

    /// What the header of the policy in force lets this host trust of the overlays.
    public init(_ overlays: [Overlay], header: PolicyHeader?, now: Timestamp = .now) {
        self.init(overlays, rules: header?.aptSources ?? [], maintenance: header?.maintenance, now: now)
    }

    public func layer(of digest: SHA256Digest) -> String? { layers[digest] }
    public var digestCount: Int { layers.count }
    /// Whether every digest `other` allows is still allowed here (else verdicts cached from `other` must go).
    public func containsEveryDigest(of other: OverlayTable) -> Bool { other.layers.keys.allSatisfy { layers[$0] != nil } }
}
