/// deb822 control data (Release files, the dpkg status file, Packages indexes): paragraphs of `Field: value`
/// lines separated by blank lines; a line starting with a space or tab continues the field above. The syntax is
/// Debian Policy §5.1; the few lines here read only what has been verified by gpgv or is root's own database.
public struct Deb822Paragraph: Sendable {
    /// Field names as written; values with continuation lines joined by "\n" (the leading space removed).
    public private(set) var fields: [(name: String, value: String)] = []

    /// The first field of that name, compared without regard to case (as dpkg and apt do).
    public subscript(name: String) -> String? {
        let lowered = name.lowercased()
        return fields.first { $0.name.lowercased() == lowered }?.value
    }

    mutating func append(_ name: String, _ value: String) { fields.append((name, value)) }
    mutating func continueLast(_ line: String) {
        guard !fields.isEmpty else { return }
        fields[fields.count - 1].value += "\n" + line
    }
}

public enum Deb822 {
    /// Every paragraph of `text`.
    public static func paragraphs(_ text: some Collection<UInt8>) -> [Deb822Paragraph] {
        var result: [Deb822Paragraph] = []
        var current = Deb822Paragraph()
        for raw in text.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            var line = String(decoding: raw, as: UTF8.self)
            if line.hasSuffix("\r") { line.removeLast() }
            if line.allSatisfy({ $0 == " " || $0 == "\t" }) {
                if !current.fields.isEmpty { result.append(current); current = Deb822Paragraph() }
                continue
            }
            if line.first == " " || line.first == "\t" {
                current.continueLast(String(line.dropFirst()))
            } else if let colon = line.firstIndex(of: ":") {
                current.append(String(line[..<colon]), String(line[line.index(after: colon)...]).trimmingCharacters(" \t"))
            }
        }
        if !current.fields.isEmpty { result.append(current) }
        return result
    }
}

extension String {
    func trimmingCharacters(_ set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s.removeFirst() }
        while let l = s.last, set.contains(l) { s.removeLast() }
        return String(s)
    }
}
