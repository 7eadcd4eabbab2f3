import AppctlCore
import AppctlKernel
import AppctlTestSupport
import Foundation
import Testing

/// The command-line contract: names, flags, exit codes (0 ok/allowed, 1 denied/invalid input, 2 usage),
/// one-line errors, and nothing written on failure. Runs the real built binary.
@Suite struct CommandLineTests {
    /// A key pair, a learned inventory of a fixture tree and a policy signed from it.
    struct Setup {
        let fixture: Fixture
        var dir: TemporaryDirectory { fixture.dir }
        var policy: String { dir.file("policy.txt") }
        var inventory: String { dir.file("inventory.txt") }
        var privateKey: String { dir.file("k.pem") }
        var publicKey: String { dir.file("k.pub") }

        init() throws {
            fixture = try Fixture()
            unlink(fixture.dir.file("root/data/fifo"))
            let gen = try appctl("key", "generate", "--private", fixture.dir.file("k.pem"), "--public", fixture.dir.file("k.pub"))
            #expect(gen.status == 0, "\(gen.stderr)")
            let learn = try appctl("learn", "--root", fixture.root, "--dpkg-admindir", fixture.dir.file("no-dpkg"), "--out", fixture.dir.file("inventory.txt"))
            #expect(learn.status == 0, "\(learn.stderr)")
            let sign = try appctl("policy", "sign", "--key", fixture.dir.file("k.pem"), "--serial", "5", "--out", fixture.dir.file("policy.txt"), fixture.dir.file("inventory.txt"))
            #expect(sign.status == 0, "\(sign.stderr)")
        }
    }

