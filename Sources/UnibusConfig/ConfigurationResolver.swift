import Foundation
import UnibusCrypto

/// Why a configuration cannot be used; the message names the file (or
/// environment variable), the key and the problem.
public struct ConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A value set by a file or the environment, with where it came from and
/// the secret reference it was resolved from (shown instead of the value).
public struct ConfiguredValue: Sendable, Equatable {
    public var value: ConfigurationValue
    public var source: ConfigurationSource
    /// `env://…` or `file://…` as written, when the value came from one.
    public var reference: String?

    public init(value: ConfigurationValue, source: ConfigurationSource, reference: String? = nil) {
        self.value = value
        self.source = source
        self.reference = reference
    }
}

/// The layers below the command line, resolved: every file in order, then
/// the environment, each later one replacing a key wholesale (a list from
/// the environment replaces the file's list; it is not appended).
///
/// Flags sit above all of them: the command line is what the operator
/// typed for this one start, the most specific intent. The environment
/// sits above files because deployments (systemd drop-ins, containers) set
/// it per host over a shared file. Settings pushed by a signed cluster
/// command sit above everything and are kept by the node, not here.
public struct ConfigurationLayers: Sendable, Equatable {
    public private(set) var values: [String: ConfiguredValue] = [:]

    public init() {}

    /// Reads `files` in order and then `environment`, against `keys`.
    /// Unknown keys in a file, wrong types and unresolvable references are
    /// errors; unknown `UNIBUS_*` variables are left alone (other tools use
    /// the prefix).
    public static func resolve(keys: [ConfigurationKey], files: [String], environment: [String: String]) throws(ConfigurationError) -> Self {
        var documents: [(name: String, bytes: [UInt8])] = []
        for path in files { documents.append((path, try readFile(path))) }
        return try resolve(keys: keys, documents: documents, environment: environment)
    }

