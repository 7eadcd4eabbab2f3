import AppctlCore
import AppctlKernel
import AppctlTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Issue 15: execution profiles learned per service from real cgroups, signed, enforced by the real kernel.
/// Each test makes its own cgroup v2 groups (`appctl-it-<uuid>/web.service`, …) under the host's cgroup2 mount
/// (found, not assumed) and removes them; programs run from the daemon's own tmpfs as `nobody`.
@Suite(.serialized, .enabled(if: rootTestsEnabled, "needs root: fanotify, mounts and cgroups"))
struct ExecutionProfileTests {
    init() {
        #expect(isRoot, "root-only tests running without root (CI=true): run tools/test as root")
    }

    /// A cgroup v2 subtree of this test's own: `group(name)` is a leaf; `remove()` removes them all (once empty).
    final class CgroupTree: @unchecked Sendable {
        let root: String
        private(set) var leaves: [String] = []
        init() throws {
            let r = try run("/usr/bin/findmnt", ["-t", "cgroup2", "-n", "-o", "TARGET"])
            guard r.status == 0, let mount = r.stdout.split(separator: "\n").first.map(String.init) else {
                throw HarnessError("no cgroup2 mount on this host (findmnt -t cgroup2): \(r.stderr)")
            }
            root = mount + "/appctl-it-\(UUID().uuidString.prefix(8))"
            guard mkdir(root, 0o755) == 0 else { throw HarnessError("mkdir \(root): \(Errno.current)") }
        }
        func group(_ name: String) throws -> String {
            let path = root + "/" + name
            guard mkdir(path, 0o755) == 0 else { throw HarnessError("mkdir \(path): \(Errno.current)") }
            leaves.append(path)
            return path
        }
        func remove() {
            for leaf in leaves.reversed() { rmdir(leaf) }
            rmdir(root)
        }
    }

    /// Runs `command` (argv) in cgroup `group` as nobody: a root shell (on the host's filesystem, which the daemon does
    /// not mark) moves itself into the group, then drops to nobody and execs the command.
    static func runIn(_ group: String, _ command: [String]) throws -> ProcessResult {
        let quoted = command.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        return try run("/bin/sh", ["-c", "echo $$ > \(group)/cgroup.procs && exec /usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups -- \(quoted)"])
    }

