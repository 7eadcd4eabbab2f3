/// The interpreter families learn records (`interpreter:<name>` on the allow entry, policy format version 3).
public enum InterpreterKind: String, CaseIterable, Sendable {
    case python, perl, ruby, node, tcl
}

/// Recognises a language's launcher by what the program is, never by its name: its ELF dynamic symbols and
/// DT_NEEDED entries, found through the section headers. A Python, Perl, Ruby, Node or Tcl built into /usr/local,
/// /opt or pyenv is recognised like the distribution's.
///
/// Conservative on purpose: the daemon treats every command-line argument of an interpreter as a possible script,
/// so a false positive could deny a server its configuration file. Only launchers of a language count, never
/// programs that merely embed one (vim, mod_perl, a game with Lua or Tcl inside), and never a library
/// (libperl.so defines `perl_parse`, libpython defines `Py_BytesMain`).
///
/// The rules, each on a program (ET_EXEC, or ET_DYN with PT_INTERP, as `ContentClassifier` decides):
/// - python: `Py_BytesMain` (CPython 3.8+), `_Py_UnixMain` (3.7) or `Py_Main` (3.6 and older), defined or
///   undefined. They run the `python` command line on argv; embedders call `Py_Initialize` instead.
/// - perl: `perl_parse` defined together with `perl_run` (a perl with libperl linked in, like Debian's). Or, for a
///   perl built with a shared libperl (Fedora, perlbrew `-Duseshrplib`): a DT_NEEDED `libperl.so*` together with
///   undefined `perl_parse`, `perl_run` and `PL_do_undump`. `PL_do_undump` is read only by perl's own
///   `perlmain.c` (`if (!PL_do_undump) { my_perl = perl_alloc(); ...`); embedders following perlembed call
///   perl_parse and perl_run too but never look at it, so an embedder like vim-nox is not perl.
/// - ruby: `ruby_run_node`, defined or undefined (runs what `ruby_options` parsed from argv).
/// - node: a defined symbol starting `_ZN4node5Start` (node::Start, a node with everything linked in), or the
///   undefined `_ZN4node5StartEiPPc` (`node::Start(int, char**)`, the node command line, imported from libnode.so
///   by Debian's /usr/bin/node).
/// - tcl: `Tcl_Main` or `Tcl_MainEx` (tclsh), `Tk_MainEx` (wish), defined or undefined.
/// - A program with the markers of more than one language is none of them (nil): it is not a plain launcher.
/// - Shells are not detected: they are configured interpreters. Programs without section headers (sstripped) or
///   without a dynamic symbol table (static) are not detected either.
public enum InterpreterDetector {
    /// At most this many dynamic symbols are examined; a larger table is not believed (nil).
    static let maxSymbols = 1_000_000
    /// A symbol name longer than this is never one of the markers.
    static let maxNameLength = 4096
    /// A dynamic string table larger than this is not believed (node's is about 5 MiB).
    static let maxStringTableSize = 64 << 20
    /// At most this many dynamic section entries are examined.
    static let maxDynamicEntries = 65_536
    /// The most bytes asked of `readAt` at once.
    static let chunkSize = 1 << 20

    /// The interpreter an ELF program is, from its dynamic symbols and DT_NEEDED entries; nil when it is not one
    /// (or is not ELF, or is malformed). `readAt(offset, count)` returns up to `count` bytes at `offset` (fewer at EOF).
    public static func detect(fileSize: UInt64, readAt: (_ offset: Int64, _ count: Int) -> [UInt8]) -> InterpreterKind? {
        let file = Reader(fileSize: fileSize)
        guard let header = file.read(readAt, 0, 52), ContentClassifier.sniff(header) == .elf,
              header[4] == 1 || header[4] == 2, header[5] == 1 || header[5] == 2 else { return nil }
        let elf = Layout(is64: header[4] == 2, little: header[5] == 1)
        guard let h = elf.is64 ? file.read(readAt, 0, 64) : header else { return nil }

        // A program, not a library: ET_EXEC, or ET_DYN with a PT_INTERP.
        switch elf.u16(h, 16) {
        case 2: break
        case 3: guard hasInterpreter(h, elf, file, readAt) else { return nil }
        default: return nil
        }

        guard let sections = sectionHeaders(h, elf, file, readAt),
              let dynsym = sections.first(where: { $0.type == 11 }),
              let strtab = sections.at(dynsym.link), strtab.type == 3,
              let strings = file.readLarge(readAt, strtab.offset, strtab.size, limit: maxStringTableSize),
              let markers = scanSymbols(dynsym, strings, elf, file, readAt) else { return nil }

        var kinds: [InterpreterKind] = []
        if markers.contains(.python) { kinds.append(.python) }
        if markers.contains(.perlParseDefined) && markers.contains(.perlRun) {
            kinds.append(.perl)
        } else if markers.isSuperset(of: [.perlParseUndefined, .perlRunUndefined, .perlUndumpUndefined]) {
            switch needsLibperl(sections, strtabIndex: dynsym.link, strings, elf, file, readAt) {
            case nil: return nil
            case true?: kinds.append(.perl)
            case false?: break
            }
        }
        if markers.contains(.ruby) { kinds.append(.ruby) }
        if markers.contains(.node) { kinds.append(.node) }
        if markers.contains(.tcl) { kinds.append(.tcl) }
        return kinds.count == 1 ? kinds[0] : nil
    }

