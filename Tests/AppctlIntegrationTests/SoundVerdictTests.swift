import AppctlCore
import AppctlDaemon
import AppctlKernel
import AppctlTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Issue 10: a verdict holds only for content that cannot change while it is used. Each test is one case of the
/// issue, run as the threat model's attacker (nobody) on the real kernel; each failed on the build before
/// the `mutable` rule (checked against 5e65784).
@Suite(.serialized, .enabled(if: rootTestsEnabled, "needs root: fanotify and mounts"))
struct SoundVerdictTests {
    init() {
        #expect(isRoot, "root-only tests running without root (CI=true): run tools/test as root")
    }

    /// A directory on the enforced tmpfs that the attacker owns.
    func attackerHome(_ h: DaemonHarness) throws -> String {
        let home = h.mount + "/home"
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        chown(home, 65534, 65534)
        return home
    }

    func asNobody(_ command: String) throws -> ProcessResult {
        try run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "/bin/sh", "-c", command])
    }

    func mutableRecords(_ h: DaemonHarness) -> [[String: Any]] {
        h.eventRecords().filter { $0["reason"] as? String == "mutable" }
    }

    /// Case 1: the attacker's copy of an allowed script, appended to while its first command runs. Shells read
    /// their script as they go, so the appended line would run under a verdict made for the old content.
    @Test(arguments: ["sh", "bash", "shebang"])
    func aScriptThatGrowsWhileItRunsNeverRuns(_ how: String) throws {
        let h = try DaemonHarness(); defer { h.stop() }
        let wait = try h.writeScript("wait.sh", "#!/bin/sh\nwhile [ ! -e \"$1\" ]; do sleep 0.01; done\n")
        let marker = h.dir.file("marker")
        try h.writePolicy(allow: [h.mount + "/known", wait])
        try h.start(mode: "enforce")
        let home = try attackerHome(h)
        // Root's own copy runs: the promise is kept for code only root can change.
        #expect(try h.exec("touch \(h.dir.file("go")); sh \(wait) \(h.dir.file("go"))") == 0)
        let start = how == "shebang" ? "./copy.sh" : "\(how) ./copy.sh"
        let attack = try asNobody("""
            cd \(home) && cp \(wait) copy.sh && chmod 755 copy.sh
            \(start) ./go & pid=$!
            echo 'touch \(marker)' >> copy.sh
            touch ./go
            wait $pid
            """)
        #expect((try? linkStatus(marker)) == nil, "the appended line ran (\(how)): \(attack.stderr)")
        #expect(attack.status != 0)
        #expect(try h.waitUntil(10) { !mutableRecords(h).isEmpty }, "no mutable deny logged")
        let record = mutableRecords(h).first
        #expect(record?["decision"] as? String == "deny")
        #expect(record?["writable_by"] as? String == "uid 65534")
        #expect((h.daemonLog).contains("DENY"))
    }

    /// Case 2: the attacker's copy of an allowed library. The loader maps it MAP_PRIVATE after the verdict;
    /// pages not yet copied show later writes to the file.
    @Test func anAttackerOwnedCopyOfAnAllowedLibraryIsNotLoaded() throws {
        let h = try DaemonHarness(); defer { h.stop() }
        let marker = h.dir.file("marker")
        let library = try BypassTests.buildEvilLibrary(h, marker: marker)
        try h.writePolicy(allow: [h.mount + "/known", library])
        try h.start(mode: "enforce")
        let home = try attackerHome(h)
        // Root's copy loads.
        _ = try h.execResult("LD_PRELOAD=\(library) /usr/bin/true")
        #expect((try? linkStatus(marker)) != nil, "an allowed root-owned library must load")
        unlink(marker)
        let attack = try asNobody("cd \(home) && cp \(library) copy.so && LD_PRELOAD=./copy.so /usr/bin/true")
        #expect((try? linkStatus(marker)) == nil, "the attacker's copy of an allowed library was loaded: \(attack.stderr)")
        #expect(attack.stderr.contains("cannot be preloaded"), "\(attack.stderr)")
        // The loader run on the attacker's copy of an allowed program maps it the same way.
        let loaded = try asNobody("cd \(home) && cp \(h.mount)/known prog && /lib64/ld-linux-x86-64.so.2 ./prog")
        #expect(loaded.status != 0, "ld.so ./copy mapped a program its owner can change")
        // An exec of the same copy is sound (the kernel denies writers from then on) and runs.
        #expect(try asNobody("cd \(home) && ./prog").status == 0, "a copy of an allowed program runs anywhere")
        #expect(try h.waitUntil(10) { mutableRecords(h).count >= 2 })
    }

    /// Monitor mode reports the same cases as would-deny, and the documented switch turns the rule off.
    @Test func monitorModeReportsMutableCodeAndTheSwitchTurnsItOff() throws {
        let h = try DaemonHarness(); defer { h.stop() }
        let script = try h.writeScript("ok.sh", "#!/bin/sh\necho ok-ran\n")
        try h.writePolicy(allow: [h.mount + "/known", script])
        try h.start(mode: "monitor")
        let home = try attackerHome(h)
        #expect(try asNobody("cd \(home) && cp \(script) copy.sh && sh ./copy.sh").stdout.contains("ok-ran"))
        #expect(try h.waitUntil(10) { mutableRecords(h).first?["decision"] as? String == "would-deny" })
        #expect(h.signalDaemon(SIGTERM) == 0)
        try h.start(mode: "enforce", config: ["allow-mutable-code = yes"])
        #expect(try asNobody("cd \(home) && sh ./copy.sh").stdout.contains("ok-ran"), "allow-mutable-code = yes decides by digest")
    }
}
