import AppctlCore
import AppctlKernel
import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

extension Appctl {
    struct Key: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Manage the Ed25519 keys that sign policies.",
            subcommands: [Generate.self]
        )

        struct Generate: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Create an Ed25519 key pair (PEM). The private key is written mode 0600.",
                discussion: """
                    Keep the private key off the enforcing hosts: they only need the public key.
                    Refuses to overwrite either file. Prints the key id that signed policies carry.
                    """
            )

            @Option(name: .customLong("private"), help: ArgumentHelp("Where to write the private key.", valueName: "file"))
            var privatePath: String

            @Option(name: .customLong("public"), help: ArgumentHelp("Where to write the public key.", valueName: "file"))
            var publicPath: String

            func run() throws {
                for path in [privatePath, publicPath] where (try? linkStatus(path)) != nil {
                    throw CommandFailure("\(path): already exists; refusing to overwrite a key")
                }
                let pair: (privatePEM: [UInt8], publicPEM: [UInt8], publicKey: Ed25519PublicKey)
                do { pair = try Ed25519PrivateKey.generatePEM() } catch {
                    throw CommandFailure("cannot generate a key: \(error)")
                }
                try write(pair.privatePEM, to: privatePath, permissions: 0o600)
                do {
                    try write(pair.publicPEM, to: publicPath, permissions: 0o644)
                } catch {
                    unlink(privatePath)  // a private key without its public half is of no use: leave nothing
                    throw error
                }
                print("key id: \(pair.publicKey.keyID)")
                print("private key: \(privatePath) (mode 0600; keep it off the enforcing hosts)")
                print("public key:  \(publicPath)")
            }

            private func write(_ bytes: [UInt8], to path: String, permissions: mode_t) throws(CommandFailure) {
                do { try AtomicFileWriter.write(bytes, to: path, permissions: permissions, overwrite: false) } catch {
                    throw CommandFailure("\(path): cannot write key: \(error)")
                }
            }
        }
    }
}
