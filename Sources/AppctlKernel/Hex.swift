/// The one hex codec: digests, policy fields, dpkg's md5sums, key ids. (The policy reader keeps a table-driven
/// digest parser of its own for its hot loop, 64 million digits on a 1M-entry load; it accepts exactly what
/// `Hex.value` accepts.)
public enum Hex {
    /// A hex digit's value: lowercase only (the policy format has one spelling per value), or either case.
    @inline(__always)
    public static func value(_ c: UInt8, allowingUppercase: Bool = false) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c &- UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c &- UInt8(ascii: "a") &+ 10
        case UInt8(ascii: "A")...UInt8(ascii: "F") where allowingUppercase: return c &- UInt8(ascii: "A") &+ 10
        default: return nil
        }
    }

    /// Pairs of digits → bytes; nil for an odd count or any other byte.
    public static func decode(_ hex: some Collection<UInt8>, allowingUppercase: Bool = false) -> [UInt8]? {
        guard hex.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(hex.count / 2)
        var it = hex.makeIterator()
        while let h = it.next(), let l = it.next() {
            guard let hv = value(h, allowingUppercase: allowingUppercase), let lv = value(l, allowingUppercase: allowingUppercase) else { return nil }
            out.append(hv << 4 | lv)
        }
        return out
    }

    static let digits = Array("0123456789abcdef".utf8)

    /// Bytes → lowercase hex.
    public static func encode(_ bytes: some Sequence<UInt8>) -> String {
        var out = [UInt8]()
        for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Bytes → lowercase hex (`Hex.encode`).
public func hexString(_ bytes: some Sequence<UInt8>) -> String { Hex.encode(bytes) }