    @Test func keyGenerateWritesAPrivateKeyOnlyRootCanReadAndRefusesToOverwrite() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let first = try appctl("key", "generate", "--private", dir.file("a.pem"), "--public", dir.file("a.pub"))
        #expect(first.status == 0)
        #expect(first.stdout.contains("key id: "))
        #expect((try linkStatus(dir.file("a.pem")).st_mode & 0o777) == 0o600)
        let again = try appctl("key", "generate", "--private", dir.file("a.pem"), "--public", dir.file("b.pub"))
        #expect(again.status == 1)
        #expect(again.stderr.contains("already exists"))
        #expect((try? linkStatus(dir.file("b.pub"))) == nil)
    }

    @Test func learnSignVerifyShowCheck() throws {
        let s = try Setup(); defer { s.dir.remove() }
        let verify = try appctl("policy", "verify", "--key", s.publicKey, s.policy)
        #expect(verify.status == 0)
        #expect(verify.stdout.hasPrefix("valid: "))
        let show = try appctl("policy", "show", s.policy)
        #expect(show.status == 0)
        #expect(show.stdout.contains("serial:      5"))
        #expect(show.stdout.contains("elf-exec 2, elf-lib 2, script 3, other-exec 1"))
        let allowed = try appctl("check", "--policy", s.policy, "--key", s.publicKey, s.dir.file("root/bin/true-copy"))
        #expect(allowed.status == 0)
        #expect(allowed.stdout.hasPrefix("allow  known"))
        // Trust is by content: /usr/bin/true is the same bytes as the learned copy.
        #expect(try appctl("check", "--policy", s.policy, "--key", s.publicKey, "/usr/bin/true").status == 0)
        let denied = try appctl("check", "--policy", s.policy, "--key", s.publicKey, s.dir.file("root/bin/true-copy"), "/usr/bin/ls")
        #expect(denied.status == 1)
        #expect(denied.stdout.contains("deny   unknown"))
    }

    @Test func badPolicyInputsExitOneWithOneLine() throws {
        let s = try Setup(); defer { s.dir.remove() }
        let other = try appctl("key", "generate", "--private", s.dir.file("o.pem"), "--public", s.dir.file("o.pub"))
        #expect(other.status == 0)
        var tampered = try s.dir.read("policy.txt")
        tampered[tampered.count / 2] ^= 0x01
        try s.dir.write("tampered.txt", tampered)
        try s.dir.write("empty.txt", "")
        let cases: [(String, [String])] = [
            ("wrong key", ["policy", "verify", "--key", s.dir.file("o.pub"), s.policy]),
            ("tampered", ["policy", "verify", "--key", s.publicKey, s.dir.file("tampered.txt")]),
            ("unsigned", ["policy", "verify", "--key", s.publicKey, s.inventory]),
            ("empty", ["policy", "verify", "--key", s.publicKey, s.dir.file("empty.txt")]),
            ("missing file", ["policy", "show", s.dir.file("nope.txt")]),
            ("private key as public key", ["policy", "verify", "--key", s.privateKey, s.policy]),
            ("check against tampered", ["check", "--policy", s.dir.file("tampered.txt"), "--key", s.publicKey, "/usr/bin/true"]),
        ]
        for (name, args) in cases {
            let r = try run(appctlBinary, args)
            #expect(r.status == 1, "\(name): \(r.stderr)")
            #expect(r.stderr.hasPrefix("appctl: "), "\(name): \(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1, "\(name): \(r.stderr)")
        }
    }

    @Test func usageErrorsExitTwo() throws {
        let dir = TemporaryDirectory(); defer { dir.remove() }
        #expect(try appctl("learn").status == 2)                                                  // --out missing
        #expect(try appctl("policy", "sign", "--key", "k", "--serial", "0", "--out", "o", "i").status == 2)
        #expect(try appctl("policy", "sign", "--key", "k", "--serial", "-3", "--out", "o", "i").status == 2)
        #expect(try appctl("policy", "sign", "--key", "k", "--serial", "x", "--out", "o", "i").status == 2)
        #expect(try appctl("learn", "--sign-with", "k", "--out", dir.file("x")).status == 2)      // --serial missing
        #expect(try appctl("no-such-command").status == 2)
        for args in [["--help"], ["learn", "--help"], ["policy", "sign", "--help"], ["key", "generate", "--help"],
                     ["check", "--help"], ["policy", "diff", "--help"]] {
            let r = try run(appctlBinary, args)
            #expect(r.status == 0, "\(args)")
            #expect(r.stdout.contains("USAGE"), "\(args)")
        }
    }

    @Test func signWithAKeyOfTheWrongTypeFailsAndWritesNothing() throws {
        let s = try Setup(); defer { s.dir.remove() }
        _ = try run("/usr/bin/openssl", ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", s.dir.file("rsa.pem")])
        let r = try appctl("policy", "sign", "--key", s.dir.file("rsa.pem"), "--serial", "6", "--out", s.dir.file("p2.txt"), s.inventory)
        #expect(r.status == 1)
        #expect(r.stderr.contains("not an Ed25519 key"))
        #expect((try? linkStatus(s.dir.file("p2.txt"))) == nil)
    }

    @Test func diffShowsAddedRemovedAndChanged() throws {
        let s = try Setup(); defer { s.dir.remove() }
        try s.dir.write("root/scripts/run.sh", "#!/bin/sh\necho changed\n", mode: 0o755)
        try s.dir.write("root/scripts/new.sh", "#!/bin/sh\necho new\n", mode: 0o755)
        unlink(s.dir.file("root/lib/libz.so.1"))
        let learn = try appctl("learn", "--root", s.fixture.root, "--dpkg-admindir", s.dir.file("none"), "--sign-with", s.privateKey,
                               "--serial", "6", "--out", s.dir.file("policy6.txt"))
        #expect(learn.status == 0, "\(learn.stderr)")
        let diff = try appctl("policy", "diff", s.policy, s.dir.file("policy6.txt"))
        #expect(diff.status == 0)
        #expect(diff.stdout.contains("~ serial: 5 -> 6"))
        #expect(diff.stdout.contains("+ allow ") && diff.stdout.contains("scripts/new.sh"))
        #expect(diff.stdout.contains("- allow ") && diff.stdout.contains("lib/libz.so.1"))
        #expect(diff.stdout.contains("~ allow \(s.dir.file("root/scripts/run.sh"))"))
        #expect(diff.stdout.contains("1 added, 1 removed, 1 changed"))
    }

    @Test(.enabled(if: rootTestsEnabled, "needs root: reads files as another user"))
    func unreadableFilesAreReportedAndTheScanGoesOn() throws {
        #expect(isRoot, "root-only test running without root")
        let s = try Setup(); defer { s.dir.remove() }
        chmod(s.dir.path, 0o755)
        try s.dir.write("root/bin/secret", "#!/bin/sh\n", mode: 0o700)
        try FileManager.default.createDirectory(atPath: s.dir.file("root/closed"), withIntermediateDirectories: true)
        chmod(s.dir.file("root/closed"), 0o700)
        let out = s.dir.file("out")
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        chown(out, 65534, 65534)
        let r = try run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", appctlBinary, "learn",
                                             "--root", s.fixture.root, "--dpkg-admindir", s.dir.file("none"), "--out", out + "/inv.txt"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("\(s.dir.file("root/bin/secret")): unreadable: Permission denied"), "\(r.stdout)")
        #expect(r.stdout.contains("\(s.dir.file("root/closed")): directory unreadable: Permission denied"), "\(r.stdout)")
        #expect(r.stdout.contains("learned 8 executable files"), "\(r.stdout)")
    }

    @Test(.enabled(if: rootTestsEnabled, "needs root: mounts a tiny tmpfs in a private mount namespace"))
    func fullDiskFailsCleanlyAndLeavesNothing() throws {
        #expect(isRoot, "root-only test running without root")
        let s = try Setup(); defer { s.dir.remove() }
        let mnt = s.dir.file("full")
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        // The tmpfs exists only inside this private mount namespace and disappears with it.
        let script = """
            mount -t tmpfs -o size=8k tmpfs \(mnt) || exit 99
            \(appctlBinary) learn --root /usr/bin --dpkg-admindir /nonexistent --out \(mnt)/inv.txt
            echo "rc=$?"
            ls -A \(mnt) | wc -l
            """
        let r = try run("/usr/bin/unshare", ["-m", "--propagation", "private", "/bin/sh", "-c", script])
        #expect(r.stdout.contains("rc=1"), "\(r.stdout) \(r.stderr)")
        #expect(r.stdout.hasSuffix("0\n"), "a partial file was left: \(r.stdout)")
        #expect(r.stderr.contains("No space left on device"), "\(r.stderr)")
        #expect(r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
    }
}

