/// One setting of a configuration: its name in files (`snake_case`), the
/// flag and environment variable that carry it, what kind of value it
/// takes, and whether a running process can take a new value.
///
/// The names are derived, never written twice: `tls_key` is `--tls-key` on
/// the command line and `UNIBUS_TLS_KEY` in the environment.
public struct ConfigurationKey: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// A string (an address, a name, a choice the command checks).
        case text
        case integer
        /// A decimal number (seconds).
        case number
        /// A switch: `true`/`false` in a file, `1`/`0` or `true`/`false` in the
        /// environment; `--x` and `--no-x` on the command line.
        case boolean
        /// Several strings: a JSON array, or comma-separated in the environment.
        case list
        /// A file path; `secret` paths name key material (`file://`
        /// references to them must be private to their owner).
        case path(secret: Bool)
    }

    /// Whether a running node takes a new value on SIGHUP.
    public enum Reload: Sendable, Equatable {
        case live
        /// Needs a restart: a reload that changes it is refused, by name.
        case restart
    }

    public let name: String
    public let kind: Kind
    public let reload: Reload

    public init(_ name: String, _ kind: Kind, reload: Reload) {
        self.name = name
        self.kind = kind
        self.reload = reload
    }

    public var flag: String { "--" + name.replacingOccurrences(of: "_", with: "-") }
    /// `--no-allow-plaintext`: a switch's off form (a layer above may turn off what one below turned on).
    public var negatedFlag: String { "--no-" + name.replacingOccurrences(of: "_", with: "-") }
    public var environmentVariable: String { "UNIBUS_" + name.uppercased() }
    public var isSecret: Bool { kind == .path(secret: true) }
}

/// A setting's value, in the form the command line takes it.
public enum ConfigurationValue: Sendable, Equatable, CustomStringConvertible {
    case scalar(String)
    case list([String])
    case boolean(Bool)

    /// The command-line words that give this value to `key`'s flag.
    public func arguments(for key: ConfigurationKey) -> [String] {
        switch self {
        case .scalar(let value): return [key.flag, value]
        case .list(let values): return values.flatMap { [key.flag, $0] }
        case .boolean(let on): return [on ? key.flag : key.negatedFlag]
        }
    }

    public var description: String {
        switch self {
        case .scalar(let value): return value
        case .list(let values): return values.joined(separator: ",")
        case .boolean(let on): return on ? "true" : "false"
        }
    }
}

/// Where an effective value came from, lowest first: a later source wins.
public enum ConfigurationSource: Sendable, Equatable, CustomStringConvertible {
    case `default`
    /// A configuration file (the system file, then `--config`).
    case file(String)
    /// An `UNIBUS_*` environment variable.
    case environment(String)
    /// The command line.
    case flag

    public var description: String {
        switch self {
        case .default: return "default"
        case .file(let path): return "file \(path)"
        case .environment(let name): return "environment \(name)"
        case .flag: return "flag"
        }
    }
}
