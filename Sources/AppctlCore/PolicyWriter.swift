import AppctlKernel

/// The bytes signed by a policy signature: a fixed domain-separation prefix and the SHA-256
/// of every byte before the `signature` line. Hashing first keeps memory flat for a policy of
/// any size (PureEdDSA would need the whole file in memory).
public func signedMessage(contentDigest: SHA256Digest) -> [UInt8] {
    Array("appctl-policy-v1-signature\0".utf8) + contentDigest.bytes
}

/// The optional field of a version-2 allow entry: `fsverity-sha256:<64 hex digits>`.
let verityFieldPrefix = "fsverity-sha256:"
/// The optional last field of a version-3 allow entry: `interpreter:<python|perl|ruby|node|tcl>`.
let interpreterFieldPrefix = "interpreter:"

/// Streams a policy in canonical form to a descriptor, hashing as it goes, and optionally signs it.
/// Checks the canonical order and the counts announced in the header, so that nothing it writes
/// could be refused by `PolicyReader`.
public final class PolicyWriter {
    private let output: FileDescriptor
    private let name: String
    private var buffer: [UInt8] = []
    private let digest = DigestContext(withMD5: false)
    private var header: PolicyHeader?
    private var allowsWritten = 0
    private var deniesWritten = 0
    private var previousAllow: AllowEntry?
    private var previousDeny: SHA256Digest?

    public init(output: FileDescriptor, name: String) {
        self.output = output
        self.name = name
        buffer.reserveCapacity(1 << 20)
    }

    private func line(_ text: String) throws(PolicyError) {
        buffer.append(contentsOf: text.utf8)
        buffer.append(UInt8(ascii: "\n"))
        if buffer.count >= 1 << 20 { try flush() }
    }

    private func flush() throws(PolicyError) {
        buffer.withUnsafeBytes { digest.update($0) }
        try writeOut()
    }

    private func writeOut() throws(PolicyError) {
        do { try output.writeAll(buffer) } catch {
            throw PolicyError(.io, file: name, "cannot write: \(error)")
        }
        buffer.removeAll(keepingCapacity: true)
    }

    public func writeHeader(_ header: PolicyHeader) throws(PolicyError) {
        precondition(self.header == nil)
        self.header = header
        guard (1...PolicyHeader.newestFormatVersion).contains(header.version) else {
            throw PolicyError(.unsupportedVersion, file: name, "cannot write format version \(header.version)")
        }
        try line("appctl-policy \(header.version)")
        if let serial = header.serial { try line("serial \(serial)") }
        try line("issued \(header.issued)")
        if let expires = header.expires { try line("expires \(expires)") }
        if let keyID = header.keyID { try line("key-id \(keyID)") }
        guard header.declaresLayer == (header.version == 5) || header.version >= 6 else {
            throw PolicyError(.malformed, file: name, header.version >= 5 ? "format version 5 needs a name, delegate or shrink line"
                                                                             : "name, supplement-of, delegate and shrink lines need format version 5")
        }
        if let layer = header.name { try line("name \(layer)") }
        if let base = header.supplementOf {
            guard header.name != nil else { throw PolicyError(.malformed, file: name, "a supplement needs a name") }
            try line("supplement-of \(base)")
        }
        if !header.scope.isEmpty { try line("scope \(header.scope.joined(separator: ","))") }
        if let description = header.escapedDescription, !description.isEmpty { try line("description \(description)") }
        try lines("delegate", header.delegations, at: \.name)
        guard header.declaresLocalTrust == (header.version == 4) || header.version >= 5 else {
            throw PolicyError(.malformed, file: name, header.version >= 4 ? "format version 4 needs an apt-source, apt-unverified or maintenance line"
                                                                             : "apt-source, apt-unverified and maintenance lines need format version 4")
        }
        try lines("apt-source", header.aptSources, at: \.description)
        if let unverified = header.aptUnverified { try line("apt-unverified \(unverified.rawValue)") }
        if let maintenance = header.maintenance { try line("maintenance \(maintenance)") }
        if header.shrinkPermitted { try line("shrink permitted") }
        guard header.profiles.isEmpty != (header.version >= 6) else {
            throw PolicyError(.malformed, file: name, header.version >= 6 ? "format version 6 needs a profile line" : "profile lines need format version 6")
        }
        try lines("profile", header.profiles, at: { "\($0.subject) \($0.program)" })
        try line("allow-count \(header.allowCount)")
        try line("deny-count \(header.denyCount)")
    }

