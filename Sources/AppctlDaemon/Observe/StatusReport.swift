import AppctlCore
import AppctlKernel

/// What `appctl status` shows, in order: built once per request from the daemon's state and the counter table,
/// rendered as JSON (`status --json`) or aligned text. The Prometheus file is rendered from the same counter
/// table (`prometheusText`), so the three can never list different figures.
public struct StatusReport: Sendable {
    public enum Value: Sendable, Equatable {
        case bool(Bool)
        case int(Int)
        /// Printed with three decimals; nil is JSON null.
        case number(Double?)
        case string(String?)
        case strings([String])
        /// A count that is unknown (JSON null), e.g. execs when the exec counter is off.
        case unknownCount

        var json: String {
            switch self {
            case .bool(let b): return b ? "true" : "false"
            case .int(let i): return String(i)
            case .number(let d): return d.map(format3) ?? "null"
            case .string(let s): return s.map(jsonString) ?? "null"
            case .strings(let list): return "[" + list.map(jsonString).joined(separator: ",") + "]"
            case .unknownCount: return "null"
            }
        }

        var text: String {
            switch self {
            case .string(let s?): return s
            case .strings(let list): return list.isEmpty ? "none" : list.joined(separator: ", ")
            default: return json
            }
        }
    }

    public var ready: Bool
    public var fields: [(name: String, value: Value)]

    public var json: String { "{" + fields.map { "\(jsonString($0.name)):\($0.value.json)" }.joined(separator: ",") + "}" }

    /// For a person at a terminal: the fields grouped under headings (the daemon, the policy, local trust, fleet sync,
    /// decisions and caches, coverage), each `name: value` with the names' spaces restored and the values aligned.
    /// Groups keep the fields' order; `--json` has the same fields, flat.
    public var text: String {
        let names = fields.map { $0.name.split(separator: "_").joined(separator: " ") }
        let width = names.map(\.count).max() ?? 0
        var groups: [(title: String, lines: [String])] = Self.groupTitles.map { ($0, []) }
        for (name, field) in zip(names, fields) {
            let line = "  " + name + ":" + String(repeating: " ", count: width - name.count + 1) + field.value.text
            groups[Self.group(of: field.name)].lines.append(line)
        }
        return groups.filter { !$0.lines.isEmpty }.map { $0.title + "\n" + $0.lines.joined(separator: "\n") }.joined(separator: "\n\n")
    }

    static let groupTitles = ["Daemon", "Policy", "Execution profiles and local trust (apt, maintenance)", "Fleet (sync, candidate, drift)",
                              "Decisions and caches", "Coverage"]

    /// Which heading a field goes under, by its name.
    static func group(of name: String) -> Int {
        if name.hasPrefix("sync_") || name.hasPrefix("candidate_") || name == "drift" { return 3 }
        if name.hasPrefix("policy_") || name == "last_policy_error" || name == "learned_files" { return 1 }
        if name.hasPrefix("profile_") { return 2 }
        if name.hasPrefix("overlay_") || name.hasPrefix("maintenance_") { return 2 }
        if name.hasPrefix("marked_") || name.hasPrefix("mark_") || name.hasPrefix("execs_not_counted") { return 5 }
        if ["ready", "confined", "open_events", "hardening", "hardening_failures", "mode", "pid", "uptime_seconds"].contains(name) { return 0 }
        return 4
    }

    /// The counter table's figures for `status`. `execsSeen` is unknown without the exec counter.
    static func counterFields(_ statistics: Statistics, execsCounted: Bool) -> [(name: String, value: Value)] {
        Counter.allCases.map { counter in
            if counter == .execsSeen && !execsCounted { return (counter.statusName, .unknownCount) }
            return (counter.statusName, .int(statistics[counter]))
        }
    }

    /// The Prometheus text exposition format, for node_exporter's textfile collector: every counter of the
    /// table that has an exposition, then the gauges given.
    static func prometheusText(_ statistics: Statistics, execsCounted: Bool, gauges: [(name: String, help: String, samples: [(labels: String, value: String)])]) -> String {
        var text = ""
        var written = Set<String>()
        for counter in Counter.allCases {
            guard let e = counter.exposition, counter != .execsSeen || execsCounted else { continue }
            if written.insert(e.name).inserted {
                text += "# HELP appctl_\(e.name) \(e.help)\n# TYPE appctl_\(e.name) \(e.isGauge ? "gauge" : "counter")\n"
            }
            text += "appctl_\(e.name)\(e.label.map { "{\($0)}" } ?? "") \(statistics[counter])\n"
        }
        for gauge in gauges {
            text += "# HELP appctl_\(gauge.name) \(gauge.help)\n# TYPE appctl_\(gauge.name) gauge\n"
            text += gauge.samples.map { "appctl_\(gauge.name)\($0.labels) \($0.value)\n" }.joined()
        }
        return text
    }
}

func format3(_ v: Double) -> String {
    let scaled = (v * 1000).rounded() / 1000
    return String(scaled)
}