    // MARK: - Markers

    struct Markers: OptionSet {
        let rawValue: UInt16
        static let python = Markers(rawValue: 1 << 0)
        static let perlParseDefined = Markers(rawValue: 1 << 1)
        static let perlParseUndefined = Markers(rawValue: 1 << 2)
        static let perlRun = Markers(rawValue: 1 << 3)
        static let perlRunUndefined = Markers(rawValue: 1 << 4)
        static let perlUndumpUndefined = Markers(rawValue: 1 << 5)
        static let ruby = Markers(rawValue: 1 << 6)
        static let node = Markers(rawValue: 1 << 7)
        static let tcl = Markers(rawValue: 1 << 8)
    }

    /// Exact names: (name, marker when defined, marker when undefined).
    private static let exactNames: [([UInt8], Markers, Markers)] = [
        (Array("Py_BytesMain".utf8), .python, .python),
        (Array("_Py_UnixMain".utf8), .python, .python),
        (Array("Py_Main".utf8), .python, .python),
        (Array("perl_parse".utf8), .perlParseDefined, .perlParseUndefined),
        (Array("perl_run".utf8), .perlRun, [.perlRun, .perlRunUndefined]),
        (Array("PL_do_undump".utf8), [], .perlUndumpUndefined),
        (Array("ruby_run_node".utf8), .ruby, .ruby),
        (Array("_ZN4node5StartEiPPc".utf8), .node, .node),
        (Array("Tcl_Main".utf8), .tcl, .tcl),
        (Array("Tcl_MainEx".utf8), .tcl, .tcl),
        (Array("Tk_MainEx".utf8), .tcl, .tcl),
    ]
    /// Any defined symbol with this prefix is node::Start.
    private static let nodeStartPrefix = Array("_ZN4node5Start".utf8)
    /// The first bytes of every marker name: most symbols are dismissed on their first byte.
    private static let firstBytes: Set<UInt8> = Set(exactNames.map { $0.0[0] }).union([nodeStartPrefix[0]])

    /// The markers among the dynamic symbols; nil when the table is malformed or too large.
    private static func scanSymbols(_ dynsym: Section, _ strings: [UInt8], _ elf: Layout, _ file: Reader,
                                    _ readAt: (Int64, Int) -> [UInt8]) -> Markers? {
        let entsize = elf.is64 ? 24 : 16
        guard dynsym.entsize == UInt64(entsize) || dynsym.entsize == 0 else { return nil }
        let total = dynsym.size / UInt64(entsize)
        guard total <= UInt64(maxSymbols) else { return nil }
        let count = Int(total)
        let perChunk = chunkSize / entsize
        var markers: Markers = []
        var first = 0
        while first < count {
            let n = min(perChunk, count - first)
            guard let table = file.read(readAt, dynsym.offset + UInt64(first * entsize), n * entsize) else { return nil }
            for i in 0..<n where first + i != 0 {   // symbol 0 is the null symbol
                let o = i * entsize
                let name = Int(elf.u32(table, o))
                let shndx = elf.u16(table, elf.is64 ? o + 6 : o + 14)
                guard name < strings.count else { return nil }
                guard firstBytes.contains(strings[name]) else { continue }
                markers.formUnion(marker(named: name, in: strings, defined: shndx != 0))
            }
            first += n
        }
        return markers
    }