    @Test func learnedProfilesAreEnforcedPerService() throws {
        let h = try DaemonHarness(label: "appctl-profiles")
        let cgroups = try CgroupTree()
        defer { h.stop(); cgroups.remove() }
        let web = try cgroups.group("web.service"), admin = try cgroups.group("admin.service"), other = try cgroups.group("other.service")
        let m = h.mount
        let sh = try h.copyExecutable("/bin/dash", to: "sh")
        let python = try h.copyExecutable("/usr/bin/python3.11", to: "python3")
        try h.copyExecutable("/usr/bin/date", to: "date")
        try h.copyExecutable("/usr/bin/id", to: "id")
        try h.copyExecutable("/usr/bin/dd", to: "dd")
        try h.writeScript("web.sh", "#!\(sh)\n\(m)/known\n")
        try h.writeScript("app.py", "print('app ran')\n")
        let programs = ["known", "sh", "python3", "date", "id", "dd", "web.sh", "app.py"].map { m + "/" + $0 }

        // Learn: the web-like service runs its programs, a script through its shebang, and python with a script file;
        // the admin-like service uses its shell with inline code.
        try h.start(mode: "learn", config: ["kernel-cache = yes"])
        for command in [[m + "/known"], [m + "/date"], [m + "/web.sh"], [sh, m + "/web.sh"], [python, m + "/app.py"]] {
            let r = try Self.runIn(web, command)
            #expect(r.status == 0, "learning, web: \(command) → \(r.status) \(r.stderr)")
        }
        for command in [[sh, "-c", "\(m)/id >/dev/null"], [m + "/dd", "if=/dev/null", "of=/dev/null", "status=none"]] {
            let r = try Self.runIn(admin, command)
            #expect(r.status == 0, "learning, admin: \(command) → \(r.status) \(r.stderr)")
        }
        #expect(h.signalDaemon(SIGTERM) == 0)
        let fragment = try PolicyReader(path: h.learnOut).read().header.profiles
        let webRules = fragment.filter { $0.subject == .service("web.service") }
        let adminRules = fragment.filter { $0.subject == .service("admin.service") }
        let shDigest = try h.digest(sh), pythonDigest = try h.digest(python), ddDigest = try h.digest(m + "/dd")
        #expect(webRules.contains { $0.program == .digest(shDigest) && !$0.inline }, "web used sh with a script file only: \(webRules)")
        #expect(webRules.contains { $0.program == .digest(pythonDigest) && !$0.inline }, "web ran python3 with a script file: \(webRules)")
        #expect(!webRules.contains { $0.program == .digest(ddDigest) })
        #expect(adminRules.contains { $0.program == .digest(shDigest) && $0.inline }, "admin gave sh inline code: \(adminRules)")
        #expect(fragment.contains { $0.subject == .user("nobody") }, "the user is learned too")
        #expect(fragment.allSatisfy { $0.subject != .service("other.service") })

        // Sign the inventory with the two services' profiles (not the user's) through the CLI.
        var entries: [AllowEntry] = []
        for p in programs {
            entries.append(AllowEntry(digest: try h.digest(p), size: UInt64(try linkStatus(p).st_size), kind: .elfExec, origin: .manual, path: Array(p.utf8)))
        }
        let inventory = h.dir.file("inventory.txt")
        try PolicyWriter.write(path: inventory, header: PolicyHeader(issued: .now), allows: entries, denies: [], signingKey: nil)
        let signed = try appctl("policy", "sign", "--key", h.keys.privatePath, "--serial", "20", "--profiles", h.learnOut,
                                "--subject", "service=web.service", "--subject", "service=admin.service", "--out", h.policyPath, inventory)
        #expect(signed.status == 0, "\(signed.stderr)")
        // The fragment signed as an inventory does not carry its profiles in unasked; diff shows what --profiles added.
        let plain = h.dir.file("plain.policy")
        let plainSigned = try appctl("policy", "sign", "--key", h.keys.privatePath, "--serial", "19", "--out", plain, h.learnOut)
        #expect(plainSigned.status == 0 && plainSigned.stderr.contains("profile lines are not taken"), "\(plainSigned)")
        #expect(try PolicyReader(path: plain).read().header.profiles.isEmpty)
        let diff = try appctl("policy", "diff", inventory, h.policyPath)
        #expect(diff.stdout.contains("+ profile service=web.service sha256:\(shDigest.hex) no-inline") && !diff.stdout.contains("user=nobody"), "\(diff.stdout)")
        let shown = try appctl("policy", "show", h.policyPath)
        #expect(shown.stdout.contains("service=web.service:") && shown.stdout.contains("service=admin.service:") && !shown.stdout.contains("user=nobody"), "\(shown.stdout)")

        try h.start(mode: "enforce", config: ["kernel-cache = yes"], writeDefaultPolicy: false)
        // Twice each: the second run is answered with the kernel's cache as warm as it gets.
        for _ in 0..<2 {
            for command in [[m + "/known"], [m + "/date"], [m + "/web.sh"], [sh, m + "/web.sh"], [python, m + "/app.py"]] {
                let r = try Self.runIn(web, command)
                #expect(r.status == 0, "enforcing, web keeps what it ran: \(command) → \(r.status) \(r.stderr)")
            }
            let inlineShell = try Self.runIn(web, [sh, "-c", "\(m)/known"])
            #expect(inlineShell.status != 0 && inlineShell.stderr.contains("not permitted"), "web: sh -c refused: \(inlineShell)")
            let inlinePython = try Self.runIn(web, [python, "-c", "import ctypes; print('inline ran')"])
            #expect(inlinePython.status != 0 && !inlinePython.stdout.contains("inline ran"), "web: python3 -c refused: \(inlinePython)")
            let stdinShell = try run("/bin/sh", ["-c", "echo $$ > \(web)/cgroup.procs && echo '\(m)/known' | /usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups -- \(sh)"])
            #expect(stdinShell.status != 0, "web: a script on sh's standard input refused: \(stdinShell)")
            let never = try Self.runIn(web, [m + "/dd", "if=/dev/null", "of=/dev/null", "status=none"])
            #expect(never.status != 0 && never.stderr.contains("not permitted"), "web: a program it never started refused: \(never)")
            // The admin-like service keeps its shell with inline code, and dd.
            let adminShell = try Self.runIn(admin, [sh, "-c", "\(m)/id -u"])
            #expect(adminShell.status == 0 && adminShell.stdout.contains("65534"), "admin keeps sh -c: \(adminShell)")
            #expect(try Self.runIn(admin, [m + "/dd", "if=/dev/null", "of=/dev/null", "status=none"]).status == 0)
            // A service with no profile, and a process in no service at all: the policy alone decides.
            #expect(try Self.runIn(other, [sh, "-c", "\(m)/dd if=/dev/null of=/dev/null status=none"]).status == 0)
            #expect(try run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "--", sh, "-c", "\(m)/dd if=/dev/null of=/dev/null status=none"]).status == 0)
        }
        // Code the caller writes as it goes, named as if it were a file: standard input, a FIFO, `-i` after a script.
        let userDir = m + "/u"
        #expect(mkdir(userDir, 0o755) == 0 && chown(userDir, 65534, 65534) == 0)
        let piped = try run("/bin/sh", ["-c", "echo $$ > \(web)/cgroup.procs && echo '\(m)/known' | /usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups -- \(sh) /dev/stdin"])
        #expect(piped.status != 0, "web: sh /dev/stdin refused: \(piped)")
        // (The writer gives up after 5 s and keeps no output pipe open: a refused reader never opens the FIFO.)
        let fifo = try Self.runIn(web, ["/bin/sh", "-c", "mkfifo \(userDir)/f && { /usr/bin/timeout -s KILL 5 /bin/sh -c \"echo \(m)/known > \(userDir)/f\" </dev/null >/dev/null 2>&1 & } && exec \(sh) \(userDir)/f"])
        #expect(fifo.status != 0 && fifo.stderr.contains("not permitted"), "web: sh FIFO refused: \(fifo)")
        let interactive = try run("/bin/sh", ["-c", "echo $$ > \(web)/cgroup.procs && echo 'print(\"inline ran\")' | /usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups -- \(python) -i \(m)/app.py"])
        #expect(!interactive.stdout.contains("inline ran"), "web: python3 -i refused: \(interactive)")
        let perlOpt = try run("/bin/sh", ["-c", "echo $$ > \(web)/cgroup.procs && exec /usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups -- /usr/bin/env PS4='$(id)' \(sh) -x \(m)/web.sh"])
        #expect(perlOpt.status != 0, "web: code in the environment (PS4 with -x) refused: \(perlOpt)")

        // Nested groups narrow, never escape: root made a group below web.service named like another unit.
        let nested = web + "/escape.scope"
        #expect(mkdir(nested, 0o755) == 0)
        defer { rmdir(nested) }
        let escaped = try Self.runIn(nested, [m + "/dd", "if=/dev/null", "of=/dev/null", "status=none"])
        #expect(escaped.status != 0, "a group below web.service is still governed by web.service's profile: \(escaped)")

        // As nobody, a process cannot move itself out of its service's group.
        let move = try run("/bin/sh", ["-c", "echo $$ > \(web)/cgroup.procs && exec /usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups -- /bin/sh -c 'echo $$ > \(other)/cgroup.procs' "])
        #expect(move.status != 0 && move.stderr.contains("ermission denied"), "moving between groups as non-root fails: \(move)")

        let records = h.eventRecords().filter { ($0["decision"] as? String) == "deny" }
        func denied(_ reason: String, _ name: String) -> Bool {
            records.contains { ($0["reason"] as? String) == reason && ($0["subject"] as? String) == "service=web.service" && (($0["path"] as? String) ?? "").hasSuffix("/" + name) }
        }
        #expect(denied("inline-code", "sh"), "sh -c and sh reading standard input refused as inline code")
        #expect(denied("inline-code", "python3"), "python3 -c refused as inline code")
        #expect(denied("not-in-profile", "dd"))
        #expect(records.contains { ($0["reason"] as? String) == "not-in-profile" && ($0["subject"] as? String) == "service=web.service" })
        let status = try h.status()
        #expect("\(status["profile_subjects"] ?? "")" == "2")
        #expect("\(status["profile_denials_by_subject"] ?? "")".contains("service=web.service"), "\(status)")

        // Monitor mode: a profile miss runs, reported as would-deny with the subject named.
        #expect(try appctl("monitor", "--socket", h.socket).status == 0)
        let monitored = try Self.runIn(web, [m + "/dd", "if=/dev/null", "of=/dev/null", "status=none"])
        #expect(monitored.status == 0, "monitor mode lets it run: \(monitored)")
        #expect(h.waitUntil { h.eventRecords().contains { ($0["decision"] as? String) == "would-deny" && ($0["reason"] as? String) == "not-in-profile" && ($0["subject"] as? String) == "service=web.service" } })

        // Offline: `appctl check --subject` answers as the profile would.
        let checkWeb = try appctl("check", "--policy", h.policyPath, "--key", h.keys.publicPath, "--subject", "service=web.service", m + "/dd")
        #expect(checkWeb.status == 1 && checkWeb.stdout.contains("not-in-profile"), "\(checkWeb)")
        let checkInline = try appctl("check", "--policy", h.policyPath, "--key", h.keys.publicPath, "--subject", "service=web.service", "--inline", sh)
        #expect(checkInline.status == 1 && checkInline.stdout.contains("inline-code"), "\(checkInline)")
        let checkAdmin = try appctl("check", "--policy", h.policyPath, "--key", h.keys.publicPath, "--subject", "service=admin.service", "--inline", sh)
        #expect(checkAdmin.status == 0, "\(checkAdmin)")
    }

