/// Why a policy or inventory was refused. Printed as one line: `file:line: message`.
public struct PolicyError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case io, empty, notAPolicy, unsupportedVersion, malformed, outOfOrder, duplicate, conflictingDuplicate
        case countMismatch, truncated, unsigned, badSignature, wrongKey, expired, lineTooLong, badSerial
        case rollback, outOfScope
    }

    public var code: Code
    public var file: String
    public var line: Int?
    public var message: String

    public init(_ code: Code, file: String, line: Int? = nil, _ message: String) {
        self.code = code; self.file = file; self.line = line; self.message = message
    }

    public var description: String {
        if let line { return "\(file):\(line): \(message)" }
        return "\(file): \(message)"
    }
}