    /// The same from documents already read (`name` is what errors call
    /// them): what the tests and the fuzz target drive.
    public static func resolve(keys: [ConfigurationKey], documents: [(name: String, bytes: [UInt8])],
                               environment: [String: String]) throws(ConfigurationError) -> Self {
        var layers = Self()
        let byName = Dictionary(keys.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        for (path, bytes) in documents {
            let object = try parseObject(bytes, path: path)
            for name in object.keys.sorted() {
                guard let key = byName[name] else {
                    let hint = suggestion(for: name, among: keys.map(\.name)).map { "; did you mean \"\($0)\"?" } ?? ""
                    throw ConfigurationError("\(path): unknown key \"\(name)\"\(hint) (keys are the `unibusd run` flags in snake_case; `unibusd config show` lists them)")
                }
                let value = try fileValue(object[name] ?? .null, key: key, at: "\(path): key \"\(name)\"", environment: environment)
                layers.values[name] = ConfiguredValue(value: value.0, source: .file(path), reference: value.1)
            }
        }
        for key in keys {
            guard let text = environment[key.environmentVariable] else { continue }
            let value = try environmentValue(text, key: key, at: "environment \(key.environmentVariable)", environment: environment)
            layers.values[key.name] = ConfiguredValue(value: value.0, source: .environment(key.environmentVariable), reference: value.1)
        }
        return layers
    }

    /// The command-line words for every layered value whose flag the
    /// command line does not give itself (`given`: flags, e.g. `--listen`).
    public func arguments(keys: [ConfigurationKey], excluding given: Set<String>) -> [String] {
        keys.flatMap { key -> [String] in
            guard !given.contains(key.flag), let configured = values[key.name] else { return [] }
            return configured.value.arguments(for: key)
        }
    }

    // MARK: Reading

    static let maximumFileSize = 1 << 20

    static func readFile(_ path: String) throws(ConfigurationError) -> [UInt8] {
        // Checked on the opened file, never blocking: the file swapped for a
        // FIFO between a check and the read cannot hang start-up or a reload.
        do {
            return try RegularFile.read(path, maximumSize: maximumFileSize)
        } catch {
            switch error {
            case .notAFile: throw ConfigurationError("\(path): not a regular file; give the JSON configuration file")
            case .tooLarge, .corrupt: throw ConfigurationError("\(path): larger than 1 MiB; this is not a configuration file")
            case .missing: throw ConfigurationError("\(path): cannot read the configuration file (\(String(cString: strerror(ENOENT))))")
            case .io(_, let reason): throw ConfigurationError("\(path): cannot read the configuration file (\(reason))")
            case .insecurePermissions, .alreadyExists: throw ConfigurationError("\(path): \(error)")
            }
        }
    }

    static func parseObject(_ bytes: [UInt8], path: String) throws(ConfigurationError) -> [String: FileJSON] {
        guard bytes.count <= maximumFileSize else { throw ConfigurationError("\(path): larger than 1 MiB; this is not a configuration file") }
        let data = Data(bytes)
        let parsed: FileJSON
        do { parsed = try JSONDecoder().decode(FileJSON.self, from: data) } catch {
            throw ConfigurationError("\(path): not valid JSON (\(Self.jsonProblem(error)))")
        }
        guard case .object(let object) = parsed else {
            throw ConfigurationError("\(path): must hold one JSON object of settings, e.g. {\"listen\": \"0.0.0.0:4222\"}")
        }
        return object
    }

    static func jsonProblem(_ error: Error) -> String {
        switch error as? DecodingError {
        case .dataCorrupted(let context)?: return String(context.debugDescription.prefix(200))
        default: return "malformed"
        }
    }

    static func fileValue(_ raw: FileJSON, key: ConfigurationKey, at place: String,
                          environment: [String: String]) throws(ConfigurationError) -> (ConfigurationValue, String?) {
        switch (key.kind, raw) {
        case (.boolean, .boolean(let on)):
            return (.boolean(on), nil)
        case (.boolean, _):
            throw ConfigurationError("\(place): expected true or false")
        case (.integer, .integer(let integer)):
            return (.scalar(String(integer)), nil)
        case (.integer, .string(let text)):
            return try scalar(text, key: key, at: place, environment: environment)
        case (.integer, _):
            throw ConfigurationError("\(place): expected a whole number")
        case (.number, .integer(let integer)):
            return (.scalar(String(integer)), nil)
        case (.number, .number(let number)) where number.isFinite:
            return (.scalar(String(number)), nil)
        case (.number, .string(let text)):
            return try scalar(text, key: key, at: place, environment: environment)
        case (.number, _):
            throw ConfigurationError("\(place): expected a number")
        case (.list, .array(let array)):
            guard array.count <= 1024 else { throw ConfigurationError("\(place): more than 1024 entries") }
            var items: [String] = []
            for element in array {
                guard case .string(let text) = element else { throw ConfigurationError("\(place): expected an array of strings") }
                items.append(try resolveReference(text, key: key, at: place, environment: environment).0)
            }
            return (.list(items), nil)
        case (.list, _):
            throw ConfigurationError("\(place): expected an array of strings")
        case (.text, .string(let text)), (.path, .string(let text)):
            return try scalar(text, key: key, at: place, environment: environment)
        case (.text, _), (.path, _):
            throw ConfigurationError("\(place): expected a string")
        }
    }

    static func environmentValue(_ text: String, key: ConfigurationKey, at place: String,
                                 environment: [String: String]) throws(ConfigurationError) -> (ConfigurationValue, String?) {
        switch key.kind {
        case .boolean:
            switch text.lowercased() {
            case "1", "true", "yes", "on": return (.boolean(true), nil)
            case "0", "false", "no", "off", "": return (.boolean(false), nil)
            default: throw ConfigurationError("\(place): expected true or false, got \(Self.quoted(text))")
            }
        case .list:
            var items: [String] = []
            for part in text.split(separator: ",") {
                let trimmed = part.trimmingCharacters(in: .whitespaces)
                if !trimmed.isEmpty { items.append(try resolveReference(trimmed, key: key, at: place, environment: environment).0) }
            }
            return (.list(items), nil)
        default:
            return try scalar(text, key: key, at: place, environment: environment)
        }
    }

    static func scalar(_ text: String, key: ConfigurationKey, at place: String,
                       environment: [String: String]) throws(ConfigurationError) -> (ConfigurationValue, String?) {
        let (value, reference) = try resolveReference(text, key: key, at: place, environment: environment)
        switch key.kind {
        case .integer:
            guard Int64(value) != nil else { throw ConfigurationError("\(place): expected a whole number, got \(shown(value, key: key, reference: reference))") }
        case .number:
            guard let number = Double(value), number.isFinite else {
                throw ConfigurationError("\(place): expected a number, got \(shown(value, key: key, reference: reference))")
            }
        default:
            break
        }
        guard !value.isEmpty else { throw ConfigurationError("\(place): empty value") }
        guard value.utf8.count <= 4096, !value.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw ConfigurationError("\(place): the value is longer than 4096 bytes or holds control characters")
        }
        return (.scalar(value), reference)
    }