    /// What the name at `start` of the string table marks; empty for any other name.
    private static func marker(named start: Int, in strings: [UInt8], defined: Bool) -> Markers {
        let limit = min(strings.count, start + maxNameLength + 1)
        var end = start
        while end < limit && strings[end] != 0 { end += 1 }
        guard end < limit else { return [] }   // unterminated or too long: not a marker
        let name = strings[start..<end]
        for (exact, whenDefined, whenUndefined) in exactNames where name.elementsEqual(exact) {
            return defined ? whenDefined : whenUndefined
        }
        if defined && name.starts(with: nodeStartPrefix) { return .node }
        return []
    }

    /// Whether a DT_NEEDED entry names `libperl.so` or one of its versions; nil when the dynamic section is malformed.
    private static func needsLibperl(_ sections: [Section], strtabIndex: UInt64, _ dynstr: [UInt8], _ elf: Layout,
                                     _ file: Reader, _ readAt: (Int64, Int) -> [UInt8]) -> Bool? {
        let libperl = Array("libperl.so".utf8)
        let entsize = elf.is64 ? 16 : 8
        // A real program has one dynamic section; a crafted one could have 65,534 that each name a 64 MiB string
        // table (review: ~30 minutes of reading per file). One is read, and at most one other string table.
        guard sections.filter({ $0.type == 6 }).count <= 1 else { return nil }
        for dynamic in sections where dynamic.type == 6 {
            guard dynamic.entsize == UInt64(entsize) || dynamic.entsize == 0 else { return nil }
            let strings: [UInt8]
            if dynamic.link == strtabIndex {
                strings = dynstr
            } else {
                guard let table = sections.at(dynamic.link), table.type == 3,
                      let loaded = file.readLarge(readAt, table.offset, table.size, limit: maxStringTableSize) else { return nil }
                strings = loaded
            }
            let count = Int(min(dynamic.size / UInt64(entsize), UInt64(maxDynamicEntries)))
            guard let entries = file.readLarge(readAt, dynamic.offset, UInt64(count * entsize), limit: count * entsize) else { return nil }
            for i in 0..<count {
                let o = i * entsize
                let tag = elf.is64 ? elf.u64(entries, o) : elf.u32(entries, o)
                if tag == 0 { break }                                   // DT_NULL
                guard tag == 1 else { continue }                        // DT_NEEDED
                let value = elf.is64 ? elf.u64(entries, o + 8) : elf.u32(entries, o + 4)
                guard value < UInt64(strings.count) else { return nil }
                let start = Int(value)
                let end = min(strings.count, start + maxNameLength)
                if strings[start..<end].starts(with: libperl) { return true }
            }
        }
        return false
    }

    // MARK: - ELF structure

    /// Whether an ET_DYN object has a PT_INTERP program header (a PIE program rather than a library).
    private static func hasInterpreter(_ h: [UInt8], _ elf: Layout, _ file: Reader,
                                       _ readAt: (Int64, Int) -> [UInt8]) -> Bool {
        let phoff = elf.is64 ? elf.u64(h, 32) : elf.u32(h, 28)
        let phentsize = Int(elf.is64 ? elf.u16(h, 54) : elf.u16(h, 42))
        let phnum = Int(elf.is64 ? elf.u16(h, 56) : elf.u16(h, 44))
        // The standard entry size exactly (review: a larger one let a sparse file ask for a 4 GiB table).
        guard phentsize == (elf.is64 ? 56 : 32), phnum > 0, phnum < 0xffff,   // PN_XNUM is not followed
              let table = file.readLarge(readAt, phoff, UInt64(phentsize * phnum), limit: phentsize * phnum) else { return false }
        return (0..<phnum).contains { elf.u32(table, $0 * phentsize) == 3 }   // PT_INTERP
    }

    struct Section {
        let type: UInt64, offset: UInt64, size: UInt64, link: UInt64, entsize: UInt64
    }