    /// A repeatable header field: one `field <value>` line per value, which must come in canonical order, each once
    /// (`at` names a value in the refusal).
    private func lines<Value: Comparable & CustomStringConvertible>(_ field: String, _ values: [Value], at: (Value) -> String) throws(PolicyError) {
        var previous: Value?
        for value in values {
            if let previous, !(previous < value) {
                throw PolicyError(.outOfOrder, file: name, "\(field) lines out of canonical order or repeated at \(at(value))")
            }
            previous = value
            try line("\(field) \(value)")
        }
    }

    public func writeAllow(_ entry: AllowEntry) throws(PolicyError) {
        if let previous = previousAllow, previous.escapedPath == entry.escapedPath {
            throw PolicyError(previous.digest == entry.digest ? .duplicate : .conflictingDuplicate, file: name,
                              "two allow entries for \(entry.escapedPath)")
        }
        if let previous = previousAllow, !AllowEntry.canonicallyOrdered(previous, entry) {
            throw PolicyError(.outOfOrder, file: name, "allow entries out of canonical order or duplicated at \(entry.escapedPath)")
        }
        guard deniesWritten == 0 else { throw PolicyError(.outOfOrder, file: name, "allow entry after deny entries") }
        previousAllow = entry
        allowsWritten += 1
        var text = "allow \(entry.digest.hex) \(entry.size) \(entry.kind.rawValue) \(entry.origin) \(entry.escapedPath)"
        if let verity = entry.verity {
            guard header!.version >= 2 else {
                throw PolicyError(.malformed, file: name, "\(entry.escapedPath) has an fs-verity digest, which format version 1 cannot hold")
            }
            text += " \(verityFieldPrefix)\(verity.hex)"
        }
        if let interpreter = entry.interpreter {
            guard header!.version >= 3 else {
                throw PolicyError(.malformed, file: name, "\(entry.escapedPath) is marked as an interpreter, which format version \(header!.version) cannot hold")
            }
            text += " \(interpreterFieldPrefix)\(interpreter.rawValue)"
        }
        try line(text)
    }

    public func writeDeny(_ entry: DenyEntry) throws(PolicyError) {
        if let previous = previousDeny, !(previous < entry.digest) {
            throw PolicyError(.outOfOrder, file: name, "deny entries out of order or duplicated at \(entry.digest)")
        }
        previousDeny = entry.digest
        deniesWritten += 1
        try line("deny \(entry.digest.hex) \(entry.escapedNote)")
    }

    /// Writes the signature line when a key is given. Does not sync or close the descriptor.
    public func finish(signingKey: Ed25519PrivateKey?) throws(PolicyError) {
        guard let header else { preconditionFailure("finish before writeHeader") }
        guard allowsWritten == header.allowCount, deniesWritten == header.denyCount else {
            throw PolicyError(.countMismatch, file: name,
                              "header announces \(header.allowCount) allow / \(header.denyCount) deny entries, wrote \(allowsWritten) / \(deniesWritten)")
        }
        buffer.withUnsafeBytes { digest.update($0) }
        if let signingKey {
            precondition(header.keyID == signingKey.publicKey.keyID, "header key-id must name the signing key")
            let message = signedMessage(contentDigest: digest.finish().sha256)
            let signature: [UInt8]
            do { signature = try signingKey.signature(for: message) } catch {
                throw PolicyError(.io, file: name, "cannot sign: \(error)")
            }
            buffer.append(contentsOf: "signature \(hexString(signature))\n".utf8)
        }
        try writeOut()
    }
}

extension PolicyWriter {
    /// Writes a complete policy (entries sorted here) to `path` atomically.
    public static func write(path: String, header: PolicyHeader, allows: [AllowEntry], denies: [DenyEntry],
                             signingKey: Ed25519PrivateKey?, permissions: mode_t = 0o644) throws(PolicyError) {
        var header = header
        header.allowCount = allows.count
        header.denyCount = denies.count
        header.version = PolicyHeader.formatVersion(for: allows, header: header)
        header.delegations.sort()
        header.aptSources.sort()
        header.profiles = ProfileRule.merged(header.profiles)
        let file: AtomicFileWriter
        do { file = try AtomicFileWriter(path: path, permissions: permissions) } catch {
            throw PolicyError(.io, file: path, "cannot create: \(error)")
        }
        let writer = PolicyWriter(output: file.descriptor, name: path)
        do {
            try writer.writeHeader(header)
            for entry in allows.sorted(by: AllowEntry.canonicallyOrdered) { try writer.writeAllow(entry) }
            for entry in denies.sorted(by: { $0.digest < $1.digest }) { try writer.writeDeny(entry) }
            try writer.finish(signingKey: signingKey)
            try file.commit()
        } catch let error as PolicyError {
            file.abort()
            throw error
        } catch {
            file.abort()
            throw PolicyError(.io, file: path, "cannot write: \(error)")
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