    /// `env://NAME` (the variable's value; unset is an error), `file:///path`
    /// (for a path setting the path itself, which must exist; for other
    /// settings the file's contents, trimmed), anything else as written.
    /// A secret path, and any file whose contents become a value, must not
    /// be readable by group or others. Other schemes are refused rather
    /// than taken as a literal value.
    static func resolveReference(_ text: String, key: ConfigurationKey, at place: String,
                                 environment: [String: String]) throws(ConfigurationError) -> (String, String?) {
        if text.hasPrefix("env://") {
            let name = String(text.dropFirst("env://".count))
            guard !name.isEmpty, name.utf8.allSatisfy({ $0 == UInt8(ascii: "_") || (0x30...0x39).contains($0) || (0x41...0x5a).contains($0) || (0x61...0x7a).contains($0) }) else {
                throw ConfigurationError("\(place): \(text) is not a valid reference; write env://VARIABLE_NAME")
            }
            guard let value = environment[name], !value.isEmpty else {
                throw ConfigurationError("\(place): \(text) cannot be resolved: the environment variable \(name) is not set")
            }
            return (value, text)
        }
        if text.hasPrefix("file://") {
            let path = String(text.dropFirst("file://".count))
            guard path.hasPrefix("/") else {
                throw ConfigurationError("\(place): \(text) is not a valid reference; write file:///absolute/path (three slashes)")
            }
            if case .path(let secret) = key.kind {
                try checkFile(path, private: secret, reference: text, at: place)
                return (path, text)
            }
            let bytes: [UInt8]
            do { bytes = try SecretFile.read(path, maximumSize: 64 << 10, missingHint: "") } catch {
                throw ConfigurationError("\(place): \(text) cannot be resolved: \(error)")
            }
            let value = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .newlines)
            return (value, text)
        }
        if let scheme = text.range(of: "://"), text[..<scheme.lowerBound].allSatisfy({ $0.isLetter }), !text[..<scheme.lowerBound].isEmpty,
           key.kind != .list, key.kind != .text || !["nats", "tls", "http", "https"].contains(String(text[..<scheme.lowerBound])) {
            throw ConfigurationError("\(place): \(text[..<scheme.lowerBound]):// references are not supported; use env://VARIABLE or file:///path")
        }
        return (text, nil)
    }

    static func checkFile(_ path: String, private isPrivate: Bool, reference: String, at place: String) throws(ConfigurationError) {
        var status = stat()
        guard stat(path, &status) == 0 else {
            throw ConfigurationError("\(place): \(reference) cannot be resolved: no file at \(path)")
        }
        guard (status.st_mode & S_IFMT) == S_IFREG else {
            throw ConfigurationError("\(place): \(reference) cannot be resolved: \(path) is not a regular file")
        }
        if isPrivate, status.st_mode & 0o077 != 0 {
            throw ConfigurationError("\(place): \(reference) names key material readable by group or others (mode \(String(status.st_mode & 0o777, radix: 8))); "
                                     + "run `chmod 600 \(path)`")
        }
    }

    static func shown(_ value: String, key: ConfigurationKey, reference: String?) -> String {
        reference.map { "the value of \($0)" } ?? quoted(value)
    }

    static func quoted(_ text: String) -> String { "\"\(String(text.prefix(64)))\"" }

    /// The known name closest to a misspelt one (edit distance ≤ 3).
    static func suggestion(for name: String, among names: [String]) -> String? {
        func distance(_ a: [Character], _ b: [Character]) -> Int {
            var previous = Array(0...b.count)
            for (i, x) in a.enumerated() {
                var current = [i + 1]
                for (j, y) in b.enumerated() { current.append(min(previous[j + 1] + 1, current[j] + 1, previous[j] + (x == y ? 0 : 1))) }
                previous = current
            }
            return previous[b.count]
        }
        let normalized = Array(name.lowercased().replacingOccurrences(of: "-", with: "_").prefix(64))
        return names.map { ($0, distance(normalized, Array($0))) }.filter { $0.1 <= 3 }.min { $0.1 < $1.1 }?.0
    }
}

/// A configuration file's JSON, with booleans and numbers kept apart (a
/// `1` is not `true`).
enum FileJSON: Decodable, Equatable {
    case null
    case boolean(Bool)
    case integer(Int64)
    case number(Double)
    case string(String)
    case array([FileJSON])
    case object([String: FileJSON])

    init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null } else if let value = try? container.decode(Bool.self) { self = .boolean(value) } else if let value = try? container.decode(Int64.self) {
            self = .integer(value)
        } else if let value = try? container.decode(Double.self) { self = .number(value) } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([FileJSON].self) { self = .array(value) } else {
            self = .object(try container.decode([String: FileJSON].self))
        }
    }
}