@Suite struct ShippedExampleTests {
    static let policies = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Policies").path

    @Test func examplePolicyVerifiesWithTheExampleKey() throws {
        let r = try appctl("policy", "verify", "--key", Self.policies + "/example-signing.pub", Self.policies + "/example-policy.txt")
        #expect(r.status == 0, "\(r.stderr)")
        let inventory = try appctl("policy", "show", Self.policies + "/example-inventory.txt")
        #expect(inventory.status == 0, "\(inventory.stderr)")
    }
}

@Suite struct OutputTargetTests {
    @Test(.enabled(if: rootTestsEnabled, "needs root: mknod"))
    func writingToADeviceNodeNeverReplacesIt() throws {
        #expect(isRoot, "root-only test running without root")
        let dir = TemporaryDirectory(); defer { dir.remove() }
        let null = dir.file("null")
        #expect(mknod(null, S_IFCHR | 0o666, dev_t((1 << 8) | 3)) == 0)   // makedev(1, 3): /dev/null
        try dir.write("root/run.sh", "#!/bin/sh\n", mode: 0o755)
        let r = try appctl("learn", "--root", dir.file("root"), "--dpkg-admindir", "/nonexistent", "--out", null)
        #expect(r.status == 0, "\(r.stderr)")
        #expect((try linkStatus(null).st_mode & S_IFMT) == S_IFCHR, "--out /dev/null must not turn /dev/null into a file")
        try FileManager.default.createDirectory(atPath: dir.file("d"), withIntermediateDirectories: true)
        let intoDirectory = try appctl("learn", "--root", dir.file("root"), "--dpkg-admindir", "/nonexistent", "--out", dir.file("d"))
        #expect(intoDirectory.status == 1)
        #expect(intoDirectory.stderr.contains("Is a directory"))
    }
}
