import AppctlCore
import AppctlKernel
import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

extension Appctl {
    struct Policy: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Sign, verify, inspect, compare and merge policies (offline; no daemon needed).",
            subcommands: [Sign.self, Verify.self, Show.self, Diff.self, Merge.self]
        )

        struct Sign: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Sign an inventory (or re-sign a policy) with a new serial.",
                discussion: """
                    The serial must be higher than the last one a host applied, or the host refuses the
                    policy as a rollback. Entries are copied as they are; an old signature is dropped.
                    The output is written whole or not at all.
                    """
            )

            @Option(help: ArgumentHelp("The Ed25519 private key (PEM).", valueName: "private-key"))
            var key: String

            @Option(help: ArgumentHelp("The new policy's serial.", valueName: "n"))
            var serial: SerialNumber

            @OptionGroup var signing: SigningOptions

            @Option(help: ArgumentHelp("Where to write the signed policy.", valueName: "file"))
            var out: String

            @Option(name: .customLong("profiles"), help: ArgumentHelp(
                "A learn fragment whose execution profiles (profile lines: per service or user, the programs it may start) go into the policy; repeatable. Without --subject, every profile in it.",
                valueName: "fragment"))
            var profileFragments: [String] = []

            @Option(name: .customLong("subject"), help: ArgumentHelp(
                "Take only this subject's profile from the --profiles fragments (service=nginx.service, user=www-data); repeatable.",
                valueName: "subject"))
            var subjects: [String] = []

            @Argument(help: ArgumentHelp("The inventory to sign.", valueName: "inventory"))
            var inventory: String

            /// The profile lines of the `--profiles` fragments (only the `--subject`s asked for), merged.
            func profileRules() throws(CommandFailure) -> [ProfileRule] {
                var wanted: Set<Subject> = []
                for spec in subjects {
                    do { wanted.insert(try Subject(spec: spec)) } catch { throw CommandFailure("--subject: \(error)") }
                }
                if !wanted.isEmpty && profileFragments.isEmpty { throw CommandFailure("--subject picks profiles from --profiles fragments; none given") }
                var rules: [ProfileRule] = []
                var found: Set<Subject> = []
                for fragment in profileFragments {
                    let header: PolicyHeader
                    do { header = try PolicyReader(path: fragment).read().header } catch { throw CommandFailure(error) }
                    if header.profiles.isEmpty { throw CommandFailure("\(fragment): holds no profile lines (learn mode writes them into its learn fragment)") }
                    for rule in header.profiles where wanted.isEmpty || wanted.contains(rule.subject) {
                        rules.append(rule)
                        found.insert(rule.subject)
                    }
                }
                if let missing = wanted.subtracting(found).sorted().first {
                    throw CommandFailure("--subject \(missing): no fragment given has a profile for it")
                }
                return ProfileRule.merged(rules)
            }

            func run() throws {
                let privateKey = try loadPrivateKey(key)
                let profiles = try profileRules()
                let scope = try signing.scopeGlobs()
                let trust = try signing.localTrust()
                _ = try signing.layer()   // refuses a bad spec before anything is written
                // Versions 4 and 5 are used exactly when the header has their lines; otherwise the version the entries
                // call for, which only a first pass can tell.
                var allows: [AllowEntry] = []
                do { _ = try PolicyReader(path: inventory).read(onAllow: { line in if line.verity != nil || line.interpreter != nil { allows.append(line.entry()) } }) } catch {
                    throw CommandFailure(error)
                }
                let entriesVersion = PolicyHeader.formatVersion(for: allows)
                let file: AtomicFileWriter
                do { file = try AtomicFileWriter(path: out) } catch {
                    throw CommandFailure("\(out): cannot create: \(error)")
                }
                let writer = PolicyWriter(output: file.descriptor, name: out)
                var layerError: CommandFailure?
                var layerName: String?
                do {
                    var headerError: PolicyError?
                    _ = try PolicyReader(path: inventory).read(
                        onHeader: { old in
                            var header = old
                            header.serial = serial.value
                            header.keyID = privateKey.publicKey.keyID
                            header.issued = .now
                            if let expires = signing.expires { header.expires = expires.value }
                            if !scope.isEmpty { header.scope = scope }
                            if let trust {
                                header.aptSources = trust.sources
                                header.maintenance = trust.maintenance
                                header.aptUnverified = trust.unverified
                            }
                            if let description = signing.description {
                                header.escapedDescription = PolicyHeader(issued: .now, description: description).escapedDescription
                            }
                            do throws(CommandFailure) {
                                try signing.applyLayer(to: &header)
                                if header.supplementOf != nil && header.denyCount > 0 {
                                    throw CommandFailure("\(inventory): a supplement may only add allow entries, and this has \(header.denyCount) deny entries (put denies in the base)")
                                }
                            } catch { layerError = error; return }
                            // An unsigned inventory's own profile lines (a learn fragment signed as the inventory) are not
                            // taken unasked: learning writes one for every unit and user it saw. A policy being re-signed
                            // keeps what was signed before.
                            if old.keyID == nil && !header.profiles.isEmpty {
                                if !profileFragments.contains(inventory) {
                                    printError("appctl: note: \(inventory): its \(header.profiles.count) profile lines are not taken (pass --profiles \(inventory) [--subject S] to take them)")
                                }
                                header.profiles = []   // taken, if asked, through --profiles (and its --subject filter)
                            }
                            if !profiles.isEmpty {
                                header.profiles = ProfileRule.merged(header.profiles + profiles)
                            }
                            if !header.profiles.isEmpty && header.supplementOf != nil {
                                layerError = CommandFailure("\(inventory): a supplement cannot carry execution profiles (only the base says who may run what)")
                                return
                            }
                            header.version = !header.profiles.isEmpty ? 6 : header.declaresLayer ? 5 : header.declaresLocalTrust ? 4 : entriesVersion
                            if let name = header.name { layerName = header.supplementOf.map { "supplement \(name) of \($0)" } ?? "layer \(name)" }
                            do throws(PolicyError) { try writer.writeHeader(header) } catch { headerError = error }
                        },
                        onAllow: { (line) throws(PolicyError) in
                            if let headerError { throw headerError }
                            if layerError != nil { throw PolicyError(.malformed, file: inventory, "layer") }
                            try writer.writeAllow(line.entry())
                        },
                        onDeny: { (entry, _) throws(PolicyError) in
                            if layerError != nil { throw PolicyError(.malformed, file: inventory, "layer") }
                            try writer.writeDeny(entry)
                        })
                    if let layerError { file.abort(); throw layerError }
                    if let headerError { throw headerError }
                    try writer.finish(signingKey: privateKey)
                    try file.commit()
                } catch let error as PolicyError {
                    file.abort()
                    throw layerError ?? CommandFailure(error)
                } catch {
                    file.abort()
                    throw CommandFailure("\(out): cannot write: \(error)")
                }
                print("signed \(out): serial \(serial.value), key \(privateKey.publicKey.keyID)" + (layerName.map { ", \($0)" } ?? ""))
            }
        }

        struct Verify: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Check a policy's format, signature and expiry (or a policy directory's layers). Exit 0 when valid, 1 otherwise.",
                discussion: """
                    The same checks a host runs before it applies a policy (except the host's own anti-rollback serials).
                    Given a directory (what 'appctl daemon --policy-dir' reads), the base is checked with --key and every
                    supplement with the key the base delegates to it, within its delegation's limits; supplements for
                    other hosts or past their expiry are listed as left out.
                    """
            )

            @Option(help: ArgumentHelp("The Ed25519 public key (PEM); for a directory, the base's.", valueName: "public-key"))
            var key: String

            @Argument(help: ArgumentHelp("The policy, or a policy directory.", valueName: "file|dir"))
            var file: String

            func run() throws {
                let publicKey = try loadPublicKey(key)
                if (try? fileStatus(file))?.isDirectory == true {
                    do {
                        let set = try PolicyLayers.load(directory: file, key: publicKey, hostname: hostName())
                        for layer in set.layers {
                            let h = layer.header
                            print("valid: \(layer.path): layer \(layer.name) serial \(h.serial!), key \(h.keyID!), \(h.allowCount) allow / \(h.denyCount) deny entries, expires \(h.expires.map(\.description) ?? "never")")
                        }
                        for skipped in set.skippedLayers { print("left out on this host: \(skipped)") }
                    } catch {
                        throw CommandFailure(error)
                    }
                    return
                }
                do {
                    let policy = try LoadedPolicy.load(path: file, key: publicKey)
                    let h = policy.header
                    print("valid: \(file): serial \(h.serial!), key \(h.keyID!), \(h.allowCount) allow / \(h.denyCount) deny entries, expires \(h.expires.map(\.description) ?? "never")")
                } catch {
                    throw CommandFailure(error)
                }
            }
        }

        struct Show: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Print a policy's header and counts by kind and origin (does not verify the signature).",
                discussion: "Use 'appctl policy verify' to check the signature."
            )

            @Argument(help: ArgumentHelp("The policy or inventory.", valueName: "file"))
            var file: String

            func run() throws {
                var verityCount = 0
                var interpreters: [String] = []
                var kinds: [FileKind: Int] = [:]
                var origins: [String: Int] = [:]
                var bytes: UInt64 = 0
                let result: PolicyReadResult
                do {
                    result = try PolicyReader(path: file).read(onAllow: { line in
                        kinds[line.kind, default: 0] += 1
                        bytes += line.size
                        if line.verity != nil { verityCount += 1 }
                        if let kind = line.interpreter {
                            interpreters.append("\(kind.rawValue) \(String(decoding: line.pathBytes, as: UTF8.self))")
                        }
                        let origin = line.originBytes
                        let category = origin.starts(with: "dpkg:".utf8) ? "dpkg" : String(decoding: origin, as: UTF8.self)
                        origins[category, default: 0] += 1
                    })
                } catch {
                    throw CommandFailure(error)
                }
                let h = result.header
                print("file:        \(file)")
                print("format:      appctl-policy \(result.header.version)")
                print("signed:      \(result.signature == nil ? "no (an inventory; sign it with 'appctl policy sign')" : "yes, key \(h.keyID ?? "?") (not verified here; use 'appctl policy verify')")")
                print("serial:      \(h.serial.map(String.init) ?? "-")")
                print("issued:      \(h.issued)")
                let expired = h.expires.map { $0 <= .now } ?? false
                print("expires:     \(h.expires.map(\.description) ?? "never")\(expired ? " (EXPIRED)" : "")")
                print("layer:       \(h.name.map { name in h.supplementOf.map { "\(name), a supplement of \($0) (only adds allow entries; verified with the key \($0) delegates)" } ?? "\(name) (a base)" } ?? "- (a single policy file)")")
                for d in h.delegations {
                    print("  delegates: \(d.name) to key \(d.publicKey.keyID): \(d.maximumEntries.map { "at most \($0) entries" } ?? "any number of entries"), \(d.kinds.isEmpty ? "any kind" : d.kinds.map(\.rawValue).joined(separator: "/")), \(d.maximumValiditySeconds.map { "valid for at most \(formatDuration($0))" } ?? "any validity")")
                }
                if h.shrinkPermitted { print("shrink:      permitted (hosts accept it even if it drops most of the previous entries)") }
                print("scope:       \(h.scope.isEmpty ? "every host" : h.scope.joined(separator: ","))")
                print("description: \(h.description ?? "-")")
                print("apt sources: \(h.aptSources.isEmpty ? "none (this host derives no trust from apt)" : "\(h.aptSources.count)")")
                for source in h.aptSources { print("  \(source)\(source.mode == .report ? "  (report only)" : "")") }
                let unverified: [UnverifiedPackages: String] = [.refuse: "refuse (stop apt before dpkg runs)", .report: "report (install, trust nothing)",
                                                                .maintenance: "only inside a maintenance window"]
                print("apt unverified: \(h.aptUnverified.map { unverified[$0]! } ?? "refuse while enforcing, report otherwise")")
                print("maintenance: \(h.maintenance.map { "allowed, at most \(formatDuration($0.maximumSeconds)), trusting \($0.paths.isEmpty ? "no path (windows only report)" : $0.paths.joined(separator: " "))" } ?? "not allowed")")
                print("allow:       \(h.allowCount) entries, \(formatBytes(Int64(bytes))) of content")
                print("  by kind:   \(FileKind.allCases.map { "\($0.rawValue) \(kinds[$0] ?? 0)" }.joined(separator: ", "))")
                print("  by origin: \(["dpkg", "local", "manual"].map { "\($0) \(origins[$0] ?? 0)" }.joined(separator: ", "))")
                print("  fs-verity: \(verityCount) entries with a verity digest (decided without reading the file)")
                print("  interpreters: \(interpreters.isEmpty ? "none declared (the daemon's configured list only)" : interpreters.joined(separator: ", "))")
                print("deny:        \(h.denyCount) entries")
                let subjects = Dictionary(grouping: h.profiles, by: \.subject)
                print("profiles:    \(subjects.isEmpty ? "none (every service and user may start whatever the policy allows)" : "\(subjects.count) subjects (each may start only what its profile lists)")")
                for (subject, rules) in subjects.sorted(by: { $0.key < $1.key }) {
                    let inline = rules.filter(\.inline).count
                    print("  \(subject): \(rules.count) programs, \(inline) may take inline code")
                    for rule in rules {
                        print("    \(rule.program) \(rule.inline ? "inline   " : "no-inline") \(rule.escapedPath == "-" ? "" : PathEscaping.unescapedString(rule.escapedPath))")
                    }
                }
            }
        }

        struct Diff: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Show what changes from one policy to another: header, entries added, removed, changed.",
                discussion: """
                    Lines: '+ allow' added, '- allow' removed, '~ allow' same path with new content,
                    '+ deny' / '- deny' blocklist changes. Signatures are not checked.
                    """
            )

            @Argument(help: ArgumentHelp("The old policy.", valueName: "old"))
            var old: String

            @Argument(help: ArgumentHelp("The new policy.", valueName: "new"))
            var new: String

            func run() throws {
                let (oldHeader, oldAllows, oldDenies) = try readAll(old)
                let (newHeader, newAllows, newDenies) = try readAll(new)
                var changes = 0
                func field(_ name: String, _ a: String, _ b: String) {
                    if a != b { print("~ \(name): \(a) -> \(b)"); changes += 1 }
                }
                field("serial", oldHeader.serial.map(String.init) ?? "-", newHeader.serial.map(String.init) ?? "-")
                field("key-id", oldHeader.keyID ?? "-", newHeader.keyID ?? "-")
                field("expires", oldHeader.expires.map(\.description) ?? "never", newHeader.expires.map(\.description) ?? "never")
                field("scope", oldHeader.scope.joined(separator: ","), newHeader.scope.joined(separator: ","))
                field("name", oldHeader.name ?? "-", newHeader.name ?? "-")
                field("supplement-of", oldHeader.supplementOf ?? "-", newHeader.supplementOf ?? "-")
                field("delegate", oldHeader.delegations.map(\.description).joined(separator: " "), newHeader.delegations.map(\.description).joined(separator: " "))
                field("shrink", oldHeader.shrinkPermitted ? "permitted" : "-", newHeader.shrinkPermitted ? "permitted" : "-")
                field("description", oldHeader.description ?? "-", newHeader.description ?? "-")
                field("format", String(oldHeader.version), String(newHeader.version))
                for source in Set(newHeader.aptSources).subtracting(oldHeader.aptSources).sorted() { print("+ apt-source \(source)"); changes += 1 }
                for source in Set(oldHeader.aptSources).subtracting(newHeader.aptSources).sorted() { print("- apt-source \(source)"); changes += 1 }
                field("apt-unverified", oldHeader.aptUnverified?.rawValue ?? "by mode", newHeader.aptUnverified?.rawValue ?? "by mode")
                field("maintenance", oldHeader.maintenance.map(\.description) ?? "not allowed", newHeader.maintenance.map(\.description) ?? "not allowed")
                // Profiles by (subject, program): added, removed, or inline code newly allowed or taken away.
                let oldProfiles = Dictionary(oldHeader.profiles.map { ("\($0.subject) \($0.program)", $0) }, uniquingKeysWith: { a, _ in a })
                let newProfiles = Dictionary(newHeader.profiles.map { ("\($0.subject) \($0.program)", $0) }, uniquingKeysWith: { a, _ in a })
                for key in Set(oldProfiles.keys).union(newProfiles.keys).sorted() {
                    switch (oldProfiles[key], newProfiles[key]) {
                    case (nil, let n?): print("+ profile \(n)"); changes += 1
                    case (let o?, nil): print("- profile \(o)"); changes += 1
                    case (let o?, let n?) where o.inline != n.inline: print("~ profile \(key): \(o.inline ? "inline" : "no-inline") -> \(n.inline ? "inline" : "no-inline")"); changes += 1
                    default: break
                    }
                }
                var added = 0, removed = 0, changed = 0
                for path in Set(oldAllows.keys).union(newAllows.keys).sorted() {
                    switch (oldAllows[path], newAllows[path]) {
                    case (nil, let n?):
                        print("+ allow \(n.digest) \(n.kind.rawValue) \(n.origin) \(path)\(verityNote(n.verity))\(interpreterNote(n.interpreter))"); added += 1
                    case (let o?, nil):
                        print("- allow \(o.digest) \(o.kind.rawValue) \(o.origin) \(path)\(verityNote(o.verity))\(interpreterNote(o.interpreter))"); removed += 1
                    case (let o?, let n?) where o != n:
                        // The verity digest is a grant of trust of its own: a change to it alone must show.
                        let verity = o.verity != n.verity ? " (fs-verity \(o.verity.map(\.hex) ?? "none") -> \(n.verity.map(\.hex) ?? "none"))" : ""
                        // Whether a program counts as an interpreter changes what the daemon checks: show it too.
                        let interpreter = o.interpreter != n.interpreter
                            ? " (interpreter \(o.interpreter?.rawValue ?? "no") -> \(n.interpreter?.rawValue ?? "no"))" : ""
                        print("~ allow \(path): \(o.digest) -> \(n.digest)\(o.origin != n.origin ? " (\(o.origin) -> \(n.origin))" : "")\(verity)\(interpreter)"); changed += 1
                    default: break
                    }
                }
                for d in newDenies.subtracting(oldDenies).sorted() { print("+ deny \(d)"); changes += 1 }
                for d in oldDenies.subtracting(newDenies).sorted() { print("- deny \(d)"); changes += 1 }
                print("\(added) added, \(removed) removed, \(changed) changed allow entries; \(changes) header/deny changes")
            }

            private func verityNote(_ verity: SHA256Digest?) -> String { verity.map { " fsverity-sha256:\($0)" } ?? "" }
            private func interpreterNote(_ kind: InterpreterKind?) -> String { kind.map { " interpreter:\($0.rawValue)" } ?? "" }

            private func readAll(_ path: String) throws(CommandFailure) -> (PolicyHeader, [String: AllowEntry], Set<SHA256Digest>) {
                var allows: [String: AllowEntry] = [:]
                var denies = Set<SHA256Digest>()
                do {
                    let result = try PolicyReader(path: path).read(
                        onAllow: { line in let e = line.entry(); allows[e.escapedPath] = e },
                        onDeny: { entry, _ in denies.insert(entry.digest) })
                    return (result.header, allows, denies)
                } catch {
                    throw CommandFailure(error)
                }
            }
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Say what an enforcing host would decide for each file (offline).",
            discussion: """
                Prints one line per path: allow|deny, the reason (known, unknown, blocklisted, unreadable),
                the SHA-256 and the path. Exit 0 when every path is allowed, 1 otherwise.
                A file with fs-verity whose verity digest the policy lists is decided by that digest,
                as the daemon does, and the line says so.
                The policy is verified first, exactly as a host would.
                """
        )

        @Option(help: ArgumentHelp("The signed policy.", valueName: "file"))
        var policy: String

        @Option(help: ArgumentHelp("The Ed25519 public key (PEM) the policy must be signed with.", valueName: "public-key"))
        var key: String

        @Option(help: ArgumentHelp(
            "Also answer as the execution profile of this service or user would when it starts the file (service=nginx.service, user=www-data).",
            valueName: "subject"))
        var subject: String?

        @Flag(help: "With --subject: the file is an interpreter started with inline code (sh -c, python3 -c, a script on standard input).")
        var inline = false

        @Argument(help: ArgumentHelp("Files to check.", valueName: "path"))
        var paths: [String]

        func validate() throws {
            if paths.isEmpty { throw ValidationError("name at least one file to check") }
            if inline && subject == nil { throw ValidationError("--inline asks about a subject's profile: give --subject too") }
        }

        /// What the subject's profile says of `digest` (nil: no profile for it; the policy alone decides).
        func profileVerdict(_ digest: SHA256Digest, table: ProfileTable, subject: Subject, uids: [String: UInt32]) -> (allow: Bool, note: String)? {
            let subjects: ProcessSubjects
            switch subject {
            case .service(let unit): subjects = ProcessSubjects(services: [unit], uids: [])
            case .user(let name): subjects = ProcessSubjects(services: [], uids: uids[name].map { [$0] } ?? [])
            }
            switch table.check(digest, subjects: subjects) {
            case .unprofiled: return nil
            case .notInProfile(let s): return (false, "not-in-profile of \(s)")
            case .admitted(let forbidden?) where inline: return (false, "inline-code refused by \(forbidden)")
            case .admitted(let forbidden): return (true, forbidden == nil ? "in the profile of \(subject), inline code allowed" : "in the profile of \(subject), as a program file only")
            }
        }

        func run() throws {
            let publicKey = try loadPublicKey(key)
            let loaded: LoadedPolicy
            do { loaded = try LoadedPolicy.load(path: policy, key: publicKey) } catch { throw CommandFailure(error) }
            var wanted: Subject?
            if let subject { do { wanted = try Subject(spec: subject) } catch { throw CommandFailure("--subject: \(error)") } }
            let uids = passwdUIDs(String(decoding: (try? readSmallFile("/etc/passwd", limit: 16 << 20)) ?? [], as: UTF8.self))
            let table = ProfileTable(rules: loaded.header.profiles, packageDigests: { loaded.packagePrograms[$0] ?? [] }, uid: { uids[$0] })
            if let wanted, case .user(let name) = wanted, uids[name] == nil {
                throw CommandFailure("--subject \(wanted): no such user in /etc/passwd (a host without it applies that profile to nobody)")
            }
            if let wanted, !loaded.header.profiles.contains(where: { $0.subject == wanted }) {
                printError("appctl: note: \(policy) has no profile for \(wanted): the policy alone decides for it")
            }
            let hasher = FileHasher()
            var allAllowed = true
            for path in paths {
                do {
                    let fd = try FileDescriptor.open(path, [.readOnly, .nonBlocking, .noControllingTerminal])
                    defer { fd.close() }
                    guard try fd.status().isRegularFile else {
                        print("deny  unreadable  -  \(path): not a regular file")
                        allAllowed = false
                        continue
                    }
                    // As the daemon does: a file with fs-verity whose verity digest the policy lists is not read.
                    var digest: SHA256Digest
                    var via = ""
                    if let verity = fd.verityDigestIfAny, let content = loaded.verity.contentDigest(forVerity: verity) {
                        digest = content
                        via = "  (by fs-verity digest \(verity))"
                    } else {
                        digest = try hasher.hash(fd).sha256
                    }
                    var decision = Decision.decide(loaded.lookup(digest), mode: .enforce)
                    if decision.allow, let wanted, let verdict = profileVerdict(digest, table: table, subject: wanted, uids: uids) {
                        via += "  (\(verdict.note))"
                        if !verdict.allow { decision = Decision.profileMiss(verdict.note.hasPrefix("inline") ? .inlineCode : .notInProfile, mode: .enforce) }
                    }
                    allAllowed = allAllowed && decision.allow
                    print("\(decision.allow ? "allow" : "deny ")  \(decision.reason.rawValue.padding(11))  \(digest)  \(path)\(via)")
                } catch {
                    print("deny   unreadable   -  \(path): \(error)")
                    allAllowed = false
                }
            }
            if !allAllowed { throw ExitCode(1) }
        }
    }
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}
