import AppctlCore
import AppctlDaemon
import AppctlFleet
import AppctlKernel
import ArgumentParser
import FoundationEssentials   // JSONDecoder, for the daemon's status reply (ArgumentParser links it already)
#if canImport(Glibc)
import Glibc
#endif

extension Appctl {
    struct Bundle: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "bundle",
            abstract: "Publish signed policy layers as a bundle any web server, CDN, object store or rsync can carry.",
            subcommands: [Publish.self]
        )

        struct Publish: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Write the policies content-addressed into DIR and a fresh signed timestamp naming them.",
                discussion: """
                    DIR/files/<sha256>.policy holds each policy; DIR/timestamp lists their digests, sizes, layer
                    names and serials, which rings get which serial, and until when it is current. Hosts refuse a
                    timestamp past --valid-for ("the channel is frozen") and keep enforcing what they have, so run
                    this again (from cron or CI) well within --valid-for: with the same policies it only renews the
                    timestamp. Give a layer twice (its release and its next serial) with --ring to roll the newer out
                    to part of the fleet; the rest keeps the older and evaluates the newer as a candidate (status
                    counts what it would deny). Widen the ring by running it again with a larger percentage.
                    """
            )

            @Option(name: .customLong("timestamp-key"), help: ArgumentHelp("The timestamp signing key (Ed25519 PEM; not a policy key: it only vouches for freshness and the file list).", valueName: "private-key"))
            var timestampKey: String

            @Option(help: ArgumentHelp("How long hosts accept this timestamp: 90s, 30m, 2h, 7d.", valueName: "duration"))
            var validFor: String = "1d"

            @Option(name: .customLong("ring"), help: ArgumentHelp("A roll-out ring that gets the newest serials: NAME=PERCENT of the fleet (by machine id; rings add up in the order given). Repeatable.", valueName: "name=percent"))
            var rings: [String] = []

            @Option(help: ArgumentHelp("The bundle directory (created if missing).", valueName: "dir"))
            var out: String

            @Argument(help: ArgumentHelp("The signed layers: one base and its supplements (each made with 'appctl policy sign --name').", valueName: "policy"))
            var policies: [String]

            func run() throws {
                guard let seconds = parseDuration(validFor), seconds >= 60 else { throw CommandFailure("--valid-for \(validFor): a duration of at least 60s, such as 30m, 2h or 7d", exitCode: 2) }
                var parsed: [(name: String, basisPoints: Int)] = []
                for ring in rings {
                    guard let eq = ring.firstIndex(of: "="), let bp = Publisher.basisPoints(percent: String(ring[ring.index(after: eq)...])) else {
                        throw CommandFailure("--ring \(ring): expected NAME=PERCENT, e.g. canary=1 or early=10", exitCode: 2)
                    }
                    parsed.append((String(ring[..<eq]), bp))
                }
                let key = try loadPrivateKey(timestampKey)
                let report: Publisher.Report
                do { report = try Publisher(timestampKey: key, validForSeconds: seconds, rings: parsed, out: out).publish(policies: policies) } catch {
                    throw CommandFailure(error.message)
                }
                let t = report.timestamp
                print("published \(out): timestamp version \(t.version), valid until \(t.expires); \(report.filesWritten) policy files written, \(report.filesKept) already there, \(report.filesRemoved) removed")
                for file in t.files { print("  \(file.layer) serial \(file.serial): \(file.bundlePath) (\(file.size) bytes)") }
                for ring in t.rings { print("  ring \(ring.name): \(Double(ring.to - ring.from) / 100) % of hosts get the \(ring.serves.rawValue) serials") }
            }
        }
    }

    struct Sync: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Fetch the newest bundle, verify everything, install it into the policy directory and reload the daemon.",
            discussion: """
                Exit 0: installed, or nothing new. Exit 1: something was refused (the one-line reason says what);
                the policies in force stay exactly as they were and the daemon keeps enforcing them. Every check
                runs before the policy directory is touched: the timestamp's signature, freshness and version, each
                file's digest and size, then the whole set as the daemon loads it (signatures, delegations,
                per-layer anti-rollback serials, the shrink guard). The directory is swapped in one step; if the
                daemon refuses the new set, the previous one is put back. Fetches are bounded in size and time.
                The network side runs here, never in the daemon. Settings not given come from --config
                (sync-from, key, timestamp-key, policy-dir, state-dir, socket).
                """
        )

        @Option(help: ArgumentHelp("The bundle: an https:// or http:// URL, or a directory.", valueName: "url|dir"))
        var from: String?

        @Flag(help: "One pass, then exit (what the systemd timer runs). Without it: a pass every --interval, with jitter.")
        var once = false

        @Option(help: ArgumentHelp("Without --once: time between passes (each gets up to a fifth of it as random delay).", valueName: "duration"))
        var interval: String = "15m"

        @Option(help: ArgumentHelp("The public key of the base layer (the daemon's policy key).", valueName: "public-key"))
        var key: String?

        @Option(name: .customLong("timestamp-key"), help: ArgumentHelp("The bundle's timestamp public key.", valueName: "public-key"))
        var timestampKey: String?

        @Option(help: ArgumentHelp("The daemon's policy directory.", valueName: "dir"))
        var policyDir: String?

        @Option(help: ArgumentHelp("The daemon's state directory (per-layer serials; sync keeps its own state under sync/).", valueName: "dir"))
        var stateDir: String?

        @OptionGroup var control: SocketOption

        @Option(help: ArgumentHelp("Config file (the daemon's; key = value lines).", valueName: "file"))
        var config: String?

        @Option(help: ArgumentHelp("Append this pass's host report (one JSON line, for the fleet's log shipper) to this file ('none': off).", valueName: "file"))
        var report: String = "/var/log/appctl/host-report.jsonl"

        @Option(help: ArgumentHelp("The file whose contents place this host in a roll-out ring.", valueName: "file"))
        var machineIdFile: String = "/etc/machine-id"

        @Option(help: ArgumentHelp("Cut off a transfer that moves nothing for this long.", valueName: "duration"))
        var stallTimeout: String = "30s"

        func run() throws {
            let configuration = try loadConfiguration(config)
            guard let from = from ?? configuration.syncFrom else { throw CommandFailure("no --from (or sync-from in the config): where is the bundle?", exitCode: 2) }
            guard let keyPath = key ?? configuration.publicKeyPath else { throw CommandFailure("no --key", exitCode: 2) }
            let timestampKeyPath = timestampKey ?? configuration.timestampKeyPath
            guard let policyDirectory = policyDir ?? configuration.policyDirectory else {
                throw CommandFailure("no --policy-dir (or policy-dir in the config): where does the daemon read its layers?", exitCode: 2)
            }
            let stateDirectory = stateDir ?? configuration.stateDirectory
            let socketPath = control.socket ?? configuration.socketPath
            guard let stall = parseDuration(stallTimeout), stall > 0, let period = parseDuration(interval), period >= 60 else {
                throw CommandFailure("--stall-timeout and --interval take durations such as 30s or 15m (--interval at least 60s)", exitCode: 2)
            }
            let baseKey = try loadPublicKey(keyPath)
            let stampKey = try loadPublicKey(timestampKeyPath)
            let machineID: String
            do { machineID = String(decoding: try readSmallFile(machineIdFile, limit: 4096), as: UTF8.self).trimmingCharacters(in: " \n\t") } catch {
                throw CommandFailure("\(machineIdFile): cannot read the machine id (it places this host in a roll-out ring): \(error)")
            }
            var limits = FetchLimits()
            limits.stallSeconds = Int(stall)
            let sync = AppctlFleet.Sync(source: bundleSource(from, limits: limits), baseKey: baseKey, timestampKey: stampKey,
                                        policyDirectory: policyDirectory, stateDirectory: stateDirectory, hostname: hostName(), machineID: machineID)
            while true {
                let ok = pass(sync, socket: socketPath)
                if once { if !ok { throw ExitCode(1) }; return }
                sleep(UInt32(period + UInt64.random(in: 0...(period / 5))))   // jitter: hosts that started together drift apart
            }
        }

        /// One pass; prints its one-line result and writes the host report. Returns whether nothing was refused.
        private func pass(_ sync: AppctlFleet.Sync, socket: String) -> Bool {
            var daemonNote = ""
            let started = monotonicSeconds()
            let result: Result<AppctlFleet.Sync.Outcome, SyncError> = Result { () throws(SyncError) in
                try sync.run(afterInstall: { () throws(SyncError) in
                    guard (try? linkStatus(socket)) != nil else { daemonNote = "; the daemon is not running: it loads the set when it starts"; return }
                    do throws(CommandFailure) {
                        _ = try sendControl(.reload, socket: socket)
                        let status = try sendControl(.status(json: true), socket: socket).body
                        struct Layers: Decodable { var policy_layers: [String]; var policy_layers_skipped: [String]? }
                        guard let enforced = try? JSONDecoder().decode(Layers.self, from: Data(status.utf8)) else {
                            throw CommandFailure("the daemon's status reply has no policy_layers")
                        }
                        // Exactly "<name> <serial> (…)" per layer in force; a skipped supplement (expired, other hosts) is not.
                        let inForce = Set(enforced.policy_layers.map { $0.split(separator: " ").prefix(2).joined(separator: " ") })
                        let skipped = Set((enforced.policy_layers_skipped ?? []).map { $0.split(separator: " ").prefix(2).joined(separator: " ") })
                        for layer in PolicyLayers.installedLayers(in: sync.policyDirectory) {
                            let key = "\(layer.name) \(layer.header.serial ?? 0)"
                            guard inForce.contains(key) || skipped.contains(key) else {
                                throw CommandFailure("the daemon did not take layer '\(layer.name)' serial \(layer.header.serial ?? 0) in (is it running with --policy-dir \(sync.policyDirectory)?)")
                            }
                        }
                        daemonNote = "; the daemon enforces it" + (skipped.isEmpty ? "" : " (left out: \(skipped.sorted().joined(separator: ", ")))")
                    } catch {
                        throw SyncError(.daemon, "the daemon refused the new set, the previous one is back in place: \(error.message)")
                    }
                })
            }
            let seconds = monotonicSeconds() - started
            var fields: [(String, String)] = [("time", jsonString(Timestamp.now.description)), ("host", jsonString(hostName())), ("source", jsonString(sync.source.name))]
            var status: [(String, String)] = []
            switch result {
            case .success(let outcome):
                let t = outcome.timestamp
                let layers = outcome.installed.map { "\($0.layer) \($0.serial)" }
                print("\(outcome.change == .installed ? "installed" : "nothing new"): " + layers.joined(separator: ", ")
                      + (outcome.candidates.isEmpty ? "" : "; candidates " + outcome.candidates.map { "\($0.layer) \($0.serial)" }.joined(separator: ", "))
                      + "; ring \(outcome.ring.name); timestamp version \(t.version) valid until \(t.expires); \(outcome.bytesFetched) bytes fetched"
                      + (outcome.timestampNotModified ? " (not modified)" : "") + (outcome.change == .installed ? daemonNote : ""))
                fields += [("result", jsonString(outcome.change.rawValue)), ("ring", jsonString(outcome.ring.name)),
                           ("timestamp_version", "\(t.version)"), ("timestamp_issued", jsonString(t.issued.description)),
                           ("timestamp_expires", jsonString(t.expires.description)),
                           ("layers", "[" + layers.map(jsonString).joined(separator: ",") + "]"),
                           ("candidates", "[" + outcome.candidates.map { jsonString("\($0.layer) \($0.serial)") }.joined(separator: ",") + "]"),
                           ("bytes_fetched", "\(outcome.bytesFetched)")]
                status = [("result", outcome.change.rawValue), ("ring", outcome.ring.name), ("timestamp_version", "\(t.version)"),
                          ("timestamp_issued", "\(t.issued.secondsSinceEpoch)"), ("timestamp_expires", "\(t.expires.secondsSinceEpoch)")]
            case .failure(let error):
                // The reason may quote what the channel sent: one line, bounded.
                let reason = String(String(decoding: error.message.utf8.map { $0 < 0x20 || $0 == 0x7f ? UInt8(ascii: " ") : $0 }, as: UTF8.self).prefix(600))
                printError("appctl sync: refused: \(reason)")
                fields += [("result", jsonString("refused")), ("reason", jsonString(reason)), ("code", jsonString(error.code.rawValue))]
                // What the last good pass knew of the timestamp stays: a frozen channel is exactly when its age matters.
                let previous = readKeyValueFile(sync.stateDirectory + "/sync/status")
                status = [("result", "refused"), ("reason", reason)]
                    + ["ring", "timestamp_version", "timestamp_issued", "timestamp_expires"].compactMap { key in previous[key].map { (key, $0) } }
            }
            fields.append(("seconds", String(Int(seconds * 1000)) + "e-3"))
            status.append(("time", "\(Timestamp.now.secondsSinceEpoch)"))
            writeSyncStatus(status, stateDirectory: sync.stateDirectory)
            if report != "none" {
                var line = "{" + fields.map { "\(jsonString($0.0)):\($0.1)" }.joined(separator: ",")
                if let daemon = try? sendControl(.status(json: true), socket: socket).body.trimmingCharacters(in: " \n") { line += ",\"daemon\":" + daemon }
                line += "}\n"
                createParentDirectory(of: report, mode: 0o755)
                if let fd = try? FileDescriptor.open(report, [.writeOnly, .create, .append], permissions: 0o640) {
                    try? fd.writeAll(Array(line.utf8))
                    fd.close()
                }
            }
            if case .failure = result { return false }
            return true
        }
    }
}

/// The last pass as `key value` lines in `<state-dir>/sync/status`: what `appctl status` shows of syncing (the daemon
/// reads it; it never talks to the network itself).
private func writeSyncStatus(_ fields: [(String, String)], stateDirectory: String) {
    let text = fields.map { "\($0.0) \($0.1.split(separator: "\n").joined(separator: " "))\n" }.joined()
    mkdir(stateDirectory + "/sync", 0o700)
    try? AtomicFileWriter.write(Array(text.utf8), to: stateDirectory + "/sync/status", permissions: 0o600)
}



extension String {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s.removeFirst() }
        while let l = s.last, set.contains(l) { s.removeLast() }
        return String(s)
    }
}
