import _AppctlShims
#if canImport(Glibc)
import Glibc
#endif

/// Why a key could not be used.
public struct KeyError: Error, Sendable, CustomStringConvertible {
    public enum Code: Sendable { case notAKey, wrongType, openssl }
    public var code: Code
    public var description: String {
        switch code {
        case .notAKey: return "not a PEM key"
        case .wrongType: return "the key is not an Ed25519 key"
        case .openssl: return "OpenSSL failed to process the key"
        }
    }
    init(shimCode: Int32) {
        switch shimCode {
        case APPCTL_E_PARSE: code = .notAKey
        case APPCTL_E_KEYTYPE: code = .wrongType
        default: code = .openssl
        }
    }
}

/// An Ed25519 public key: 32 raw bytes.
public struct Ed25519PublicKey: Sendable, Hashable {
    public let raw: [UInt8]

    public init(raw: [UInt8]) {
        precondition(raw.count == 32)
        self.raw = raw
    }

    public init(pem: [UInt8]) throws(KeyError) {
        var raw = [UInt8](repeating: 0, count: 32)
        let rc = pem.withUnsafeBytes { appctl_ed25519_read_public($0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count, &raw) }
        guard rc == 0 else { throw KeyError(shimCode: rc) }
        self.raw = raw
    }

    /// The key id: the first 16 hex digits of SHA-256 over the raw public key.
    public var keyID: String { String(SHA256Digest.of(raw).hex.prefix(16)) }

    public func isValidSignature(_ signature: [UInt8], for message: [UInt8]) -> Bool {
        guard signature.count == 64 else { return false }
        return message.withUnsafeBytes { m in
            appctl_ed25519_verify(raw, m.baseAddress?.assumingMemoryBound(to: UInt8.self), m.count, signature) == 0
        }
    }
}

/// An Ed25519 private key. The raw bytes stay in this process's memory only.
public struct Ed25519PrivateKey: Sendable {
    private let raw: [UInt8]
    public let publicKey: Ed25519PublicKey

    public init(pem: [UInt8]) throws(KeyError) {
        var priv = [UInt8](repeating: 0, count: 32)
        var pub = [UInt8](repeating: 0, count: 32)
        let rc = pem.withUnsafeBytes { appctl_ed25519_read_private($0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count, &priv, &pub) }
        guard rc == 0 else { throw KeyError(shimCode: rc) }
        raw = priv
        publicKey = Ed25519PublicKey(raw: pub)
    }

    /// A fresh key pair as PEM texts (PKCS#8 private key, SubjectPublicKeyInfo public key).
    public static func generatePEM() throws(KeyError) -> (privatePEM: [UInt8], publicPEM: [UInt8], publicKey: Ed25519PublicKey) {
        var privPtr: UnsafeMutablePointer<CChar>? = nil
        var pubPtr: UnsafeMutablePointer<CChar>? = nil
        var privLen = 0, pubLen = 0
        var pubRaw = [UInt8](repeating: 0, count: 32)
        let rc = appctl_ed25519_generate(&privPtr, &privLen, &pubPtr, &pubLen, &pubRaw)
        guard rc == 0, let privPtr, let pubPtr else { throw KeyError(shimCode: rc) }
        defer {
            memset(privPtr, 0, privLen)
            free(privPtr); free(pubPtr)
        }
        let priv = Array(UnsafeRawBufferPointer(start: privPtr, count: privLen))
        let pub = Array(UnsafeRawBufferPointer(start: pubPtr, count: pubLen))
        return (priv, pub, Ed25519PublicKey(raw: pubRaw))
    }

    public func signature(for message: [UInt8]) throws(KeyError) -> [UInt8] {
        var sig = [UInt8](repeating: 0, count: 64)
        let rc = message.withUnsafeBytes { m in
            appctl_ed25519_sign(raw, m.baseAddress?.assumingMemoryBound(to: UInt8.self), m.count, &sig)
        }
        guard rc == 0 else { throw KeyError(shimCode: rc) }
        return sig
    }
}