    /// The kernel's cache answers every process alike: with profiles in force, a program some profile excludes is
    /// answered by the daemon on every exec, and one every profile lists stays in the kernel.
    @Test func excludedProgramsStayOutOfTheKernelCache() throws {
        let h = try DaemonHarness(label: "appctl-profile-cache")
        let cgroups = try CgroupTree()
        defer { h.stop(); cgroups.remove() }
        let web = try cgroups.group("web.service")
        let m = h.mount
        try h.copyExecutable("/usr/bin/date", to: "date")
        let known = m + "/known", date = m + "/date"
        var entries: [AllowEntry] = []
        for p in [known, date] {
            entries.append(AllowEntry(digest: try h.digest(p), size: UInt64(try linkStatus(p).st_size), kind: .elfExec, origin: .manual, path: Array(p.utf8)))
        }
        var header = PolicyHeader(serial: 5, issued: .now, keyID: h.keys.publicKey.keyID)
        header.profiles = [ProfileRule(subject: .service("web.service"), program: .digest(try h.digest(known)), inline: false)]
        try PolicyWriter.write(path: h.policyPath, header: header, allows: entries, denies: [], signingKey: h.keys.privateKey)
        try h.start(mode: "enforce", config: ["kernel-cache = yes"], writeDefaultPolicy: false)
        for _ in 0..<3 {
            #expect(try Self.runIn(web, [known]).status == 0)
            #expect(try Self.runIn(web, [date]).status != 0, "web's profile lists only known")
            #expect(try run(date, []).status == 0, "outside the service the policy alone decides")
        }
        let before = Int("\(try h.status()["execs_allowed_by_daemon"] ?? "0")") ?? 0
        for _ in 0..<5 { #expect(try run(date, []).status == 0) }
        for _ in 0..<5 { #expect(try run(known, []).status == 0) }
        let after = Int("\(try h.status()["execs_allowed_by_daemon"] ?? "0")") ?? 0
        // date: excluded by web's profile, so each of its 5 execs reaches the daemon; known: in every profile, so the kernel answers.
        #expect(after - before == 5, "execs the daemon answered: \(after - before) (expected the 5 of date only)")
    }

    /// The dynamic loader on the marked filesystem: exec'd for every dynamically linked program (its PT_INTERP), which
    /// must keep working, and run directly (`ld.so PROGRAM`), which must not start what the profile does not list or
    /// hand an interpreter inline code (the review of issue 15 ran `ld.so dd` and `ld.so python3 -c` this way).
    @Test func theLoaderStartsOnlyWhatTheProfileLists() throws {
        let h = try DaemonHarness(label: "appctl-profile-loader")
        let cgroups = try CgroupTree()
        // PT_INTERP must keep its length: a 27-byte path (as /lib64/ld-linux-x86-64.so.2) to a symlink to the tmpfs copy.
        let linkDir = "/tmp/appctl-ld-" + String(UUID().uuidString.prefix(6))
        defer { h.stop(); cgroups.remove(); unlink(linkDir + "/ld.so"); rmdir(linkDir) }
        let web = try cgroups.group("web.service")
        let m = h.mount
        let loader = try h.copyExecutable("/lib64/ld-linux-x86-64.so.2", to: "ld.so")
        #expect(mkdir(m + "/u", 0o777) == 0 && chmod(m + "/u", 0o777) == 0)
        #expect(mkdir(linkDir, 0o755) == 0 && symlink(loader, linkDir + "/ld.so") == 0)
        let original = Array("/lib64/ld-linux-x86-64.so.2".utf8), replacement = Array((linkDir + "/ld.so").utf8)
        #expect(original.count == replacement.count)
        var date = try Array(Data(contentsOf: URL(fileURLWithPath: "/usr/bin/date")))
        let at = try #require((0..<(date.count - original.count)).first { date[$0..<($0 + original.count)].elementsEqual(original) })
        date.replaceSubrange(at..<(at + original.count), with: replacement)
        FileManager.default.createFile(atPath: m + "/date", contents: Data(date))
        chmod(m + "/date", 0o755)
        try h.copyExecutable("/usr/bin/dd", to: "dd")
        let python = try h.copyExecutable("/usr/bin/python3.11", to: "python3")
        var entries: [AllowEntry] = []
        for p in [m + "/date", m + "/dd", python, loader] {
            entries.append(AllowEntry(digest: try h.digest(p), size: UInt64(try linkStatus(p).st_size), kind: .elfExec, origin: .manual, path: Array(p.utf8)))
        }
        var header = PolicyHeader(serial: 7, issued: .now, keyID: h.keys.publicKey.keyID)
        header.profiles = [
            ProfileRule(subject: .service("web.service"), program: .digest(try h.digest(m + "/date")), inline: false),
            ProfileRule(subject: .service("web.service"), program: .digest(try h.digest(python)), inline: false),
        ]
        try PolicyWriter.write(path: h.policyPath, header: header, allows: entries, denies: [], signingKey: h.keys.privateKey)
        // The tmpfs copy is this host's loader (as /lib64/ld-linux-x86-64.so.2 is a real host's): configured as such.
        try h.start(mode: "enforce", config: ["kernel-cache = yes", "interpreter = \(loader)", "interpreter = /usr/bin/python3",
                                               "interpreter = /usr/bin/dash", "interpreter = /lib64/ld-linux-x86-64.so.2"], writeDefaultPolicy: false)
        for _ in 0..<2 {
            let normal = try Self.runIn(web, [m + "/date", "+%Y"])
            #expect(normal.status == 0, "a program whose PT_INTERP is the marked loader runs: \(normal)")
            let direct = try Self.runIn(web, [loader, m + "/date", "+%Y"])
            #expect(direct.status == 0, "the loader may start what the profile lists: \(direct)")
            let dd = try Self.runIn(web, [loader, m + "/dd", "if=/dev/null", "of=/dev/null", "status=none"])
            #expect(dd.status != 0, "ld.so dd refused: dd is not in the profile: \(dd)")
            let inline = try Self.runIn(web, [loader, python, "-c", "print('inline ran')"])
            #expect(inline.status != 0 && !inline.stdout.contains("inline ran"), "ld.so python3 -c refused: \(inline)")
            // A copy of the loader at another path: the program it loads is judged all the same.
            let copy = try Self.runIn(web, ["/bin/sh", "-c", "cp \(loader) \(m)/u/myld && exec \(m)/u/myld \(m)/dd if=/dev/null of=/dev/null status=none"])
            #expect(copy.status != 0, "a copy of the loader run from web: \(copy)")
            let outside = try run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "--", loader, m + "/dd", "if=/dev/null", "of=/dev/null", "status=none"])
            #expect(outside.status == 0, "outside any profiled service the policy alone decides: \(outside)")
        }
        let records = h.eventRecords().filter { ($0["decision"] as? String) == "deny" }
        #expect(records.contains { ($0["reason"] as? String) == "not-in-profile" && (($0["path"] as? String) ?? "").hasSuffix("/dd") })
        #expect(records.contains { ($0["reason"] as? String) == "inline-code" && (($0["path"] as? String) ?? "").hasSuffix("/python3") })
    }
}