    /// The section headers; nil when absent or out of the file. Extended numbering (e_shnum 0) is not followed.
    private static func sectionHeaders(_ h: [UInt8], _ elf: Layout, _ file: Reader,
                                       _ readAt: (Int64, Int) -> [UInt8]) -> [Section]? {
        let shoff = elf.is64 ? elf.u64(h, 40) : elf.u32(h, 32)
        let shentsize = Int(elf.is64 ? elf.u16(h, 58) : elf.u16(h, 46))
        let shnum = Int(elf.is64 ? elf.u16(h, 60) : elf.u16(h, 48))
        guard shoff != 0, shnum > 0, shentsize == (elf.is64 ? 64 : 40),
              let table = file.readLarge(readAt, shoff, UInt64(shentsize * shnum), limit: shentsize * shnum) else { return nil }
        var sections: [Section] = []
        sections.reserveCapacity(shnum)
        for i in 0..<shnum {
            let o = i * shentsize
            let section = elf.is64
                ? Section(type: elf.u32(table, o + 4), offset: elf.u64(table, o + 24), size: elf.u64(table, o + 32),
                          link: elf.u32(table, o + 40), entsize: elf.u64(table, o + 56))
                : Section(type: elf.u32(table, o + 4), offset: elf.u32(table, o + 16), size: elf.u32(table, o + 20),
                          link: elf.u32(table, o + 24), entsize: elf.u32(table, o + 36))
            // SHT_DYNSYM, SHT_DYNAMIC and SHT_STRTAB are read: they must lie within the file.
            if section.type == 11 || section.type == 6 || section.type == 3 {
                guard file.contains(section.offset, section.size) else { return nil }
            }
            sections.append(section)
        }
        return sections
    }

    /// The integer encoding of one ELF file. Reads past the end of a buffer yield 0 (never trap); callers read
    /// whole structures first.
    struct Layout {
        let is64: Bool
        let little: Bool

        func u16(_ b: [UInt8], _ o: Int) -> UInt64 {
            guard o >= 0, o + 2 <= b.count else { return 0 }
            return little ? UInt64(b[o]) | UInt64(b[o + 1]) << 8 : UInt64(b[o]) << 8 | UInt64(b[o + 1])
        }
        func u32(_ b: [UInt8], _ o: Int) -> UInt64 {
            u16(b, little ? o : o + 2) | u16(b, little ? o + 2 : o) << 16
        }
        func u64(_ b: [UInt8], _ o: Int) -> UInt64 {
            u32(b, little ? o : o + 4) | u32(b, little ? o + 4 : o) << 32
        }
    }

    /// Bounds-checked reads through the caller's `readAt`.
    struct Reader {
        let fileSize: UInt64

        /// Whether `size` bytes at `offset` lie within the file (and within what `readAt` can address).
        func contains(_ offset: UInt64, _ size: UInt64) -> Bool {
            offset <= fileSize && size <= fileSize - offset && offset <= UInt64(Int64.max) && size <= UInt64(Int.max)
        }

        /// Exactly `count` bytes at `offset` in one call; nil when out of the file or short.
        func read(_ readAt: (Int64, Int) -> [UInt8], _ offset: UInt64, _ count: Int) -> [UInt8]? {
            guard count >= 0, contains(offset, UInt64(count)) else { return nil }
            if count == 0 { return [] }
            let bytes = readAt(Int64(offset), count)
            guard bytes.count >= count else { return nil }
            return bytes.count == count ? bytes : Array(bytes.prefix(count))
        }

        /// Exactly `size` bytes at `offset`, read `chunkSize` at a time; nil when larger than `limit`, out of the
        /// file or short.
        func readLarge(_ readAt: (Int64, Int) -> [UInt8], _ offset: UInt64, _ size: UInt64, limit: Int) -> [UInt8]? {
            guard size <= UInt64(limit), contains(offset, size) else { return nil }
            let total = Int(size)
            var bytes: [UInt8] = []
            bytes.reserveCapacity(total)
            while bytes.count < total {
                let n = min(chunkSize, total - bytes.count)
                guard let chunk = read(readAt, offset + UInt64(bytes.count), n) else { return nil }
                bytes += chunk
            }
            return bytes
        }
    }
}

private extension Array where Element == InterpreterDetector.Section {
    /// The section at an index taken from the file (sh_link), if there is one.
    func at(_ index: UInt64) -> InterpreterDetector.Section? {
        index < UInt64(count) ? self[Int(index)] : nil
    }
}
