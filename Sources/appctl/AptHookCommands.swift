import AppctlCore
import AppctlKernel
import AppctlPackages
import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

extension Appctl {
    struct AptHookCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "apt-hook",
            abstract: "Let apt updates through: trust what the archive's own signatures vouch for.",
            discussion: """
                Once installed, apt runs appctl-apt-hook before dpkg unpacks anything. It verifies every .deb
                through apt's chain (InRelease signature by gpgv → Packages index hash → .deb hash), and for
                packages from an apt source the signed policy names with mode=auto it writes their programs,
                libraries and maintainer scripts to the local overlay 'overlay:apt' and tells the daemon, before
                dpkg runs. After dpkg, versions no longer installed are retired. Nothing is trusted from a
                source the signed policy does not name.
                """,
            subcommands: [Install.self, Uninstall.self, Sources.self]
        )

        static let confFile = "/etc/apt/apt.conf.d/20appctl"
        static let dpkgConfFile = "/etc/dpkg/dpkg.cfg.d/appctl"

        /// The two configuration files the hook lives in (install writes them, uninstall removes them).
        struct ConfigurationFiles: ParsableArguments {
            @Option(help: ArgumentHelp("apt's configuration file for the hook.", valueName: "file"))
            var file: String = AptHookCommand.confFile

            @Option(help: ArgumentHelp("dpkg's configuration file for its pre-invoke hook (dpkg used directly; best effort).", valueName: "file"))
            var dpkgFile: String = AptHookCommand.dpkgConfFile
        }

        /// The hook program: installed next to this `appctl`.
        static func hookProgram() throws(CommandFailure) -> String {
            guard let exe = realPath("/proc/self/exe") else { throw CommandFailure("cannot find this program's own path") }
            // Next to this appctl (a build tree), or where the Debian package puts it (/usr/sbin/appctl ships
            // /usr/lib/appctl/appctl-apt-hook).
            let besides = String(exe[..<exe.lastIndex(of: "/")!]) + "/appctl-apt-hook", packaged = "/usr/lib/appctl/appctl-apt-hook"
            let program = (try? fileStatus(besides))?.isRegularFile != true && exe == "/usr/sbin/appctl" ? packaged : besides
            guard (try? fileStatus(program))?.isRegularFile == true else {
                throw CommandFailure("\(program): not found (it is built and installed next to appctl)")
            }
            return program
        }

        struct Install: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Write the apt configuration that runs the hook (\(AptHookCommand.confFile)).")

            @OptionGroup var files: ConfigurationFiles

            @Option(help: ArgumentHelp("The appctl configuration the hook reads (default: \(DaemonConfigurationPath.path)).", valueName: "file"))
            var config: String?

            @Option(help: ArgumentHelp("The hook program (default: appctl-apt-hook next to this appctl). It must stay there: apt stops when it is missing.", valueName: "path"))
            var program: String?

            func run() throws {
                let program = try self.program.map { path throws(CommandFailure) -> String in
                    guard path.hasPrefix("/"), (try? fileStatus(path))?.isRegularFile == true else { throw CommandFailure("\(path): not an absolute path to a program") }
                    return path
                } ?? hookProgram()
                let configArgument = config.map { " --config \($0)" } ?? ""
                // apt passes protocol version 3 to a Pre-Install-Pkgs command whose first word has Version "3"
                // (apt.conf(5)); a failing command stops apt before dpkg unpacks anything.
                let text = """
                    // Written by `appctl apt-hook install`; `appctl apt-hook uninstall` removes it.
                    // Before dpkg runs: verify every .deb through the archive's signatures and trust what the signed
                    // policy's apt-source lines allow. After dpkg: retire versions no longer installed.
                    DPkg::Pre-Install-Pkgs { "\(program) pre-install\(configArgument)"; };
                    DPkg::Tools::Options::\(program)::Version "3";
                    DPkg::Post-Invoke { "test ! -x \(program) || \(program) post-invoke\(configArgument)"; };

                    """
                // Post-Invoke runs through sh and is skipped when the program is gone: apt reads its configuration when it
                // starts, so the apt run that removes appctl itself still calls the hook after dpkg deleted it (retiring
                // versions then is pointless; failing would fail the removal).
                // dpkg used directly (`dpkg -i x.deb`): dpkg does not say which packages, so the hook can only apply the
                // policy's apt-unverified rule (dpkg.cfg(5): a failing pre-invoke command stops dpkg).
                let dpkgText = "# Written by `appctl apt-hook install`; `appctl apt-hook uninstall` removes it.\n"
                    + "pre-invoke=\"\(program) dpkg-pre-invoke\(configArgument)\"\n"
                do {
                    try AtomicFileWriter.write(Array(text.utf8), to: files.file, permissions: 0o644)
                    try AtomicFileWriter.write(Array(dpkgText.utf8), to: files.dpkgFile, permissions: 0o644)
                } catch {
                    throw CommandFailure("cannot write \(files.file) or \(files.dpkgFile): \(error)")
                }
                print("installed the apt hook: \(files.file) and \(files.dpkgFile) run \(program)")
            }
        }

        struct Uninstall: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Remove the apt configuration that runs the hook.")

            @OptionGroup var files: ConfigurationFiles

            func run() throws {
                for path in [files.file, files.dpkgFile] where unlink(path) != 0 && errno != ENOENT {
                    throw CommandFailure("\(path): cannot remove: \(Errno.current)")
                }
                print("removed the apt hook (\(files.file), \(files.dpkgFile)); overlay:apt stays until a policy or the daemon's start-up retires it")
            }
        }

        struct Sources: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Print this machine's apt sources as --apt-source specs, from the signatures apt's lists carry.",
                discussion: """
                    Each InRelease file in apt's lists is verified with gpgv; one line per good signer:
                    signer=<fingerprint>,origin=<Origin>,suite=<Codename>[,mode=MODE]. Review them before you sign:
                    they say whose packages this fleet will trust.
                    """
            )

            @Option(help: ArgumentHelp("Mode to print: auto, gate, or report.", valueName: "mode"))
            var mode: String = "auto"

            @Option(help: ArgumentHelp("apt's lists directory.", valueName: "dir"))
            var lists: String = "/var/lib/apt/lists"

            func run() throws {
                guard let trustMode = AptTrustMode(rawValue: mode) else { throw ValidationError("--mode must be auto, gate or report") }
                let archive = AptArchive(listsDirectory: lists)
                var specs = Set<AptSourceRule>()
                var problems = 0
                for path in archive.releaseFiles() {
                    do {
                        let release = try archive.verifyRelease(path)
                        // A Release field a spec cannot hold (a space in "Google LLC") is left out: the signer
                        // still pins the source; the line says so on stderr.
                        func word(_ value: String?, _ field: String) -> String? {
                            guard let value else { return nil }
                            if (try? AptSourceRule(spec: "signer=\(String(repeating: "0", count: 40)),\(field)=\(value)", canonical: true)) == nil {
                                try? FileDescriptor(rawValue: 2).writeAll(Array("appctl: \(path): \(field) '\(value)' cannot be written in a spec; left out (the signer alone pins it)\n".utf8))
                                return nil
                            }
                            return value
                        }
                        for signer in release.signers {
                            specs.insert(AptSourceRule(signer: signer, origin: word(release.origin, "origin"),
                                                       suite: word(release.codename ?? release.suite, "suite"), mode: trustMode))
                        }
                    } catch {
                        problems += 1
                        try? FileDescriptor(rawValue: 2).writeAll(Array("appctl: skipped \(error.description)\n".utf8))
                    }
                }
                for spec in specs.sorted() { print(spec) }
                if specs.isEmpty { throw CommandFailure("no verifiable InRelease file in \(lists)" + (problems > 0 ? " (\(problems) refused)" : "")) }
            }
        }
    }
}

enum DaemonConfigurationPath { static let path = "/etc/appctl/appctl.conf" }
