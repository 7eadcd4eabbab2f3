import AppctlCore
import AppctlKernel
import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

@main
struct Appctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "appctl",
        abstract: "Application allow-listing for Linux servers: only programs in a signed inventory may run.",
        discussion: """
            Typical life cycle:
              appctl key generate --private /etc/appctl/signing.key --public /etc/appctl/signing.pub
              appctl learn --out /var/lib/appctl/inventory.txt
              appctl policy sign --key /etc/appctl/signing.key --serial 1 --out /etc/appctl/policy.txt /var/lib/appctl/inventory.txt
              appctl check --policy /etc/appctl/policy.txt --key /etc/appctl/signing.pub /usr/bin/*

            Exit codes: 0 success or allowed, 1 denied or invalid input, 2 usage error.
            """,
        version: appctlVersion,
        subcommands: [Key.self, Learn.self, Policy.self, Check.self, Daemon.self, Status.self, Enforce.self, Monitor.self, LearnMode.self, ProfileLearning.self, Reload.self, OverlayReload.self, AptHookCommand.self, Drift.self, Maintenance.self, Bundle.self, Sync.self]
    )

    /// Maps errors to the exit-code contract: 0 ok, 1 denied/invalid input, 2 usage.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let failure as CommandFailure {
            printError("appctl: \(failure.message)")
            Glibc.exit(failure.exitCode)
        } catch let code as ExitCode {
            Glibc.exit(code.rawValue)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))
                Glibc.exit(0)
            }
            printError(fullMessage(for: error))
            Glibc.exit(2)
        }
    }
}

/// A failure the admin must see: one line, and the exit code it maps to.
struct CommandFailure: Error {
    var message: String
    var exitCode: Int32 = 1

    init(_ message: String, exitCode: Int32 = 1) {
        self.message = message
        self.exitCode = exitCode
    }

    init(_ error: PolicyError) { self.init(error.description) }
}

func printError(_ text: String) {
    var line = text
    if !line.hasSuffix("\n") { line += "\n" }
    // Straight to fd 2, unbuffered: the C `stderr` global is shared mutable state to Swift 6.
    try? FileDescriptor(rawValue: 2).writeAll(Array(line.utf8))
}

/// Reads a small file (a key) or fails with a one-line message naming it.
func readKeyFile(_ path: String) throws(CommandFailure) -> [UInt8] {
    do { return try readSmallFile(path, limit: 64 * 1024) } catch {
        throw CommandFailure("\(path): cannot read key: \(error)")
    }
}

func loadPublicKey(_ path: String) throws(CommandFailure) -> Ed25519PublicKey {
    let pem = try readKeyFile(path)
    do { return try Ed25519PublicKey(pem: pem) } catch {
        throw CommandFailure("\(path): \(error.code == .notAKey ? "not a PEM public key (a private key file, or not a key at all?)" : error.description)")
    }
}

func loadPrivateKey(_ path: String) throws(CommandFailure) -> Ed25519PrivateKey {
    let pem = try readKeyFile(path)
    do { return try Ed25519PrivateKey(pem: pem) } catch {
        throw CommandFailure("\(path): \(error.code == .notAKey ? "not a PEM private key" : error.description)")
    }
}

/// The one place where a serial given on the command line is checked.
struct SerialNumber: ExpressibleByArgument {
    var value: UInt64
    init?(argument: String) {
        guard let v = UInt64(argument), v > 0, v <= UInt64(Int64.max), argument.first != "0" else { return nil }
        value = v
    }
    static var defaultValueDescription: String { "a positive integer" }
}

/// `--expires`: a time (`2027-06-30`, `2027-06-30T12:00:00Z`) or a duration from now (`90m`, `12h`, `30d`), as every
/// duration in appctl is written.
struct ExpiryTime: ExpressibleByArgument {
    var value: Timestamp
    init?(argument: String) {
        if let t = Timestamp(userInput: argument) {
            value = t
        } else if let seconds = parseDuration(argument), argument.last?.isLetter == true, seconds <= 100 * 366 * 86_400 {
            value = Timestamp(secondsSinceEpoch: Timestamp.now.secondsSinceEpoch + Int64(seconds))
        } else {
            return nil
        }
    }
}
