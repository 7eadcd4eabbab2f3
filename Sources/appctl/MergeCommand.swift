import AppctlCore
import AppctlKernel
import AppctlLearn
import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

extension Appctl.Policy {
    struct Merge: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Merge inventories and event logs from many hosts into one unsigned inventory to review and sign.",
            discussion: """
                What hosts learned ('appctl learn') and what they denied or would have
                denied (the daemon's event log) becomes ONE candidate inventory: one
                entry per content digest, with the number of hosts that had it. Nothing
                is trusted until you review it and sign it ('appctl policy sign'). The
                output is written whole or not at all.

                INPUT is FILE or HOST=FILE:
                - first line starts with 'appctl-policy ': an inventory (or a policy;
                  the signature is not checked). Every allow entry counts; its deny
                  entries are ignored (the blocklist that counts is --base's).
                - anything else: the daemon's event log, JSON lines. Events whose
                  "decision" is in --decisions and that have a "sha256" count.
                  Compressed or rotated logs: one input each, e.g.
                  web-01=<(zcat events.jsonl.2.gz)
                HOST defaults to the file name without directory and last extension
                (logs/web-01.jsonl is web-01). A line with a "host" or "hostname"
                string names its own host (central log shippers). A file with '=' in
                its name: write it as ./a=b.jsonl.

                A digest is kept when at least --min-hosts distinct hosts had it,
                except when:
                - --base allows it: already allowed, left out (counted);
                - --base blocklists it: left out, listed in the report with its hosts;
                - inputs give it different sizes: content has one size, so an input
                  is wrong; left out, the report says which hosts said what;
                - only events with size -1 saw it: left out, listed.
                Kind, origin, fs-verity digest and interpreter come from inventories.
                A digest seen only in events is written as kind other-exec, origin
                local: find out what it is before you sign.
                Paths are informational (trust is by content): each entry gets the
                path most hosts saw. Kept digests never share a path: the one on
                fewer hosts is written as PATH#<first 12 hex digits of its digest>.

                --report FILE: the review table, tab-separated, most hosts first:
                  hosts  sha256  size  kind  path  up-to-5-hosts
                then '# conflict:', '# blocklisted in base:' and '# no size:' lines
                for what was left out, and '# note:' lines for kept entries to look
                at (inputs disagree on kind or interpreter; an fs-verity digest that
                fewer hosts vouch for than have the file).

                Bad input stops the merge with FILE:LINE, exit 1, nothing written.
                Logs are streamed: memory grows with digests and hosts, not log size.

                Example:
                  appctl policy merge --out candidate.txt --report review.tsv \\
                      --min-hosts 3 --base /etc/appctl/policy.txt \\
                      inventories/*.txt logs/*.jsonl
                  appctl policy sign --key signing.key --serial 43 \\
                      --out policy-43.txt candidate.txt
                """
        )

        @Option(help: ArgumentHelp("Where to write the merged, unsigned inventory.", valueName: "file"))
        var out: String

        @Option(help: ArgumentHelp("Where to write the review table (tab-separated).", valueName: "file"))
        var report: String?

        @Option(help: ArgumentHelp("Keep digests that at least this many distinct hosts had.", valueName: "n"))
        var minHosts: Int = 1

        @Option(help: ArgumentHelp("Event decisions to take from event logs, comma-separated: deny, would-deny, learned, allow.",
                                   valueName: "list"))
        var decisions: String = "would-deny,deny"

        @Option(help: ArgumentHelp("A policy or inventory whose allowed digests are left out and whose blocklisted ones are reported (signature not checked).",
                                   valueName: "policy"))
        var base: String?

        @Argument(help: ArgumentHelp("Inventories and event logs, each FILE or HOST=FILE.", valueName: "input"))
        var inputs: [String] = []

        func validate() throws {
            if inputs.isEmpty { throw ValidationError("name at least one input (an inventory or an event log)") }
            if minHosts < 1 { throw ValidationError("--min-hosts must be 1 or more") }
            _ = try decisionSet()
            if let report, report == out { throw ValidationError("--report and --out must be different files") }
        }

        func decisionSet() throws(ValidationError) -> Set<String> {
            let names = decisions.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            for name in names where !FleetMerge.knownDecisions.contains(name) {
                throw ValidationError("--decisions: unknown decision '\(name)' (\(FleetMerge.knownDecisions.joined(separator: ", ")))")
            }
            return Set(names)
        }

        func run() throws {
            let parsed = inputs.map(FleetMerge.parseInput)
            // Replacing an input by the output would lose it for the next merge: refuse before reading anything.
            let outputs = [out] + (report.map { [$0] } ?? [])
            for output in outputs {
                guard let target = try? fileStatus(output) else { continue }
                for path in parsed.map(\.path) + (base.map { [$0] } ?? []) {
                    if let input = try? fileStatus(path), input.st_dev == target.st_dev, input.st_ino == target.st_ino {
                        throw CommandFailure("\(output) is also an input (\(path)); write the result elsewhere", exitCode: 2)
                    }
                }
            }
            var baseline = MergeBase()
            if let base {
                do { baseline = try MergeBase.read(path: base) } catch { throw CommandFailure("\(error)") }
            }
            var merge = FleetMerge(decisions: try decisionSet())
            for (host, path) in parsed {
                do { try merge.add(path: path, host: host) } catch { throw CommandFailure("\(error)") }
            }
            let result = merge.result(base: baseline, minHosts: minHosts)
            let now = Timestamp.now
            let header = PolicyHeader(issued: now, description: "merged from \(count(merge.hostCount, "host")) (\(count(merge.inputs, "input"))) on \(now.description.prefix(10))")
            // The report first: an inventory never exists without the table it is reviewed with.
            if let report {
                do { try AtomicFileWriter.write(Array(result.report.utf8), to: report, permissions: 0o644) } catch {
                    throw CommandFailure("\(report): cannot write: \(error)")
                }
            }
            do { try PolicyWriter.write(path: out, header: header, allows: result.allows, denies: [], signingKey: nil) } catch {
                throw CommandFailure(error)
            }
            print(summary(merge, result))
        }

        private func summary(_ merge: FleetMerge, _ result: MergeResult) -> String {
            var text = "Read \(count(merge.inputs, "input")) from \(count(merge.hostCount, "host")): "
            text += "\(count(merge.inventories, "inventory", "inventories")) (\(count(merge.inventoryEntries, "allow entry", "allow entries"))"
            if merge.inputDeniesIgnored > 0 { text += ", \(count(merge.inputDeniesIgnored, "deny entry", "deny entries")) ignored" }
            text += "), \(count(merge.eventLogs, "event log")) (\(count(merge.eventLines, "line")), \(count(merge.eventsTaken, "\(decisions) event")) with a digest"
            if merge.eventsWithoutDigest > 0 { text += ", \(merge.eventsWithoutDigest) without" }
            text += "). Wrote \(out): \(count(result.kept.count, "digest")) seen on at least \(count(minHosts, "host")), unsigned. "
            var leftOut: [String] = []
            if result.belowMinimum > 0 { leftOut.append("\(result.belowMinimum) on fewer hosts") }
            if result.alreadyAllowed > 0 { leftOut.append("\(result.alreadyAllowed) already allowed by the base") }
            if !result.blocklisted.isEmpty { leftOut.append("\(result.blocklisted.count) blocklisted in the base") }
            if !result.conflicts.isEmpty { leftOut.append("\(count(result.conflicts.count, "size conflict")) (an input is wrong)") }
            if !result.withoutSize.isEmpty { leftOut.append("\(result.withoutSize.count) without a known size") }
            text += leftOut.isEmpty ? "Nothing left out." : "Left out: \(leftOut.joined(separator: ", "))."
            if !result.notes.isEmpty { text += " \(count(result.notes.count, "kept entry", "kept entries")) to look at." }
            if let report {
                text += " Review \(report), then sign with 'appctl policy sign'."
            } else if !result.blocklisted.isEmpty || !result.conflicts.isEmpty || !result.notes.isEmpty || !result.withoutSize.isEmpty {
                text += " Run again with --report FILE to see which."
            }
            return text
        }
    }
}

/// "1 host", "3 hosts".
private func count(_ n: Int, _ one: String, _ many: String? = nil) -> String { "\(n) \(n == 1 ? one : many ?? one + "s")" }
